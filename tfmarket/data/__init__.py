"""Dataset readers (folders -> records), synthetic data and the tf.data input pipeline.

Importing this package does not import TensorFlow; ``tfmarket.data.pipeline`` does.
"""

from tfmarket.data.market1501 import Records, ReidDataset, detect_layout, load_dataset

__all__ = ["Records", "ReidDataset", "detect_layout", "load_dataset"]
