"""File-name conventions of the two Market-1501 layouts.

* Original: ``PPPP_cCsS_FFFFFF_BB.jpg`` -- identity (``0000`` = distractor, ``-1`` = junk),
  camera C, sequence S, frame, bounding box.
* Course training: ``PPPP_cC_NNNNNNNNN.jpg`` -- identity, camera, frame.
* Course test/queries: ``NNNNNN.jpg`` -- no label.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from tfmarket.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Files that real dataset archives carry and that are not images (Windows thumbnail caches,
# macOS metadata): skipped on purpose, everything else unexpected is an error.
IGNORED_FILES = frozenset({"thumbs.db", ".ds_store", "desktop.ini"})

_ORIGINAL = re.compile(r"^(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})$")
_COURSE_TRAIN = re.compile(r"^(\d{4})_c(\d)_(\d+)$")

JUNK_ID = -1
DISTRACTOR_ID = 0


class ParsedName(NamedTuple):
    pid: int
    camera: int


def parse_original(path: str | Path) -> ParsedName:
    """``0002_c1s1_000451_03.jpg`` -> (2, 1). Raises DataError naming the file."""
    match = _ORIGINAL.match(Path(path).stem)
    if not match:
        raise DataError(
            f"{path}: file name does not follow Market-1501's PPPP_cCsS_FFFFFF_BB.jpg pattern"
        )
    return ParsedName(int(match.group(1)), int(match.group(2)))


def parse_course_train(path: str | Path) -> ParsedName:
    """``0002_c1_016620005.jpg`` -> (2, 1). Raises DataError naming the file."""
    match = _COURSE_TRAIN.match(Path(path).stem)
    if not match:
        raise DataError(
            f"{path}: file name does not follow the course's PPPP_cC_NNNNNNNNN.jpg pattern"
        )
    return ParsedName(int(match.group(1)), int(match.group(2)))


def list_images(folder: str | Path) -> list[Path]:
    """Sorted image files of a folder.

    Skips ``IGNORED_FILES`` and hidden files; raises DataError for a missing folder, an empty
    one, or any other non-image file (a stray file is more often a mistake than intended).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    images, unexpected = [], []
    for entry in sorted(folder.iterdir()):
        name = entry.name
        if name.lower() in IGNORED_FILES or name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in IMAGE_SUFFIXES:
            images.append(entry)
        else:
            unexpected.append(entry)
    if unexpected:
        shown = ", ".join(str(p) for p in unexpected[:5])
        more = f" and {len(unexpected) - 5} more" if len(unexpected) > 5 else ""
        raise DataError(
            f"{folder}: not an image (expected {'/'.join(IMAGE_SUFFIXES)}): {shown}{more}"
        )
    if not images:
        raise DataError(f"{folder}: no images found")
    return images
