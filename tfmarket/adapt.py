"""``python -m tfmarket.adapt``: adapt a trained run to unlabelled crops of a new camera network.

    python -m tfmarket.adapt --source runs/NAME --crops FOLDER [FOLDER ...] --workdir runs/NEW
        [--config configs/adapt_course_cpu.yaml] [--set adapt.rounds=4 ...] [--json]

Clustering-based unsupervised domain adaptation (as SpCL / Cluster Contrast), in rounds:

1. embed every crop with the current model (the shared ``tfmarket.preprocess`` path, batched);
2. k-reciprocal distances among the crops (``tfmarket.retrieval.rerank.k_reciprocal_neighbours``;
   Jaccard distance by default, ``adapt.k1``, ``adapt.k2``, ``adapt.lambda_value``);
3. DBSCAN on them (``tfmarket.retrieval.cluster.dbscan``, ``adapt.eps`` or ``adapt.eps_quantile``,
   ``adapt.min_samples``); outliers, and clusters over ``adapt.max_cluster_size`` crops, are
   dropped; each cluster becomes a pseudo-identity;
4. fine-tune for ``adapt.epochs_per_round`` x ``adapt.steps_per_epoch`` steps on P x K batches
   holding ``adapt.labelled_fraction`` of the P identities from the source run's labelled
   training split (the same holdout split, so its validation stays comparable) and the rest
   from the clusters, with a fresh optimizer warmed up over ``adapt.warmup_steps``. Labelled
   images keep the source run's losses (its ID classifier, unchanged in shape; triplet;
   attributes). Pseudo-labelled images get the triplet loss (identities numbered after the
   labelled ones) and a cluster loss: softmax over cosine similarity to one prototype per
   cluster (``tfmarket.model.layers.ClusterPrototypes``, started at the cluster's mean embedding,
   ``adapt.temperature``, weight ``adapt.cluster_weight``), the prototype form of Cluster
   Contrast's memory. The saved models (``best.keras`` included) have the source
   architecture: the "cluster" output exists only while a round trains.

The settings are the source run's resolved config.yaml, then ``--config``, then ``--set``; the
model and the validation split cannot change. ``adapt.image_budget`` refuses a plan whose
training images (source run + adaptation, steps x global batch) exceed it.

Run directory (what ``tfmarket.export`` and ``tfmarket.rank`` take): ``config.yaml`` (resolved,
with the ``adapt`` section naming the source run, the crop folders and ``transductive``),
``model.keras`` (final), ``best.keras`` (best validation mAP of the adapted epochs),
``history.csv``, ``metrics.json`` (per round: clusters, outliers, validation, ``images_seen``),
``tensorboard/`` (``adapt/``: cluster count, outliers, clustered fraction, mean/max cluster size,
a histogram of cluster sizes and validation per round; ``train/``, ``validation/`` per epoch),
``adapt/`` (resume state, the crop list and each round's pseudo-labels).

Transductive: when the crops include the source dataset's own test/query images, results on
those images are transductive (the model saw them, unlabelled, while adapting); the run says so
and records ``adapt.transductive: true``.

Resume: rerunning the same command continues an interrupted run: finished rounds are kept, and
a round interrupted while training continues from its last finished epoch with the same
pseudo-labels (``backup/``). Only the clustering settings (``adapt.eps``, ``eps_quantile``,
``min_samples``, ``k1``, ``k2``, ``lambda_value``) may change on resume, e.g. after a later
round found too few clusters. A finished run is not adapted again.
"""

from __future__ import annotations

import argparse
import sys

from tfmarket.errors import TfmarketError
from tfmarket.training.adapt_plan import DONE_MARKER, prepare
from tfmarket.training.adapt_rounds import run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfmarket.adapt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="run directory of a trained model")
    parser.add_argument("--crops", required=True, nargs="+", metavar="FOLDER",
                        help="folders of unlabelled person crops from the new cameras")
    parser.add_argument("--workdir", required=True, help="new run directory")
    parser.add_argument("--with-validation-images", action="store_true",
                        help="add the source run's validation images (held-out identities), "
                             "unlabelled, to the crops: validation then measures what adapting "
                             "to a test set does for that test set (the transductive proxy)")
    parser.add_argument("--config", help="YAML applied on top of the source run's config "
                        "(e.g. configs/adapt_course_cpu.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, e.g. adapt.rounds=2")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's log lines, every warning and Keras's epoch line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tfmarket.console import import_tensorflow_quietly, print_result, quiet_tensorflow

    quiet_tensorflow(args.verbose)  # before TensorFlow is imported
    try:
        from tfmarket.versions import check_runtime

        check_runtime()
        # Every check of the inputs runs before TensorFlow loads: a mistake costs a second.
        plan = prepare(args.source, args.crops, args.workdir, args.config, args.overrides,
                       with_validation_images=args.with_validation_images)
        if plan.complete:
            print(f"{args.workdir}: adaptation already complete (see {DONE_MARKER})")
            return 0
        import_tensorflow_quietly(args.verbose)
        result = run(plan)
    except TfmarketError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seen = result["images_seen"]
    summary = {
        "workdir": str(args.workdir), "transductive": result["transductive"],
        "rounds": len(result["rounds"]),
        "clusters": [r["clusters"] for r in result["rounds"]],
        "images_seen": seen["total"], "images_seen_with_source": seen["with_source"],
        "source_val_mAP": (result["source_validation"] or {}).get("mAP"),
        "val_mAP": [r.get("val_mAP") for r in result["rounds"]],
        "best_val_mAP": result["best_val_mAP"],
    }
    print_result(result if args.json else summary, f"adapted {args.source} -> {args.workdir}",
                 args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
