"""Your own crops: list files or one folder per identity (dataset name ``custom``).

Each split (``train``, ``query``, ``gallery``) is given in ROOT by one of, in this order:

* ``<split>.csv``: lines ``path,pid,camid`` (``camid`` may be left out or empty), an optional
  header line starting with ``path``;
* ``<split>.txt``: lines ``path pid [camid]`` separated by spaces (as MSMT17's lists);
* ``<split>/<pid>/*.jpg``: one folder per identity, named by its number; camera unknown.

A list file wins over a folder of the same name (which may hold the listed images).

Paths in a list are relative to the list file's folder (absolute paths work too); lines starting
with ``#`` are comments. ``train`` is required; ``query`` and ``gallery`` come together or not at
all (without them, validation holds identities out of training: ``data.validation=holdout``).

Labels follow Market-1501's conventions: ``pid`` is an integer identity, ``0`` a distractor (kept
in the gallery as a negative, left out of training) and ``-1`` junk (dropped). ``camid`` is an
integer camera (any numbering, >= 0), or ``-1``/missing for unknown.

How evaluation treats unknown cameras: the Market-1501 protocol discards, for each query, the
gallery images of the same identity *from the same camera*; a pair in which either camera is
``-1`` never counts as "same camera" (:mod:`tfmarket.retrieval.metrics`), so with no cameras at
all every gallery image of the query's identity is a true match. Give cameras where you know them: a
gallery shot from the query's own camera (often the next frames of the same track) makes
retrieval look easier than it is.
"""

from __future__ import annotations

from pathlib import Path

from tfmarket.attributes import NO_ATTRIBUTES
from tfmarket.data.filenames import DISTRACTOR_ID, JUNK_ID, list_images
from tfmarket.data.listfile import ListEntry, parse_int, read_list, require_files
from tfmarket.data.records import Records, ReidDataset, make_records
from tfmarket.errors import DataError

SPLITS = ("train", "query", "gallery")
UNKNOWN_CAMERA = -1


def _source(root: Path, split: str) -> Path | None:
    """The split's list file, else its folder, else None; DataError if both lists exist."""
    lists = [p for p in (root / f"{split}.csv", root / f"{split}.txt") if p.is_file()]
    if len(lists) > 1:
        raise DataError(f"{root}: {split} is given twice ({split}.csv and {split}.txt); keep one")
    if lists:
        return lists[0]  # a folder of the same name may hold the listed images
    return root / split if (root / split).is_dir() else None


def is_custom(root: Path) -> bool:
    """ROOT has ``train.csv``, ``train.txt`` or ``train/`` holding identity folders."""
    if (root / "train.csv").is_file() or (root / "train.txt").is_file():
        return True
    train = root / "train"
    if not train.is_dir():
        return False
    entries = [e for e in sorted(train.iterdir()) if not e.name.startswith(".")]
    return bool(entries) and entries[0].is_dir()


def _from_list(path: Path, train: bool) -> Records:
    csv_format = path.suffix == ".csv"
    usage = "path,pid,camid" if csv_format else "path pid [camid]"
    entries = read_list(path, path.parent, usage=usage, min_fields=2, max_fields=3,
                        csv_format=csv_format, header="path")
    kept: list[ListEntry] = []
    pids, cams = [], []
    for entry in entries:
        pid = parse_int(path, entry, entry.fields[0], "identity")
        camera = entry.fields[1] if len(entry.fields) > 1 and entry.fields[1] else "-1"
        cam = parse_int(path, entry, camera, "camera")
        if pid < JUNK_ID or cam < UNKNOWN_CAMERA:
            raise DataError(
                f"{path}: line {entry.line}: identity must be >= -1 (0 = distractor, -1 = junk) "
                f"and camera >= -1 (-1 = unknown), got {pid}, {cam}"
            )
        if pid == JUNK_ID or (train and pid == DISTRACTOR_ID):
            continue
        kept.append(entry)
        pids.append(pid)
        cams.append(cam)
    require_files(path, entries)
    return make_records([e.path for e in kept], pids, cams, schema=NO_ATTRIBUTES)


def _from_folders(folder: Path, train: bool) -> Records:
    paths, pids = [], []
    entries = [e for e in sorted(folder.iterdir()) if not e.name.startswith(".")]
    if not entries:
        raise DataError(f"{folder}: no identity folders found")
    for entry in entries:
        if not entry.is_dir():
            if entry.name.lower() in ("thumbs.db", "desktop.ini"):
                continue
            raise DataError(
                f"{entry}: not a folder; the custom layout expects one folder per identity "
                f"({folder.name}/<pid>/*.jpg) or a list file ({folder.name}.csv)"
            )
        try:
            pid = int(entry.name)
        except ValueError:
            raise DataError(
                f"{entry}: identity folder name is not an integer (0 = distractor, -1 = junk)"
            ) from None
        if pid < JUNK_ID:
            raise DataError(f"{entry}: identity must be >= -1, got {pid}")
        images = list_images(entry)
        if pid == JUNK_ID or (train and pid == DISTRACTOR_ID):
            continue
        paths += images
        pids += [pid] * len(images)
    return make_records(paths, pids, [UNKNOWN_CAMERA] * len(paths), schema=NO_ATTRIBUTES)


def _read_split(root: Path, split: str) -> tuple[Records | None, str]:
    source = _source(root, split)
    if source is None:
        return None, ""
    train = split == "train"
    records = _from_list(source, train) if source.is_file() else _from_folders(source, train)
    return records, source.name + ("/" if source.is_dir() else "")


def load_custom(root: str | Path) -> ReidDataset:
    """Reads a folder of your own crops (see the module docstring)."""
    root = Path(root)
    splits = {split: _read_split(root, split) for split in SPLITS}
    if splits["train"][0] is None:
        raise DataError(
            f"{root}: no training set: expected train.csv, train.txt or train/<pid>/ "
            "(custom layout, docs/datasets.md)"
        )
    has_query, has_gallery = (splits[s][0] is not None for s in ("query", "gallery"))
    if has_query != has_gallery:
        given, lacking = ("query", "gallery") if has_query else ("gallery", "query")
        raise DataError(
            f"{root}: {given} is given but {lacking} is not (give both {lacking}.csv / "
            f"{lacking}.txt / {lacking}/ and {given}, or neither)"
        )
    empty = make_records([], [], [], schema=NO_ATTRIBUTES)
    records = {s: r if r is not None else empty for s, (r, _) in splits.items()}
    sources = {s: name or "-" for s, (_, name) in splits.items()}
    return ReidDataset("custom", root, records["train"], records["query"], records["gallery"],
                       sources=sources)
