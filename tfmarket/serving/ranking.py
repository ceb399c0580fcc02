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


def load_inputs(args):
    """-> (query Records, gallery Records, description)."""
    from tfmarket.data.registry import load_dataset

    if args.data and (args.query or args.gallery):
        raise TfmarketError("give either --data or --query/--gallery, not both")
    if args.data:
        dataset = load_dataset(args.data, getattr(args, "dataset", None) or "auto")
        query, gallery = dataset.query, dataset.gallery
        if dataset.layout == "course":
            query = _attach_truth(dataset.root, query, "queries")
            gallery = _attach_truth(dataset.root, gallery, "test")
        if len(query) == 0:
            raise DataError(f"{args.data}: no query images")
        return query, gallery, f"{dataset.layout} layout at {dataset.root}"
    if not (args.query and args.gallery):
        raise TfmarketError("give --data ROOT, or both --query DIR and --gallery DIR")
    return _folder_records(args.query), _folder_records(args.gallery), "folders"


def rank(args) -> dict:
    from tfmarket.data.check import require_readable
    from tfmarket.serving.embed import OnnxEmbedder
    from tfmarket.serving.submission import write_classification, write_reid

    out = Path(args.out)
    query, gallery, source = load_inputs(args)
    require_readable(query.paths + gallery.paths)
    rule, rule_file = attribute_rule(args.attribute_rule, Path(args.model))
    retrieval, retrieval_file = retrieval_rule(args, Path(args.model))
    embedder = OnnxEmbedder(args.model, threads=args.threads, flip_test=args.flip_test)
    schema = embedder.schema  # the model's attribute heads (its card's schema)
    heads = schema.head_sizes
    out.mkdir(parents=True, exist_ok=True)

    start = time.time()
    q_out = embedder.embed_files(query.paths, args.batch_size, f"embedding {len(query)} queries")
    g_out = embedder.embed_files(gallery.paths, args.batch_size,
                                 f"embedding {len(gallery)} gallery images")
    embed_seconds = time.time() - start
    topk = min(args.topk, len(gallery))

    start = time.time()
    distmat = None
    search_device = "cpu"
    q_ranked, g_ranked = q_out, g_out
    if retrieval.needs_distances:
        from tfmarket.retrieval.retrieval_rule import distances
        from tfmarket.retrieval.search import topk_from_distances

        distmat = distances(q_out, g_out, retrieval, heads)
        indices, _ = topk_from_distances(distmat, topk)
    else:
        from tfmarket.retrieval.retrieval_rule import expand

        q_emb, g_emb = expand(q_out["embedding"], g_out["embedding"], retrieval.expansion_k,
                              retrieval.expansion_alpha)
        if args.search == "exact":
            from tfmarket.retrieval.search import cosine_topk

            indices, _ = cosine_topk(q_emb, g_emb, topk)
        else:
            from tfmarket.retrieval.search import build_faiss_index, faiss_topk, on_available_gpus

            index = build_faiss_index(g_emb, kind=args.search.split("-", 1)[1])
            index, search_device = on_available_gpus(index)
            indices, _ = faiss_topk(index, q_emb, topk)
        # Evaluation scores what was ranked: the expanded embeddings.
        q_ranked, g_ranked = {"embedding": q_emb}, {"embedding": g_emb}
    rank_seconds = time.time() - start

    q_names = [Path(p).name for p in query.paths]
    g_names = [Path(p).name for p in gallery.paths]
    write_reid(out / "reid_test.txt", q_names, g_names, indices)
    files = ["reid_test.txt"]
    if schema.heads:
        q_columns, g_columns = decide_attributes(q_out, g_out, rule, schema)
        write_classification(out / "classification_test.csv", g_names, g_columns, schema)
        files.append("classification_test.csv")
    else:
        q_columns = np.ones((len(query), 0), np.int64)
        g_columns = np.ones((len(gallery), 0), np.int64)
    save_npz(
        out / "embeddings.npz", compressed=True,
        query_files=np.array(query.paths), gallery_files=np.array(gallery.paths),
        query_embedding=q_out["embedding"], gallery_embedding=g_out["embedding"],
        query_attributes=q_columns, gallery_attributes=g_columns,
        **{f"query_prob_{h}": q_out[h] for h in heads},
        **{f"gallery_prob_{h}": g_out[h] for h in heads},
    )
    summary = {
        "source": source, "model": str(args.model), "providers": embedder.providers,
        "queries": len(query), "gallery": len(gallery), "topk": topk,
        "retrieval": retrieval.describe() + (f" ({retrieval_file})" if retrieval_file else ""),
        "rerank": retrieval.rerank,
        "search": "distance matrix" if retrieval.needs_distances else args.search,
        "search_device": search_device, "flip_test": bool(args.flip_test),
        "attribute_rule": rule.describe() + (f" ({rule_file})" if rule_file else ""),
        "attribute_schema": schema.name,
        "embed_seconds": round(embed_seconds, 2),
        "images_per_second": round((len(query) + len(gallery)) / max(embed_seconds, 1e-9), 1),
        "rank_seconds": round(rank_seconds, 2),
        "files": [*files, "embeddings.npz"],
    }
    if not schema.heads:
        summary["classification"] = ("no classification_test.csv: the model has no attribute "
                                     "heads (attribute schema 'none', re-ID only)")
    metrics = None
    if query.labelled and gallery.labelled:
        metrics = evaluate(query, gallery, q_ranked, g_ranked, q_columns, g_columns, distmat,
                           schema)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        summary["files"].append("metrics.json")
        summary["metrics"] = {k: metrics["reid"][k] for k in
                              ("mAP", "mAP_trapezoid", "mINP", "rank1", "rank5", "rank10")}
        if "attributes" in metrics:
            summary["metrics"].update(attr_mA=metrics["attributes"]["mA"],
                                      attr_accuracy=metrics["attributes"]["mean_accuracy"])
        if "attributes_not_scored" in metrics:
            summary["attributes_not_scored"] = metrics["attributes_not_scored"]
    if args.visualize:
        summary["visualization"] = visualize(out, query, gallery, indices, q_columns, metrics,
                                             args.visualize, schema)
    summary["files"].append("summary.json")
    # Without the timings, so the same model and data give byte-identical files.
    (out / "summary.json").write_text(json.dumps(
        {k: v for k, v in summary.items() if k not in TIMING_KEYS}, indent=2, default=float))
    return summary


