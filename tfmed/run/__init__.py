"""The application layer: experiment runner, run directories, the saved-model artifact,
reports, ``evaluate``, ``predict``, the layer sweep and the command line.

Nothing else in tfmed imports this package.
"""
