"""Ranking a gallery for each query with an exported ONNX model: what ``python -m
tfmarket.rank`` runs (see that command for the inputs, the rules and the files written).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tfmarket.errors import DataError, TfmarketError
from tfmarket.serving.npzfile import save_npz

TIMING_KEYS = ("embed_seconds", "images_per_second", "rank_seconds")  # printed, not in files


def _folder_records(folder: str):
    """Images of a plain folder; labelled when every name follows a Market-1501 pattern. No
    attribute labels (the ``none`` schema)."""
    from tfmarket.attributes import NO_ATTRIBUTES
    from tfmarket.data.filenames import JUNK_ID, list_images, parse_course_train, parse_original
    from tfmarket.data.records import Records

    paths = list_images(folder)
    labels = None
    for parse in (parse_original, parse_course_train):
        try:
            labels = [parse(p) for p in paths]
            break
        except DataError:
            continue
    n = len(paths)
    if labels is None:
        return Records([str(p) for p in paths], np.full(n, -1), np.full(n, -1),
                       np.zeros((n, 0), np.int64), labelled=False, schema=NO_ATTRIBUTES)
    keep = [i for i, (pid, _) in enumerate(labels) if pid != JUNK_ID]
    return Records([str(paths[i]) for i in keep],
                   np.array([labels[i][0] for i in keep], np.int64),
                   np.array([labels[i][1] for i in keep], np.int64),
                   np.zeros((len(keep), 0), np.int64), labelled=True, schema=NO_ATTRIBUTES)


def _attach_truth(root: Path, records, split: str):
    """Labels for course-layout folders from ``synthetic_truth.csv`` (generated data only)."""
    import pandas as pd

    from tfmarket.attributes import COLUMNS

    truth_file = root / "synthetic_truth.csv"
    if not truth_file.is_file():
        return records
    frame = pd.read_csv(truth_file, dtype={"file": str})
    frame = frame[frame["split"] == split].set_index("file")
    names = [Path(p).name for p in records.paths]
    missing = [n for n in names if n not in frame.index]
    if missing:
        raise DataError(f"{truth_file}: no labels for {missing[0]} ({len(missing)} missing)")
    rows = frame.loc[names]
    records.pids = rows["id"].to_numpy(np.int64)
    records.cams = rows["camera"].to_numpy(np.int64)
    records.attributes = rows[list(COLUMNS)].to_numpy(np.int64)
    records.labelled = True
    return records


def load_inputs(data: str | None = None, dataset: str = "auto", query: str | None = None,
                gallery: str | None = None):
    """The records to rank: a dataset's query and gallery (``data``, any dataset
    :func:`tfmarket.data.registry.load_dataset` reads; ``dataset`` forces one), or two folders.

    Returns:
        (query Records, gallery Records, one line saying where they come from).
    """
    from tfmarket.data.registry import load_dataset

    if data and (query or gallery):
        raise TfmarketError("give either --data or --query/--gallery, not both")
    if data:
        found = load_dataset(data, dataset or "auto")
        q, g = found.query, found.gallery
        if found.layout == "course":
            q = _attach_truth(found.root, q, "queries")
            g = _attach_truth(found.root, g, "test")
        if len(q) == 0:
            raise DataError(f"{data}: no query images")
        return q, g, f"{found.layout} layout at {found.root}"
    if not (query and gallery):
        raise TfmarketError("give --data ROOT, or both --query DIR and --gallery DIR")
    return _folder_records(query), _folder_records(gallery), "folders"


def rank(model: str | Path, out: str | Path, *, data: str | None = None, dataset: str = "auto",
         query: str | None = None, gallery: str | None = None, topk: int = 100,
         retrieval: str | None = None, rerank: bool = False, k1: int | None = None,
         k2: int | None = None, lambda_value: float | None = None, search: str = "exact",
         flip_test: bool = False, attribute_rule: str | None = None, batch_size: int = 64,
         threads: int = 0, visualize: int = 0, runtime: str = "auto") -> dict:
    """Ranks the gallery for each query with the exported ``model`` (an .onnx file) and writes
    ``rank``'s files into ``out``; returns the summary (``summary.json`` plus the timings).

    Every step goes through :class:`tfmarket.serving.predictor.ExportedModel`, the Python API:
    the same preprocessing, flip test, attribute rule and retrieval rule. The arguments are
    ``python -m tfmarket.rank``'s flags (see that command).
    """
    from tfmarket.data.check import require_readable
    from tfmarket.serving.predictor import (
        ExportedModel,
        resolve_attribute_rule,
        resolve_retrieval_rule,
    )
    from tfmarket.serving.submission import write_classification, write_reid

    out = Path(out)
    query_records, gallery_records, source = load_inputs(data, dataset, query, gallery)
    require_readable(query_records.paths + gallery_records.paths)
    rule, rule_file = resolve_attribute_rule(attribute_rule, Path(model))
    retrieval_rule, retrieval_file = resolve_retrieval_rule(
        retrieval, Path(model), rerank=rerank, k1=k1, k2=k2, lambda_value=lambda_value)
    if retrieval_rule.needs_distances and search != "exact":
        # Re-ranking and the attribute distance need the whole matrix; expansion alone works
        # with an index too.
        raise TfmarketError(
            f"--search {search} ranks embeddings with an index, but the retrieval rule "
            f"({retrieval_rule.describe()}{f', from {retrieval_file}' if retrieval_file else ''})"
            " needs the full distance matrix; use --search exact, or --retrieval plain")
    predictor = ExportedModel(model, flip_test=flip_test, threads=threads, attribute_rule=rule,
                              retrieval=retrieval_rule, runtime=runtime)
    schema = predictor.schema  # the model's attribute heads (its card's schema)
    heads = schema.head_sizes
    out.mkdir(parents=True, exist_ok=True)

    start = time.time()
    q_pred = predictor.predict(query_records.paths, batch_size=batch_size,
                               progress=f"embedding {len(query_records)} queries",
                               check_files=False)
    g_pred = predictor.predict(gallery_records.paths, batch_size=batch_size,
                               progress=f"embedding {len(gallery_records)} gallery images",
                               check_files=False)
    embed_seconds = time.time() - start
    topk = min(topk, len(gallery_records))

    start = time.time()
    ranking = predictor.rank(q_pred, g_pred, topk, search=search)
    rank_seconds = time.time() - start

    q_names, g_names = q_pred.names, g_pred.names
    write_reid(out / "reid_test.txt", q_names, g_names, ranking.indices)
    files = ["reid_test.txt"]
    q_columns = predictor.decide(q_pred, among=g_pred)
    g_columns = g_pred.columns
    if schema.heads:
        write_classification(out / "classification_test.csv", g_names, g_columns, schema)
        files.append("classification_test.csv")
    q_out, g_out = q_pred.outputs, g_pred.outputs
    save_npz(
        out / "embeddings.npz", compressed=True,
        query_files=np.array(query_records.paths), gallery_files=np.array(gallery_records.paths),
        query_embedding=q_out["embedding"], gallery_embedding=g_out["embedding"],
        query_attributes=q_columns, gallery_attributes=g_columns,
        **{f"query_prob_{h}": q_out[h] for h in heads},
        **{f"gallery_prob_{h}": g_out[h] for h in heads},
    )
    summary = {
        "source": source, "model": str(model), "providers": predictor.providers,
        "queries": len(query_records), "gallery": len(gallery_records), "topk": topk,
        "retrieval": retrieval_rule.describe()
        + (f" ({retrieval_file})" if retrieval_file else ""),
        "rerank": retrieval_rule.rerank,
        "search": "distance matrix" if retrieval_rule.needs_distances else search,
        "search_device": ranking.search_device, "flip_test": bool(flip_test),
        "attribute_rule": rule.describe() + (f" ({rule_file})" if rule_file else ""),
        "attribute_schema": schema.name,
        "embed_seconds": round(embed_seconds, 2),
        "images_per_second": round((len(query_records) + len(gallery_records))
                                   / max(embed_seconds, 1e-9), 1),
        "rank_seconds": round(rank_seconds, 2),
        "files": [*files, "embeddings.npz"],
    }
    if not schema.heads:
        summary["classification"] = ("no classification_test.csv: the model has no attribute "
                                     "heads (attribute schema 'none', re-ID only)")
    metrics = None
    if query_records.labelled and gallery_records.labelled:
        metrics = evaluate(query_records, gallery_records, ranking.query, ranking.gallery,
                           q_columns, g_columns, ranking.distmat, schema)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        summary["files"].append("metrics.json")
        summary["metrics"] = {k: metrics["reid"][k] for k in
                              ("mAP", "mAP_trapezoid", "mINP", "rank1", "rank5", "rank10")}
        if "attributes" in metrics:
            summary["metrics"].update(attr_mA=metrics["attributes"]["mA"],
                                      attr_accuracy=metrics["attributes"]["mean_accuracy"])
        if "attributes_not_scored" in metrics:
            summary["attributes_not_scored"] = metrics["attributes_not_scored"]
    if visualize:
        summary["visualization"] = write_report(out, query_records, gallery_records,
                                                ranking.indices, q_columns, metrics, visualize,
                                                schema)
    summary["files"].append("summary.json")
    # Without the timings, so the same model and data give byte-identical files.
    (out / "summary.json").write_text(json.dumps(
        {k: v for k, v in summary.items() if k not in TIMING_KEYS}, indent=2, default=float))
    return summary


def evaluate(query, gallery, q_out, g_out, q_columns, g_columns, distmat, schema) -> dict:
    """Market-1501 protocol on the ranking (for every dataset); attribute metrics on the images
    with labels, when the model's attribute ``schema`` is the dataset's."""
    from tfmarket.retrieval.attribute_metrics import attribute_metrics
    from tfmarket.retrieval.metrics import evaluate_from_features, evaluate_ranking

    ids = (query.pids, gallery.pids, query.cams, gallery.cams)
    if distmat is not None:
        reid = evaluate_ranking(distmat, *ids)
    else:
        reid = evaluate_from_features(q_out["embedding"], g_out["embedding"], *ids)
    result = {"reid": reid, "protocol": (
        "Market-1501: gallery images of the query's identity from the query's camera and junk "
        "(-1) ignored, distractors (0) are negatives; mAP = non-interpolated AP (torchreid), "
        "mAP_trapezoid = official MATLAB code")}
    if (query.cams < 0).any() or (gallery.cams < 0).any():
        result["protocol"] += "; an unknown camera (-1) is never the query's camera"
    known = np.concatenate([query.has_attributes, gallery.has_attributes])
    if not known.any():
        return result
    if schema != query.schema:
        result["attributes_not_scored"] = (
            f"the model's attribute schema ({schema.name}) is not the dataset's "
            f"({query.schema.name})")
        return result
    truth = np.concatenate([query.attributes, gallery.attributes])
    predicted = np.concatenate([q_columns, g_columns])[known]
    result["attributes"] = attribute_metrics(truth[known], predicted, schema.columns,
                                             schema.multiclass)
    return result


def _attribute_text(row, schema=None) -> str:
    """Short text of one query's predicted attributes for the HTML report."""
    from tfmarket.attributes import MARKET

    if schema is not None and schema != MARKET:
        return schema.describe_row(row)
    return _market_text(row)


