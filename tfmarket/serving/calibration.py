"""Choosing an exported model's attribute rule and retrieval rule on its run's validation
identities (what ``python -m tfmarket.calibrate`` runs; see that command for the method), and
the validation re-ID scores reported beside them. Writes ``attribute_rule.json`` and
``retrieval.json`` beside the model, where ranking picks them up.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, replace
from pathlib import Path

from tfmarket.errors import TfmarketError


def calibrate(workdir: str | Path, model: str | Path | None = None, *, flip_test: bool = False,
              max_ma_drop: float = 0.02, neighbours=None, prior_weights=None,
              distractors: str | None = None, retrieval: bool = True, threads: int = 0,
              runtime: str = "auto") -> dict:
    """Chooses the attribute rule (and, with ``retrieval``, the retrieval rule) of an exported
    model on its run's validation identities and writes them beside the model; returns the
    report ``python -m tfmarket.calibrate`` prints.

    Args:
        workdir: the run directory the model came from (its config names the data and the
            validation split).
        model: the exported model.onnx (default ``exports/<run name>/model.onnx``).
        flip_test: average each image with its mirror image (as ``rank --flip-test``).
        max_ma_drop: mA the chosen attribute rule may give up against the plain one.
        neighbours, prior_weights: the grids to try (default
            :data:`~tfmarket.retrieval.attribute_rule.NEIGHBOURS_GRID`,
            :data:`~tfmarket.retrieval.attribute_rule.PRIOR_WEIGHT_GRID`).
        distractors: a folder of other people's images added to the validation gallery.
        threads: the runtime's threads (0 = its default: all).
        runtime: what runs the model (:data:`tfmarket.serving.embed.RUNTIMES`; "auto": by
            the file's extension).
    """
    import numpy as np
    import yaml

    from tfmarket.config import from_dict
    from tfmarket.retrieval.attribute_rule import (
        NEIGHBOURS_GRID,
        PRIOR_WEIGHT_GRID,
        RULE_FILE,
        AttributeRule,
        class_priors,
        cross_validate,
        evaluate_rules,
        pick,
        save_rule,
    )
    from tfmarket.serving.embed import open_embedder
    from tfmarket.training.data import load_training_data

    workdir = Path(workdir)
    if not (workdir / "config.yaml").is_file():
        raise TfmarketError(f"{workdir}: not a tfmarket run directory (no config.yaml)")
    model = Path(model) if model else Path("exports") / workdir.name / "model.onnx"
    config = from_dict(yaml.safe_load((workdir / "config.yaml").read_text()))
    if config.data.validation in ("official", "none"):
        # Choosing the rule on the official query/gallery would tune it on the test set.
        raise TfmarketError(
            f"{workdir}: calibrate chooses on identities held out of training, but this run "
            f"has data.validation: {config.data.validation} (it trained on every identity); "
            "train with data.validation=holdout to calibrate")
    # A run directory written before data.validation existed says nothing: those runs held out.
    data_cfg = config.data if config.data.validation != "auto" else replace(
        config.data, validation="holdout")
    data = load_training_data(data_cfg, workdir)
    pool = [data.val_query, data.val_gallery]
    embedder = open_embedder(model, runtime, threads=threads, flip_test=flip_test)
    schema = embedder.schema
    if schema != data.schema:
        raise TfmarketError(
            f"{model}: its attribute heads are the {schema.name} schema's, the run's dataset "
            f"has the {data.schema.name} schema; was it exported from {workdir}?")
    known = np.concatenate([r.has_attributes for r in pool])
    if schema.heads and known.sum() == 0:
        raise TfmarketError(f"{workdir}: the validation identities have no attribute labels")
    outputs = [embedder.embed_files(r.paths, progress=f"embedding {len(r)} validation images")
               for r in pool]
    reid, with_distractors, distractor_out = validation_reid(
        embedder, outputs, data.val_query, data.val_gallery, distractors)
    if not schema.heads:
        result = {"chosen_on": {"workdir": str(workdir), "model": str(model),
                                "flip_test": flip_test},
                  "validation": {"reid": reid, "reid_with_distractors": with_distractors},
                  "attributes": "none: the model has no attribute heads (re-ID only); no "
                                "attribute rule was chosen"}
        if retrieval:
            result["retrieval"] = choose_retrieval(model.parent, outputs, data.val_query,
                                                   data.val_gallery, distractor_out, {})
        return result
    probs = {h: np.concatenate([o[h] for o in outputs])[known] for h in schema.head_sizes}
    embeddings = np.concatenate([o["embedding"] for o in outputs])[known]
    truth = np.concatenate([r.attributes for r in pool])[known]
    pids = np.concatenate([r.pids for r in pool])[known]
    priors = class_priors(data.targets, schema)
    grid = {"neighbours_grid": tuple(int(k) for k in neighbours or NEIGHBOURS_GRID),
            "prior_weight_grid": prior_weights or PRIOR_WEIGHT_GRID}
    if 1 not in grid["neighbours_grid"] or 0 not in grid["prior_weight_grid"]:
        raise TfmarketError("the grids must include neighbours 1 and prior weight 0 "
                            "(the plain rule every choice is compared with)")

    rows = evaluate_rules(probs, embeddings, truth, priors, schema=schema, **grid)
    chosen = pick(rows, max_ma_drop)
    plain = next(r for r in rows if r["neighbours"] == 1 and r["prior_weight"] == 0)
    cv = cross_validate(probs, embeddings, truth, pids, priors, max_ma_drop,
                        schema=schema, **grid)
    rule = AttributeRule(chosen["neighbours"], chosen["prior_weight"], priors)
    report = {
        "chosen_on": {"workdir": str(workdir), "model": str(model), "flip_test": flip_test,
                      "validation_images": int(known.sum()),
                      "validation_identities": int(len(np.unique(pids))),
                      "max_ma_drop": max_ma_drop},
        "validation": {"reid": reid,
                       "reid_with_distractors": with_distractors,
                       "plain": {k: plain[k] for k in ("mA", "mean_accuracy")},
                       "chosen": {k: chosen[k] for k in ("mA", "mean_accuracy")}},
        "cross_validation": {k: cv[k] for k in ("plain", "chosen")},
        "grid": rows,
    }
    path = model.parent / RULE_FILE
    save_rule(path, rule, report)
    result = {**report, "rule": rule.describe(), "file": str(path), "folds": cv["folds"]}
    if retrieval:
        result["retrieval"] = choose_retrieval(model.parent, outputs, data.val_query,
                                               data.val_gallery, distractor_out,
                                               schema.head_sizes)
    return result


def choose_retrieval(folder: Path, outputs: list[dict], query, gallery,
                     distractor_out: dict | None, heads: dict[str, int]) -> dict:
    """Chooses and writes ``retrieval.json`` into ``folder``; returns its report. ``heads``:
    the model's attribute heads (head -> output width; {} for a re-ID-only model)."""
    import time

    import numpy as np

    from tfmarket.retrieval.retrieval_rule import RULE_FILE, choose_rule, save_rule

    start = time.time()
    q_out, g_out = outputs
    g_pids, g_cams = gallery.pids, gallery.cams
    if distractor_out is not None:
        n = len(distractor_out["embedding"])
        g_out = {key: np.concatenate([g_out[key], distractor_out[key]]) for key in g_out}
        g_pids = np.concatenate([g_pids, np.zeros(n, np.int64)])
        g_cams = np.concatenate([g_cams, np.full(n, -1, np.int64)])
    rule, rows = choose_rule(q_out, g_out, query.pids, g_pids, query.cams, g_cams, heads,
                             progress=lambda what: print(
                                 f"retrieval: scoring {what} ({time.time() - start:.0f} s in)",
                                 file=sys.stderr, flush=True))
    plain = rows[0]
    chosen = next(r for r in rows if all(r[k] == v for k, v in asdict(rule).items()))
    report = {"scored_on": {"queries": len(query), "gallery": len(g_pids),
                            "distractors": 0 if distractor_out is None else n},
              "plain": {k: plain[k] for k in ("mAP", "rank1", "rank5", "mINP")},
              "chosen": {k: chosen[k] for k in ("mAP", "rank1", "rank5", "mINP")},
              "rule": rule.describe(), "grid": rows, "seconds": time.time() - start}
    path = folder / RULE_FILE
    save_rule(path, rule, report)
    return {**report, "file": str(path)}


REID_KEYS = ("mAP", "rank1", "rank5", "mINP")


def validation_reid(embedder, outputs: list[dict], query, gallery,
                    distractors: str | None) -> tuple[dict, dict | None, dict | None]:
    """Re-ID of the validation queries against the validation gallery, and (when
    ``distractors`` names a folder) against that gallery plus every image of the folder as
    identity 0 (a distractor: a negative for every query), and the distractors' model outputs
    (None without ``distractors``). Each result holds the cosine
    ranking's scores and, under ``"rerank"``, those of k-reciprocal re-ranking with
    ``tfmarket.retrieval.rerank``'s default parameters (what ``rank --rerank`` uses)."""
    import numpy as np

    q, g = outputs
    reid = _reid_scores(q["embedding"], g["embedding"], query.pids, gallery.pids,
                        query.cams, gallery.cams)
    if not distractors:
        return reid, None, None
    from tfmarket.data.check import require_readable
    from tfmarket.data.filenames import list_images

    extra = [str(p) for p in list_images(distractors)]
    require_readable(extra)
    d_emb = embedder.embed_files(extra, progress=f"embedding {len(extra)} distractors")
    big = _reid_scores(
        q["embedding"], np.concatenate([g["embedding"], d_emb["embedding"]]),
        query.pids, np.concatenate([gallery.pids, np.zeros(len(extra), np.int64)]),
        query.cams, np.concatenate([gallery.cams, np.full(len(extra), -1, np.int64)]))
    return reid, {"distractors": len(extra), "folder": str(distractors), **big}, d_emb


def _reid_scores(q_emb, g_emb, q_pids, g_pids, q_cams, g_cams) -> dict:
    """Market-1501 scores of the cosine ranking, with the re-ranked ones under "rerank"."""
    from tfmarket.retrieval.metrics import evaluate_from_features, evaluate_ranking
    from tfmarket.retrieval.rerank import k_reciprocal_rerank

    plain = evaluate_from_features(q_emb, g_emb, q_pids, g_pids, q_cams, g_cams)
    reranked = evaluate_ranking(k_reciprocal_rerank(q_emb, g_emb), q_pids, g_pids,
                                q_cams, g_cams)
    return {**{k: plain[k] for k in REID_KEYS},
            "rerank": {k: reranked[k] for k in REID_KEYS}}
