"""Exact and approximate (faiss) cosine nearest-neighbour search over embeddings.

Embeddings are expected L2-normalised (:func:`l2_normalize`), so cosine similarity is the
inner product and the distance used throughout is ``1 - q . g`` in [0, 2].

Exact search (:func:`cosine_topk`) works chunk by chunk: at most ``chunk_size x M`` float32
distances live at a time. Results are ordered by ascending distance, equal distances by
gallery index, i.e. exactly the first k columns of a stable full argsort.

Approximate search uses faiss (:func:`build_faiss_index`, searched with :func:`faiss_topk`):
``flat`` (exact) and ``ivf`` (IVF-Flat) store 4 x D bytes a vector, ``ivfpq`` (IVF + product
quantiser) ``m`` bytes (fast, coarse ranking), ``ivfpq-refine`` re-ranks ``k_factor x k``
IVF-PQ candidates with D-byte 8-bit scalar-quantised copies (or 2 x D-byte float16 ones):
near-exact top-k at a quarter (half) of IVF-Flat's memory.

faiss is optional and imported only by the functions that need it.
"""

from __future__ import annotations

import contextlib

import numpy as np

FAISS_KINDS = ("flat", "ivf", "ivfpq", "ivfpq-refine")
REFINE_TYPES = ("sq8", "fp16")  # ivfpq-refine re-ranking codes: 1 or 2 bytes a dim
PQ_ENCODE_BYTES = 64 * 1024 * 1024  # scratch allowed for faiss's PQ encoder, see _bounded_pq_add


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
            "tfmarket.retrieval.search.cosine_topk for exact search"
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
    k_factor: float = 8.0,
    refine: str = "sq8",
):
    """A faiss inner-product index over L2-normalised gallery embeddings.

    Memory per gallery vector (D dims): ``flat`` / ``ivf`` 4 x D bytes, ``ivfpq`` m x nbits / 8
    bytes (+ 8 for the id), ``ivfpq-refine`` that plus D (``sq8``) or 2 x D (``fp16``) bytes;
    e.g. 1M x 2048 with m=128: flat 8.2 GB, ivfpq 0.14 GB, ivfpq-refine sq8 2.2 GB.

    Args:
        gallery_emb: float32 [M, D], L2-normalised; also the training set of IVF/PQ/SQ.
        kind: ``"flat"`` (exact), ``"ivf"`` (IVF-Flat), ``"ivfpq"`` (IVF + product quantiser)
            or ``"ivfpq-refine"`` (IVF-PQ candidates re-ranked by scalar-quantised vectors,
            a faiss ``IndexRefine`` around an ``IndexIVFPQ``).
        nlist: IVF cells (needs M >= nlist training vectors).
        m: PQ sub-quantisers (D must be divisible by m).
        nbits: bits per PQ code (needs M >= 2**nbits training vectors).
        nprobe: IVF cells visited per query (recall/speed trade-off).
        seed: k-means seed, for reproducible IVF/PQ training.
        k_factor: ``ivfpq-refine`` only: the IVF-PQ stage returns ``k_factor x k`` candidates
            per query, which are re-ranked by the refine codes (>= 1; recall/speed trade-off).
        refine: ``ivfpq-refine`` only: re-ranking codes, ``"sq8"`` (8-bit scalar quantiser,
            D bytes a vector) or ``"fp16"`` (2 x D bytes, near-exact).

    Returns:
        A trained faiss index holding the gallery in its original order (ids 0..M-1); nprobe
        and k_factor are stored in it (and saved by ``faiss.write_index``); change them with
        :func:`set_search_params`.
    """
    index = train_faiss_index(gallery_emb, kind=kind, nlist=nlist, m=m, nbits=nbits,
                              nprobe=nprobe, seed=seed, k_factor=k_factor, refine=refine)
    add_to_faiss_index(index, gallery_emb)
    return index


