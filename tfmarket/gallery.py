"""``python -m tfmarket.gallery``: sharded embedding, merged stores and faiss search with
attribute filters, for galleries too large for one process.

    # N processes or hosts each embed 1/N of a folder
    python -m tfmarket.gallery embed --model M.onnx --images DIR --shard 0/4 --out s0.npz
    python -m tfmarket.gallery merge s0.npz s1.npz s2.npz s3.npz --out gallery.npz
    python -m tfmarket.gallery index gallery.npz --kind ivf --out gallery.faiss
    # or on Ray (a local instance, --address auto, or ray://head:10001): one command, the
    # workers write Parquet shards and a manifest into the folder gallery/; no merge needed
    python -m tfmarket.gallery embed --engine ray --model M.onnx --images DIR --out gallery/
    python -m tfmarket.gallery index gallery/ --kind ivf --out gallery.faiss
    #   (millions of images: --kind ivfpq-refine --nlist 4096 --m 128 --nprobe 32 --k-factor 8)
    # query by image and attributes together
    python -m tfmarket.gallery search --model M.onnx --store gallery.npz --index gallery.faiss \
        --query q/ --topk 20 --where "upred, backpack"

A store (``.npz``) holds ``files`` [N], ``embedding`` float32 [N, D] (L2-normalised),
``attributes`` int [N, C] (predicted, annotation encoding), ``attribute_columns`` [C] (their
names: the model card's attribute schema, Market-1501's 27 or DukeMTMC-reID's 23; stores
without it are Market-1501's), ``prob_<head>`` and the model's name; shards are contiguous
blocks of the sorted file list, so merging restores that order. ``--where`` names the store's
columns. A Parquet store (``--engine ray``) is a folder of the same columns in shards, read
shard by shard by ``index`` (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from tfmarket.errors import TfmarketError
from tfmarket.retrieval.search import FAISS_KINDS, REFINE_TYPES
from tfmarket.serving.embed import RUNTIME_HELP, RUNTIMES


def _cmd_embed(args) -> dict:
    if args.engine == "ray":
        if args.shard != "0/1":
            raise TfmarketError("--shard is for --engine local; Ray splits the images itself")
        from tfmarket.serving.ray_embed import embed_with_ray

        return embed_with_ray(args.model, args.images, args.out, address=args.address,
                              actors=args.actors, threads=args.threads or 1,
                              runtime=args.runtime, flip_test=args.flip_test,
                              batch_size=args.batch_size, shard_size=args.shard_size,
                              verbose=args.verbose)
    given = [f for f, v in (("--address", args.address), ("--actors", args.actors),
                            ("--shard-size", args.shard_size)) if v]
    if given:
        raise TfmarketError(f"{', '.join(given)}: only for --engine ray")
    from tfmarket.data.filenames import list_images
    from tfmarket.serving.store import embed_store, parse_shard, save_store, shard_files

    began = time.perf_counter()
    index, count = parse_shard(args.shard)
    found = [p for folder in args.images for p in list_images(folder)]
    paths = shard_files(found, index, count)
    store = embed_store(args.model, paths, args.batch_size, runtime=args.runtime,
                        threads=args.threads or 0, flip_test=args.flip_test)
    save_store(store, args.out)
    seconds = time.perf_counter() - began
    return {"out": args.out, "shard": args.shard, "images": len(paths),
            "seconds": round(seconds, 2), "images_per_s": round(len(paths) / seconds, 1)}


def _cmd_merge(args) -> dict:
    from tfmarket.serving.store import load_store, merge_stores, save_store

    merged = merge_stores([load_store(p) for p in args.stores], list(args.stores))
    save_store(merged, args.out)
    return {"out": args.out, "images": int(len(merged["files"])), "shards": len(args.stores)}


def _cmd_index(args) -> dict:
    import faiss

    from tfmarket.serving.store import index_store

    try:
        index = index_store(args.store, kind=args.kind, train_size=args.train_size,
                            nlist=args.nlist, m=args.m, nprobe=args.nprobe,
                            k_factor=args.k_factor, refine=args.refine)
    except ValueError as exc:  # faiss's size checks (nlist, m) on this store
        raise TfmarketError(f"{args.store}: {exc}") from None
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
    e = sub.add_parser("embed", parents=[common],
                       help="embed images into a store (one shard of them, or all on Ray)")
    e.add_argument("--model", required=True)
    e.add_argument("--images", required=True, nargs="+", metavar="URI",
                   help="folders (or, with --engine ray, files and URIs pyarrow opens: "
                        "s3://bucket/crops)")
    e.add_argument("--engine", default="local", choices=("local", "ray"),
                   help="local: this process, a .npz store (default); ray: a Ray Data actor "
                        "pool, a Parquet store folder (needs tfmarket[ray])")
    e.add_argument("--shard", default="0/1",
                   help="--engine local: I/N, this process's block (default 0/1)")
    e.add_argument("--out", required=True,
                   help="local: the .npz file; ray: a new folder or URI (every node writes "
                        "there; gallery merge is not needed)")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--runtime", default="auto", choices=RUNTIMES, help=RUNTIME_HELP)
    e.add_argument("--flip-test", action="store_true",
                   help="also embed each image mirrored and average (twice the compute)")
    e.add_argument("--threads", type=int, default=0,
                   help="onnxruntime threads: local, 0 = all cores (default); ray, per actor "
                        "(default 1, with one actor per CPU: on 2 cores as fast as the local "
                        "engine, and as 1 actor x 2 threads)")
    e.add_argument("--address", help="ray: the cluster (auto, ray://head:10001; default: "
                                     "start a local Ray)")
    e.add_argument("--actors", type=int, default=0,
                   help="ray: actor-pool size (default: the cluster's CPUs / --threads)")
    e.add_argument("--shard-size", type=int, default=0,
                   help="ray: images per Parquet shard (default: about 8 shards an actor, "
                        "64 to 4096)")
    e.set_defaults(func=_cmd_embed)
    m = sub.add_parser("merge", parents=[common],
                       help="merge .npz shard stores into one (a --engine ray store needs none)")
    m.add_argument("stores", nargs="+")
    m.add_argument("--out", required=True)
    m.set_defaults(func=_cmd_merge)
    i = sub.add_parser("index", parents=[common], help="build a faiss index over a store")
    i.add_argument("store", help="a .npz store or a Parquet store folder (read shard by shard)")
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
    i.add_argument("--train-size", type=int, default=0, metavar="N",
                   help="IVF kinds: train on N vectors sampled from the store (default: a "
                        ".npz store's all; a Parquet store's max(40 x nlist, 65536))")
    i.add_argument("--out", required=True)
    i.set_defaults(func=_cmd_index)
    s = sub.add_parser("search", parents=[common],
                       help="rank a store for query images, optionally filtered")
    s.add_argument("--model", required=True)
    s.add_argument("--store", required=True, help="a .npz store or a Parquet store folder")
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
    # The commands that decode images with TensorFlow here (Ray's actors import their own).
    if args.command == "search" or (args.command == "embed" and args.engine == "local"):
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
