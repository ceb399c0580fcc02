"""The embedding store of ``python -m tfmarket.gallery``: embed (a shard of) a folder with an
exported model, save, load and merge stores, filter by predicted attributes, and search a store
for query images (exactly or with a faiss index).

A store (``.npz``) holds ``files`` [N], ``embedding`` float32 [N, D] (L2-normalised),
``attributes`` int [N, C] (predicted, annotation encoding), ``attribute_columns`` [C] (their
names: the model card's attribute schema, Market-1501's 27 or DukeMTMC-reID's 23; stores
without it are Market-1501's), ``prob_<head>`` and the model's name; shards are contiguous
blocks of the sorted file list, so merging restores that order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfmarket.errors import DataError, TfmarketError
from tfmarket.serving.npzfile import save_npz

STORE_KEYS = ("files", "embedding", "attributes")
# Keys that hold one value for the whole store (equal in every shard), not one per image.
STORE_CONSTANTS = ("model", "attribute_columns", "flip_test")


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


def embed_store(model_path: str, paths: list[str], batch_size: int = 64, *,
                runtime: str = "auto", threads: int = 0, flip_test: bool = False) -> dict:
    """Embeds image files with an exported model, in ``runtime``
    (:func:`tfmarket.serving.embed.open_embedder`) -> a store dict."""
    from tfmarket.data.check import require_readable
    from tfmarket.serving.embed import open_embedder

    require_readable(paths)
    embedder = open_embedder(model_path, runtime, threads, flip_test)
    out = embedder.embed_files(paths, batch_size)
    return {**store_rows(paths, out, embedder.schema),
            **store_constants(model_path, embedder.schema, flip_test)}


def store_rows(paths: list[str], outputs: dict[str, np.ndarray], schema) -> dict:
    """The per-image part of a store: ``files`` [N], ``embedding`` float32 [N, D],
    ``attributes`` int8 [N, C] (decided per image: sigmoid >= 0.5, argmax) and ``prob_<head>``
    [N, k], from an embedder's outputs for ``paths`` (every engine builds its rows here)."""
    heads = schema.head_sizes
    columns = (schema.predicted_columns({h: outputs[h] for h in heads}) if heads
               else np.ones((len(paths), 0), np.int64))
    return {
        "files": np.array([str(p) for p in paths]),
        "embedding": outputs["embedding"].astype(np.float32),
        "attributes": columns.astype(np.int8),
        **{f"prob_{h}": outputs[h] for h in heads},
    }


def store_constants(model_path: str | Path, schema, flip_test: bool = False) -> dict:
    """The values a store holds once: the model's path, its attribute columns and (only when
    set, so stores written before it keep merging) the flip test."""
    return {"attribute_columns": np.array(schema.columns, dtype=str),
            "model": np.array(str(Path(model_path).resolve())),
            **({"flip_test": np.array(True)} if flip_test else {})}


def save_store(store: dict, path: str | Path) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    save_npz(tmp, **store)
    tmp.replace(path)


def load_store(path: str | Path) -> dict:
    """A ``.npz`` store, or a Parquet store folder (``gallery embed --engine ray``,
    :mod:`tfmarket.serving.parquet_store`), as one dict of arrays."""
    from tfmarket.serving.parquet_store import is_parquet_store, is_uri, load_parquet_store

    if is_uri(path) or is_parquet_store(path):
        return load_parquet_store(path)
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: a folder, but not a Parquet embedding store (no "
                        f"manifest.json or shards)")
    try:
        with np.load(path, allow_pickle=False) as data:
            store = {k: data[k] for k in data.files}
    except Exception as exc:
        raise DataError(f"{path}: not a readable embedding store ({exc})") from None
    missing = [k for k in STORE_KEYS if k not in store]
    if missing:
        raise DataError(f"{path}: not an embedding store (missing {', '.join(missing)})")
    return store


