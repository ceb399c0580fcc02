"""``python -m tfmarket.data``: inspect, check and generate re-ID datasets.

    python -m tfmarket.data summary ROOT [--dataset NAME] [--json] [--check]
    python -m tfmarket.data synth OUT --layout course|market1501 [--seed 0] [--domain night]
    python -m tfmarket.data extract-cuhk03 ROOT

``--dataset`` (alias ``--layout``) forces a dataset instead of detecting it: auto,
market1501, course, dukemtmcreid, msmt17, cuhk03 (= cuhk03-labeled), cuhk03-detected, custom
(docs/datasets.md).

TensorFlow is not imported here.
"""

from __future__ import annotations

import argparse
import json
import sys

from tfmarket.allocator import tune_malloc
from tfmarket.data.synthetic.domains import DEFAULT_DOMAIN, DOMAINS
from tfmarket.errors import TfmarketError


def _summary(args) -> int:
    from tfmarket.data.check import find_unreadable
    from tfmarket.data.registry import load_dataset
    from tfmarket.data.summary import dataset_summary, format_summary

    dataset = load_dataset(args.root, args.dataset)
    summary = dataset_summary(dataset)
    status = 0
    if args.check:
        paths = [p for records in dataset.splits().values() for p in records.paths]
        bad = find_unreadable(paths, threads=args.threads)
        summary["check"] = {
            "images_decoded": len(paths),
            "unreadable": [{"file": p, "reason": why} for p, why in bad],
        }
        status = 1 if bad else 0
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_summary(summary))
        if args.check:
            print(f"checked {len(paths)} images: {len(bad)} unreadable")
            for p, why in bad:
                print(f"  {p}: {why}")
    return status


def _synth(args) -> int:
    from tfmarket.data.synthetic import write_synthetic

    info = write_synthetic(
        args.out,
        layout=args.layout,
        num_train_ids=args.train_ids,
        num_test_ids=args.test_ids,
        images_per_id=args.images_per_id,
        height=args.height,
        width=args.width,
        seed=args.seed,
        domain=args.domain,
        overwrite=args.overwrite,
    )
    print(json.dumps(info, indent=2, default=str))
    return 0


def _extract_cuhk03(args) -> int:
    from tfmarket.data.cuhk03 import extract_cuhk03

    counts = extract_cuhk03(args.root, overwrite=args.overwrite)
    for variant, n in counts.items():
        print(f"images_{variant}: " + (f"{n} images written" if n else "exists, kept"))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfmarket.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("summary", help="dataset and per-split counts of a dataset folder")
    s.add_argument("root")
    s.add_argument("--dataset", "--layout", dest="dataset", default="auto", metavar="NAME",
                   help="force a dataset instead of detecting it (auto, market1501, course, "
                        "dukemtmcreid, msmt17, cuhk03, cuhk03-detected, custom)")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--check", action="store_true",
                   help="decode every image; list unreadable files; exit status 1 if any")
    s.add_argument("--threads", type=int, default=4)
    s.set_defaults(func=_summary)
    g = sub.add_parser("synth", help="write a synthetic Market-style dataset of JPEG files")
    g.add_argument("out")
    g.add_argument("--layout", default="course", choices=["course", "market1501"])
    g.add_argument("--train-ids", type=int, default=60)
    g.add_argument("--test-ids", type=int, default=30)
    g.add_argument("--images-per-id", type=int, default=8)
    g.add_argument("--height", type=int, default=128)
    g.add_argument("--width", type=int, default=64)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--domain", default=DEFAULT_DOMAIN, choices=list(DOMAINS),
                   help="camera network: scenes and lighting (night: a shifted domain to adapt "
                        "to; pass another --seed too for other people)")
    g.add_argument("--overwrite", action="store_true")
    g.set_defaults(func=_synth)
    e = sub.add_parser("extract-cuhk03",
                       help="write CUHK03's images_labeled/ and images_detected/ from "
                            "ROOT/cuhk03_release/cuhk-03.mat (needs h5py)")
    e.add_argument("root")
    e.add_argument("--overwrite", action="store_true", help="rewrite existing image folders")
    e.set_defaults(func=_extract_cuhk03)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tune_malloc()  # image decoding churns large buffers too (tfmarket.allocator)
    try:
        return args.func(args)
    except (TfmarketError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
