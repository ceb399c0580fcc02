"""Exact and approximate (faiss) cosine nearest-neighbour search over embeddings.

Embeddings are expected L2-normalised (:func:`l2_normalize`), so cosine similarity is the
inner product and the distance used throughout is ``1 - q . g`` in [0, 2].

Exact search (:func:`cosine_topk`) works chunk by chunk: at most ``chunk_size x M`` float32
distances live at a time. Results are ordered by ascending distance, equal distances by
gallery index, i.e. exactly the first k columns of a stable full argsort.

faiss is optional and imported only by :func:`build_faiss_index` / :func:`faiss_topk`.
"""

from __future__ import annotations

import numpy as np

FAISS_KINDS = ("flat", "ivf", "ivfpq")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero). float32 [N, D] -> float32 [N, D]."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, eps)


def _check_pair(query_emb, gallery_emb) -> tuple[np.ndarray, np.ndarray]:
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    g = np.ascontiguousarray(gallery_emb, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(
            f"embeddings must be [N, D] and [M, D] with the same D, got {q.shape} and {g.shape}"
        )
    return q, g


def cosine_distance(query_emb: np.ndarray, gallery_emb: np.ndarray) -> np.ndarray:
    """Dense cosine distance ``1 - q . g`` for small sets.

    Args:
        query_emb: float32 [N, D], L2-normalised.
        gallery_emb: float32 [M, D], L2-normalised.

    Returns:
        float32 [N, M].
    """
    q, g = _check_pair(query_emb, gallery_emb)
    return (1.0 - q @ g.T).astype(np.float32, copy=False)


def topk_from_distances(dist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest entries of each row, ascending, ties by column index.

    Equal to ``np.argsort(dist, axis=1, kind="stable")[:, :k]`` but O(M) per row
    (``np.argpartition``); rows whose k-th value is tied past the cut are resolved exactly.

    Args:
        dist: float [n, M].
        k: 1 <= k <= M.

    Returns:
        (indices int64 [n, k], distances [n, k] in ``dist``'s dtype).
    """
    dist = np.asarray(dist)
    n, m = dist.shape
    if not 1 <= k <= m:
        raise ValueError(f"k must be in [1, {m}], got {k}")
    if k == m:
        idx = np.argsort(dist, axis=1, kind="stable").astype(np.int64)
        return idx, np.take_along_axis(dist, idx, axis=1)
    idx = np.argpartition(dist, k - 1, axis=1)[:, :k].astype(np.int64)
    vals = np.take_along_axis(dist, idx, axis=1)
    kth = vals.max(axis=1)
    # argpartition picks arbitrarily among values equal to the k-th one; where more than k
    # entries are <= the k-th value, redo the row so the lowest indices win, like a stable sort.
    n_le = np.count_nonzero(dist <= kth[:, None], axis=1)
    for r in np.flatnonzero(n_le > k):
        cand = np.flatnonzero(dist[r] <= kth[r])
        cand = cand[np.argsort(dist[r, cand], kind="stable")[:k]]
        idx[r] = cand
        vals[r] = dist[r, cand]
    order = np.lexsort((idx, vals), axis=1)
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)


def cosine_topk(
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    k: int,
    chunk_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest gallery items by cosine distance, chunk by chunk.

    Args:
        query_emb: float32 [N, D], L2-normalised.
        gallery_emb: float32 [M, D], L2-normalised.
        k: neighbours per query; clipped to M when the gallery is smaller.
        chunk_size: queries per chunk; peak extra memory ~ ``chunk_size x M`` float32.

    Returns:
        (indices int64 [N, min(k, M)], distances float32 [N, min(k, M)]), ascending distance
        ``1 - q . g``, ties by gallery index.
    """
    q, g = _check_pair(query_emb, gallery_emb)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if len(g) == 0:
        raise ValueError("the gallery is empty")
    k = min(int(k), len(g))
    chunk_size = max(1, int(chunk_size))
    indices = np.empty((len(q), k), dtype=np.int64)
    distances = np.empty((len(q), k), dtype=np.float32)
    g_t = np.ascontiguousarray(g.T)
    for s in range(0, len(q), chunk_size):
        dist = 1.0 - q[s:s + chunk_size] @ g_t
        indices[s:s + chunk_size], distances[s:s + chunk_size] = topk_from_distances(dist, k)
    return indices, distances


def _import_faiss():
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "faiss is not installed; install faiss-cpu (pip install faiss-cpu) or use "
            "tfmarket.search.cosine_topk for exact search"
        ) from exc
    return faiss


def build_faiss_index(
    gallery_emb: np.ndarray,
    kind: str = "flat",
    nlist: int = 100,
    m: int = 16,
    nbits: int = 8,
    nprobe: int = 10,
    seed: int = 1234,
):
    """A faiss inner-product index over L2-normalised gallery embeddings.

    Args:
        gallery_emb: float32 [M, D], L2-normalised.
        kind: ``"flat"`` (exact), ``"ivf"`` (IVF-Flat) or ``"ivfpq"`` (IVF + product quantiser).
        nlist: IVF cells (needs M >= nlist training vectors).
        m: PQ sub-quantisers (D must be divisible by m).
        nbits: bits per PQ code (needs M >= 2**nbits training vectors).
        nprobe: IVF cells visited per query (recall/speed trade-off).
        seed: k-means seed, for reproducible IVF/PQ training.

    Returns:
        A trained faiss index holding the gallery in its original order (ids 0..M-1).
    """
    faiss = _import_faiss()
    g = np.ascontiguousarray(gallery_emb, dtype=np.float32)
    if g.ndim != 2 or len(g) == 0:
        raise ValueError(f"gallery_emb must be a non-empty [M, D] array, got shape {g.shape}")
    num, dim = g.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind in ("ivf", "ivfpq"):
        if num < nlist:
            raise ValueError(f"{kind} with nlist={nlist} needs at least {nlist} vectors, got {num}")
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if dim % m:
                raise ValueError(f"ivfpq needs D divisible by m; D={dim}, m={m}")
            if num < 2**nbits:
                raise ValueError(f"ivfpq with nbits={nbits} needs >= {2**nbits} vectors, got {num}")
            index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        # faiss's Python wrapper keeps the quantiser alive (index.referenced_objects).
        index.cp.seed = seed
        if kind == "ivfpq":
            index.pq.cp.seed = seed
        index.train(g)
        index.nprobe = int(nprobe)
    else:
        raise ValueError(f"unknown faiss index kind {kind!r}; valid: {', '.join(FAISS_KINDS)}")
    index.add(g)
    return index


def faiss_topk(index, query_emb: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours from a :func:`build_faiss_index` index, in ``cosine_topk``'s format.

    Args:
        index: faiss inner-product index over L2-normalised vectors.
        query_emb: float32 [N, D], L2-normalised.
        k: neighbours per query; clipped to the index size.
        allowed: optional int64 [A] gallery ids the search may return (e.g. the images whose
            predicted attributes match a filter); applied inside faiss's search
            (``IDSelectorBatch``), so filtered results still fill k slots when possible.

    Returns:
        (indices int64 [N, k], distances float32 [N, k] = 1 - inner product), ascending,
        ties by gallery index. Slots an IVF search could not fill hold index -1 and
        distance +inf (last).
    """
    q = np.ascontiguousarray(query_emb, dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != index.d:
        raise ValueError(f"query_emb must be [N, {index.d}], got shape {q.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    k = min(int(k), int(index.ntotal))
    if allowed is None:
        sims, idx = index.search(q, k)
    else:
        faiss = _import_faiss()
        allowed = np.ascontiguousarray(allowed, dtype=np.int64)
        selector = faiss.IDSelectorBatch(allowed)
        if hasattr(index, "nprobe"):
            params = faiss.SearchParametersIVF(sel=selector, nprobe=index.nprobe)
        else:
            params = faiss.SearchParameters(sel=selector)
        sims, idx = index.search(q, k, params=params)
    idx = idx.astype(np.int64)
    dist = (1.0 - sims).astype(np.float32)
    dist[idx < 0] = np.inf
    order = np.lexsort((np.where(idx < 0, np.iinfo(np.int64).max, idx), dist), axis=1)
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(dist, order, axis=1)
