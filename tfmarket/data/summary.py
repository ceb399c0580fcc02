"""Dataset summary: dataset (layout) and, per split, image / identity / camera counts and
attributes."""

from __future__ import annotations

import numpy as np

from tfmarket.attributes import COLUMNS, UPPER_COLORS
from tfmarket.data.market1501 import Records, ReidDataset


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
    if records.extra_attributes is not None:
        annotated = (records.extra_attributes > 0).any(axis=1)
        out["extra_attributes"] = {
            "names": list(records.attribute_names),
            "coverage": float(annotated.mean()) if len(records) else 0.0,
        }
    if known.any():
        attrs = records.attributes[known]
        n_up = len(UPPER_COLORS)
        up = attrs[:, 10:10 + n_up] == 2
        down = attrs[:, 10 + n_up:] == 2
        out["no_upper_color"] = float((~up.any(1)).mean())
        out["no_lower_color"] = float((~down.any(1)).mean())
        out["positive_rate"] = {
            name: float((attrs[:, i] == 2).mean()) for i, name in enumerate(COLUMNS) if i > 0
        }
        out["age_distribution"] = {
            str(a): float((attrs[:, 0] == a).mean()) for a in (1, 2, 3, 4)
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
    out["splits"] = {
        key: {"folder": names[key], **split_summary(records)}
        for key, records in dataset.splits().items()
    }
    return out


def format_summary(summary: dict) -> str:
    """The summary as a table; the attrs column is the Market-1501 attribute coverage, or the
    dataset's own attributes' (DukeMTMC-reID) where it has those."""
    variant = f", {summary['variant']}" if summary.get("variant") else ""
    lines = [f"{summary['root']}  (layout: {summary['layout']}{variant})"]
    header = f"{'split':<8} {'folder':<20} {'images':>8} {'ids':>6} {'cams':>5} {'attrs':>6}"
    lines.append(header)
    for key, s in summary["splits"].items():
        ids = "-" if s["identities"] is None else s["identities"]
        cams = "-" if s["cameras"] is None else s["cameras"]
        coverage = s.get("extra_attributes", {}).get("coverage", s["attribute_coverage"])
        lines.append(
            f"{key:<8} {s['folder']:<20} {s['images']:>8} {ids:>6} {cams:>5} {coverage:>6.0%}"
        )
    return "\n".join(lines)
