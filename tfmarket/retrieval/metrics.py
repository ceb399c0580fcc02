"""Re-ID evaluation metrics: Market-1501 ranking (CMC, mAP, mINP); attribute recognition is in
:mod:`tfmarket.retrieval.attribute_metrics`.

Plain NumPy (no TensorFlow), so CLIs and notebooks can use it cheaply.

Re-ID protocol (Market-1501, as torchreid's ``eval_market1501`` and the official MATLAB code):

* for each query, gallery images with the query's identity **and** camera are removed
  (they are "junk": same-view shots are too easy); camera ``-1`` means unknown and is never
  "the same camera" (datasets of your own crops without cameras: every gallery image of the
  query's identity is a true match);
* gallery images with identity ``-1`` (Market's junk detections) are removed for every query;
* identity ``0`` (Market's ``0000`` distractors) stays in the gallery as a negative;
* a query with no remaining true match is skipped (it has no defined AP); the metrics are
  averaged over the remaining "valid" queries;
* the gallery is ranked by ascending distance with a **stable** sort, so equal distances are
  ranked by gallery index (torchreid's default ``np.argsort`` leaves tie order unspecified).

Per valid query, with the true matches at 1-based ranks ``n_1 < n_2 < ... < n_G`` among the
kept gallery images:

* ``AP`` (torchreid, non-interpolated): ``mean_j j / n_j``;
* ``AP_trapezoid`` (official ``compute_AP.m``): ``sum_j (1/G) * (p_{j-1}' + j / n_j) / 2`` with
  ``p_{j-1}' = (j - 1) / (n_j - 1)`` the precision one rank before the match (1 when ``n_j = 1``);
* ``INP`` (Ye et al., TPAMI 2021): ``G / n_G``, the precision at the hardest match;
* CMC hit at rank ``r``: ``n_1 <= r``.
"""

from __future__ import annotations

import numpy as np

from tfmarket.console import notice

JUNK_ID = -1
DISTRACTOR_ID = 0
DEFAULT_CHUNK = 256


# --------------------------------------------------------------------------------------
# Re-ID ranking
# --------------------------------------------------------------------------------------


def same_camera(q_cams: np.ndarray, g_cams: np.ndarray) -> np.ndarray:
    """Broadcast "same camera": a camera below 0 (-1 = unknown) is never the same camera."""
    return (g_cams == q_cams) & (q_cams >= 0) & (g_cams >= 0)


def _as_1d(name: str, values, length: int | None = None) -> np.ndarray:
    arr = np.asarray(values).reshape(-1)
    if length is not None and len(arr) != length:
        raise ValueError(f"{name} has {len(arr)} entries, expected {length}")
    return arr


def _check_labels(num_q: int, num_g: int, q_ids, g_ids, q_cams, g_cams):
    return (
        _as_1d("query_ids", q_ids, num_q),
        _as_1d("gallery_ids", g_ids, num_g),
        _as_1d("query_cams", q_cams, num_q),
        _as_1d("gallery_cams", g_cams, num_g),
    )


def per_query_metrics_from_order(
    order_rows: np.ndarray,
    query_ids,
    gallery_ids,
    query_cams,
    gallery_cams,
    max_rank: int = 50,
) -> dict[str, np.ndarray]:
    """Per-query ranking metrics from full gallery rankings.

    Args:
        order_rows: int [n, M]: for each query, a permutation of all M gallery indices, best
            first. Every row must rank the whole gallery (a truncated top-k list would miss
            true matches and give wrong AP).
        query_ids, query_cams: int [n].
        gallery_ids, gallery_cams: int [M]; identity -1 is junk, 0 a distractor.
        max_rank: length of the CMC hit vectors.

    Returns:
        dict of numpy arrays, one entry per query:
        ``ap`` float64 [n] (non-interpolated), ``ap_trapezoid`` float64 [n] (official MATLAB),
        ``inp`` float64 [n], ``cmc_hits`` bool [n, max_rank], ``valid`` bool [n],
        ``num_matches`` int64 [n]. Invalid queries (no true match left) have NaN metrics
        and all-False hits.
    """
    order_rows = np.asarray(order_rows)
    if order_rows.ndim != 2:
        raise ValueError(f"order_rows must be 2-D [n, M], got shape {order_rows.shape}")
    num_q, num_g = order_rows.shape
    q_ids, g_ids, q_cams, g_cams = _check_labels(
        num_q, num_g, query_ids, gallery_ids, query_cams, gallery_cams
    )
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")

    ranked_ids = g_ids[order_rows]
    same_id = ranked_ids == q_ids[:, None]
    same_cam = same_camera(q_cams[:, None], g_cams[order_rows])
    keep = ~((same_id & same_cam) | (ranked_ids == JUNK_ID))
    match = same_id & keep
    # 1-based rank of every position among the kept gallery images (junk does not count).
    kept_rank = np.cumsum(keep, axis=1, dtype=np.int32)
    # Number of true matches seen so far, i.e. j at the j-th match.
    match_count = np.cumsum(match, axis=1, dtype=np.int32)
    num_matches = match_count[:, -1] if num_g else np.zeros(num_q, dtype=np.int64)
    rows, cols = np.nonzero(match)
    return _metrics_from_match_ranks(rows, kept_rank[rows, cols], match_count[rows, cols],
                                     num_matches, num_q, max_rank)


