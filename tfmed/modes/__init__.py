"""tfmed.modes"""
