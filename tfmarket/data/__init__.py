"""Dataset readers (Market-1501, DukeMTMC-reID, MSMT17, CUHK03 and own-crop folders ->
records; docs/datasets.md), synthetic data and the tf.data input pipeline.

Importing this package does not import TensorFlow; ``tfmarket.data.pipeline`` does.
"""

from tfmarket.data.market1501 import LAYOUTS, Records, ReidDataset, detect_layout, load_dataset

__all__ = ["LAYOUTS", "Records", "ReidDataset", "detect_layout", "load_dataset"]