def _metrics_from_match_ranks(rows, kept_ranks, match_numbers, num_matches, num_q: int,
                              max_rank: int) -> dict[str, np.ndarray]:
    """Per-query metrics from every true match's place in its query's ranking.

    Args:
        rows: int [K] the query of each of the K true matches (all queries' matches together).
        kept_ranks: int [K] 1-based rank of the match among the query's kept gallery images.
        match_numbers: int [K] j for the query's j-th match in ranked order.
        num_matches: int [num_q] true matches per query.

    Returns:
        The dict of :func:`per_query_metrics_from_order`.
    """
    num_matches = np.asarray(num_matches)
    valid = num_matches > 0
    n = np.asarray(kept_ranks, dtype=np.float64)
    j = np.asarray(match_numbers, dtype=np.float64)
    precision = j / n
    prev_precision = np.where(n > 1, (j - 1) / np.maximum(n - 1, 1), 1.0)

    good = np.maximum(num_matches, 1).astype(np.float64)
    with np.errstate(invalid="ignore"):
        ap = np.bincount(rows, weights=precision, minlength=num_q) / good
        trap_terms = (prev_precision + precision) / 2
        ap_trap = np.bincount(rows, weights=trap_terms, minlength=num_q) / good
    last_rank = np.zeros(num_q, dtype=np.float64)
    np.maximum.at(last_rank, rows, n)
    first_rank = np.full(num_q, np.inf)
    np.minimum.at(first_rank, rows, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        inp = num_matches / last_rank
    nan = np.full(num_q, np.nan)
    # Ranks past the end of the kept list carry the last CMC value, as the rank is a cumulative
    # indicator; first_rank <= num kept so a valid query always reaches 1.
    hits = first_rank[:, None] <= np.arange(1, max_rank + 1)[None, :]
    return {
        "ap": np.where(valid, ap, nan),
        "ap_trapezoid": np.where(valid, ap_trap, nan),
        "inp": np.where(valid, inp, nan),
        "cmc_hits": hits & valid[:, None],
        "valid": valid,
        "num_matches": num_matches.astype(np.int64),
    }


def per_query_metrics(
    dist_rows: np.ndarray,
    query_ids,
    gallery_ids,
    query_cams,
    gallery_cams,
    max_rank: int = 50,
) -> dict[str, np.ndarray]:
    """Per-query ranking metrics from distance rows (a chunk of queries x the whole gallery).

    Ranks each row by ascending distance, ties by gallery index (as a stable sort would), and
    gives what :func:`per_query_metrics_from_order` gives for that order. Chunks of queries can
    be evaluated independently and concatenated, so a huge gallery never needs the full N x M
    matrix at once.

    Args:
        dist_rows: float [n, M] distances of n queries to all M gallery images.
        query_ids, query_cams: int [n]; gallery_ids, gallery_cams: int [M].
        max_rank: length of the CMC hit vectors.

    Returns:
        Same dict as :func:`per_query_metrics_from_order`.
    """
    dist_rows = np.asarray(dist_rows)
    if dist_rows.ndim != 2:
        raise ValueError(f"distances must be 2-D [n, M], got shape {dist_rows.shape}")
    if dist_rows.size and not np.isfinite(dist_rows).all():
        # NaN/inf: rank by a full stable argsort (NaN last), the reference path.
        order = np.argsort(dist_rows, axis=1, kind="stable")
        return per_query_metrics_from_order(
            order, query_ids, gallery_ids, query_cams, gallery_cams, max_rank
        )
    num_q, num_g = dist_rows.shape
    q_ids, g_ids, q_cams, g_cams = _check_labels(
        num_q, num_g, query_ids, gallery_ids, query_cams, gallery_cams
    )
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    # Only the true matches' ranks matter, so no query's gallery is argsorted: each row's kept
    # distances are sorted by value (NumPy's SIMD sort, several times faster than a stable
    # argsort) and every match's rank is found by binary search, ties broken by gallery index
    # exactly as the stable argsort of per_query_metrics_from_order breaks them.
    same_id = g_ids[None, :] == q_ids[:, None]
    same_cam = same_camera(q_cams[:, None], g_cams[None, :])
    keep = ~((same_id & same_cam) | (g_ids == JUNK_ID)[None, :])
    match = same_id & keep
    kept_sorted = np.sort(np.where(keep, dist_rows, np.inf), axis=1)
    num_kept = keep.sum(axis=1)
    rows, kept_ranks, match_numbers = [], [], []
    for i in range(num_q):
        where = np.flatnonzero(match[i])
        if where.size == 0:
            continue
        found = dist_rows[i, where]
        prefix = kept_sorted[i, :num_kept[i]]
        below = np.searchsorted(prefix, found, side="left")
        rank = below + 1
        for t in np.flatnonzero(np.searchsorted(prefix, found, side="right") - below > 1):
            upto = where[t] + 1  # kept images at the same distance, earlier in the gallery
            rank[t] = below[t] + np.count_nonzero(keep[i, :upto]
                                                  & (dist_rows[i, :upto] == found[t]))
        # Matches in ranked order (by distance, then gallery index), as the full ranking
        # lists them: the j-th is the query's j-th match, and the per-query sums add up in
        # the same order, so results are bit-identical.
        ranked = np.argsort(found, kind="stable")
        rows.append(np.full(where.size, i))
        kept_ranks.append(rank[ranked])
        match_numbers.append(np.arange(1, where.size + 1))
    if rows:
        rows, kept_ranks, match_numbers = (np.concatenate(a) for a in
                                           (rows, kept_ranks, match_numbers))
    else:
        rows = kept_ranks = match_numbers = np.zeros(0, dtype=np.int64)
    return _metrics_from_match_ranks(rows, kept_ranks, match_numbers,
                                     match.sum(axis=1).astype(np.int64), num_q, max_rank)


def _effective_max_rank(max_rank: int, num_g: int) -> int:
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if num_g == 0:
        raise ValueError("the gallery is empty: nothing to rank")
    if num_g < max_rank:
        # Same behaviour as torchreid: the CMC is only as long as the gallery.
        notice(f"the gallery has only {num_g} images, so the CMC curve stops at rank {num_g}")
        return num_g
    return max_rank


def _summarise(parts: list[dict[str, np.ndarray]], num_q: int, max_rank: int) -> dict:
    valid = np.concatenate([p["valid"] for p in parts]) if parts else np.zeros(0, bool)
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError(
            "no valid query: no query identity has a gallery image from another camera "
            "(after removing same-camera matches and junk -1 images), so CMC/mAP are undefined"
        )
    ap = np.concatenate([p["ap"] for p in parts])[valid]
    ap_trap = np.concatenate([p["ap_trapezoid"] for p in parts])[valid]
    inp = np.concatenate([p["inp"] for p in parts])[valid]
    hits = np.concatenate([p["cmc_hits"] for p in parts])[valid][:, :max_rank]
    cmc = hits.sum(axis=0) / num_valid

    def at(rank: int) -> float:
        # Galleries shorter than the rank carry the last CMC value (the curve is cumulative).
        return float(cmc[min(rank, len(cmc)) - 1])

    return {
        "mAP": float(ap.mean()),
        "mAP_trapezoid": float(ap_trap.mean()),
        "mINP": float(inp.mean()),
        "rank1": at(1),
        "rank5": at(5),
        "rank10": at(10),
        "cmc": [float(v) for v in cmc],
        "num_valid_queries": num_valid,
        "num_queries": int(num_q),
    }


def evaluate_ranking(
    distmat: np.ndarray,
    query_ids,
    gallery_ids,
    query_cams,
    gallery_cams,
    max_rank: int = 50,
    chunk_size: int = DEFAULT_CHUNK,
) -> dict:
    """Market-1501 ranking metrics from a dense distance matrix, evaluated in query chunks.

    Args:
        distmat: float [N, M] query-gallery distances (smaller = more similar).
        query_ids, query_cams: int [N]; gallery_ids, gallery_cams: int [M]
            (gallery identity -1 = junk, removed; 0 = distractor, kept as a negative).
        max_rank: CMC length; a gallery smaller than it truncates the CMC to M (with a
            warning), as torchreid does.
        chunk_size: queries argsorted at a time (bounds the int64 [chunk, M] work arrays).

    Returns:
        JSON-serialisable dict: ``mAP`` (non-interpolated, torchreid), ``mAP_trapezoid``
        (official MATLAB ``compute_AP.m``), ``mINP``, ``rank1``, ``rank5``, ``rank10``
        (fractions in [0, 1]; ranks beyond the CMC length carry its last value), ``cmc``
        (list of floats), ``num_valid_queries``, ``num_queries``.

    Raises:
        ValueError: bad shapes, or no valid query.
    """
    distmat = np.asarray(distmat)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D [N, M], got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    q_ids, g_ids, q_cams, g_cams = _check_labels(
        num_q, num_g, query_ids, gallery_ids, query_cams, gallery_cams
    )
    max_rank = _effective_max_rank(max_rank, num_g)
    chunk_size = max(1, int(chunk_size))
    parts = [
        per_query_metrics(
            distmat[s:s + chunk_size], q_ids[s:s + chunk_size], g_ids,
            q_cams[s:s + chunk_size], g_cams, max_rank,
        )
        for s in range(0, num_q, chunk_size)
    ]
    return _summarise(parts, num_q, max_rank)


def evaluate_from_features(
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    query_ids,
    gallery_ids,
    query_cams,
    gallery_cams,
    max_rank: int = 50,
    chunk_size: int = DEFAULT_CHUNK,
) -> dict:
    """Like :func:`evaluate_ranking`, with cosine distances computed chunk by chunk.

    Distance = ``1 - q . g`` in float32, for L2-normalised embeddings (not re-normalised
    here). Peak memory is about ``chunk_size x M`` float32 distances plus int64 ranks.

    Args:
        query_emb: float32 [N, D], L2-normalised rows.
        gallery_emb: float32 [M, D], L2-normalised rows.
        query_ids, query_cams: int [N]; gallery_ids, gallery_cams: int [M].
        max_rank, chunk_size: as in :func:`evaluate_ranking`.

    Returns:
        The same dict as :func:`evaluate_ranking` on the dense cosine distance matrix.
    """
    q = np.asarray(query_emb, dtype=np.float32)
    g = np.asarray(gallery_emb, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(
            f"embeddings must be [N, D] and [M, D] with the same D, got {q.shape} and {g.shape}"
        )
    num_q, num_g = len(q), len(g)
    q_ids, g_ids, q_cams, g_cams = _check_labels(
        num_q, num_g, query_ids, gallery_ids, query_cams, gallery_cams
    )
    max_rank = _effective_max_rank(max_rank, num_g)
    chunk_size = max(1, int(chunk_size))
    g_t = np.ascontiguousarray(g.T)
    parts = []
    for s in range(0, num_q, chunk_size):
        dist = 1.0 - q[s:s + chunk_size] @ g_t
        parts.append(
            per_query_metrics(
                dist, q_ids[s:s + chunk_size], g_ids, q_cams[s:s + chunk_size], g_cams,
                max_rank,
            )
        )
    return _summarise(parts, num_q, max_rank)


def market1501_cmc_map(
    distmat: np.ndarray,
    query_ids,
    gallery_ids,
    query_cams,
    gallery_cams,
    max_rank: int = 50,
) -> tuple[np.ndarray, float]:
    """torchreid's ``eval_market1501``: CMC curve and non-interpolated mAP.

    Differences from torchreid, all documented in the module docstring: gallery identity -1
    is removed for every query; ties are ranked by gallery index; a query whose kept gallery
    is shorter than ``max_rank`` carries its last CMC value instead of failing.

    Args:
        distmat: float [N, M] query-gallery distances.
        query_ids, query_cams: int [N]; gallery_ids, gallery_cams: int [M].
        max_rank: CMC length; truncated to M (with a warning) when the gallery is smaller.

    Returns:
        (cmc float64 [min(max_rank, M)], mAP float).

    Raises:
        ValueError: no valid query (torchreid asserts instead).
    """
    result = evaluate_ranking(distmat, query_ids, gallery_ids, query_cams, gallery_cams, max_rank)
    return np.asarray(result["cmc"], dtype=np.float64), result["mAP"]
