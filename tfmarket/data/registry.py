"""Every dataset tfmarket reads, by name: :func:`detect_layout` recognises which one a folder
holds, :func:`load_dataset` reads it with its reader (``tfmarket.data.market1501`` for both
Market-1501 layouts, ``duke``, ``msmt17``, ``cuhk03``, ``custom``; see ``docs/datasets.md``)
into a :class:`~tfmarket.data.records.ReidDataset`.
"""

from __future__ import annotations

import os
from pathlib import Path

from tfmarket.data.cuhk03 import detect_cuhk03, load_cuhk03
from tfmarket.data.custom import is_custom, load_custom
from tfmarket.data.duke import load_duke
from tfmarket.data.filenames import IMAGE_SUFFIXES, is_duke_name
from tfmarket.data.market1501 import ORIGINAL_DIRS, load_course, load_original
from tfmarket.data.msmt17 import is_msmt17, load_msmt17
from tfmarket.data.records import ReidDataset
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
        return load_duke(root)
    if layout == "msmt17":
        return load_msmt17(root)
    if layout.startswith("cuhk03"):
        return load_cuhk03(root, "detected" if layout == "cuhk03-detected" else "labeled")
    return load_custom(root)
