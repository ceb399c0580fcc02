"""``python -m tfmarket.gallery``: sharded embedding, merged stores and faiss search with
attribute filters, for galleries too large for one process.

    # N processes or hosts each embed 1/N of a folder
    python -m tfmarket.gallery embed --model M.onnx --images DIR --shard 0/4 --out s0.npz
    python -m tfmarket.gallery merge s0.npz s1.npz s2.npz s3.npz --out gallery.npz
    python -m tfmarket.gallery index gallery.npz --kind ivf --out gallery.faiss
    #   (millions of images: --kind ivfpq-refine --nlist 4096 --m 128 --nprobe 32 --k-factor 8)
    # query by image and attributes together
    python -m tfmarket.gallery search --model M.onnx --store gallery.npz --index gallery.faiss \
        --query q/ --topk 20 --where "upred, backpack"

A store (``.npz``) holds ``files`` [N], ``embedding`` float32 [N, D] (L2-normalised),
``attributes`` int [N, C] (predicted, annotation encoding), ``attribute_columns`` [C] (their
names: the model card's attribute schema, Market-1501's 27 or DukeMTMC-reID's 23; stores
without it are Market-1501's), ``prob_<head>`` and the model's name; shards are contiguous
blocks of the sorted file list, so merging restores that order. ``--where`` names the store's
columns.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tfmarket.errors import TfmarketError
from tfmarket.retrieval.search import FAISS_KINDS, REFINE_TYPES
from tfmarket.serving.embed import RUNTIME_HELP, RUNTIMES


def _cmd_embed(args) -> dict:
    from tfmarket.data.filenames import list_images
    from tfmarket.serving.store import embed_store, parse_shard, save_store, shard_files

    index, count = parse_shard(args.shard)
    paths = shard_files(list_images(args.images), index, count)
    store = embed_store(args.model, paths, args.batch_size, runtime=args.runtime)
    save_store(store, args.out)
    return {"out": args.out, "shard": args.shard, "images": len(paths)}


def _cmd_merge(args) -> dict:
    from tfmarket.serving.store import load_store, merge_stores, save_store

    merged = merge_stores([load_store(p) for p in args.stores], list(args.stores))
    save_store(merged, args.out)
    return {"out": args.out, "images": int(len(merged["files"])), "shards": len(args.stores)}


def _cmd_index(args) -> dict:
    import faiss

    from tfmarket.retrieval.search import build_faiss_index
    from tfmarket.serving.store import load_store

    store = load_store(args.store)
    index = build_faiss_index(store["embedding"], kind=args.kind, nlist=args.nlist, m=args.m,
                              nprobe=args.nprobe, k_factor=args.k_factor, refine=args.refine)
    faiss.write_index(index, str(args.out))
    return {"out": args.out, "kind": args.kind, "images": int(index.ntotal)}


def _cmd_search(args) -> dict:
    from tfmarket.serving.store import search_store

    results, summary = search_store(
        args.model, args.store, args.query, index_path=args.index, where=args.where,
        topk=args.topk, exact_filtered_below=args.exact_filtered_below,
        batch_size=args.batch_size, runtime=args.runtime)
    Path(args.out).write_text(json.dumps(results, indent=1))
    return {"out": args.out, **summary}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfmarket.gallery", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's log lines and every warning")
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("embed", parents=[common], help="embed one shard of a folder into a store")
    e.add_argument("--model", required=True)
    e.add_argument("--images", required=True)
    e.add_argument("--shard", default="0/1", help="I/N: this process's block (default 0/1)")
    e.add_argument("--out", required=True)
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--runtime", default="auto", choices=RUNTIMES, help=RUNTIME_HELP)
    e.set_defaults(func=_cmd_embed)
    m = sub.add_parser("merge", parents=[common], help="merge shard stores into one")
    m.add_argument("stores", nargs="+")
    m.add_argument("--out", required=True)
    m.set_defaults(func=_cmd_merge)
    i = sub.add_parser("index", parents=[common], help="build a faiss index over a store")
    i.add_argument("store")
    i.add_argument("--kind", default="flat", choices=FAISS_KINDS,
                   help="ivfpq-refine: IVF-PQ candidates re-ranked by 8-bit (or fp16) codes, "
                        "near-exact at D (2D) bytes a vector")
    i.add_argument("--nlist", type=int, default=1024)
    i.add_argument("--m", type=int, default=64, help="PQ sub-quantisers (ivfpq, ivfpq-refine)")
    i.add_argument("--nprobe", type=int, default=16, help="IVF cells visited per query")
    i.add_argument("--k-factor", type=float, default=8.0,
                   help="ivfpq-refine: candidates re-ranked per wanted result (default 8)")
    i.add_argument("--refine", default="sq8", choices=REFINE_TYPES,
                   help="ivfpq-refine: re-ranking codes, sq8 (D bytes a vector) or fp16 (2D)")
    i.add_argument("--out", required=True)
    i.set_defaults(func=_cmd_index)
    s = sub.add_parser("search", parents=[common],
                       help="rank a store for query images, optionally filtered")
    s.add_argument("--model", required=True)
    s.add_argument("--store", required=True)
    s.add_argument("--index", help="faiss index of the store (default: exact search)")
    s.add_argument("--query", required=True, help="folder of query images")
    s.add_argument("--where", help='attribute filter, e.g. "upred, backpack, age=2"')
    s.add_argument("--topk", type=int, default=20)
    s.add_argument("--exact-filtered-below", type=int, default=50_000, metavar="N",
                   help="with --where, search exactly when at most N images match (default "
                        "%(default)s); above, the index searches with the filter")
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--runtime", default="auto", choices=RUNTIMES, help=RUNTIME_HELP)
    s.add_argument("--out", default="search.json")
    s.set_defaults(func=_cmd_search)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tfmarket.console import import_tensorflow_quietly, print_result, quiet_tensorflow

    quiet_tensorflow(args.verbose)
    if args.command in ("embed", "search"):  # the commands that decode images with TensorFlow
        import_tensorflow_quietly(args.verbose)
    try:
        result = args.func(args)
    except TfmarketError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_result(result, f"gallery {args.command}: done", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
