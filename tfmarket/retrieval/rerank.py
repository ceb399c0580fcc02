"""k-reciprocal re-ranking (Zhong et al., "Re-ranking Person Re-identification with
k-reciprocal Encoding", CVPR 2017).

Two implementations of the same algorithm:

* :func:`k_reciprocal_rerank_dense`: the reference, following the authors' released
  ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2, lambda_value)`` (as shipped by torchreid)
  step by step on the dense (N+M) x (N+M) matrix. Use it for small sets and as a test oracle.
* :func:`k_reciprocal_rerank`: memory-bounded, from L2-normalised embeddings. It never forms
  the (N+M) x (N+M) matrix: neighbour lists are computed chunk by chunk, the encodings ``V``
  are scipy CSR matrices, and Jaccard distances are computed only for the query rows.
* :func:`k_reciprocal_neighbours`: the same distances among one set of samples (every sample
  is both query and gallery), kept only where they are small: the sparse radius graph that
  ``tfmarket.retrieval.cluster.dbscan`` clusters (``tfmarket.adapt``'s pseudo-labels).

Distance definition (identical in both, so they agree to float32 rounding):

* the reference squares the distances it is given, ``d = dist ** 2``, then divides each
  column of the full matrix by its maximum and transposes; for a symmetric matrix this is
  "each row divided by its own maximum over all N+M samples":
  ``d~(i, j) = d(i, j) / max_j' d(i, j')``;
* the bounded version uses, for unit vectors,
  ``d(i, j) = ||x_i - x_j||^2 = max(2 - 2 x_i . x_j, 0)`` with the same row normalisation.
  Feeding the reference the Euclidean distances ``sqrt(max(2 - 2 x_i . x_j, 0))`` therefore
  gives the same result.

(torchreid's engine feeds ``re_ranking`` its "euclidean" matrix, which is already squared, so
its ``d`` is a 4th power; the neighbour ranking is the same, only the weights and the lambda
mix differ.)

Both outputs are ``(1 - lambda) * jaccard + lambda * d~`` for the query rows and gallery
columns. Neighbour lists are ordered by ascending distance with ties broken by sample index
(stable sort; the released code uses an unstable ``argsort``). A row whose maximum distance is
0 (all samples identical) is divided by 1 instead of 0.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tfmarket.retrieval.search import topk_from_distances

# Pairs whose dot products are gathered at once when weighting the encodings.
_PAIR_BATCH = 8192


def _half(k1: int) -> int:
    # The released code uses np.around (round half to even): k1=5 -> 2, k1=20 -> 10.
    return int(np.around(k1 / 2.0))


def _row_normaliser(values: np.ndarray) -> np.ndarray:
    return np.where(values > 0, values, np.float32(1.0)).astype(np.float32)


def _k_reciprocal(initial_rank: np.ndarray, i: int, k: int) -> np.ndarray:
    forward = initial_rank[i, :k + 1]
    backward = initial_rank[forward, :k + 1]
    return forward[np.nonzero(backward == i)[0]]


def k_reciprocal_rerank_dense(
    q_g_dist: np.ndarray,
    q_q_dist: np.ndarray,
    g_g_dist: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
) -> np.ndarray:
    """Reference k-reciprocal re-ranking on dense distance matrices.

    Args:
        q_g_dist: float [N, M] query-gallery distances (e.g. Euclidean; they are squared).
        q_q_dist: float [N, N] query-query distances.
        g_g_dist: float [M, M] gallery-gallery distances.
        k1: size of the k-reciprocal neighbourhood.
        k2: neighbours averaged by local query expansion (1 = none).
        lambda_value: weight of the original distance in the final mix.

    Returns:
        float32 [N, M] re-ranked distances (smaller = more similar).
    """
    q_g = np.asarray(q_g_dist, dtype=np.float32)
    q_q = np.asarray(q_q_dist, dtype=np.float32)
    g_g = np.asarray(g_g_dist, dtype=np.float32)
    n, m = q_g.shape
    if q_q.shape != (n, n) or g_g.shape != (m, m):
        raise ValueError(
            f"expected q_q [{n}, {n}] and g_g [{m}, {m}] for q_g [{n}, {m}], "
            f"got {q_q.shape} and {g_g.shape}"
        )
    _check_params(k1, k2, lambda_value)
    total = n + m
    dist = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32) ** 2
    dist = np.transpose(dist / _row_normaliser(dist.max(axis=0)))
    initial_rank = np.argsort(dist, axis=1, kind="stable")

    v = np.zeros_like(dist)
    half = _half(k1)
    for i in range(total):
        recip = _k_reciprocal(initial_rank, i, k1)
        expansion = recip
        for cand in recip:
            cand_recip = _k_reciprocal(initial_rank, cand, half)
            if len(np.intersect1d(cand_recip, recip)) > 2.0 / 3 * len(cand_recip):
                expansion = np.append(expansion, cand_recip)
        expansion = np.unique(expansion)
        weight = np.exp(-dist[i, expansion])
        v[i, expansion] = weight / weight.sum()
    if k2 != 1:
        v = np.stack([v[initial_rank[i, :k2]].mean(axis=0) for i in range(total)])

    jaccard = np.empty((n, total), dtype=np.float32)
    for i in range(n):
        nonzero = np.nonzero(v[i])[0]
        # min(V_i, V_j) is 0 wherever V_i is 0, so only V_i's support contributes.
        inter = np.minimum(v[:, nonzero], v[i, nonzero]).sum(axis=1)
        jaccard[i] = 1.0 - inter / (2.0 - inter)
    final = jaccard * (1 - lambda_value) + dist[:n] * lambda_value
    return final[:, n:].astype(np.float32)


def _check_params(k1: int, k2: int, lambda_value: float) -> None:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")


def _reciprocal_mask(neighbors: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """bool [len(rows), k]: is row r among the first k neighbours of its a-th neighbour?"""
    forward = neighbors[rows, :k]
    backward = neighbors[forward, :k]
    return (backward == rows[:, None, None]).any(axis=-1)


def _expansion_pairs(
    neighbors: np.ndarray, half_mask: np.ndarray, rows: np.ndarray, kk: int, hh: int
) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) pairs of the expanded k-reciprocal sets of ``rows``, one per member."""
    forward = neighbors[rows, :kk]
    recip_mask = _reciprocal_mask(neighbors, rows, kk)
    recip = np.where(recip_mask, forward, -1)
    cand_mask = half_mask[forward]  # [c, kk, hh]: half-size reciprocal set of each neighbour
    cand_sets = np.where(cand_mask, neighbors[forward, :hh], -1)
    shared = ((cand_sets[..., None] == recip[:, None, None, :]) & cand_mask[..., None]).any(-1)
    accept = recip_mask & (shared.sum(-1) > 2.0 / 3 * cand_mask.sum(-1))
    added = np.where(accept[..., None], cand_sets, -1).reshape(len(rows), -1)
    members = np.sort(np.concatenate([recip, added], axis=1), axis=1)
    keep = members >= 0
    keep[:, 1:] &= members[:, 1:] != members[:, :-1]
    r, c = np.nonzero(keep)
    return rows[r], members[r, c]


