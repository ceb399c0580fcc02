"""The data a run trains on: the training split (of ``data.root`` and any ``data.extra_roots``),
its identity labels and attribute targets, and the validation split. Reads folders and arrays
only: no TensorFlow (``tfmarket.adapt`` checks its inputs with it before TensorFlow loads).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfmarket.attributes import MARKET, AttributeSchema
from tfmarket.data.records import Records, concat_records
from tfmarket.errors import DataError

# Identities of the n-th dataset of data.extra_roots are offset by n x this (identity 23 of the
# first extra dataset trains as 100023), so datasets never share an identity.
EXTRA_PID_OFFSET = 100_000


@dataclass(frozen=True)
class TrainingData:
    """The training split, its labels and targets, and the validation split.

    ``records`` and the per-image arrays are parallel, N = ``len(records)`` training images.
    """

    records: Records  # the training images
    labels: np.ndarray  # int64 [N]: identity label 0..num_identities-1 of each image
    identities: np.ndarray  # int64 [num_identities]: dataset pid of each label
    targets: dict[str, np.ndarray]  # attribute head -> int32 [N], -1 where not annotated
    val_query: Records
    val_gallery: Records
    validation: str = "holdout"  # what val_query/val_gallery are: holdout | official | none
    validation_reason: str = ""  # why (what data.validation: auto chose), one line
    schema: AttributeSchema = MARKET  # the attribute heads: data.root's dataset's schema
    # One entry per dataset trained on (data.root, then data.extra_roots): root, layout,
    # attribute schema, identity offset, images, identities, whether it trains the attributes.
    datasets: tuple[dict, ...] = ()


def load_training_data(data_cfg, workdir: Path) -> TrainingData:
    """Reads the dataset (generating a synthetic one in ``workdir/synthetic`` when
    ``data_cfg.root`` is empty), chooses the validation set (``data_cfg.validation``, see
    :func:`tfmarket.data.split.validation_split`) and labels the training identities.

    ``data_cfg.extra_roots`` add further datasets' training images (identities offset by
    :data:`EXTRA_PID_OFFSET` per dataset, so they stay apart). The run's attribute schema is
    ``data_cfg.root``'s; an extra dataset with the same schema trains the attribute heads too,
    one with another schema (or none) trains re-ID only (its attribute targets are -1, which the
    losses ignore). Validation comes from ``data_cfg.root`` alone.
    """
    from tfmarket.config import dataset_name
    from tfmarket.data.check import require_readable
    from tfmarket.data.registry import load_dataset
    from tfmarket.data.split import relabel, resolve_validation, validation_split

    root = data_cfg.root
    if not root:
        from tfmarket.data.synthetic import write_synthetic

        root = workdir / "synthetic"
        if not root.is_dir():
            write_synthetic(root, layout="course", num_train_ids=data_cfg.synth_train_ids,
                            num_test_ids=data_cfg.synth_test_ids,
                            images_per_id=data_cfg.synth_images_per_id, seed=data_cfg.seed)
    dataset = load_dataset(root, dataset_name(data_cfg))
    require_readable(dataset.train.paths)
    validation, reason = resolve_validation(data_cfg.validation, dataset)
    train, val_query, val_gallery = validation_split(dataset, validation, data_cfg.val_ids,
                                                     data_cfg.seed)
    if validation == "official":
        require_readable(val_query.paths + val_gallery.paths)
    schema = dataset.schema
    datasets = [_dataset_entry(dataset, train, 0, schema)]
    parts = [train]
    for n, extra_root in enumerate(data_cfg.extra_roots, 1):
        extra = load_dataset(extra_root, "auto")
        require_readable(extra.train.paths)
        shifted = extra.train.subset(np.arange(len(extra.train)))
        shifted.pids = shifted.pids + n * EXTRA_PID_OFFSET
        parts.append(shifted)
        datasets.append(_dataset_entry(extra, shifted, n * EXTRA_PID_OFFSET, schema))
    if len(parts) > 1:
        for part, entry in zip(parts, datasets, strict=True):
            if len(part) and part.pids.max() - entry["pid_offset"] >= EXTRA_PID_OFFSET:
                raise DataError(
                    f"{entry['root']}: identity numbers reach "
                    f"{part.pids.max() - entry['pid_offset']}; data.extra_roots keeps datasets "
                    f"apart by adding multiples of {EXTRA_PID_OFFSET}, so identities must stay "
                    "below it")
        train = concat_records(parts, schema)
    labels, identities = relabel(train.pids)
    return TrainingData(records=train, labels=labels, identities=identities,
                        targets=attribute_targets(train), val_query=val_query,
                        val_gallery=val_gallery, validation=validation,
                        validation_reason=reason, schema=schema, datasets=tuple(datasets))


def _dataset_entry(dataset, train: Records, offset: int, schema: AttributeSchema) -> dict:
    """What metrics.json records of one dataset a run trains on."""
    return {"root": str(dataset.root), "layout": dataset.layout,
            "attribute_schema": dataset.schema.name, "pid_offset": offset,
            "images": len(train), "identities": int(len(np.unique(train.pids))),
            "trains_attributes": bool(schema.heads) and dataset.schema == schema}


def attribute_targets(records, schema: AttributeSchema | None = None):
    """Per-head int32 targets [N] of ``schema``'s heads (default: the records' own schema);
    -1 where the image's identity has no annotation."""
    schema = records.schema if schema is None else schema
    targets = {h: np.full(len(records), -1, np.int32) for h in schema.head_sizes}
    if records.schema != schema:
        return targets  # another dataset's attributes: none of these heads is known
    known = records.has_attributes
    if known.any():
        for head, values in schema.columns_to_targets(records.attributes[known]).items():
            targets[head][known] = values
    return targets
