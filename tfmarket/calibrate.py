"""``python -m tfmarket.calibrate``: choose the attribute decision rule on the validation split.

    python -m tfmarket.calibrate --workdir runs/NAME [--model exports/NAME/model.onnx]
        [--flip-test] [--max-ma-drop 0.02] [--neighbours 1,3,5,10,15]
        [--prior-weights 0,0.25,0.5,0.75,1] [--distractors TEST_DIR]

Runs the exported model over the run's validation identities (the split training held out),
reports its re-ID mAP / Rank-k there (validation queries vs gallery, Market-1501 protocol),
scores every (neighbours, prior weight) pair of ``tfmarket.attribute_rule``, and keeps the one
with the best mean attribute accuracy whose label-based mA is at most ``--max-ma-drop`` below
the plain rule's. A 2-fold identity cross-validation (choose on half the identities, score on
the other half, 5 random splits) estimates what choosing this way gives on unseen people.
``--distractors DIR`` also ranks the validation queries against the validation gallery plus
every image of DIR (other people, e.g. the test folder): a validation gallery of a few dozen
identities flatters re-ID, this shows it at the size of the real gallery. Each re-ID score is
given with and without k-reciprocal re-ranking (``rank --rerank``'s defaults), so whether to
rank with ``--rerank`` is decided on validation too.
It then chooses the retrieval rule (:mod:`tfmarket.retrieval`: database-side augmentation +
alpha query expansion, the attribute-aware distance's weight, re-ranking parameters) by mAP on
the validation queries, against the gallery plus the ``--distractors`` when given, so that the
choice is made at the test gallery's size (``--no-retrieval`` skips it).
Writes ``attribute_rule.json`` and ``retrieval.json`` beside the model, where
``python -m tfmarket.rank`` picks them up; pass ``--flip-test`` to rank too when they were
chosen with it. The heads and columns are the model card's attribute schema (which must be the
run's dataset's); a re-ID-only model (schema ``none``) gets a retrieval rule only.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

from tfmarket.errors import TfmarketError


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}"
                                         ) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfmarket.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the run directory the model came from")
    parser.add_argument("--model", help="exported model.onnx (default: exports/<run>/model.onnx)")
    parser.add_argument("--flip-test", action="store_true",
                        help="average each image with its mirror image (as rank --flip-test)")
    parser.add_argument("--max-ma-drop", type=float, default=0.02,
                        help="mA the chosen rule may give up vs the plain one (default 0.02)")
    parser.add_argument("--neighbours", type=_floats, default=None,
                        help="neighbour counts to try (default 1,3,5,10,15)")
    parser.add_argument("--prior-weights", type=_floats, default=None,
                        help="prior weights to try (default 0,0.25,0.5,0.75,1)")
    parser.add_argument("--distractors", metavar="DIR",
                        help="also score re-ID with every image of DIR (people other than the "
                             "validation identities, e.g. the test folder) added to the gallery, "
                             "to see the model at a test-sized gallery")
    parser.add_argument("--no-retrieval", action="store_true",
                        help="do not choose a retrieval rule (no retrieval.json is written)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (0 = all)")
    parser.add_argument("--json", action="store_true",
                        help="print the report as JSON (the rules and their reports are written "
                        "to attribute_rule.json and retrieval.json)")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's log lines and every warning")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tfmarket.console import import_tensorflow_quietly

    import_tensorflow_quietly(args.verbose)
    try:
        report = calibrate(args)
    except TfmarketError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=float) if args.json else format_report(report))
    return 0


def calibrate(args) -> dict:
    import numpy as np
    import yaml

    from tfmarket.attribute_rule import (
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
    from tfmarket.config import from_dict
    from tfmarket.embed import OnnxEmbedder
    from tfmarket.train import load_training_data

    workdir = Path(args.workdir)
    if not (workdir / "config.yaml").is_file():
        raise TfmarketError(f"{workdir}: not a tfmarket run directory (no config.yaml)")
    model = Path(args.model) if args.model else Path("exports") / workdir.name / "model.onnx"
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
    embedder = OnnxEmbedder(model, threads=args.threads, flip_test=args.flip_test)
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
        embedder, outputs, data.val_query, data.val_gallery, args.distractors)
    if not schema.heads:
        result = {"chosen_on": {"workdir": str(workdir), "model": str(model),
                                "flip_test": args.flip_test},
                  "validation": {"reid": reid, "reid_with_distractors": with_distractors},
                  "attributes": "none: the model has no attribute heads (re-ID only); no "
                                "attribute rule was chosen"}
        if not args.no_retrieval:
            result["retrieval"] = choose_retrieval(model.parent, outputs, data.val_query,
                                                   data.val_gallery, distractor_out, {})
        return result
    probs = {h: np.concatenate([o[h] for o in outputs])[known] for h in schema.head_sizes}
    embeddings = np.concatenate([o["embedding"] for o in outputs])[known]
    truth = np.concatenate([r.attributes for r in pool])[known]
    pids = np.concatenate([r.pids for r in pool])[known]
    priors = class_priors(data.targets, schema)
    grid = {"neighbours_grid": tuple(int(k) for k in args.neighbours or NEIGHBOURS_GRID),
            "prior_weight_grid": args.prior_weights or PRIOR_WEIGHT_GRID}
    if 1 not in grid["neighbours_grid"] or 0 not in grid["prior_weight_grid"]:
        raise TfmarketError("the grids must include neighbours 1 and prior weight 0 "
                            "(the plain rule every choice is compared with)")

    rows = evaluate_rules(probs, embeddings, truth, priors, schema=schema, **grid)
    chosen = pick(rows, args.max_ma_drop)
    plain = next(r for r in rows if r["neighbours"] == 1 and r["prior_weight"] == 0)
    cv = cross_validate(probs, embeddings, truth, pids, priors, args.max_ma_drop,
                        schema=schema, **grid)
    rule = AttributeRule(chosen["neighbours"], chosen["prior_weight"], priors)
    report = {
        "chosen_on": {"workdir": str(workdir), "model": str(model), "flip_test": args.flip_test,
                      "validation_images": int(known.sum()),
                      "validation_identities": int(len(np.unique(pids))),
                      "max_ma_drop": args.max_ma_drop},
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
    if not args.no_retrieval:
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

    from tfmarket.retrieval import RULE_FILE, choose_rule, save_rule

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
    ``tfmarket.rerank``'s default parameters (what ``rank --rerank`` uses)."""
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
    from tfmarket.metrics import evaluate_from_features, evaluate_ranking
    from tfmarket.rerank import k_reciprocal_rerank

    plain = evaluate_from_features(q_emb, g_emb, q_pids, g_pids, q_cams, g_cams)
    reranked = evaluate_ranking(k_reciprocal_rerank(q_emb, g_emb), q_pids, g_pids,
                                q_cams, g_cams)
    return {**{k: plain[k] for k in REID_KEYS},
            "rerank": {k: reranked[k] for k in REID_KEYS}}