def train_faiss_index(
    train_emb: np.ndarray,
    kind: str = "flat",
    nlist: int = 100,
    m: int = 16,
    nbits: int = 8,
    nprobe: int = 10,
    seed: int = 1234,
    k_factor: float = 8.0,
    refine: str = "sq8",
):
    """An empty :func:`build_faiss_index` index trained on ``train_emb`` (float32 [T, D],
    L2-normalised; a sample of the gallery), to be filled with :func:`add_to_faiss_index` piece
    by piece, so a gallery too large for memory is never held whole (``flat`` needs no
    training: ``train_emb`` gives only D). Arguments as :func:`build_faiss_index`; the size
    checks apply to T.
    """
    faiss = _import_faiss()
    g = np.ascontiguousarray(train_emb, dtype=np.float32)
    if g.ndim != 2 or len(g) == 0:
        raise ValueError(f"gallery_emb must be a non-empty [M, D] array, got shape {g.shape}")
    num, dim = g.shape
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind in ("ivf", "ivfpq", "ivfpq-refine"):
        if num < nlist:
            raise ValueError(f"{kind} with nlist={nlist} needs at least {nlist} vectors, got {num}")
        quantizer = faiss.IndexFlatIP(dim)
        if kind == "ivf":
            index = ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:
            if dim % m:
                raise ValueError(f"{kind} needs D divisible by m; D={dim}, m={m}")
            if num < 2**nbits:
                raise ValueError(
                    f"{kind} with nbits={nbits} needs >= {2**nbits} vectors, got {num}")
            index = ivf = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits,
                                           faiss.METRIC_INNER_PRODUCT)
            ivf.pq.cp.seed = seed
        # faiss's Python wrapper keeps sub-indexes alive (index.referenced_objects).
        ivf.cp.seed = seed
        if kind == "ivfpq-refine":
            if refine not in REFINE_TYPES:
                raise ValueError(f"unknown refine {refine!r}; valid: {', '.join(REFINE_TYPES)}")
            qtype = (faiss.ScalarQuantizer.QT_8bit if refine == "sq8"
                     else faiss.ScalarQuantizer.QT_fp16)
            codes = faiss.IndexScalarQuantizer(dim, qtype, faiss.METRIC_INNER_PRODUCT)
            index = faiss.IndexRefine(ivf, codes)  # train/add go to both
        index.train(g)
        set_search_params(index, nprobe=nprobe,
                          k_factor=k_factor if kind == "ivfpq-refine" else None)
    else:
        raise ValueError(f"unknown faiss index kind {kind!r}; valid: {', '.join(FAISS_KINDS)}")
    return index


