"""Attribute schemas: a dataset's attribute columns, their file encoding and the model's heads.

An :class:`AttributeSchema` names a dataset's attribute columns in its annotation file's order
and encoding, and the model heads built from them:

* ``binary`` heads: one column, 1 = no, 2 = yes; one sigmoid output.
* ``multiclass`` heads: one column holding 1..C (Market-1501's ``age``: 1-4 = young, teenager,
  adult, old); a softmax over C classes.
* ``group`` heads: C yes/no columns of which at most one is 2 (the colour columns); a softmax
  over the C values plus ``"none"`` (no column marked: about 10% of Market-1501's identities;
  predicting ``none`` writes 1 in every column of the group).

0 means unknown everywhere. Schemas: :data:`MARKET` (Market-1501's 27 attributes, both
layouts; the default everywhere), :data:`DUKE` (DukeMTMC-reID's 23) and :data:`NO_ATTRIBUTES`
(MSMT17, CUHK03, custom crops: re-ID only, no heads). A schema travels with the data
(``Records.schema``), the run (``schema.json``) and the export (``model_card.json``), so a model
knows its heads and the columns it writes.

The module-level functions (:func:`columns_to_targets`, :func:`predicted_columns`, ...) and
:data:`HEADS` / :data:`COLUMNS` are :data:`MARKET`'s, as before schemas existed.

This module is plain Python/NumPy so that CLIs can use it without importing TensorFlow.
"""

from __future__ import annotations

import dataclasses
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

# DukeMTMC-reID's 23 attributes (Lin et al. 2019), in the order of duke_attribute.mat's train
# struct (tfmarket.data.duke reads them by name).
DUKE_BINARY = ("backpack", "bag", "handbag", "boots", "gender", "hat", "shoes", "top")
DUKE_UPPER_COLORS = ("black", "white", "red", "purple", "gray", "blue", "green", "brown")
DUKE_LOWER_COLORS = ("black", "white", "red", "gray", "blue", "green", "brown")
DUKE_COLUMNS = (
    DUKE_BINARY
    + tuple("down" + c for c in DUKE_LOWER_COLORS)
    + tuple("up" + c for c in DUKE_UPPER_COLORS)
)
assert len(DUKE_COLUMNS) == 23

HEAD_KINDS = ("binary", "multiclass", "group")


@dataclasses.dataclass(frozen=True)
class Head:
    """One model head and the file columns it reads and writes.

    Attributes:
        name: the model output's name.
        kind: ``binary`` (one 1/2 column, sigmoid), ``multiclass`` (one column holding 1..C,
            softmax) or ``group`` (C 1/2 columns, at most one 2; softmax over C + "none").
        columns: the file columns, in the head's class order for a group.
        classes: class names (``("no", "yes")`` for a binary head; a group's end with "none").
    """

    name: str
    kind: str
    columns: tuple[str, ...]
    classes: tuple[str, ...]

    @property
    def outputs(self) -> int:
        """Width of the head's output: 1 (sigmoid) or the number of classes (softmax)."""
        return 1 if self.kind == "binary" else len(self.classes)

    @property
    def activation(self) -> str:
        return "sigmoid" if self.kind == "binary" else "softmax"


def binary_head(column: str) -> Head:
    return Head(column, "binary", (column,), ("no", "yes"))


def multiclass_head(column: str, classes: tuple[str, ...]) -> Head:
    return Head(column, "multiclass", (column,), tuple(classes))


def group_head(name: str, prefix: str, values: tuple[str, ...]) -> Head:
    return Head(name, "group", tuple(prefix + v for v in values), tuple(values) + (NO_COLOR,))