def k_reciprocal_rerank(
    query_emb: np.ndarray,
    gallery_emb: np.ndarray,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    chunk_size: int = 512,
) -> np.ndarray:
    """Memory-bounded k-reciprocal re-ranking from L2-normalised embeddings.

    Same result as :func:`k_reciprocal_rerank_dense` fed Euclidean distances of the same
    embeddings (see the module docstring for the distance). Peak memory beyond the inputs
    and the [N, M] output: a ``chunk_size x (N+M)`` float32 distance block, the
    ``(N+M) x (k1+1)`` neighbour lists, and the sparse encodings (about
    ``(N+M) x k2 x |expanded set|`` non-zeros).

    Args:
        query_emb: float32 [N, D], L2-normalised.
        gallery_emb: float32 [M, D], L2-normalised.
        k1, k2, lambda_value: as in :func:`k_reciprocal_rerank_dense` (paper: 20, 6, 0.3).
        chunk_size: probes whose distances to all N+M samples are computed at a time.

    Returns:
        float32 [N, M] re-ranked distances.
    """
    q = np.asarray(query_emb, dtype=np.float32)
    g = np.asarray(gallery_emb, dtype=np.float32)
    if q.ndim != 2 or g.ndim != 2 or q.shape[1] != g.shape[1]:
        raise ValueError(
            f"embeddings must be [N, D] and [M, D] with the same D, got {q.shape} and {g.shape}"
        )
    _check_params(k1, k2, lambda_value)
    n = len(q)
    x = np.concatenate([q, g], axis=0)
    encoding = _KReciprocalEncoding(x, k1, k2, max(1, int(chunk_size)), block_rows=n)
    out = encoding.block  # the original (normalised) query-gallery distances, [N, M]
    # Pass 3: Jaccard distance of each query to the gallery.
    for i in range(n):
        inter = encoding.intersections(i)[n:]
        jaccard = 1.0 - inter / (2.0 - inter)
        out[i] = (1 - lambda_value) * jaccard + lambda_value * out[i]
    return out


