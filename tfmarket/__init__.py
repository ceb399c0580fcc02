"""tfmarket: pedestrian attribute recognition and person re-identification with Keras 3.

Importing the package is cheap: TensorFlow is imported only by the modules that need it.
"""

__version__ = "0.1.0"
