"""Readers for the two Market-1501 layouts: folders -> :class:`ReidDataset` of records.

Original layout (Zheng et al. 2015)::

    ROOT/bounding_box_train/  bounding_box_test/  query/  [market_attribute.mat]

Course layout::

    ROOT/train/  annotations_train.csv  test/  queries/

Identity ``-1`` (junk) is dropped; identity ``0`` (``0000``, distractors) stays in the gallery as
a negative and never enters training. Attributes are stored per image in the annotation
files' own encoding (:data:`tfmarket.attributes.COLUMNS`, 1 = no, 2 = yes, age 1-4), with 0 where
unknown (no annotation file, distractors, unlabelled splits).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from tfmarket.attributes import COLUMNS, columns_to_targets
from tfmarket.data.filenames import (
    DISTRACTOR_ID,
    JUNK_ID,
    list_images,
    parse_course_train,
    parse_original,
)
from tfmarket.errors import DataError

LAYOUTS = ("market1501", "course")
_ORIGINAL_DIRS = ("bounding_box_train", "bounding_box_test", "query")
_COURSE_DIRS = ("train", "test", "queries")
UNLABELLED = -1


@dataclasses.dataclass
class Records:
    """One split: parallel arrays, one entry per image.

    Attributes:
        paths: list[str] [N] absolute image paths.
        pids: int64 [N] dataset identity (0 = distractor; -1 where unlabelled).
        cams: int64 [N] camera number (-1 where unknown).
        attributes: int64 [N, 27] in file encoding; 0 = unknown.
        labelled: whether pids/cams are real labels.
    """

    paths: list[str]
    pids: np.ndarray
    cams: np.ndarray
    attributes: np.ndarray
    labelled: bool = True

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, mask_or_index: np.ndarray) -> Records:
        idx = np.asarray(mask_or_index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return Records(
            [self.paths[i] for i in idx],
            self.pids[idx],
            self.cams[idx],
            self.attributes[idx],
            self.labelled,
        )

    @property
    def has_attributes(self) -> np.ndarray:
        """bool [N]: the image's identity has attribute annotations."""
        return (self.attributes > 0).all(axis=1)


@dataclasses.dataclass
class ReidDataset:
    """A whole dataset: training images plus a query/gallery evaluation pair."""

    layout: str
    root: Path
    train: Records
    query: Records
    gallery: Records

    def splits(self) -> dict[str, Records]:
        return {"train": self.train, "query": self.query, "gallery": self.gallery}


def _records(paths, pids, cams, attributes, labelled=True) -> Records:
    n = len(paths)
    return Records(
        [str(p) for p in paths],
        np.asarray(pids, dtype=np.int64).reshape(n),
        np.asarray(cams, dtype=np.int64).reshape(n),
        np.asarray(attributes, dtype=np.int64).reshape(n, len(COLUMNS)),
        labelled,
    )


