"""MSMT17 (Wei et al., CVPR 2018), versions V1 and V2 (V2: faces blurred, other folder names).

Layout (ROOT is the ``MSMT17_V1`` or ``MSMT17_V2`` folder of the archive)::

    ROOT/train/0000/0000_000_01_0303morning_0015_0.jpg ...   V1 (V2: mask_train_v2/)
    ROOT/test/0000/...                                         V1 (V2: mask_test_v2/)
    ROOT/list_train.txt  list_val.txt                          paths relative to train/
    ROOT/list_query.txt  list_gallery.txt                      paths relative to test/

Each list line is ``relative/path.jpg pid``. The camera (1-15) is the third underscore field of
the file name (``..._01_...`` = camera 1).

Training set: ``list_train.txt`` **plus** ``list_val.txt`` (32,621 images of 1,041 identities,
the training set of the MSMT17 paper; torchreid and fast-reid add the val list only with
``combineall=True``, training on 30,248 images). ``load_msmt17(root, include_val=False)``
gives the train list alone.

Identity numbers are the lists' plus one: tfmarket reserves identity 0 for distractors, and
MSMT17 numbers its identities from 0. Training and test identities are separate people whose
numbers overlap (both start at 0); records of the two never meet, so this is harmless.
"""

from __future__ import annotations

from pathlib import Path

from tfmarket.attributes import NO_ATTRIBUTES
from tfmarket.data.filenames import msmt17_camera
from tfmarket.data.listfile import parse_int, read_list, require_files
from tfmarket.data.records import Records, ReidDataset, make_records
from tfmarket.errors import DataError

# version -> (training image folder, test image folder)
VERSIONS = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}
LISTS = ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
PID_OFFSET = 1


def is_msmt17(root: Path) -> bool:
    """ROOT holds MSMT17's list files (the image folders are checked when reading)."""
    return all((root / name).is_file() for name in ("list_train.txt", "list_query.txt",
                                                    "list_gallery.txt"))


def msmt17_version(root: Path) -> str:
    """``"V1"`` or ``"V2"`` from the image folders present; DataError if neither is."""
    for version, folders in VERSIONS.items():
        if all((root / f).is_dir() for f in folders):
            return version
    raise DataError(
        f"{root}: MSMT17 image folders not found: expected train/ + test/ (MSMT17_V1) or "
        f"mask_train_v2/ + mask_test_v2/ (MSMT17_V2)"
    )


def read_msmt17_list(list_path: Path, image_folder: Path) -> Records:
    """One list file (``relative/path.jpg pid`` per line) -> records; DataError names the line."""
    entries = read_list(list_path, image_folder, usage="relative/path.jpg pid",
                        min_fields=2, max_fields=2)
    pids, cams = [], []
    for entry in entries:
        pid = parse_int(list_path, entry, entry.fields[0], "identity")
        if pid < 0:
            raise DataError(f"{list_path}: line {entry.line}: identity {pid} is negative")
        try:
            cams.append(msmt17_camera(entry.path))
        except DataError as exc:
            raise DataError(f"{list_path}: line {entry.line}: {exc}") from None
        pids.append(pid + PID_OFFSET)
    require_files(list_path, entries)
    return make_records([e.path for e in entries], pids, cams, schema=NO_ATTRIBUTES)


def load_msmt17(root: str | Path, include_val: bool = True) -> ReidDataset:
    """Reads an MSMT17_V1 or MSMT17_V2 folder (see the module docstring)."""
    root = Path(root)
    for name in LISTS if include_val else (LISTS[0], *LISTS[2:]):
        if not (root / name).is_file():
            raise DataError(f"{root / name}: list file not found (MSMT17 layout)")
    version = msmt17_version(root)
    train_dir, test_dir = (root / f for f in VERSIONS[version])
    train = read_msmt17_list(root / "list_train.txt", train_dir)
    if include_val:
        val = read_msmt17_list(root / "list_val.txt", train_dir)
        train = make_records(train.paths + val.paths, [*train.pids, *val.pids],
                             [*train.cams, *val.cams], schema=NO_ATTRIBUTES)
    query = read_msmt17_list(root / "list_query.txt", test_dir)
    gallery = read_msmt17_list(root / "list_gallery.txt", test_dir)
    sources = {
        "train": "list_train+list_val" if include_val else "list_train.txt",
        "query": "list_query.txt",
        "gallery": "list_gallery.txt",
    }
    return ReidDataset("msmt17", root, train, query, gallery, variant=version, sources=sources)
