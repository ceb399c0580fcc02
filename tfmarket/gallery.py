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

import numpy as np

from tfmarket.errors import DataError, TfmarketError
from tfmarket.npzfile import save_npz
from tfmarket.search import FAISS_KINDS, REFINE_TYPES

STORE_KEYS = ("files", "embedding", "attributes")
# Keys that hold one value for the whole store (equal in every shard), not one per image.
STORE_CONSTANTS = ("model", "attribute_columns")


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> (2, 4), with 0 <= index < count."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise TfmarketError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise TfmarketError(f"--shard {text}: need 0 <= I < N")
    return index, count


def shard_files(paths: list[str], index: int, count: int) -> list[str]:
    """The ``index``-th of ``count`` contiguous blocks of the sorted paths."""
    ordered = sorted(str(p) for p in paths)
    blocks = np.array_split(np.arange(len(ordered)), count)
    return [ordered[i] for i in blocks[index]]


def embed_store(model_path: str, paths: list[str], batch_size: int = 64) -> dict:
    """Embeds image files with an exported ONNX model -> a store dict."""
    from tfmarket.data.check import require_readable
    from tfmarket.embed import OnnxEmbedder

    require_readable(paths)
    embedder = OnnxEmbedder(model_path)
    schema = embedder.schema
    out = embedder.embed_files(paths, batch_size)
    heads = schema.head_sizes
    columns = (schema.predicted_columns({h: out[h] for h in heads}) if heads
               else np.ones((len(paths), 0), np.int64))
    return {
        "files": np.array([str(p) for p in paths]),
        "embedding": out["embedding"].astype(np.float32),
        "attributes": columns.astype(np.int8),
        "attribute_columns": np.array(schema.columns, dtype=str),
        "model": np.array(str(Path(model_path).resolve())),
        **{f"prob_{h}": out[h] for h in heads},
    }


