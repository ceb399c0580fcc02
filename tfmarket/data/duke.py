"""DukeMTMC-reID (Ristani et al. 2016; Zheng et al. 2017) and its 23 attributes (Lin et al. 2019).

Layout (as the ``DukeMTMC-reID.zip`` archive extracts)::

    ROOT/bounding_box_train/   0001_c2_f0046182.jpg ...   (identity, camera 1-8, frame)
    ROOT/bounding_box_test/    (the gallery)
    ROOT/query/
    [duke_attribute.mat]       optional: in ROOT, ROOT/DukeMTMC-attribute/, ROOT/attribute/
                               or ROOT's parent folder (also its DukeMTMC-attribute/)

Identity numbers are kept as in the file names. Unlike Market-1501 the archive has no junk
(``-1``) or ``0000`` distractor images; the gallery's 408 distractor identities are ordinary
identity numbers that appear in no query. Records carry the Duke attributes in their own schema
(:data:`tfmarket.attributes.DUKE`): ``Records.attributes`` int64 [N, 23] in
:data:`DUKE_ATTRIBUTES` order and the file's encoding (1 = no, 2 = yes; see :data:`DUKE_MEANING`),
0 where the identity has no annotation (or there is no ``duke_attribute.mat``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfmarket.attributes import DUKE, DUKE_COLUMNS
from tfmarket.data.filenames import list_images, parse_duke
from tfmarket.data.market1501 import ORIGINAL_DIRS, read_attribute_tables
from tfmarket.data.records import ReidDataset, make_records
from tfmarket.errors import DataError

# The 23 attribute fields of duke_attribute.mat (https://github.com/vana77/DukeMTMC-attribute),
# in the order of its train struct (tfmarket.attributes.DUKE_COLUMNS, the DUKE schema's columns);
# the test struct stores them in another order, so they are always read by name. Besides these,
# each struct has ``image_index`` (the identities).
DUKE_ATTRIBUTES = DUKE_COLUMNS
# What value 2 means (1 means the opposite), as the annotation's authors describe the fields.
DUKE_MEANING = {
    "backpack": "carries a backpack",
    "bag": "carries a bag",
    "handbag": "carries a handbag",
    "boots": "wears boots",
    "gender": "female (1 = male)",
    "hat": "wears a hat",
    "shoes": "light shoes (1 = dark)",
    "top": "long upper-body clothing (1 = short)",
    **{f"down{c}": f"lower-body clothing is {c}" for c in
       ("black", "white", "red", "gray", "blue", "green", "brown")},
    **{f"up{c}": f"upper-body clothing is {c}" for c in
       ("black", "white", "red", "purple", "gray", "blue", "green", "brown")},
}
assert set(DUKE_MEANING) == set(DUKE_ATTRIBUTES)
ATTRIBUTE_FILE = "duke_attribute.mat"
_ATTRIBUTE_PLACES = (".", "DukeMTMC-attribute", "attribute", "..", "../DukeMTMC-attribute")


def read_duke_attribute_mat(path: str | Path) -> dict[str, dict[int, np.ndarray]]:
    """``duke_attribute.mat`` -> {"train"|"test": {identity: int64 [23] in DUKE_ATTRIBUTES order}}.

    Fields are read by name. Raises DataError (naming the file) if the ``duke_attribute`` struct
    or any of its fields is missing.
    """
    return read_attribute_tables(path, "duke_attribute", DUKE_ATTRIBUTES)


def find_attribute_file(root: Path) -> Path | None:
    """``duke_attribute.mat`` in one of the usual places around ROOT, else None."""
    for place in _ATTRIBUTE_PLACES:
        candidate = (root / place / ATTRIBUTE_FILE).resolve()
        if candidate.is_file():
            return candidate
    return None


def _read_split(folder: Path, table: dict[int, np.ndarray] | None, train: bool):
    paths = list_images(folder)
    parsed = [parse_duke(p) for p in paths]
    attributes = None
    if table is not None:
        unknown = np.zeros(len(DUKE_ATTRIBUTES), dtype=np.int64)
        missing = [(p, name.pid) for p, name in zip(paths, parsed, strict=True)
                   if name.pid not in table]
        if missing and train:
            path, pid = missing[0]
            raise DataError(
                f"{path}: identity {pid:04d} has no entry in {ATTRIBUTE_FILE} "
                f"({len({p for _, p in missing})} training identities missing)"
            )
        attributes = np.reshape([table.get(name.pid, unknown) for name in parsed],
                                (len(paths), len(DUKE_ATTRIBUTES)))
    return make_records(
        paths,
        [name.pid for name in parsed],
        [name.camera for name in parsed],
        attributes,
        schema=DUKE,
    )


def load_duke(root: str | Path) -> ReidDataset:
    """Reads a DukeMTMC-reID folder (see the module docstring) into a :class:`ReidDataset`."""
    root = Path(root)
    for d in ORIGINAL_DIRS:
        if not (root / d).is_dir():
            raise DataError(f"{root / d}: folder not found (DukeMTMC-reID layout)")
    mat = find_attribute_file(root)
    tables = read_duke_attribute_mat(mat) if mat else None
    train = _read_split(root / "bounding_box_train", tables and tables["train"], True)
    gallery = _read_split(root / "bounding_box_test", tables and tables["test"], False)
    query = _read_split(root / "query", tables and tables["test"], False)
    return ReidDataset("dukemtmcreid", root, train, query, gallery)
