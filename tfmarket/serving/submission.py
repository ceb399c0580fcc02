"""The course's submission files, written atomically and parsed back.

* ``reid_test.txt``: one line per query, ``query.jpg: g1.jpg, g2.jpg, ...`` best first.
* ``classification_test.csv``: ``id`` (image file name) then the model's attribute columns
  in the annotation file's order and encoding: Market-1501's 27 (1 = no, 2 = yes; age 1-4),
  the course's format, or another attribute schema's (DukeMTMC-reID: 23).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from tfmarket.attributes import MARKET, AttributeSchema
from tfmarket.errors import DataError


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write_reid(path: str | Path, query_names: list[str], gallery_names: list[str],
               topk_indices: np.ndarray) -> None:
    """``topk_indices`` int [N, k] gallery indices best first (-1 = no result, skipped)."""
    lines = []
    for name, row in zip(query_names, topk_indices, strict=True):
        ranked = ", ".join(gallery_names[i] for i in row if i >= 0)
        lines.append(f"{name}: {ranked}")
    _atomic_write(Path(path), "\n".join(lines) + "\n")


def read_reid(path: str | Path) -> dict[str, list[str]]:
    """Parses ``reid_test.txt`` back into {query: [gallery names]}; DataError on bad lines."""
    result = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        if ": " not in line and not line.rstrip().endswith(":"):
            raise DataError(f"{path}: line {number} is not 'query.jpg: g1.jpg, g2.jpg, ...'")
        query, _, ranked = line.partition(":")
        result[query.strip()] = [g.strip() for g in ranked.split(",") if g.strip()]
    return result


def write_classification(path: str | Path, names: list[str], columns: np.ndarray,
                         schema: AttributeSchema = MARKET) -> None:
    """``columns`` int [N, C] in ``schema``'s file order and encoding (Market-1501: C = 27),
    one row per image name."""
    columns = np.asarray(columns)
    width = len(schema.columns)
    if columns.shape != (len(names), width):
        raise ValueError(f"expected [{len(names)}, {width}] columns, got {columns.shape}")
    rows = ["id," + ",".join(schema.columns)]
    rows += [f"{n}," + ",".join(str(int(v)) for v in r) for n, r in zip(names, columns,
                                                                         strict=True)]
    _atomic_write(Path(path), "\n".join(rows) + "\n")


def read_classification(path: str | Path, schema: AttributeSchema = MARKET
                        ) -> tuple[list[str], np.ndarray]:
    """Parses ``classification_test.csv`` -> (names, int [N, C]), validating the encoding of
    ``schema`` (Market-1501: C = 27)."""
    import pandas as pd

    frame = pd.read_csv(path, dtype={"id": str})
    columns = list(schema.columns)
    if list(frame.columns) != ["id", *columns]:
        raise DataError(f"{path}: header is not id + the {len(columns)} attribute columns")
    values = frame[columns].to_numpy(np.int64)
    try:
        schema.columns_to_targets(values)
    except ValueError as exc:
        raise DataError(f"{path}: {exc}") from None
    return frame["id"].tolist(), values