def save_store(store: dict, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    save_npz(tmp, **store)
    tmp.replace(path)


def load_store(path: str | Path) -> dict:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            store = {k: data[k] for k in data.files}
    except Exception as exc:
        raise DataError(f"{path}: not a readable embedding store ({exc})") from None
    missing = [k for k in STORE_KEYS if k not in store]
    if missing:
        raise DataError(f"{path}: not an embedding store (missing {', '.join(missing)})")
    return store


def merge_stores(stores: list[dict], names: list[str] | None = None) -> dict:
    """Concatenates shard stores (same model and width, no file twice), sorted by file."""
    names = names or [f"store {i}" for i in range(len(stores))]
    if not stores:
        raise TfmarketError("nothing to merge")
    first = stores[0]
    for store, name in zip(stores[1:], names[1:], strict=True):
        if str(store.get("model")) != str(first.get("model")):
            raise DataError(f"{name}: embedded with a different model than {names[0]}")
        if store_columns(store) != store_columns(first):
            raise DataError(f"{name}: holds other attribute columns than {names[0]}")
        if store["embedding"].shape[1] != first["embedding"].shape[1]:
            raise DataError(f"{name}: embedding width differs from {names[0]}")
        if set(store) != set(first):
            raise DataError(f"{name}: holds different fields than {names[0]}")
    merged = {k: np.concatenate([s[k] for s in stores]) for k in first
              if k not in STORE_CONSTANTS}
    files, counts = np.unique(merged["files"], return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{files[counts > 1][0]} appears in more than one shard")
    order = np.argsort(merged["files"], kind="stable")
    return {**{k: v[order] for k, v in merged.items()},
            **{k: first[k] for k in STORE_CONSTANTS if k in first}}


def store_columns(store: dict) -> tuple[str, ...]:
    """The names of a store's ``attributes`` columns (Market-1501's for stores written before
    attribute schemas)."""
    from tfmarket.attributes import COLUMNS

    if "attribute_columns" in store:
        return tuple(str(c) for c in np.asarray(store["attribute_columns"]).reshape(-1))
    return COLUMNS


def parse_filter(text: str, columns: tuple[str, ...] | None = None) -> list[tuple[int, int]]:
    """``"upred, backpack, age=3"`` -> [(column index, required value)] in file encoding.

    A bare name means "yes" (2); ``name=V`` gives the value (age 1-4, others 1/2).
    ``columns``: the store's attribute columns (default Market-1501's).
    """
    from tfmarket.attributes import COLUMNS

    names = COLUMNS if columns is None else tuple(columns)
    if not names:
        raise TfmarketError("--where: the store's model has no attribute heads (re-ID only)")
    conditions = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = name.strip()
        if name not in names:
            raise TfmarketError(
                f"unknown attribute {name!r} in filter; valid: {', '.join(names)}")
        conditions.append((names.index(name), int(value) if value else 2))
    return conditions


def filter_ids(attributes: np.ndarray, conditions: list[tuple[int, int]]) -> np.ndarray:
    """int64 ids of the rows of ``attributes`` [N, C] meeting every condition."""
    keep = np.ones(len(attributes), dtype=bool)
    for column, value in conditions:
        keep &= attributes[:, column] == value
    return np.flatnonzero(keep).astype(np.int64)


def _cmd_embed(args) -> dict:
    from tfmarket.data.filenames import list_images

    index, count = parse_shard(args.shard)
    paths = shard_files(list_images(args.images), index, count)
    store = embed_store(args.model, paths, args.batch_size)
    save_store(store, args.out)
    return {"out": args.out, "shard": args.shard, "images": len(paths)}


def _cmd_merge(args) -> dict:
    merged = merge_stores([load_store(p) for p in args.stores], list(args.stores))
    save_store(merged, args.out)
    return {"out": args.out, "images": int(len(merged["files"])), "shards": len(args.stores)}


def _cmd_index(args) -> dict:
    import faiss

    from tfmarket.search import build_faiss_index

    store = load_store(args.store)
    index = build_faiss_index(store["embedding"], kind=args.kind, nlist=args.nlist, m=args.m,
                              nprobe=args.nprobe, k_factor=args.k_factor, refine=args.refine)
    faiss.write_index(index, str(args.out))
    return {"out": args.out, "kind": args.kind, "images": int(index.ntotal)}


def _cmd_search(args) -> dict:
    from tfmarket.data.filenames import list_images
    from tfmarket.embed import OnnxEmbedder
    from tfmarket.search import cosine_topk, faiss_topk, on_available_gpus

    store = load_store(args.store)
    queries = [str(p) for p in list_images(args.query)]
    q_emb = OnnxEmbedder(args.model).embed_files(queries, args.batch_size)["embedding"]
    allowed = (filter_ids(store["attributes"], parse_filter(args.where, store_columns(store)))
               if args.where else None)
    if allowed is not None and len(allowed) == 0:
        raise TfmarketError(f"no gallery image matches --where {args.where!r}")
    subset = np.arange(len(store["files"])) if allowed is None else allowed
    device, method = "cpu", "exact"
    if args.index and (allowed is None or len(allowed) > args.exact_filtered_below):
        import faiss

        index = faiss.read_index(str(args.index))
        if index.ntotal != len(store["files"]):
            raise DataError(f"{args.index}: holds {index.ntotal} vectors, the store "
                            f"{len(store['files'])}: built from another store?")
        index, device = on_available_gpus(index, filtered=allowed is not None)
        indices, distances = faiss_topk(index, q_emb, args.topk, allowed=allowed)
        method = "faiss"
        # An IVF search only sees its nprobe cells: with a selective filter they can hold fewer
        # than topk allowed images. Those queries are answered exactly over the allowed set.
        short = np.flatnonzero((indices < 0).any(axis=1)) if allowed is not None else []
        if len(short) and len(allowed) > (indices[short] >= 0).sum(axis=1).min():
            local, dist = cosine_topk(q_emb[short], store["embedding"][subset], args.topk)
            width = local.shape[1]
            indices[short] = -1
            distances[short] = np.inf
            indices[short, :width], distances[short, :width] = subset[local], dist
            method = f"faiss, exact over the filtered images for {len(short)} queries"
    else:
        local, distances = cosine_topk(q_emb, store["embedding"][subset], args.topk)
        indices = subset[local]
    results = {
        Path(q).name: [
            {"file": str(store["files"][i]), "distance": round(float(d), 6)}
            for i, d in zip(row, dist, strict=True) if i >= 0
        ]
        for q, row, dist in zip(queries, indices, distances, strict=True)
    }
    Path(args.out).write_text(json.dumps(results, indent=1))
    return {"out": args.out, "queries": len(queries), "search": method, "search_device": device,
            "candidates": int(len(store["files"]) if allowed is None else len(allowed))}


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
