"""Writing ``.npz`` archives that are byte-identical for identical arrays.

``numpy.savez`` stamps every member of the zip with the wall-clock time, so two runs that
compute the same embeddings still write different files. These archives load with ``np.load``
exactly as numpy's own do.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can carry


def save_npz(path: str | Path, compressed: bool = False, **arrays: np.ndarray) -> None:
    """Write ``arrays`` to ``path`` as an ``.npz`` with fixed member times, in argument order.

    Args:
        path: str | Path. The file to write (``.npz`` is not appended).
        compressed: bool. Deflate the members, like ``numpy.savez_compressed``.
        **arrays: np.ndarray. Member name -> array; object arrays are refused, as
            ``np.load(allow_pickle=False)`` could not read them back.
    """
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method, allowZip64=True) as archive:
        for name, value in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=ZIP_EPOCH)
            info.compress_type = method
            info.external_attr = 0o644 << 16
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
