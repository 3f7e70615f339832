"""tfmed: Keras/TensorFlow transfer learning for medical image classification."""
__version__ = "0.3.0"
