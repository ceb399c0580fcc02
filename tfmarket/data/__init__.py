"""Datasets: folders -> records, synthetic data, and records -> the ``tf.data`` pipeline.

* ``records``: the shared types (:class:`Records`: one split; :class:`ReidDataset`).
* ``registry``: every dataset by name: :func:`detect_layout`, :func:`load_dataset`.
* one reader per dataset: ``market1501`` (original and course layouts), ``duke``, ``msmt17``,
  ``cuhk03``, ``custom`` (own crops), with ``filenames``, ``listfile`` and ``check`` (names,
  list files, unreadable images); see docs/datasets.md.
* ``split`` (validation identities, labels), ``summary``, ``tfds_builder`` (TFDS), and
  ``pipeline``: the P x K training stream and evaluation batches (``tf.data``).
* ``synthetic/``: generated datasets in every layout (tests, CI, laptops).
* ``__main__``: the ``python -m tfmarket.data`` command.

May import: the foundations (``tfmarket.attributes``, ``errors``, ``preprocess``) only.
Readers import records, the registry imports readers, never the other way round. Importing this
package does not import TensorFlow; ``tfmarket.data.pipeline`` does.
"""

from tfmarket.data.records import Records, ReidDataset
from tfmarket.data.registry import LAYOUTS, detect_layout, load_dataset

__all__ = ["LAYOUTS", "Records", "ReidDataset", "detect_layout", "load_dataset"]
