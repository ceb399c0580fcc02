"""Full decode of image files, listing every unreadable one by name (no TensorFlow needed)."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tfmarket.errors import DataError


def image_problem(path: str | Path) -> str | None:
    """None if the file decodes completely as an image, else a short reason."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()  # Pillow raises on truncated data here (LOAD_TRUNCATED_IMAGES is off)
            if image.width < 1 or image.height < 1:
                return "empty image"
    except FileNotFoundError:
        return "file not found"
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError ...
        return f"cannot decode: {exc}"
    return None


def find_unreadable(paths: Iterable[str | Path], threads: int = 4) -> list[tuple[str, str]]:
    """[(path, reason)] for every file that does not decode."""
    paths = [str(p) for p in paths]
    with ThreadPoolExecutor(threads) as pool:
        problems = list(pool.map(image_problem, paths, chunksize=64))
    return [(p, why) for p, why in zip(paths, problems, strict=True) if why]


def require_readable(paths: Iterable[str | Path], threads: int = 4) -> None:
    """Raises DataError naming the unreadable files (up to 10 of them)."""
    bad = find_unreadable(paths, threads)
    if bad:
        lines = "\n".join(f"  {p}: {why}" for p, why in bad[:10])
        more = f"\n  ... and {len(bad) - 10} more" if len(bad) > 10 else ""
        raise DataError(f"{len(bad)} unreadable image file(s):\n{lines}{more}")
