"""File-name conventions of the supported datasets.

* Market-1501 original: ``PPPP_cCsS_FFFFFF_BB.jpg`` -- identity (``0000`` = distractor, ``-1`` =
  junk), camera C, sequence S, frame, bounding box.
* Market-1501 course training: ``PPPP_cC_NNNNNNNNN.jpg`` -- identity, camera, frame.
* Course test/queries: ``NNNNNN.jpg`` -- no label.
* DukeMTMC-reID: ``PPPP_cC_fFFFFFFF.jpg`` -- identity, camera 1-8, ``f`` + 7-digit frame.
* MSMT17: ``PPPP_SSS_CC_<date><time>_FFFF_B[_ex].jpg`` -- identity, sequence, camera 01-15, the
  rest as the dataset writes it; only the camera is read from the name (the identity comes from
  the list files).
* CUHK03 (images extracted from ``cuhk-03.mat``, as torchreid names them):
  ``A_PPP_V_II.png`` -- camera pair 1-5, person within the pair, view 1-2, image 01-10.
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
_DUKE = re.compile(r"^(\d{4})_c([1-8])_f(\d{7})$")
_MSMT17 = re.compile(r"^(\d+)_(\d+)_(\d{2})_.+$")
_CUHK03 = re.compile(r"^([1-9])_(\d{3})_([12])_(\d{2})$")
MSMT17_CAMERAS = 15

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


def parse_duke(path: str | Path) -> ParsedName:
    """``0001_c2_f0046182.jpg`` -> (1, 2). Raises DataError naming the file."""
    match = _DUKE.match(Path(path).stem)
    if not match:
        raise DataError(
            f"{path}: file name does not follow DukeMTMC-reID's PPPP_cC_fFFFFFFF.jpg pattern "
            "(camera 1-8)"
        )
    return ParsedName(int(match.group(1)), int(match.group(2)))


def is_market_name(name: str) -> bool:
    """The file name (with or without suffix) follows Market-1501's original pattern."""
    return bool(_ORIGINAL.match(Path(name).stem))


def is_duke_name(name: str) -> bool:
    """The file name (with or without suffix) follows DukeMTMC-reID's pattern."""
    return bool(_DUKE.match(Path(name).stem))


def msmt17_camera(path: str | Path) -> int:
    """``0000_000_01_0303morning_0015_0.jpg`` -> 1: the third underscore field (01-15)."""
    match = _MSMT17.match(Path(path).stem)
    camera = int(match.group(3)) if match else 0
    if not 1 <= camera <= MSMT17_CAMERAS:
        raise DataError(
            f"{path}: file name does not follow MSMT17's PPPP_SSS_CC_....jpg pattern "
            f"(camera CC 01-{MSMT17_CAMERAS})"
        )
    return camera


class Cuhk03Name(NamedTuple):
    pair: int
    person: int
    view: int


def parse_cuhk03(path: str | Path) -> Cuhk03Name:
    """``1_001_2_07.png`` -> (pair 1, person 1, view 2). Raises DataError naming the file."""
    match = _CUHK03.match(Path(path).stem)
    if not match:
        raise DataError(
            f"{path}: file name does not follow CUHK03's A_PPP_V_II.png pattern "
            "(camera pair, person, view 1-2, image)"
        )
    return Cuhk03Name(int(match.group(1)), int(match.group(2)), int(match.group(3)))


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
