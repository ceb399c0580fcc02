"""Readers for the two Market-1501 layouts, and the entry point for every dataset.

:func:`load_dataset` reads any supported dataset folder into a :class:`ReidDataset` of
:class:`Records`; :func:`detect_layout` recognises which one a folder holds. The Market-1501
layouts are read here; the others in their own modules (``tfmarket.data.duke``,
``tfmarket.data.msmt17``, ``tfmarket.data.cuhk03``, ``tfmarket.data.custom``; see
``docs/datasets.md``).

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

import dataclasses
import os
from pathlib import Path

import numpy as np

from tfmarket.attributes import COLUMNS, MARKET, AttributeSchema, columns_to_targets
from tfmarket.data.filenames import (
    DISTRACTOR_ID,
    IMAGE_SUFFIXES,
    JUNK_ID,
    is_duke_name,
    list_images,
    parse_course_train,
    parse_original,
)
from tfmarket.errors import DataError

# Dataset (layout) names accepted by load_dataset, besides "auto". "cuhk03" is the labeled
# variant; "market1501" and "course" are the two Market-1501 layouts.
LAYOUTS = (
    "market1501",
    "course",
    "dukemtmcreid",
    "msmt17",
    "cuhk03",
    "cuhk03-labeled",
    "cuhk03-detected",
    "custom",
)
ORIGINAL_DIRS = ("bounding_box_train", "bounding_box_test", "query")
_COURSE_DIRS = ("train", "test", "queries")
UNLABELLED = -1


@dataclasses.dataclass
class Records:
    """One split: parallel arrays, one entry per image.

    Attributes:
        paths: list[str] [N] absolute image paths.
        pids: int64 [N] dataset identity (0 = distractor; -1 where unlabelled).
        cams: int64 [N] camera number (-1 where unknown).
        attributes: int64 [N, len(schema.columns)] the dataset's attributes in its file encoding
            (Market-1501: [N, 27], 1 = no, 2 = yes, age 1-4; DukeMTMC-reID: [N, 23]); 0 =
            unknown; [N, 0] for a dataset without attributes.
        labelled: whether pids/cams are real labels.
        schema: the dataset's attribute schema (:mod:`tfmarket.attributes`): the columns of
            ``attributes`` and the model heads they train.
    """

    paths: list[str]
    pids: np.ndarray
    cams: np.ndarray
    attributes: np.ndarray
    labelled: bool = True
    schema: AttributeSchema = MARKET

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
            self.schema,
        )

    @property
    def attribute_names(self) -> tuple[str, ...]:
        """The columns of ``attributes`` (the schema's file columns)."""
        return self.schema.columns

    @property
    def has_attributes(self) -> np.ndarray:
        """bool [N]: the image's identity has attribute annotations (never, without columns)."""
        if self.attributes.shape[1] == 0:
            return np.zeros(len(self), dtype=bool)
        return (self.attributes > 0).all(axis=1)


def concat_records(parts: list[Records], schema: AttributeSchema) -> Records:
    """The images of several splits in one, with ``schema``'s columns: a part in another schema
    contributes its images with every attribute unknown (0)."""
    width = len(schema.columns)
    attributes = [p.attributes if p.schema == schema
                  else np.zeros((len(p), width), np.int64) for p in parts]
    return Records(
        [path for p in parts for path in p.paths],
        np.concatenate([p.pids for p in parts]).astype(np.int64),
        np.concatenate([p.cams for p in parts]).astype(np.int64),
        np.concatenate(attributes).reshape(-1, width).astype(np.int64),
        all(p.labelled for p in parts),
        schema,
    )


@dataclasses.dataclass
class ReidDataset:
    """A whole dataset: training images plus a query/gallery evaluation pair.

    Attributes:
        layout: the dataset name (one of :data:`LAYOUTS`; ``cuhk03`` for both CUHK03 variants).
        variant: ``V1``/``V2`` (MSMT17), ``labeled``/``detected`` (CUHK03), else "".
        sources: where each split comes from (folder or list file), for summaries; None = the
            Market-1501 folder names.
    """

    layout: str
    root: Path
    train: Records
    query: Records
    gallery: Records
    variant: str = ""
    sources: dict[str, str] | None = None

    def splits(self) -> dict[str, Records]:
        return {"train": self.train, "query": self.query, "gallery": self.gallery}

    @property
    def schema(self) -> AttributeSchema:
        """The dataset's attribute schema (every split has the same)."""
        return self.train.schema


def make_records(paths, pids, cams, attributes=None, labelled=True,
                 schema: AttributeSchema = MARKET) -> Records:
    """Records from lists; ``attributes=None`` = every attribute of ``schema`` unknown (0)."""
    n = len(paths)
    width = len(schema.columns)
    if attributes is None:
        attributes = np.zeros((n, width), dtype=np.int64)
    return Records(
        [str(p) for p in paths],
        np.asarray(pids, dtype=np.int64).reshape(n),
        np.asarray(cams, dtype=np.int64).reshape(n),
        np.asarray(attributes, dtype=np.int64).reshape(n, width),
        labelled,
        schema,
    )


def _first_image_name(folder: Path) -> str:
    """Name of the first image (sorted) in a folder, "" if none."""
    names = sorted(
        e.name for e in os.scandir(folder)
        if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES
    )
    return names[0] if names else ""


def detect_layout(root: str | Path) -> str:
    """The dataset a folder holds (a :data:`LAYOUTS` name); DataError naming what is missing.

    Market-1501's original layout and DukeMTMC-reID share their folder names
    (``bounding_box_train/``, ``bounding_box_test/``, ``query/``); the file names tell them apart
    (``0002_c1s1_000451_03.jpg`` vs ``0001_c2_f0046182.jpg``; the folder's name decides only
    when ``bounding_box_train/`` has no image). A folder whose names follow neither is read as
    Market-1501, whose reader then names the first bad file.
    """
    from tfmarket.data.cuhk03 import detect_cuhk03
    from tfmarket.data.custom import is_custom
    from tfmarket.data.msmt17 import is_msmt17

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if all((root / d).is_dir() for d in ORIGINAL_DIRS):
        first = _first_image_name(root / "bounding_box_train")
        if is_duke_name(first) or (not first and "duke" in root.name.lower()):
            return "dukemtmcreid"
        return "market1501"
    if (root / "train").is_dir() and (root / "annotations_train.csv").is_file():
        return "course"
    if is_msmt17(root):
        return "msmt17"
    cuhk03 = detect_cuhk03(root)
    if cuhk03:
        return cuhk03
    if is_custom(root):
        return "custom"
    found = sorted(p.name for p in root.iterdir())[:10]
    raise DataError(
        f"{root}: not a Market-1501 folder nor any other dataset tfmarket reads. Expected "
        f"{', '.join(ORIGINAL_DIRS)} (Market-1501 original or DukeMTMC-reID), train/ + "
        "annotations_train.csv (Market-1501 course), list_train.txt + list_query.txt + "
        "list_gallery.txt (MSMT17), cuhk03_new_protocol_config_*.mat + images_labeled/ or "
        "images_detected/ (CUHK03), or train.csv / train.txt / train/<identity>/ (custom; see "
        f"docs/datasets.md); found: {', '.join(found) or 'nothing'}{_subfolder_hint(root)}"
    )


def _subfolder_hint(root: Path) -> str:
    """A "did you mean ROOT/X?" suffix when a subfolder looks like a dataset (an archive's top
    folder, e.g. DukeMTMC-reID/ or MSMT17_V2/), else an empty string."""
    markers = ("bounding_box_train", "annotations_train.csv", "list_train.txt",
               "cuhk03_new_protocol_config_labeled.mat", "train.csv")
    try:
        subfolders = sorted(p for p in root.iterdir() if p.is_dir())[:50]
    except OSError:
        return ""
    for sub in subfolders:
        if any((sub / m).exists() for m in markers):
            return f" -- did you mean {sub}?"
    return ""


def load_dataset(root: str | Path, layout: str = "auto") -> ReidDataset:
    """Reads a dataset folder (``layout="auto"`` detects which dataset it holds).

    Args:
        root: the dataset folder (see ``docs/datasets.md`` for each dataset's layout).
        layout: ``"auto"`` or a dataset name from :data:`LAYOUTS` (``cuhk03`` = labeled).

    Raises:
        DataError: unknown name (the message lists the valid ones), or a missing/malformed file.
    """
    if layout not in ("auto", *LAYOUTS):
        raise DataError(
            f"unknown dataset (layout) {layout!r}; valid names: auto, {', '.join(LAYOUTS)}"
        )
    root = Path(root).expanduser().resolve()
    if layout == "auto":
        layout = detect_layout(root)
    elif not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    if layout == "market1501":
        return load_original(root)
    if layout == "course":
        return load_course(root)
    if layout == "dukemtmcreid":
        from tfmarket.data.duke import load_duke

        return load_duke(root)
    if layout == "msmt17":
        from tfmarket.data.msmt17 import load_msmt17

        return load_msmt17(root)
    if layout.startswith("cuhk03"):
        from tfmarket.data.cuhk03 import load_cuhk03

        return load_cuhk03(root, "detected" if layout == "cuhk03-detected" else "labeled")
    from tfmarket.data.custom import load_custom

    return load_custom(root)


# --- original layout -------------------------------------------------------------------------


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
