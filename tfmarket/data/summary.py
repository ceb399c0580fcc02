"""Dataset summary: dataset (layout) and, per split, image / identity / camera counts and
attributes."""

from __future__ import annotations

import numpy as np

from tfmarket.attributes import AttributeSchema
from tfmarket.data.records import Records, ReidDataset


def split_summary(records: Records) -> dict:
    """Counts for one split; identities/cameras are None when the split is unlabelled."""
    out: dict = {"images": len(records)}
    if records.labelled:
        pids = records.pids
        out["identities"] = int(len(np.unique(pids[pids > 0])))
        out["distractor_images"] = int((pids == 0).sum())
        cams, counts = np.unique(records.cams, return_counts=True)
        out["cameras"] = int(len(cams))
        out["images_per_camera"] = {f"c{int(c)}": int(n) for c, n in zip(cams, counts, strict=True)}
    else:
        out["identities"] = None
        out["cameras"] = None
    known = records.has_attributes
    out["attribute_coverage"] = float(known.mean()) if len(records) else 0.0
    if known.any():
        out.update(attribute_statistics(records.attributes[known], records.schema))
    return out


def attribute_statistics(attrs: np.ndarray, schema: AttributeSchema) -> dict:
    """Rates of the annotated rows ``attrs`` [N, columns] in ``schema``'s encoding: the share
    with no column of each group marked (``no_upper_color``), every yes/no column's positive
    rate, and each multi-class column's distribution (``age_distribution``)."""
    out: dict = {}
    for head in schema.heads:
        if head.kind == "group":
            index = [schema.columns.index(c) for c in head.columns]
            out[f"no_{head.name}"] = float((~(attrs[:, index] == 2).any(1)).mean())
    multiclass = schema.multiclass
    out["positive_rate"] = {
        name: float((attrs[:, i] == 2).mean())
        for i, name in enumerate(schema.columns) if name not in multiclass
    }
    for name, n_classes in multiclass.items():
        i = schema.columns.index(name)
        out[f"{name}_distribution"] = {
            str(a): float((attrs[:, i] == a).mean()) for a in range(1, n_classes + 1)
        }
    return out


def dataset_summary(dataset: ReidDataset) -> dict:
    if dataset.sources is not None:
        names = dataset.sources
    elif dataset.layout == "course":
        names = {"train": "train", "query": "queries", "gallery": "test"}
    else:
        names = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
    out = {"root": str(dataset.root), "layout": dataset.layout}
    if dataset.variant:
        out["variant"] = dataset.variant
    out["attribute_schema"] = dataset.schema.name
    out["splits"] = {
        key: {"folder": names[key], **split_summary(records)}
        for key, records in dataset.splits().items()
    }
    return out


def format_summary(summary: dict) -> str:
    """The summary as a table; the attrs column is the share of images with the dataset's own
    attributes annotated ("-" for a dataset without attributes)."""
    variant = f", {summary['variant']}" if summary.get("variant") else ""
    lines = [f"{summary['root']}  (layout: {summary['layout']}{variant})"]
    header = f"{'split':<8} {'folder':<20} {'images':>8} {'ids':>6} {'cams':>5} {'attrs':>6}"
    lines.append(header)
    for key, s in summary["splits"].items():
        ids = "-" if s["identities"] is None else s["identities"]
        cams = "-" if s["cameras"] is None else s["cameras"]
        coverage = (f"{s['attribute_coverage']:>6.0%}"
                    if summary.get("attribute_schema") != "none" else f"{'-':>6}")
        lines.append(
            f"{key:<8} {s['folder']:<20} {s['images']:>8} {ids:>6} {cams:>5} {coverage}"
        )
    return "\n".join(lines)