@dataclasses.dataclass(frozen=True)
class AttributeSchema:
    """A dataset's attribute columns (file order and encoding) and the heads built from them.

    Attributes:
        name: short name (``market1501``, ``dukemtmcreid``, ``none``).
        columns: the file columns, in the annotation file's order.
        heads: the model heads, in output order; together they use every column once.
        strict_groups: a row marking two columns of one group is an error (True, Market-1501:
            its files never do) or leaves that head's target unknown (-1) for the row (False).
        encoding: one line describing the file encoding (for model cards).
    """

    name: str
    columns: tuple[str, ...]
    heads: tuple[Head, ...]
    strict_groups: bool = True
    encoding: str = ""

    def __post_init__(self):
        used = [c for h in self.heads for c in h.columns]
        if sorted(used) != sorted(self.columns) or len(set(used)) != len(used):
            raise ValueError(f"attribute schema {self.name!r}: its heads must use every column "
                             f"exactly once (columns {list(self.columns)}, heads use {used})")
        for h in self.heads:
            if h.kind not in HEAD_KINDS:
                raise ValueError(f"attribute schema {self.name!r}: head {h.name!r} has kind "
                                 f"{h.kind!r}; valid: {', '.join(HEAD_KINDS)}")
        if len({h.name for h in self.heads}) != len(self.heads):
            raise ValueError(f"attribute schema {self.name!r}: two heads share a name")

    # --- description ---

    @property
    def head_sizes(self) -> dict[str, int]:
        """head name -> output width (1 = sigmoid), in output order (Market: :data:`HEADS`)."""
        return {h.name: h.outputs for h in self.heads}

    @property
    def multiclass(self) -> dict[str, int]:
        """column -> number of classes, for the columns holding 1..C (Market: ``{"age": 4}``)."""
        return {h.columns[0]: len(h.classes) for h in self.heads if h.kind == "multiclass"}

    def head(self, name: str) -> Head:
        for h in self.heads:
            if h.name == name:
                return h
        raise KeyError(f"unknown attribute head {name!r}; valid heads: "
                       f"{', '.join(h.name for h in self.heads) or 'none (re-ID only)'}")

    def head_classes(self, name: str) -> tuple[str, ...]:
        """Class names of a softmax head (``("no", "yes")`` for a sigmoid head)."""
        return self.head(name).classes

    def _index(self, head: Head) -> list[int]:
        return [self.columns.index(c) for c in head.columns]

    # --- conversions ---

    def columns_to_targets(self, columns: np.ndarray) -> dict[str, np.ndarray]:
        """Converts annotation-encoded rows to per-head integer targets.

        Args:
            columns: int array [N, len(columns)] in file order and encoding, every row known.

        Returns:
            dict head -> int32 [N]: binary 0/1; multiclass 0..C-1; group 0..C-1, C = "none",
            -1 where a non-strict group marks two columns.

        Raises:
            ValueError: a value outside the encoding, or (``strict_groups``) two columns of a
                group marked in one row.
        """
        columns = np.asarray(columns)
        if columns.ndim != 2 or columns.shape[1] != len(self.columns):
            raise ValueError(f"expected [N, {len(self.columns)}] attribute columns, "
                             f"got {columns.shape}")
        multiclass = [h for h in self.heads if h.kind == "multiclass"]
        for h in multiclass:
            values = columns[:, self.columns.index(h.columns[0])]
            allowed = tuple(range(1, len(h.classes) + 1))
            if not np.isin(values, allowed).all():
                raise ValueError(f"{h.columns[0]} must be 1-{len(h.classes)}, found "
                                 f"{sorted(set(values.tolist()) - set(allowed))}")
        others = [i for i, c in enumerate(self.columns)
                  if c not in {h.columns[0] for h in multiclass}]
        if not np.isin(columns[:, others], (1, 2)).all():
            besides = " other than " + ", ".join(h.columns[0] for h in multiclass) \
                if multiclass else ""
            raise ValueError(f"attribute columns{besides} must be 1 (no) or 2 (yes)")
        targets = {}
        for h in self.heads:
            index = self._index(h)
            if h.kind != "group":
                targets[h.name] = (columns[:, index[0]] - 1).astype(np.int32)
                continue
            marked = columns[:, index] == 2
            several = marked.sum(axis=1) > 1
            if several.any() and self.strict_groups:
                row = int(np.argmax(several))
                raise ValueError(f"row {row} marks more than one {h.name.replace('_', ' ')}")
            value = np.where(marked.any(axis=1), marked.argmax(axis=1), len(h.columns))
            targets[h.name] = np.where(several, -1, value).astype(np.int32)
        return targets

    def targets_to_columns(self, targets: Mapping[str, np.ndarray]) -> np.ndarray:
        """Inverse of :meth:`columns_to_targets`: head class indices -> int [N, columns]."""
        n = len(np.asarray(targets[self.heads[0].name])) if self.heads else 0
        out = np.ones((n, len(self.columns)), dtype=np.int64)
        for h in self.heads:
            index = self._index(h)
            value = np.asarray(targets[h.name])
            if h.kind != "group":
                out[:, index[0]] = value + 1
                continue
            for c, column in enumerate(index):
                out[:, column] = np.where(value == c, 2, 1)
        return out

    def probabilities_to_targets(self, probs: Mapping[str, np.ndarray],
                                 threshold: float = 0.5) -> dict[str, np.ndarray]:
        """Model outputs -> per-head class indices.

        Args:
            probs: head -> float [N, C] softmax probabilities, or [N] / [N, 1] sigmoid ones.
            threshold: decision threshold for the sigmoid heads.
        """
        out = {}
        for h in self.heads:
            p = np.asarray(probs[h.name])
            if h.kind == "binary":
                out[h.name] = (p.reshape(-1) >= threshold).astype(np.int32)
            else:
                out[h.name] = p.argmax(axis=-1).astype(np.int32)
        return out

    def predicted_columns(self, probs: Mapping[str, np.ndarray],
                          threshold: float = 0.5) -> np.ndarray:
        """Model probabilities (head -> [N, C] or [N, 1]) -> int [N, columns] in file
        encoding (int [N, 0] for a schema without heads)."""
        if not self.heads:
            n = len(next(iter(probs.values()))) if probs else 0
            return np.ones((n, 0), dtype=np.int64)
        return self.targets_to_columns(self.probabilities_to_targets(probs, threshold))

    def describe_row(self, row) -> str:
        """One annotation-encoded row as short text, e.g. ``backpack, upper_color: red``."""
        words = []
        for h in self.heads:
            values = [int(row[i]) for i in self._index(h)]
            if h.kind == "binary":
                if values[0] == 2:
                    words.append(h.name)
            elif h.kind == "multiclass":
                if 1 <= values[0] <= len(h.classes):
                    words.append(h.classes[values[0] - 1])
            else:
                marked = [h.classes[i] for i, v in enumerate(values) if v == 2]
                words.append(f"{h.name}: {marked[0] if marked else '?'}")
        return ", ".join(words)

    # --- serialisation ---

    def to_dict(self) -> dict:
        """A JSON-able dict; :meth:`from_dict` reads it back."""
        return {
            "name": self.name,
            "columns": list(self.columns),
            "heads": [{"name": h.name, "kind": h.kind, "columns": list(h.columns),
                       "classes": list(h.classes)} for h in self.heads],
            "strict_groups": self.strict_groups,
            "encoding": self.encoding,
        }

    @classmethod
    def from_dict(cls, raw: Mapping) -> AttributeSchema:
        """The schema :meth:`to_dict` wrote; ValueError naming what is wrong."""
        try:
            heads = tuple(Head(str(h["name"]), str(h["kind"]), tuple(map(str, h["columns"])),
                               tuple(map(str, h["classes"]))) for h in raw["heads"])
            return cls(str(raw["name"]), tuple(map(str, raw["columns"])), heads,
                       bool(raw.get("strict_groups", True)), str(raw.get("encoding", "")))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an attribute schema (missing or malformed {exc})") from None