def index_store(path: str | Path, *, kind: str = "flat", train_size: int = 0, seed: int = 0,
                **params):
    """A faiss index (:func:`tfmarket.retrieval.search.build_faiss_index`; ``params``: nlist,
    m, nprobe, k_factor, refine) over a store's embeddings, in store order.

    A Parquet store is read shard by shard: IVF kinds train on ``train_size`` rows sampled
    from the whole store (0: max(40 x nlist, 65,536), what faiss's k-means and PQ training
    use well), then every shard is added in turn, so memory holds the index, the sample and
    one shard, never a second copy of every embedding. A ``.npz`` store is loaded whole, as
    before, and trains on all of it unless ``train_size`` is given.
    """
    from tfmarket.retrieval.search import add_to_faiss_index, train_faiss_index
    from tfmarket.serving.parquet_store import (
        is_parquet_store,
        is_uri,
        iter_shards,
        read_manifest,
        sample_embeddings,
    )

    nlist = params.get("nlist", 100)
    if is_uri(path) or is_parquet_store(path):
        manifest = read_manifest(path)
        if not manifest["images"]:
            raise DataError(f"{path}: the store holds no images")
        if kind == "flat":  # nothing to train: the width is all it needs
            sample = np.zeros((1, manifest["embedding_dim"]), np.float32)
        else:
            sample = sample_embeddings(path, train_size or max(40 * nlist, 65_536), seed,
                                       manifest)
        index = train_faiss_index(sample, kind=kind, **params)
        del sample
        for shard in iter_shards(path, ("embedding",), manifest):
            add_to_faiss_index(index, shard["embedding"])
        return index
    embedding = load_store(path)["embedding"]
    if train_size and kind != "flat" and train_size < len(embedding):
        rows = np.sort(np.random.default_rng(seed).choice(len(embedding), train_size,
                                                          replace=False))
        index = train_faiss_index(embedding[rows], kind=kind, **params)
    else:
        index = train_faiss_index(embedding, kind=kind, **params)
    add_to_faiss_index(index, embedding)
    return index


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


def search_store(model: str | Path, store_path: str | Path, query: str | Path, *,
                 index_path: str | Path | None = None, where: str | None = None,
                 topk: int = 20, exact_filtered_below: int = 50_000,
                 batch_size: int = 64, runtime: str = "auto") -> tuple[dict, dict]:
    """Ranks a store's images for each image of the ``query`` folder, optionally only those
    whose attributes meet ``where`` (:func:`parse_filter`), by exact cosine search or the faiss
    index at ``index_path`` (exactly over the allowed images when at most
    ``exact_filtered_below`` match). The queries are embedded in ``runtime``
    (:func:`tfmarket.serving.embed.open_embedder`).

    Returns:
        ({query file name: [{"file", "distance"}, ...] best first}, {"queries", "search",
        "search_device", "candidates"}).
    """
    from tfmarket.data.filenames import list_images
    from tfmarket.retrieval.search import cosine_topk, faiss_topk, on_available_gpus
    from tfmarket.serving.embed import open_embedder

    store = load_store(store_path)
    queries = [str(p) for p in list_images(query)]
    # Queries are embedded as the gallery was (the flip test is recorded in the store).
    flip_test = bool(store.get("flip_test", False))
    q_emb = open_embedder(model, runtime, flip_test=flip_test).embed_files(
        queries, batch_size)["embedding"]
    allowed = (filter_ids(store["attributes"], parse_filter(where, store_columns(store)))
               if where else None)
    if allowed is not None and len(allowed) == 0:
        raise TfmarketError(f"no gallery image matches --where {where!r}")
    subset = np.arange(len(store["files"])) if allowed is None else allowed
    device, method = "cpu", "exact"
    if index_path and (allowed is None or len(allowed) > exact_filtered_below):
        import faiss

        index = faiss.read_index(str(index_path))
        if index.ntotal != len(store["files"]):
            raise DataError(f"{index_path}: holds {index.ntotal} vectors, the store "
                            f"{len(store['files'])}: built from another store?")
        index, device = on_available_gpus(index, filtered=allowed is not None)
        indices, distances = faiss_topk(index, q_emb, topk, allowed=allowed)
        method = "faiss"
        # An IVF search only sees its nprobe cells: with a selective filter they can hold fewer
        # than topk allowed images. Those queries are answered exactly over the allowed set.
        short = np.flatnonzero((indices < 0).any(axis=1)) if allowed is not None else []
        if len(short) and len(allowed) > (indices[short] >= 0).sum(axis=1).min():
            local, dist = cosine_topk(q_emb[short], store["embedding"][subset], topk)
            width = local.shape[1]
            indices[short] = -1
            distances[short] = np.inf
            indices[short, :width], distances[short, :width] = subset[local], dist
            method = f"faiss, exact over the filtered images for {len(short)} queries"
    else:
        local, distances = cosine_topk(q_emb, store["embedding"][subset], topk)
        indices = subset[local]
    results = {
        Path(q).name: [
            {"file": str(store["files"][i]), "distance": round(float(d), 6)}
            for i, d in zip(row, dist, strict=True) if i >= 0
        ]
        for q, row, dist in zip(queries, indices, distances, strict=True)
    }
    return results, {"queries": len(queries), "search": method, "search_device": device,
                     "candidates": int(len(store["files"]) if allowed is None else len(allowed))}