def attribute_rule(choice: str | None, model: Path):
    """-> (AttributeRule, the file it came from or None) for ``--attribute-rule``."""
    from tfmarket.retrieval.attribute_rule import RULE_FILE, AttributeRule, load_rule

    if choice == "plain":
        return AttributeRule(), None
    path = Path(choice) if choice else model.parent / RULE_FILE
    if choice is None and not path.is_file():
        return AttributeRule(), None
    return load_rule(path), path


def retrieval_rule(args, model: Path):
    """-> (RetrievalRule, the file it came from or None) for ``--retrieval`` / ``--rerank``.

    The rule needs the full distance matrix when it re-ranks or adds attribute distances, so
    it refuses a faiss ``--search`` (expansion alone works with either).
    """
    from dataclasses import replace

    from tfmarket.retrieval.retrieval_rule import RULE_FILE, RetrievalRule, load_rule

    choice = args.retrieval
    path = None if choice == "plain" else Path(choice) if choice else model.parent / RULE_FILE
    if path is not None and choice is None and not path.is_file():
        path = None
    rule = load_rule(path) if path is not None else RetrievalRule()
    if args.rerank or any(v is not None for v in (args.k1, args.k2, args.lambda_value)):
        rule = replace(rule, rerank=rule.rerank or args.rerank,
                       k1=args.k1 if args.k1 is not None else rule.k1,
                       k2=args.k2 if args.k2 is not None else rule.k2,
                       lambda_value=(args.lambda_value if args.lambda_value is not None
                                     else rule.lambda_value))
    if rule.needs_distances and args.search != "exact":
        raise TfmarketError(
            f"--search {args.search} ranks embeddings with an index, but the retrieval rule "
            f"({rule.describe()}{f', from {path}' if path else ''}) needs the full distance "
            "matrix; use --search exact, or --retrieval plain")
    return rule, path


def decide_attributes(q_out: dict, g_out: dict, rule,
                      schema=None) -> tuple[np.ndarray, np.ndarray]:
    """Query and gallery attribute columns (int [Nq, C], [Ng, C]; C = 27 for Market-1501) of
    the model's attribute ``schema`` (default Market-1501's).

    Gallery images vote among the gallery (the course's test folder also holds every query
    image, so a query + gallery pool would count those images twice); queries vote among the
    queries and the gallery together.
    """
    from tfmarket.attributes import MARKET
    from tfmarket.retrieval.attribute_rule import decide, nearest_neighbours

    schema = MARKET if schema is None else schema
    heads = schema.head_sizes
    q_probs = {h: q_out[h] for h in heads}
    g_probs = {h: g_out[h] for h in heads}
    if rule.neighbours == 1:
        return decide(q_probs, rule, schema=schema), decide(g_probs, rule, schema=schema)
    pool_probs = {h: np.concatenate([q_probs[h], g_probs[h]]) for h in heads}
    pool = np.concatenate([q_out["embedding"], g_out["embedding"]])
    # Only the queries' rows of the query + gallery search: the gallery's come from its own.
    q_near = nearest_neighbours(pool, rule.neighbours, rows=np.arange(len(q_out["embedding"])))
    g_near = nearest_neighbours(g_out["embedding"], rule.neighbours)
    return decide(pool_probs, rule, q_near, schema), decide(g_probs, rule, g_near, schema)


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


def visualize(out, query, gallery, indices, q_columns, metrics, count: int,
              schema=None) -> dict:
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
