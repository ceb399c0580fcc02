"""Readers for the two Market-1501 layouts (the other datasets have their own modules; all of
them are reached by name through :func:`tfmarket.data.registry.load_dataset`).

Original layout (Zheng et al. 2015)::

    ROOT/bounding_box_train/  bounding_box_test/  query/  [market_attribute.mat]

Course layout::

    ROOT/train/  annotations_train.csv  test/  queries/

Identity ``-1`` (junk) is dropped; identity ``0`` (``0000``, distractors) stays in the gallery as
a negative and never enters training. Attributes are stored per image in the dataset's own
attribute schema and its annotation files' encoding (``Records.schema``; Market-1501:
:data:`tfmarket.attributes.MARKET`, 1 = no, 2 = yes, age 1-4), with 0 where unknown (no
annotation file, distractors, unlabelled splits).
"""

from __future__ import annotations

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
from tfmarket.data.records import Records, ReidDataset, make_records
from tfmarket.errors import DataError

ORIGINAL_DIRS = ("bounding_box_train", "bounding_box_test", "query")
UNLABELLED = -1


def read_attribute_mat(path: str | Path) -> dict[str, dict[int, np.ndarray]]:
    """``market_attribute.mat`` -> {"train"|"test": {identity: int64 [27] in COLUMNS order}}.

    The train and test structs store their fields in different orders, so fields are read by
    name, never by position.
    """
    return read_attribute_tables(path, "market_attribute", COLUMNS)


def read_attribute_tables(
    path: str | Path, variable: str, columns: tuple[str, ...]
) -> dict[str, dict[int, np.ndarray]]:
    """A MATLAB attribute file of Lin et al. (``market_attribute.mat``, ``duke_attribute.mat``).

    The file holds a struct ``<variable>`` with sub-structs ``train`` and ``test``; each has one
    1 x N field per attribute plus ``image_index`` (the N identities as strings like ``"0001"``).

    Returns:
        {"train"|"test": {identity: int64 [len(columns)] in ``columns`` order}}, fields read by
        name (the structs' field orders differ between train and test).

    Raises:
        DataError: unreadable file, missing struct or fields, fields of different lengths.
    """
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(str(path))
    except Exception as exc:  # scipy raises many types for malformed files
        raise DataError(f"{path}: not a readable {variable}.mat ({exc})") from None
    if variable not in mat:
        found = ", ".join(k for k in mat if not k.startswith("__")) or "nothing"
        raise DataError(f"{path}: no variable {variable!r} (found: {found})")
    try:
        root = mat[variable][0, 0]
    except (IndexError, TypeError, ValueError):
        raise DataError(f"{path}: {variable} is not a MATLAB struct") from None
    tables = {}
    for split in ("train", "test"):
        try:
            struct = root[split][0, 0]
        except (KeyError, ValueError, IndexError, TypeError):
            raise DataError(f"{path}: no {variable}.{split} struct") from None
        names = struct.dtype.names or ()
        missing = [c for c in (*columns, "image_index") if c not in names]
        if missing:
            raise DataError(f"{path}: {variable}.{split} lacks fields {missing}")
        try:
            ids = [int(np.asarray(x).ravel()[0]) for x in struct["image_index"].ravel()]
            values = np.stack(
                [np.asarray(struct[c]).ravel().astype(np.int64) for c in columns], 1
            )
        except (ValueError, TypeError, IndexError) as exc:
            raise DataError(f"{path}: {variable}.{split} has malformed fields ({exc})") from None
        if values.shape[0] != len(ids):
            raise DataError(f"{path}: {variable}.{split} fields have different lengths")
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
    return make_records(paths, pids, cams, np.reshape(attrs, (-1, len(COLUMNS))))


def load_original(root: Path) -> ReidDataset:
    for d in ORIGINAL_DIRS:
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
    train = make_records(paths, pids, cams, np.reshape(attrs, (-1, len(COLUMNS))))
    return ReidDataset(
        "course",
        root,
        train,
        _unlabelled(root / "queries"),
        _unlabelled(root / "test"),
    )


def _unlabelled(folder: Path) -> Records:
    if not folder.is_dir():
        return make_records([], [], [], np.zeros((0, len(COLUMNS))), labelled=False)
    paths = list_images(folder)
    n = len(paths)
    return make_records(
        paths,
        np.full(n, UNLABELLED),
        np.full(n, UNLABELLED),
        np.zeros((n, len(COLUMNS))),
        labelled=False,
    )