def add_to_faiss_index(index, emb: np.ndarray) -> None:
    """Appends embeddings to a :func:`build_faiss_index` index (ids continue from ntotal).

    Prefer this to ``index.add`` for ``ivfpq`` / ``ivfpq-refine``: it bounds faiss's PQ
    encoding scratch (see :data:`PQ_ENCODE_BYTES`), which is otherwise gigabytes.

    Args:
        index: faiss index over D-dim vectors.
        emb: float32 [n, D], L2-normalised.
    """
    faiss = _import_faiss()
    x = np.ascontiguousarray(emb, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != index.d:
        raise ValueError(f"emb must be [n, {index.d}], got shape {x.shape}")
    with _bounded_pq_add(faiss, index):
        index.add(x)


@contextlib.contextmanager
def _bounded_pq_add(faiss, index):
    """Caps faiss's PQ encoder block while adding to an IVF-PQ index.

    ``ProductQuantizer::compute_codes`` allocates float32 distance tables of
    n x 256 x m for its whole block (up to 32,768 vectors per IVF-PQ add batch): 4.3 GB at
    m=128 (2048-d, 16 dims a sub-quantiser), more than the index itself. The block size is a
    faiss global (``cvar.product_quantizer_compute_codes_bs``), restored afterwards; smaller
    blocks encode no slower.
    """
    ivf = faiss.try_extract_index_ivf(index)
    pq = getattr(faiss.downcast_index(ivf), "pq", None) if ivf is not None else None
    old = faiss.cvar.product_quantizer_compute_codes_bs
    if pq is not None:
        per_vector = pq.ksub * pq.M * 4
        faiss.cvar.product_quantizer_compute_codes_bs = max(
            1, min(old, PQ_ENCODE_BYTES // per_vector))
    try:
        yield
    finally:
        faiss.cvar.product_quantizer_compute_codes_bs = old


def set_search_params(index, nprobe: int | None = None, k_factor: float | None = None) -> None:
    """Sets the search-time knobs of a :func:`build_faiss_index` (or ``faiss.read_index``) index.

    Args:
        index: faiss index; ``nprobe`` needs an IVF one (also inside an ``IndexRefine``),
            ``k_factor`` an ``IndexRefine`` (``ivfpq-refine``).
        nprobe: IVF cells visited per query (clipped to nlist by faiss); None: unchanged.
        k_factor: candidates re-ranked per wanted result (>= 1); None: unchanged.
    """
    faiss = _import_faiss()
    if nprobe is not None:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            raise ValueError(f"nprobe needs an IVF index, got {type(index).__name__}")
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        ivf.nprobe = int(nprobe)
    if k_factor is not None:
        if not isinstance(index, faiss.IndexRefine):
            raise ValueError(f"k_factor needs an ivfpq-refine index, got {type(index).__name__}")
        if k_factor < 1:
            raise ValueError(f"k_factor must be >= 1, got {k_factor}")
        index.k_factor = float(k_factor)


def _filter_params(faiss, index, selector):
    """faiss SearchParameters restricting ``index``'s search to ``selector``'s ids.

    An ``IndexRefine`` accepts only ``IndexRefineSearchParameters``; the selector goes to its
    base (IVF) index, so every candidate it re-ranks is an allowed id. Parameters replace
    the index's own settings, so nprobe and k_factor are copied from the index.
    """
    if isinstance(index, faiss.IndexRefine):
        base = _filter_params(faiss, faiss.downcast_index(index.base_index), selector)
        return faiss.IndexRefineSearchParameters(k_factor=index.k_factor,
                                                 base_index_params=base)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        return faiss.SearchParametersIVF(sel=selector, nprobe=ivf.nprobe)
    return faiss.SearchParameters(sel=selector)


def on_available_gpus(index, filtered: bool = False):
    """-> (index to search with, "gpu" or "cpu").

    A copy of ``index`` sharded over every visible GPU when faiss was built with GPU support
    (``faiss-gpu``) and sees one; otherwise, and for what faiss's GPU indexes do not run
    (``IndexRefine``, i.e. ``ivfpq-refine``; searches restricted by an id selector; an index
    type or PQ size without a GPU version), ``index`` itself on the CPU.
    """
    faiss = _import_faiss()
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus == 0 or filtered or isinstance(index, faiss.IndexRefine):
        return index, "cpu"
    try:
        return faiss.index_cpu_to_all_gpus(index), "gpu"
    except RuntimeError:  # no GPU implementation for this index: stay on the CPU
        return index, "cpu"


def faiss_topk(index, query_emb: np.ndarray, k: int,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """k nearest neighbours from a :func:`build_faiss_index` index, in ``cosine_topk``'s format.

    Args:
        index: faiss inner-product index over L2-normalised vectors.
        query_emb: float32 [N, D], L2-normalised.
        k: neighbours per query; clipped to the index size.
        allowed: optional int64 [A] gallery ids the search may return (e.g. the images whose
            predicted attributes match a filter); applied inside faiss's search
            (``IDSelectorBatch``; for ``ivfpq-refine`` in its IVF-PQ stage, so only allowed
            ids are re-ranked), so filtered results still fill k slots when possible.

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
        # the params objects hold references to the selector / base params they are given
        sims, idx = index.search(q, k, params=_filter_params(faiss, index, selector))
    idx = idx.astype(np.int64)
    dist = (1.0 - sims).astype(np.float32)
    dist[idx < 0] = np.inf
    order = np.lexsort((np.where(idx < 0, np.iinfo(np.int64).max, idx), dist), axis=1)
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(dist, order, axis=1)