class _KReciprocalEncoding:
    """Passes 1 and 2 of the bounded re-ranking over one set of samples ``x`` [T, D].

    Attributes:
        row_max: float32 [T], each sample's largest squared distance (the row normaliser).
        block: float32 [block_rows, T - block_rows], the normalised distances of the first
            ``block_rows`` samples to the others (the query-gallery block; empty when 0).
        v, v_csc: the k-reciprocal encodings V [T, T] (rows sum to 1), CSR and CSC.
    """

    def __init__(self, x: np.ndarray, k1: int, k2: int, chunk_size: int, block_rows: int = 0):
        self.x = x
        total = len(x)
        self.total = total
        kk = min(k1 + 1, total)
        hh = min(_half(k1) + 1, total)
        k2 = min(k2, total) if k2 != 1 else 1
        width = max(kk, k2)
        x_t = np.ascontiguousarray(x.T)
        n = block_rows

        # Pass 1: row maxima, neighbour lists, and the original (normalised) first-rows block.
        neighbors = np.empty((total, width), dtype=np.int64)
        row_max = np.empty(total, dtype=np.float32)
        out = np.empty((n, total - n), dtype=np.float32)
        for s in range(0, total, chunk_size):
            d = 2.0 - 2.0 * (x[s:s + chunk_size] @ x_t)
            np.maximum(d, 0.0, out=d)
            mx = _row_normaliser(d.max(axis=1))
            d /= mx[:, None]
            row_max[s:s + chunk_size] = mx
            neighbors[s:s + chunk_size] = topk_from_distances(d, width)[0]
            if s < n:
                stop = min(s + chunk_size, n)
                out[s:stop] = d[:stop - s, n:]
        self.row_max, self.block = row_max, out

        # Pass 2: sparse k-reciprocal encodings V (rows sum to 1).
        half_mask = np.empty((total, hh), dtype=bool)
        for s in range(0, total, chunk_size):
            rows = np.arange(s, min(s + chunk_size, total))
            half_mask[rows] = _reciprocal_mask(neighbors, rows, hh)
        pair_rows, pair_cols = [], []
        for s in range(0, total, chunk_size):
            rows = np.arange(s, min(s + chunk_size, total))
            r, c = _expansion_pairs(neighbors, half_mask, rows, kk, hh)
            pair_rows.append(r)
            pair_cols.append(c)
        rows = np.concatenate(pair_rows)
        cols = np.concatenate(pair_cols)
        weight = np.empty(len(rows), dtype=np.float32)
        for s in range(0, len(rows), _PAIR_BATCH):
            r, c = rows[s:s + _PAIR_BATCH], cols[s:s + _PAIR_BATCH]
            d = np.maximum(2.0 - 2.0 * np.einsum("ij,ij->i", x[r], x[c]), 0.0) / row_max[r]
            weight[s:s + _PAIR_BATCH] = np.exp(-d)
        weight /= np.bincount(rows, weights=weight, minlength=total).astype(np.float32)[rows]
        v = sp.csr_matrix((weight, (rows, cols)), shape=(total, total), dtype=np.float32)

        if k2 != 1:
            # Local query expansion: each encoding becomes the mean of its k2 nearest encodings.
            avg = sp.csr_matrix(
                (
                    np.full(total * k2, 1.0 / k2, dtype=np.float32),
                    neighbors[:, :k2].reshape(-1),
                    np.arange(0, total * k2 + 1, k2),
                ),
                shape=(total, total),
            )
            v = (avg @ v).tocsr()
        v.sort_indices()
        self.v, self.v_csc = v, v.tocsc()

    def intersections(self, i: int) -> np.ndarray:
        """float64 [T]: sum over k of min(V[i, k], V[j, k]) for every sample j.

        Through V's columns (the inverted index of the paper): only samples sharing a non-zero
        with sample i contribute, so a row costs its neighbourhood, not T x T.
        """
        v, v_csc = self.v, self.v_csc
        lo, hi = v.indptr[i], v.indptr[i + 1]
        support, values = v.indices[lo:hi], v.data[lo:hi]
        starts = v_csc.indptr[support]
        lengths = v_csc.indptr[support + 1] - starts
        pos = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
        mins = np.minimum(v_csc.data[pos], np.repeat(values, lengths))
        return np.bincount(v_csc.indices[pos], weights=mins, minlength=self.total)