def format_report(report: dict) -> str:
    """The grid as a table, then the choice and its cross-validated estimate."""
    if "grid" not in report:  # a re-ID-only model: no attribute rule
        val = report["validation"]
        lines = [f"re-ID (validation queries vs gallery, Market-1501 protocol): "
                 f"{_scores(val['reid'])}"]
        big = val.get("reid_with_distractors")
        if big:
            lines.append(f"re-ID with {big['distractors']} distractor images added to the "
                         f"gallery: {_scores(big)}")
        lines.append(f"attributes: {report['attributes']}")
        return "\n".join(lines + _retrieval_lines(report.get("retrieval")))
    lines = ["neighbours  prior weight      mA  mean acc"]
    for r in report["grid"]:
        lines.append(f"{r['neighbours']:>10}  {r['prior_weight']:>12g}  {r['mA']:.4f}  "
                     f"{r['mean_accuracy']:.4f}")
    val, cv = report["validation"], report["cross_validation"]
    on = report["chosen_on"]
    lines += [
        f"validation: {on['validation_images']} images of {on['validation_identities']} "
        f"identities, flip test {'on' if on['flip_test'] else 'off'}",
        f"re-ID (validation queries vs gallery, Market-1501 protocol): {_scores(val['reid'])}",
    ]
    big = val.get("reid_with_distractors")
    if big:
        lines.append(f"re-ID with {big['distractors']} distractor images added to the gallery: "
                     f"{_scores(big)}")
    lines += [
        f"chosen: {report['rule']}: mA {val['chosen']['mA']:.4f}, mean accuracy "
        f"{val['chosen']['mean_accuracy']:.4f} (plain {val['plain']['mA']:.4f}, "
        f"{val['plain']['mean_accuracy']:.4f})",
        f"2-fold identity cross-validation (held-out halves, 5 splits): chosen mA "
        f"{cv['chosen']['mA']:.4f}, mean accuracy {cv['chosen']['mean_accuracy']:.4f}; plain "
        f"{cv['plain']['mA']:.4f}, {cv['plain']['mean_accuracy']:.4f}",
        f"wrote {report['file']}",
    ]
    return "\n".join(lines + _retrieval_lines(report.get("retrieval")))


def _retrieval_lines(retrieval: dict | None) -> list[str]:
    if not retrieval:
        return []
    on = retrieval["scored_on"]
    return [
        f"retrieval, scored on {on['queries']} queries vs {on['gallery']} gallery images "
        f"({on['distractors']} of them distractors; {len(retrieval['grid'])} rules scored in "
        f"{retrieval.get('seconds', 0):.0f} s):",
        f"  plain cosine: {_one(retrieval['plain'])}",
        f"  chosen {retrieval['rule']}: {_one(retrieval['chosen'])}",
        f"wrote {retrieval['file']}",
    ]


def _one(r: dict) -> str:
    return f"mAP {r['mAP']:.4f}, Rank-1 {r['rank1']:.4f}, Rank-5 {r['rank5']:.4f}"


def _scores(reid: dict) -> str:
    return f"{_one(reid)}; re-ranked (rank --rerank) {_one(reid['rerank'])}"


if __name__ == "__main__":
    sys.exit(main())
