"""The shared types of every dataset reader: :class:`Records` (one split, parallel arrays) and
:class:`ReidDataset` (train + query + gallery), with the helpers that make and join them.

Attributes are stored per image in the dataset's own attribute schema and its annotation files'
encoding (``Records.schema``; Market-1501: :data:`tfmarket.attributes.MARKET`, 1 = no, 2 = yes,
age 1-4), with 0 where unknown (no annotation file, distractors, unlabelled splits).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from tfmarket.attributes import MARKET, AttributeSchema


@dataclasses.dataclass
class Records:
    """One split: parallel arrays, one entry per image.

    Attributes:
        paths: list[str] [N] absolute image paths.
        pids: int64 [N] dataset identity (0 = distractor; -1 where unlabelled).
        cams: int64 [N] camera number (-1 where unknown).
        attributes: int64 [N, len(schema.columns)] the dataset's attributes in its file encoding
            (Market-1501: [N, 27], 1 = no, 2 = yes, age 1-4; DukeMTMC-reID: [N, 23]); 0 =
            unknown; [N, 0] for a dataset without attributes.
        labelled: whether pids/cams are real labels.
        schema: the dataset's attribute schema (:mod:`tfmarket.attributes`): the columns of
            ``attributes`` and the model heads they train.
    """

    paths: list[str]
    pids: np.ndarray
    cams: np.ndarray
    attributes: np.ndarray
    labelled: bool = True
    schema: AttributeSchema = MARKET

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, mask_or_index: np.ndarray) -> Records:
        idx = np.asarray(mask_or_index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return Records(
            [self.paths[i] for i in idx],
            self.pids[idx],
            self.cams[idx],
            self.attributes[idx],
            self.labelled,
            self.schema,
        )

    @property
    def attribute_names(self) -> tuple[str, ...]:
        """The columns of ``attributes`` (the schema's file columns)."""
        return self.schema.columns

    @property
    def has_attributes(self) -> np.ndarray:
        """bool [N]: the image's identity has attribute annotations (never, without columns)."""
        if self.attributes.shape[1] == 0:
            return np.zeros(len(self), dtype=bool)
        return (self.attributes > 0).all(axis=1)


def concat_records(parts: list[Records], schema: AttributeSchema) -> Records:
    """The images of several splits in one, with ``schema``'s columns: a part in another schema
    contributes its images with every attribute unknown (0)."""
    width = len(schema.columns)
    attributes = [p.attributes if p.schema == schema
                  else np.zeros((len(p), width), np.int64) for p in parts]
    return Records(
        [path for p in parts for path in p.paths],
        np.concatenate([p.pids for p in parts]).astype(np.int64),
        np.concatenate([p.cams for p in parts]).astype(np.int64),
        np.concatenate(attributes).reshape(-1, width).astype(np.int64),
        all(p.labelled for p in parts),
        schema,
    )


@dataclasses.dataclass
class ReidDataset:
    """A whole dataset: training images plus a query/gallery evaluation pair.

    Attributes:
        layout: the dataset name (one of :data:`LAYOUTS`; ``cuhk03`` for both CUHK03 variants).
        variant: ``V1``/``V2`` (MSMT17), ``labeled``/``detected`` (CUHK03), else "".
        sources: where each split comes from (folder or list file), for summaries; None = the
            Market-1501 folder names.
    """

    layout: str
    root: Path
    train: Records
    query: Records
    gallery: Records
    variant: str = ""
    sources: dict[str, str] | None = None

    def splits(self) -> dict[str, Records]:
        return {"train": self.train, "query": self.query, "gallery": self.gallery}

    @property
    def schema(self) -> AttributeSchema:
        """The dataset's attribute schema (every split has the same)."""
        return self.train.schema


def make_records(paths, pids, cams, attributes=None, labelled=True,
                 schema: AttributeSchema = MARKET) -> Records:
    """Records from lists; ``attributes=None`` = every attribute of ``schema`` unknown (0)."""
    n = len(paths)
    width = len(schema.columns)
    if attributes is None:
        attributes = np.zeros((n, width), dtype=np.int64)
    return Records(
        [str(p) for p in paths],
        np.asarray(pids, dtype=np.int64).reshape(n),
        np.asarray(cams, dtype=np.int64).reshape(n),
        np.asarray(attributes, dtype=np.int64).reshape(n, width),
        labelled,
        schema,
    )