def detect_layout(root: str | Path) -> str:
    """Returns ``"market1501"`` or ``"course"``; DataError naming what is missing otherwise."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if all((root / d).is_dir() for d in _ORIGINAL_DIRS):
        return "market1501"
    if (root / "train").is_dir() and (root / "annotations_train.csv").is_file():
        return "course"
    found = sorted(p.name for p in root.iterdir())[:10]
    raise DataError(
        f"{root}: not a Market-1501 folder. Expected either {', '.join(_ORIGINAL_DIRS)} "
        f"(original layout) or train/ + annotations_train.csv (course layout); found: "
        f"{', '.join(found) or 'nothing'}"
    )


def load_dataset(root: str | Path, layout: str = "auto") -> ReidDataset:
    """Reads a dataset folder in either layout (``layout="auto"`` detects it)."""
    root = Path(root).expanduser().resolve()
    if layout == "auto":
        layout = detect_layout(root)
    if layout == "market1501":
        return load_original(root)
    if layout == "course":
        return load_course(root)
    raise DataError(f"unknown layout {layout!r}; valid layouts: auto, {', '.join(LAYOUTS)}")


# --- original layout -------------------------------------------------------------------------


def read_attribute_mat(path: str | Path) -> dict[str, dict[int, np.ndarray]]:
    """``market_attribute.mat`` -> {"train"|"test": {identity: int64 [27] in COLUMNS order}}.

    The train and test structs store their fields in different orders, so fields are read by
    name, never by position.
    """
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path))
        root = mat["market_attribute"][0, 0]
    except Exception as exc:  # scipy raises many types for malformed files
        raise DataError(f"{path}: not a readable market_attribute.mat ({exc})") from None
    tables = {}
    for split in ("train", "test"):
        try:
            struct = root[split][0, 0]
        except (KeyError, ValueError, IndexError):
            raise DataError(f"{path}: no market_attribute.{split} struct") from None
        names = struct.dtype.names or ()
        missing = [c for c in (*COLUMNS, "image_index") if c not in names]
        if missing:
            raise DataError(f"{path}: market_attribute.{split} lacks fields {missing}")
        ids = [int(np.asarray(x).ravel()[0]) for x in struct["image_index"].ravel()]
        values = np.stack([np.asarray(struct[c]).ravel().astype(np.int64) for c in COLUMNS], 1)
        if values.shape[0] != len(ids):
            raise DataError(f"{path}: market_attribute.{split} fields have different lengths")
        tables[split] = dict(zip(ids, values, strict=True))
    return tables


def _read_original_split(folder: Path, table: dict[int, np.ndarray] | None, train: bool):
    paths, pids, cams, attrs = [], [], [], []
    unknown = []
    for path in list_images(folder):
        pid, cam = parse_original(path)
        if pid == JUNK_ID:
            continue
        if train and pid == DISTRACTOR_ID:
            continue  # distractors are not an identity to learn
        row = np.zeros(len(COLUMNS), dtype=np.int64)
        if table is not None and pid != DISTRACTOR_ID:
            if pid not in table:
                unknown.append((pid, path))
            else:
                row = table[pid]
        paths.append(path)
        pids.append(pid)
        cams.append(cam)
        attrs.append(row)
    if unknown and train:
        pid, path = unknown[0]
        raise DataError(
            f"{path}: identity {pid:04d} has no entry in market_attribute.mat "
            f"({len({p for p, _ in unknown})} training identities missing)"
        )
    return _records(paths, pids, cams, np.reshape(attrs, (-1, len(COLUMNS))))


def load_original(root: Path) -> ReidDataset:
    for d in _ORIGINAL_DIRS:
        if not (root / d).is_dir():
            raise DataError(f"{root / d}: folder not found (original Market-1501 layout)")
    tables = None
    mat = root / "market_attribute.mat"
    if not mat.is_file() and (root.parent / "market_attribute.mat").is_file():
        mat = root.parent / "market_attribute.mat"  # often kept beside the extracted folder
    if mat.is_file():
        tables = read_attribute_mat(mat)
    train = _read_original_split(root / "bounding_box_train", tables and tables["train"], True)
    gallery = _read_original_split(root / "bounding_box_test", tables and tables["test"], False)
    query = _read_original_split(root / "query", tables and tables["test"], False)
    return ReidDataset("market1501", root, train, query, gallery)


# --- course layout ---------------------------------------------------------------------------


def read_annotations_csv(path: str | Path) -> dict[int, np.ndarray]:
    """``annotations_train.csv`` -> {identity: int64 [27] in COLUMNS order}, validated."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    try:
        frame = pd.read_csv(path)
    except Exception as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    missing = [c for c in ("id", *COLUMNS) if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing columns {', '.join(missing)}")
    bad = frame[["id", *COLUMNS]].isna().any(axis=1) | ~frame[["id", *COLUMNS]].apply(
        lambda col: pd.to_numeric(col, errors="coerce").notna()
    ).all(axis=1)
    if bad.any():
        line = int(np.flatnonzero(bad.to_numpy())[0]) + 2  # header is line 1
        raise DataError(f"{path}: line {line} has empty or non-numeric values")
    ids = frame["id"].astype(np.int64).to_numpy()
    if len(set(ids.tolist())) != len(ids):
        dup = ids[np.flatnonzero(np.bincount(np.unique(ids, return_inverse=True)[1]) > 1)[0]]
        raise DataError(f"{path}: identity {dup} appears on more than one line")
    values = frame[list(COLUMNS)].astype(np.int64).to_numpy()
    try:
        columns_to_targets(values)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    return dict(zip(ids.tolist(), values, strict=True))


def load_course(root: Path) -> ReidDataset:
    table = read_annotations_csv(root / "annotations_train.csv")
    paths, pids, cams, attrs = [], [], [], []
    missing: dict[int, Path] = {}
    for path in list_images(root / "train"):
        pid, cam = parse_course_train(path)
        if pid not in table:
            missing.setdefault(pid, path)
            continue
        paths.append(path)
        pids.append(pid)
        cams.append(cam)
        attrs.append(table[pid])
    if missing:
        pid, path = next(iter(missing.items()))
        raise DataError(
            f"{path}: identity {pid} is not in {root / 'annotations_train.csv'} "
            f"({len(missing)} identities missing)"
        )
    train = _records(paths, pids, cams, np.reshape(attrs, (-1, len(COLUMNS))))
    return ReidDataset(
        "course",
        root,
        train,
        _unlabelled(root / "queries"),
        _unlabelled(root / "test"),
    )


def _unlabelled(folder: Path) -> Records:
    if not folder.is_dir():
        return _records([], [], [], np.zeros((0, len(COLUMNS))), labelled=False)
    paths = list_images(folder)
    n = len(paths)
    return _records(
        paths,
        np.full(n, UNLABELLED),
        np.full(n, UNLABELLED),
        np.zeros((n, len(COLUMNS))),
        labelled=False,
    )