MARKET = AttributeSchema(
    "market1501",
    COLUMNS,
    (multiclass_head("age", AGE_CLASSES),
     *(binary_head(c) for c in BINARY_ATTRIBUTES),
     group_head("upper_color", "up", UPPER_COLORS),
     group_head("lower_color", "down", LOWER_COLORS)),
    strict_groups=True,
    encoding="annotation files: 1 = no, 2 = yes; age 1-4 = young, teenager, adult, old; a "
             "colour head predicting 'none' writes 1 in every colour column",
)
DUKE = AttributeSchema(
    "dukemtmcreid",
    DUKE_COLUMNS,
    (*(binary_head(c) for c in DUKE_BINARY),
     group_head("upper_color", "up", DUKE_UPPER_COLORS),
     group_head("lower_color", "down", DUKE_LOWER_COLORS)),
    # The annotation's colour fields are separate yes/no questions; a row answering yes twice
    # in one group is left out of that head's loss instead of stopping training.
    strict_groups=False,
    encoding="duke_attribute.mat: 1 = no, 2 = yes (gender 2 = female, shoes 2 = light, top 2 = "
             "long upper-body clothing); a colour head predicting 'none' writes 1 in every "
             "colour column",
)
NO_ATTRIBUTES = AttributeSchema("none", (), (), encoding="no attributes (re-identification only)")
SCHEMAS = {s.name: s for s in (MARKET, DUKE, NO_ATTRIBUTES)}
# Dataset (layout) -> its attribute schema; any other dataset has none.
LAYOUT_SCHEMAS = {"market1501": MARKET, "course": MARKET, "dukemtmcreid": DUKE}


def schema_for_layout(layout: str) -> AttributeSchema:
    """The attribute schema of a dataset (:data:`NO_ATTRIBUTES` for those without any)."""
    return LAYOUT_SCHEMAS.get(layout, NO_ATTRIBUTES)


def schema_from_card(card: Mapping | None) -> AttributeSchema:
    """The schema a model card records; :data:`MARKET` for cards written before schemas (all
    of them had Market-1501's heads)."""
    raw = ((card or {}).get("attributes") or {}).get("schema")
    return AttributeSchema.from_dict(raw) if raw else MARKET


# --- Market-1501, as before schemas ----------------------------------------------------------

# Model heads: name -> number of classes (1 = sigmoid).
HEADS: dict[str, int] = MARKET.head_sizes


def head_classes(head: str) -> tuple[str, ...]:
    """Class names of a Market-1501 softmax head (``("no", "yes")`` for a sigmoid head)."""
    return MARKET.head_classes(head)


def columns_to_targets(columns: np.ndarray) -> dict[str, np.ndarray]:
    """Market-1501 rows [N, 27] -> per-head targets (:meth:`AttributeSchema.columns_to_targets`).

    Returns:
        dict head -> int32 [N]: age 0-3; binary 0/1; colours 0..C-1, C = "none".

    Raises:
        ValueError: a value outside the encoding, or two colours marked for one row.
    """
    return MARKET.columns_to_targets(columns)


def targets_to_columns(targets: Mapping[str, np.ndarray]) -> np.ndarray:
    """Inverse of :func:`columns_to_targets`: head class indices -> int [N, 27] file encoding."""
    return MARKET.targets_to_columns(targets)


def probabilities_to_targets(
    probs: Mapping[str, np.ndarray], threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """Market-1501 model outputs -> per-head class indices."""
    return MARKET.probabilities_to_targets(probs, threshold)


def predicted_columns(probs: Mapping[str, np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """Model probabilities (head -> [N, C] or [N, 1]) -> int [N, 27] in file encoding."""
    return MARKET.predicted_columns(probs, threshold)