def k_reciprocal_neighbours(
    embeddings: np.ndarray,
    max_distance: float,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.0,
    chunk_size: int = 512,
) -> sp.csr_matrix:
    """All-pairs k-reciprocal distances within one set, kept where they are small (clustering).

    The distance of samples i and j is ``(1 - lambda) * jaccard(i, j) + lambda * d~(i, j)``,
    as in :func:`k_reciprocal_rerank` with the set as both query and gallery, except that the
    original distance is made symmetric, ``d~(i, j) = d(i, j) (1/max_i + 1/max_j) / 2``
    (each row normalised by its own maximum, then averaged over the two directions), so the
    result is a symmetric distance, as DBSCAN needs. ``lambda_value = 0`` (pure Jaccard) is
    what SpCL and Cluster Contrast cluster on.

    Only pairs whose distance is at most ``max_distance`` are stored: a sparse radius graph,
    never the [N, N] matrix (22k crops would take 1.9 GB dense). Pairs that share no
    k-reciprocal neighbour have Jaccard distance 1, so ``max_distance < 1 - lambda_value`` is
    required: then every stored pair shares a neighbour and is found through the inverted
    index.

    Args:
        embeddings: float32 [N, D], L2-normalised.
        max_distance: keep pairs with distance <= this (e.g. DBSCAN's eps).
        k1, k2, lambda_value: as in :func:`k_reciprocal_rerank_dense`.
        chunk_size: rows whose distances are computed at a time.

    Returns:
        float32 CSR [N, N], symmetric, holding every pair within ``max_distance`` including
        the diagonal (distance 0, stored explicitly): stored entries are the neighbourhoods.
    """
    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got {x.shape}")
    _check_params(k1, k2, lambda_value)
    if not 0.0 <= max_distance < 1.0 - lambda_value:
        raise ValueError(f"max_distance must be in [0, 1 - lambda_value) = [0, "
                         f"{1.0 - lambda_value:g}), got {max_distance}")
    rows, cols, vals = [], [], []
    for start, dist in k_reciprocal_distance_rows(x, k1, k2, lambda_value, chunk_size):
        r, c = np.nonzero(dist <= max_distance)
        rows.append(r + start)
        cols.append(c)
        vals.append(dist[r, c])
    n = len(x)
    graph = sp.csr_matrix(
        (np.concatenate(vals) if vals else np.zeros(0, np.float32),
         (np.concatenate(rows) if rows else np.zeros(0, np.int64),
          np.concatenate(cols) if cols else np.zeros(0, np.int64))),
        shape=(n, n), dtype=np.float32)
    graph.sort_indices()
    return graph


def k_reciprocal_distance_rows(embeddings: np.ndarray, k1: int = 20, k2: int = 6,
                               lambda_value: float = 0.0, chunk_size: int = 512):
    """Yields the all-pairs distances of :func:`k_reciprocal_neighbours`, a block of rows at a
    time: (first row, float32 [c, N]) with c <= ``chunk_size``. For statistics over every pair
    (e.g. an eps from a quantile) without holding [N, N]."""
    x = np.asarray(embeddings, dtype=np.float32)
    _check_params(k1, k2, lambda_value)
    n = len(x)
    chunk_size = max(1, int(chunk_size))
    encoding = _KReciprocalEncoding(x, k1, k2, chunk_size)
    inv_max = 1.0 / encoding.row_max
    for s in range(0, n, chunk_size):
        stop = min(s + chunk_size, n)
        block = np.empty((stop - s, n), dtype=np.float32)
        for i in range(s, stop):
            inter = encoding.intersections(i)
            block[i - s] = 1.0 - inter / (2.0 - inter)
        if lambda_value:
            d = np.maximum(2.0 - 2.0 * (x[s:stop] @ x.T), 0.0)
            d *= (inv_max[s:stop, None] + inv_max[None, :]) / 2
            block = (1 - lambda_value) * block + lambda_value * d
        yield s, block
