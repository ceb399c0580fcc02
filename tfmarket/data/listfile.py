"""Image list files (``relative/path.jpg pid [camera]`` per line) with one-line, named errors.

Used by the MSMT17 reader (``list_train.txt`` ...) and the custom-crops reader (``train.csv`` /
``train.txt``). Every problem is reported as ``<list file>: line <n>: <what is wrong>``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import NamedTuple

from tfmarket.data.filenames import IMAGE_SUFFIXES
from tfmarket.errors import DataError


class ListEntry(NamedTuple):
    """One line of a list file: its 1-based number, the image's path and the other fields."""

    line: int
    path: Path
    fields: tuple[str, ...]


def read_list(
    path: str | Path,
    base: str | Path,
    *,
    usage: str,
    min_fields: int,
    max_fields: int,
    csv_format: bool = False,
    header: str = "",
) -> list[ListEntry]:
    """Reads a list file; blank lines and lines starting with ``#`` are skipped.

    Args:
        path: the list file.
        base: folder that relative image paths are resolved against (absolute paths are kept).
        usage: what a line should look like, for error messages (``"path pid"``).
        min_fields, max_fields: allowed number of fields, the image path included.
        csv_format: comma-separated (quotes allowed) instead of whitespace-separated.
        header: if the first line's first field equals this (case-insensitive), it is a header.

    Raises:
        DataError: missing/unreadable file, wrong field count, no entries, not an image suffix.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: list file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not a readable text file ({exc})") from None
    base = Path(base)
    entries = []
    first = True
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if csv_format:
            try:
                fields = [f.strip() for f in next(csv.reader([line], skipinitialspace=True))]
            except csv.Error as exc:
                raise DataError(f"{path}: line {number}: not valid CSV ({exc})") from None
        else:
            fields = line.split()
        if first:
            first = False
            if header and fields and fields[0].lower() == header:
                continue
        if not min_fields <= len(fields) <= max_fields:
            raise DataError(
                f"{path}: line {number}: expected '{usage}', got {len(fields)} field(s): "
                f"{line.strip()!r}"
            )
        image = Path(fields[0])
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataError(
                f"{path}: line {number}: {fields[0]} is not an image "
                f"(expected {'/'.join(IMAGE_SUFFIXES)})"
            )
        entries.append(ListEntry(number, image if image.is_absolute() else base / image,
                                 tuple(fields[1:])))
    if not entries:
        raise DataError(f"{path}: no entries (expected lines like '{usage}')")
    return entries


def parse_int(list_path: Path, entry: ListEntry, value: str, what: str) -> int:
    """``value`` as an int; else DataError ``<list>: line <n>: <what> '<v>' is not an integer``."""
    try:
        return int(value)
    except ValueError:
        raise DataError(
            f"{list_path}: line {entry.line}: {what} {value!r} is not an integer"
        ) from None


def require_files(list_path: Path, entries: list[ListEntry]) -> None:
    """DataError naming the first listed image that does not exist (and how many are missing).

    Each folder is listed once (``os.listdir``), which is much faster than one ``stat`` per file
    for the 100,000 images of MSMT17.
    """
    listings: dict[Path, set[str]] = {}
    missing = []
    for entry in entries:
        folder = entry.path.parent
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder))
            except OSError:
                listings[folder] = set()
        if entry.path.name not in listings[folder]:
            missing.append(entry)
    if missing:
        first = missing[0]
        more = f" ({len(missing)} listed images missing)" if len(missing) > 1 else ""
        raise DataError(f"{list_path}: line {first.line}: {first.path} not found{more}")
