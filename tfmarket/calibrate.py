"""``python -m tfmarket.calibrate``: choose the attribute decision rule on the validation split.

    python -m tfmarket.calibrate --workdir runs/NAME [--model exports/NAME/model.onnx]
        [--flip-test] [--max-ma-drop 0.02] [--neighbours 1,3,5,10,15]
        [--prior-weights 0,0.25,0.5,0.75,1] [--distractors TEST_DIR]

Runs the exported model over the run's validation identities (the split training held out), reports
its re-ID mAP / Rank-k there (validation queries vs gallery, Market-1501 protocol), scores every
(neighbours, prior weight) pair of ``tfmarket.retrieval.attribute_rule``, and keeps the one with the
best mean attribute accuracy whose label-based mA is at most ``--max-ma-drop`` below the plain
rule's. A 2-fold identity cross-validation (choose on half the identities, score on the other half,
5 random splits) estimates what choosing this way gives on unseen people. ``--distractors DIR`` also
ranks the validation queries against the validation gallery plus every image of DIR (other people,
e.g. the test folder): a validation gallery of a few dozen identities flatters re-ID, this shows it
at the size of the real gallery. Each re-ID score is given with and without k-reciprocal re-ranking
(``rank --rerank``'s defaults), so whether to rank with ``--rerank`` is decided on validation too.
It then chooses the retrieval rule (:mod:`tfmarket.retrieval.retrieval_rule`: database-side
augmentation + alpha query expansion, the attribute-aware distance's weight, re-ranking parameters)
by mAP on the validation queries, against the gallery plus the ``--distractors`` when given, so that
the choice is made at the test gallery's size (``--no-retrieval`` skips it).
Writes ``attribute_rule.json`` and ``retrieval.json`` beside the model, where
``python -m tfmarket.rank`` picks them up; pass ``--flip-test`` to rank too when they were
chosen with it. The heads and columns are the model card's attribute schema (which must be the
run's dataset's); a re-ID-only model (schema ``none``) gets a retrieval rule only.
"""

from __future__ import annotations

import argparse
import json
import sys

from tfmarket.errors import TfmarketError
from tfmarket.serving.embed import RUNTIME_HELP, RUNTIMES


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
    parser.add_argument("--model", help="exported model.onnx or model.tflite (default: "
                        "exports/<run>/model.onnx)")
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
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES, help=RUNTIME_HELP)
    parser.add_argument("--threads", type=int, default=0,
                        help="the runtime's threads (0 = its default: all)")
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
    from tfmarket.serving.calibration import calibrate

    try:
        report = calibrate(
            args.workdir, args.model, flip_test=args.flip_test, max_ma_drop=args.max_ma_drop,
            neighbours=args.neighbours, prior_weights=args.prior_weights,
            distractors=args.distractors, retrieval=not args.no_retrieval,
            threads=args.threads, runtime=args.runtime)
    except TfmarketError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2, default=float) if args.json else format_report(report))
    return 0


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
