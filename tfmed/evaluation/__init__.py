"""tfmed.evaluation"""
