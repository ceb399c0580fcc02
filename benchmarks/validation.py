"""Seconds one validation adds to a training epoch at Market-1501's official size.

    .venv/bin/python benchmarks/validation.py [--backbones tiny,resnet50] [--size 128x64]
        [--queries 3368] [--gallery 15913] [--repeats 2] [--json out.json]
    .venv/bin/python benchmarks/validation.py --quick     # 200 x 800 images, tiny backbone

With ``data.validation: official`` training scores the dataset's own query/ against
bounding_box_test/ (3,368 x 15,913 images in Market-1501) at every ``train.eval_every``-th
epoch. This times exactly what ``tfmarket.train`` runs then: ``ValidationCallback.on_epoch_end``
(batched embedding of query and gallery with the training model, in the precision
``train.precision: auto`` picks here, then the chunked NumPy Market-1501 evaluation and the
attribute metrics), split into embedding and evaluation.

Images: real course crops (``--data``, default ../shared/data/market1501-course: its test/ and
queries/ hold 21,936 images, read in place), labelled with synthetic identities and cameras that
have Market-1501's structure (751 identities over 6 cameras, 2,793 distractors of identity 0 in
the gallery): decoding, model and metrics do the real work, only the mAP means nothing. Models
are randomly initialised (speed does not depend on the weights). Peak memory is the process's
maximum resident set size after each backbone (it includes the model and TensorFlow).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from _report import machine_info, render_table, write_json  # benchmarks/_report.py

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DISTRACTORS = 2793  # Market-1501's bounding_box_test/ images of identity 0000
NUM_IDS = 751


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"
                                              / "market1501-course"))
    parser.add_argument("--backbones", default="tiny,resnet50")
    parser.add_argument("--size", default="128x64", help="HxW the model is trained at")
    parser.add_argument("--queries", type=int, default=3368)
    parser.add_argument("--gallery", type=int, default=15913)
    parser.add_argument("--repeats", type=int, default=2, help="validations per backbone")
    parser.add_argument("--precision", default="auto",
                        help="Keras policy, or auto (what train.precision: auto picks here)")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 200 queries x 800 gallery, tiny backbone, 1 repeat")
    return parser


def market_like_records(data_root: Path, num_query: int, num_gallery: int, seed: int = 0):
    """(query, gallery) :class:`Records` of real crops with Market-1501-like synthetic labels."""
    from tfmarket.attributes import COLUMNS
    from tfmarket.data.filenames import list_images
    from tfmarket.data.records import Records

    paths = sorted(str(p) for folder in ("test", "queries")
                   for p in list_images(data_root / folder))
    if len(paths) < num_query + num_gallery:
        raise SystemExit(f"{data_root}: {len(paths)} images, fewer than "
                         f"{num_query} + {num_gallery}")
    rng = np.random.default_rng(seed)
    paths = [paths[i] for i in rng.permutation(len(paths))[:num_query + num_gallery]]
    distractors = min(DISTRACTORS, num_gallery // 5)
    gallery_pids = np.concatenate([rng.integers(1, NUM_IDS + 1, num_gallery - distractors),
                                   np.zeros(distractors, np.int64)])
    query_pids = rng.choice(np.unique(gallery_pids[gallery_pids > 0]), num_query)
    unknown = np.zeros((1, len(COLUMNS)), np.int64)

    def records(part, pids):
        n = len(part)
        return Records(part, pids.astype(np.int64), rng.integers(1, 7, n).astype(np.int64),
                       np.repeat(unknown, n, axis=0))

    return records(paths[:num_query], query_pids), records(paths[num_query:], gallery_pids)


def time_validation(backbone: str, height: int, width: int, query, gallery, precision: str,
                    repeats: int) -> dict:
    """Builds a random-init training model and runs the validation callback ``repeats`` times."""
    import keras

    import tfmarket.training.evaluation as evaluation
    from tfmarket.model.network import build_model

    keras.mixed_precision.set_global_policy(precision)
    model = build_model(NUM_IDS, height=height, width=width, backbone=backbone, weights=None,
                        last_stride=1, pooling="avg")
    callback = evaluation.ValidationCallback(query, gallery, height, width, every=1,
                                             name="official")
    callback.set_model(model)
    callback.set_params({"epochs": 1})
    # Split the callback's time: embedding (predict_records) vs everything after it.
    embed_seconds = []
    predict = evaluation.predict_records

    def timed_predict(*args, **kwargs):
        start = time.perf_counter()
        out = predict(*args, **kwargs)
        embed_seconds[-1] += time.perf_counter() - start
        return out

    evaluation.predict_records = timed_predict
    totals, embeds = [], []
    try:
        for _ in range(repeats):
            embed_seconds.append(0.0)
            callback.on_train_begin()
            start = time.perf_counter()
            callback.on_epoch_end(0, logs={})
            totals.append(time.perf_counter() - start)
            embeds.append(embed_seconds[-1])
    finally:
        evaluation.predict_records = predict
    images = len(query) + len(gallery)
    return {
        "backbone": backbone, "size": f"{height}x{width}", "precision": precision,
        "queries": len(query), "gallery": len(gallery), "seconds": totals,
        "embed_seconds": embeds, "evaluate_seconds": [t - e for t, e in zip(totals, embeds,
                                                                             strict=True)],
        "embed_images_per_second": [images / e for e in embeds],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.queries, args.gallery, args.backbones, args.repeats = 200, 800, "tiny", 1
    height, width = (int(v) for v in args.size.lower().split("x"))
    machine = machine_info()
    print(f"CPU: {machine['cpu']}; {machine['affinity_cpus']} usable cores", flush=True)
    precision = args.precision
    if precision == "auto":
        from tfmarket.training.distribute import resolve_precision

        precision, reason = resolve_precision("auto")
        print(f"precision: {precision} ({reason})")
    query, gallery = market_like_records(Path(args.data), args.queries, args.gallery)
    print(f"{len(query)} queries x {len(gallery)} gallery images ({int((gallery.pids == 0).sum())}"
          f" distractors) at {height}x{width}, {args.repeats} validation(s) per backbone",
          flush=True)
    rows = []
    for backbone in args.backbones.split(","):
        row = time_validation(backbone.strip(), height, width, query, gallery, precision,
                              args.repeats)
        rows.append(row)
        print(f"  {backbone}: " + ", ".join(f"{s:.1f} s" for s in row["seconds"]), flush=True)

    header = ["backbone", "size", "precision", "queries x gallery", "validation s (median)",
              "min-max", "embedding s", "images/s", "evaluation s", "peak RSS GB"]
    lines = [[r["backbone"], r["size"], r["precision"], f"{r['queries']} x {r['gallery']}",
              f"{statistics.median(r['seconds']):.1f}",
              f"{min(r['seconds']):.1f}-{max(r['seconds']):.1f}",
              f"{statistics.median(r['embed_seconds']):.1f}",
              f"{statistics.median(r['embed_images_per_second']):.0f}",
              f"{statistics.median(r['evaluate_seconds']):.1f}", f"{r['peak_rss_gb']:.1f}"]
             for r in rows]
    print()
    print(f"CPU: {machine['cpu']}")
    print(render_table(header, lines, left=(0, 1, 2, 3)))
    if args.json:
        write_json(args.json, {"benchmark": "validation", "quick": args.quick,
                               "machine": machine, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
