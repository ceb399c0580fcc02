"""``python -m tfmarket.rank``: rank a gallery for each query with an exported ONNX model.

    python -m tfmarket.rank --model exports/NAME/model.onnx --data ROOT --out DIR
    python -m tfmarket.rank --model exports/NAME/model.onnx --query DIR --gallery DIR --out DIR

``--data`` takes any dataset ``tfmarket.data`` reads (``--dataset`` forces one; see
docs/datasets.md): Market-1501's original layout, DukeMTMC-reID, MSMT17 and CUHK03 have a
labelled query/gallery, so they are evaluated, each with the Market-1501 protocol (gallery
images of the query's identity from the query's camera ignored; an unknown camera, -1, is never
the query's); the course layout (queries/ vs test/) is evaluated only when a
``synthetic_truth.csv`` with labels sits beside them, as in generated data. A model trained on
one dataset ranks another's query/gallery this way (cross-dataset evaluation).

Writes into ``--out``: ``reid_test.txt`` (top-k per query, best first),
``classification_test.csv`` (the model's attribute columns of every gallery image: Market-1501's
27 or DukeMTMC-reID's 23, from the model card's attribute schema; not written for a re-ID-only
model), ``embeddings.npz``, and when labels are known ``metrics.json`` (mAP both conventions,
mINP, CMC; attribute accuracy, mA, F1 when the model's attribute schema is the dataset's).
``--visualize N`` adds an HTML report with N queries and a CMC plot.

Distances follow the retrieval rule in ``retrieval.json`` beside the model when calibrate wrote one
(database-side augmentation + alpha query expansion, an attribute-aware distance, k-reciprocal
re-ranking, each chosen on validation; see :mod:`tfmarket.retrieval.retrieval_rule`), else plain
cosine distance; ``--retrieval plain`` forces the latter, ``--rerank`` adds re-ranking.
Attributes are decided by the rule in ``attribute_rule.json`` beside the model when
``python -m tfmarket.calibrate`` wrote one (neighbour voting among the gallery images, for
queries among queries + gallery, and a prior adjustment, chosen on validation), else per
image (sigmoid >= 0.5, argmax); ``--attribute-rule plain`` forces the latter.
``--flip-test`` averages each image with its mirror image (twice the compute).
"""

from __future__ import annotations

import argparse
import sys

from tfmarket.errors import TfmarketError
from tfmarket.retrieval.search import FAISS_KINDS
from tfmarket.serving.embed import RUNTIME_HELP, RUNTIMES

SEARCHES = ("exact", *(f"faiss-{kind}" for kind in FAISS_KINDS))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfmarket.rank", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="exported model.onnx (onnxruntime) or model.tflite (LiteRT)")
    parser.add_argument("--data", help="dataset root (any dataset tfmarket reads; its "
                        "query/gallery are ranked)")
    parser.add_argument("--dataset", default="auto", metavar="NAME",
                        help="the dataset in --data (default auto: detected), e.g. "
                             "cuhk03-detected")
    parser.add_argument("--query", help="folder of query images (with --gallery)")
    parser.add_argument("--gallery", help="folder of gallery images (with --query)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--topk", type=int, default=100, help="results per query (default 100)")
    parser.add_argument("--retrieval", metavar="FILE|plain",
                        help="retrieval rule: query expansion, attribute-aware distance, "
                             "re-ranking (default: retrieval.json beside the model if "
                             "calibrate wrote one, else plain cosine distance)")
    parser.add_argument("--rerank", action="store_true",
                        help="k-reciprocal re-ranking (Zhong et al. 2017) on top of the rule")
    parser.add_argument("--k1", type=int, help="re-ranking k1 (default: the rule's, else 20)")
    parser.add_argument("--k2", type=int, help="re-ranking k2 (default: the rule's, else 6)")
    parser.add_argument("--lambda-value", type=float,
                        help="re-ranking lambda (default: the rule's, else 0.3)")
    parser.add_argument("--search", default="exact", choices=SEARCHES,
                        help="exact chunked cosine search, or a faiss index for huge galleries")
    parser.add_argument("--flip-test", action="store_true",
                        help="average each image with its mirror image (embedding + attributes)")
    parser.add_argument("--attribute-rule", metavar="FILE|plain",
                        help="attribute decision rule (default: attribute_rule.json beside the "
                             "model if present, else plain)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES, help=RUNTIME_HELP)
    parser.add_argument("--threads", type=int, default=0,
                        help="the runtime's threads (0 = its default: all)")
    parser.add_argument("--visualize", type=int, default=0, metavar="N",
                        help="write an HTML report of N queries (and a CMC plot)")
    parser.add_argument("--json", action="store_true",
                        help="print the summary as JSON (it is always written to summary.json)")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's log lines and every warning")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tfmarket.console import import_tensorflow_quietly, print_result

    import_tensorflow_quietly(args.verbose)
    from tfmarket.serving.ranking import rank

    try:
        summary = rank(
            args.model, args.out, data=args.data, dataset=args.dataset, query=args.query,
            gallery=args.gallery, topk=args.topk, retrieval=args.retrieval, rerank=args.rerank,
            k1=args.k1, k2=args.k2, lambda_value=args.lambda_value, search=args.search,
            flip_test=args.flip_test, attribute_rule=args.attribute_rule,
            batch_size=args.batch_size, threads=args.threads, visualize=args.visualize,
            runtime=args.runtime)
    except TfmarketError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_result(summary, f"ranked {summary['gallery']:,} gallery images for each of "
                 f"{summary['queries']:,} queries into {args.out}", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
