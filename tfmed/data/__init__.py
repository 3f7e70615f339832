"""tfmed.data"""
