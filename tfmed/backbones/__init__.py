"""tfmed.backbones"""
