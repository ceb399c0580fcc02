"""The 27 Market-1501 attributes: names, file encoding and model targets.

Annotation files (``annotations_train.csv``, ``market_attribute.mat``) store every
attribute as 1 = no, 2 = yes, except ``age`` (1-4 = young, teenager, adult, old).
The model predicts them as heads:

* ``age``: softmax over 4 classes.
* nine binary heads (``BINARY_ATTRIBUTES``): one sigmoid each.
* ``upper_color``: softmax over the 8 upper-body colours plus ``"none"`` (about 10% of
  identities have no colour marked; predicting ``none`` writes 1 in every colour column).
* ``lower_color``: softmax over the 9 lower-body colours plus ``"none"``.

This module is plain Python/NumPy so that CLIs can use it without importing TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

AGE_CLASSES = ("young", "teenager", "adult", "old")
BINARY_ATTRIBUTES = (
    "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender",
)
# What value 2 means for each binary attribute (1 means the opposite).
BINARY_MEANING = {
    "backpack": "carries a backpack",
    "bag": "carries a bag",
    "handbag": "carries a handbag",
    "clothes": "wears pants (1 = dress)",
    "down": "short lower-body clothing (1 = long)",
    "up": "short sleeves (1 = long)",
    "hair": "long hair (1 = short)",
    "hat": "wears a hat",
    "gender": "female (1 = male)",
}
UPPER_COLORS = ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
LOWER_COLORS = ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")
NO_COLOR = "none"

# The column order of the course's annotations_train.csv (after its leading "id").
COLUMNS = (
    ("age",)
    + BINARY_ATTRIBUTES
    + tuple("up" + c for c in UPPER_COLORS)
    + tuple("down" + c for c in LOWER_COLORS)
)
assert len(COLUMNS) == 27

# Model heads: name -> number of classes (1 = sigmoid).
HEADS: dict[str, int] = {
    "age": len(AGE_CLASSES),
    **{name: 1 for name in BINARY_ATTRIBUTES},
    "upper_color": len(UPPER_COLORS) + 1,
    "lower_color": len(LOWER_COLORS) + 1,
}


def head_classes(head: str) -> tuple[str, ...]:
    """Class names of a softmax head (``("no", "yes")`` for a sigmoid head)."""
    if head == "age":
        return AGE_CLASSES
    if head == "upper_color":
        return UPPER_COLORS + (NO_COLOR,)
    if head == "lower_color":
        return LOWER_COLORS + (NO_COLOR,)
    if head in BINARY_ATTRIBUTES:
        return ("no", "yes")
    raise KeyError(f"unknown attribute head {head!r}; valid heads: {', '.join(HEADS)}")


def columns_to_targets(columns: np.ndarray) -> dict[str, np.ndarray]:
    """Converts annotation-encoded rows to per-head integer targets.

    Args:
        columns: int array [N, 27] in ``COLUMNS`` order and file encoding (1/2, age 1-4).

    Returns:
        dict head -> int32 [N]: age 0-3; binary 0/1; colours 0..C-1, C = "none".

    Raises:
        ValueError: a value outside the encoding, or two colours marked for one row.
    """
    columns = np.asarray(columns)
    if columns.ndim != 2 or columns.shape[1] != len(COLUMNS):
        raise ValueError(f"expected [N, {len(COLUMNS)}] attribute columns, got {columns.shape}")
    age = columns[:, 0]
    if not np.isin(age, (1, 2, 3, 4)).all():
        raise ValueError(f"age must be 1-4, found {sorted(set(age.tolist()) - {1, 2, 3, 4})}")
    rest = columns[:, 1:]
    if not np.isin(rest, (1, 2)).all():
        raise ValueError("attribute columns other than age must be 1 (no) or 2 (yes)")
    targets = {"age": (age - 1).astype(np.int32)}
    for i, name in enumerate(BINARY_ATTRIBUTES):
        targets[name] = (columns[:, 1 + i] - 1).astype(np.int32)
    start = 1 + len(BINARY_ATTRIBUTES)
    for head, colors in (("upper_color", UPPER_COLORS), ("lower_color", LOWER_COLORS)):
        marked = columns[:, start:start + len(colors)] == 2
        if (marked.sum(axis=1) > 1).any():
            row = int(np.argmax(marked.sum(axis=1) > 1))
            raise ValueError(f"row {row} marks more than one {head.replace('_', ' ')}")
        targets[head] = np.where(marked.any(axis=1), marked.argmax(axis=1), len(colors)).astype(
            np.int32
        )
        start += len(colors)
    return targets


def targets_to_columns(targets: Mapping[str, np.ndarray]) -> np.ndarray:
    """Inverse of :func:`columns_to_targets`: head class indices -> int [N, 27] file encoding."""
    n = len(np.asarray(targets["age"]))
    out = np.ones((n, len(COLUMNS)), dtype=np.int64)
    out[:, 0] = np.asarray(targets["age"]) + 1
    for i, name in enumerate(BINARY_ATTRIBUTES):
        out[:, 1 + i] = np.asarray(targets[name]) + 1
    start = 1 + len(BINARY_ATTRIBUTES)
    for head, colors in (("upper_color", UPPER_COLORS), ("lower_color", LOWER_COLORS)):
        idx = np.asarray(targets[head])
        for c in range(len(colors)):
            out[:, start + c] = np.where(idx == c, 2, 1)
        start += len(colors)
    return out


def probabilities_to_targets(
    probs: Mapping[str, np.ndarray], threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """Model outputs -> per-head class indices.

    Args:
        probs: head -> float [N, C] softmax probabilities, or [N] / [N, 1] sigmoid ones.
        threshold: decision threshold for the sigmoid heads.
    """
    out = {}
    for head, n_classes in HEADS.items():
        p = np.asarray(probs[head])
        if n_classes == 1:
            out[head] = (p.reshape(-1) >= threshold).astype(np.int32)
        else:
            out[head] = p.argmax(axis=-1).astype(np.int32)
    return out


def predicted_columns(probs: Mapping[str, np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """Model probabilities (head -> [N, C] or [N, 1]) -> int [N, 27] in file encoding."""
    return targets_to_columns(probabilities_to_targets(probs, threshold))