def _market_text(row) -> str:
    from tfmarket.attributes import AGE_CLASSES, COLUMNS, LOWER_COLORS, UPPER_COLORS

    values = dict(zip(COLUMNS, row, strict=True))
    words = ["female" if values["gender"] == 2 else "male", AGE_CLASSES[values["age"] - 1]]
    words += [n for n in ("backpack", "bag", "handbag", "hat") if values[n] == 2]
    up = [c for c in UPPER_COLORS if values["up" + c] == 2]
    down = [c for c in LOWER_COLORS if values["down" + c] == 2]
    words.append(f"upper: {up[0] if up else '?'}")
    words.append(f"lower: {down[0] if down else '?'}")
    return ", ".join(words)


def write_report(out, query, gallery, indices, q_columns, metrics, count: int,
                 schema=None) -> dict:
    """``rank --visualize``: the HTML report of ``count`` queries' ranked lists (and the CMC
    plot when the labels are known)."""
    from tfmarket.retrieval.metrics import same_camera
    from tfmarket.serving.report import write_ranking_report

    correct = None
    if metrics is not None:
        g_pids, g_cams = gallery.pids, gallery.cams
        safe = np.maximum(indices, 0)
        same = g_pids[safe] == query.pids[:, None]
        # The metrics' rule: same identity from the same (known) camera, and junk, are ignored.
        ignored = (same & same_camera(query.cams[:, None], g_cams[safe])) | (g_pids[safe] == -1)
        correct = np.where(ignored, -1, same.astype(int))
    return write_ranking_report(
        out, query.paths, gallery.paths, indices, correct=correct,
        query_attributes=([_attribute_text(r, schema) for r in q_columns]
                          if q_columns.shape[1] else None), num_queries=count,
        topk=min(10, indices.shape[1]),
        cmc=metrics["reid"]["cmc"] if metrics else None,
    )
