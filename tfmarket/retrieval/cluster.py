"""Clustering unlabelled crops into pseudo-identities (``tfmarket.adapt``). NumPy/SciPy only.

* :func:`dbscan`: DBSCAN (Ester et al. 1996) on a precomputed distance, dense or a sparse radius
  graph such as :func:`tfmarket.retrieval.rerank.k_reciprocal_neighbours` returns.
* :func:`eps_from_quantile`: SSG / MMT's data-driven radius, the mean of the smallest fraction
  of all pairwise distances.
* :func:`cluster_stats`, :func:`cluster_centroids`: what a round reports, and the prototypes
  that initialise the classifier rows of new cluster identities.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

NOISE = -1


def _pairs_within(distances, eps: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, distances) of the pairs within ``eps``, self-pairs excluded.

    A sparse input's stored entries are its candidate pairs (explicit zeros count: two
    identical crops are at distance 0); entries it does not store are farther than any eps.
    """
    if sp.issparse(distances):
        coo = sp.coo_matrix(distances)
        rows, cols, vals = coo.row.astype(np.int64), coo.col.astype(np.int64), coo.data
    else:
        dense = np.asarray(distances)
        rows, cols = np.nonzero(dense <= eps)
        vals = dense[rows, cols]
    keep = (vals <= eps) & (rows != cols)
    return rows[keep], cols[keep], np.asarray(vals[keep], np.float64)


def dbscan(distances, eps: float, min_samples: int) -> np.ndarray:
    """DBSCAN on precomputed distances.

    A sample's neighbourhood is every sample within ``eps`` (``<=``), itself included, as in
    scikit-learn; a sample with at least ``min_samples`` neighbours is a core sample. Clusters
    are the connected components of core samples linked within ``eps``; a non-core sample
    within ``eps`` of a core sample joins the cluster of its nearest core neighbour (ties: the
    lower index), the rest is noise. The nearest-core rule makes the result independent of
    the visiting order (scikit-learn gives such a border sample to whichever cluster reaches
    it first); core samples and noise are the same as scikit-learn's.

    Args:
        distances: float [N, N], dense, or sparse with the pairs that may be within ``eps``
            stored (rows are read as neighbourhoods; pass a symmetric distance).
        eps: neighbourhood radius.
        min_samples: neighbours (self included) that make a core sample.

    Returns:
        int64 [N]: cluster 0..C-1, numbered in the order of their first core sample, or -1
        (noise).
    """
    shape = distances.shape
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"distances must be [N, N], got {shape}")
    if min_samples < 1:
        raise ValueError(f"min_samples must be >= 1, got {min_samples}")
    n = shape[0]
    rows, cols, vals = _pairs_within(distances, eps)
    # Duplicate stored pairs must count once.
    pair_id = np.unique(rows * n + cols, return_index=True)[1]
    rows, cols, vals = rows[pair_id], cols[pair_id], vals[pair_id]
    core = np.bincount(rows, minlength=n) + 1 >= min_samples  # + 1: the sample itself
    labels = np.full(n, NOISE, np.int64)
    core_idx = np.flatnonzero(core)
    if len(core_idx) == 0:
        return labels

    # Core samples: connected components of the core-core links.
    link = core[rows] & core[cols]
    graph = sp.csr_matrix((np.ones(link.sum(), np.int8), (rows[link], cols[link])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    comp = component[core_idx]
    uniq, first = np.unique(comp, return_index=True)  # first: position in core_idx order
    lookup = np.empty(component.max() + 1, np.int64)
    lookup[uniq[np.argsort(first)]] = np.arange(len(uniq))
    labels[core_idx] = lookup[comp]

    # Border samples: the cluster of the nearest core neighbour (then the lower index).
    border = ~core[rows] & core[cols]
    b_rows, b_cols, b_vals = rows[border], cols[border], vals[border]
    order = np.lexsort((b_cols, b_vals, b_rows))
    b_rows, b_cols = b_rows[order], b_cols[order]
    which, first = np.unique(b_rows, return_index=True)
    labels[which] = labels[b_cols[first]]
    return labels


def eps_from_quantile(distance_rows: Iterable[tuple[int, np.ndarray]], n: int,
                      quantile: float, bins: int = 10_000) -> float:
    """Mean of the smallest ``quantile`` fraction of the N (N - 1) / 2 pairwise distances.

    The radius SSG (Fu et al. 2019) and MMT (Ge et al. 2020) give DBSCAN (``rho = 1.6e-3`` on
    Market-1501), computed from blocks of rows without holding [N, N]: each pair i < j is
    counted once into ``bins`` bins over [0, 1]; within the last bin taken, its mean stands in
    for the exact values (error below 1 / ``bins``).

    Args:
        distance_rows: (first row, float [c, N]) blocks covering rows 0..N-1, distances in
            [0, 1] (as :func:`tfmarket.retrieval.rerank.k_reciprocal_distance_rows` yields).
        n: N.
        quantile: fraction in (0, 1].

    Returns:
        eps (float).
    """
    if not 0.0 < quantile <= 1.0:
        raise ValueError(f"quantile must be in (0, 1], got {quantile}")
    counts = np.zeros(bins, np.int64)
    sums = np.zeros(bins, np.float64)
    for start, block in distance_rows:
        rows = np.arange(start, start + len(block))
        upper = np.arange(n)[None, :] > rows[:, None]  # each pair once, no self-pairs
        values = np.clip(np.asarray(block, np.float64)[upper], 0.0, 1.0)
        index = np.minimum((values * bins).astype(np.int64), bins - 1)
        counts += np.bincount(index, minlength=bins)
        sums += np.bincount(index, weights=values, minlength=bins)
    total = n * (n - 1) // 2
    wanted = max(1, int(round(quantile * total)))
    cum = np.cumsum(counts)
    last = int(np.searchsorted(cum, wanted))  # the bin holding the wanted-th smallest value
    below = cum[last - 1] if last else 0
    taken = sums[:last].sum() + (wanted - below) * sums[last] / max(counts[last], 1)
    return float(taken / wanted)


def cluster_stats(labels: np.ndarray) -> dict:
    """What one clustering produced: clusters, outliers, clustered fraction, cluster sizes.

    Args:
        labels: int [N], cluster 0..C-1 or -1 (noise).
    """
    labels = np.asarray(labels)
    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, np.int64)
    clustered = int(sizes.sum())
    return {
        "crops": int(len(labels)),
        "clusters": int(len(sizes)),
        "outliers": int(len(labels) - clustered),
        "clustered_fraction": clustered / max(len(labels), 1),
        "mean_size": float(sizes.mean()) if len(sizes) else 0.0,
        "max_size": int(sizes.max()) if len(sizes) else 0,
        "sizes": sizes.tolist(),
    }


def cluster_centroids(embeddings: np.ndarray, labels: np.ndarray, num_clusters: int) -> np.ndarray:
    """L2-normalised mean embedding of each cluster.

    Args:
        embeddings: float [N, D].
        labels: int [N], cluster 0..C-1 or -1 (ignored).
        num_clusters: C.

    Returns:
        float32 [C, D].
    """
    labels = np.asarray(labels)
    keep = np.flatnonzero(labels >= 0)
    onehot = sp.csr_matrix((np.ones(len(keep), np.float32), (labels[keep], keep)),
                           shape=(num_clusters, len(labels)))
    sums = np.asarray(onehot @ np.asarray(embeddings, np.float32))
    norm = np.linalg.norm(sums, axis=1, keepdims=True)
    return (sums / np.maximum(norm, 1e-12)).astype(np.float32)


def drop_large_clusters(labels: np.ndarray, max_size: int) -> np.ndarray:
    """Clusters of more than ``max_size`` crops become outliers; the rest are renumbered 0..C'-1
    in their old order.

    A cluster far larger than the images a camera network holds of one person has merged
    several people; as one pseudo-identity it would pull them together.

    Args:
        labels: int [N], cluster 0..C-1 or -1.
        max_size: 0 keeps every cluster.

    Returns:
        int64 [N].
    """
    labels = np.asarray(labels, np.int64)
    if max_size <= 0 or not (labels >= 0).any():
        return labels.copy()
    sizes = np.bincount(labels[labels >= 0])
    kept = sizes <= max_size
    new_id = np.where(kept, np.cumsum(kept) - 1, NOISE)
    return np.where(labels >= 0, new_id[np.maximum(labels, 0)], NOISE).astype(np.int64)


def cluster_purity(labels: np.ndarray, true_ids: np.ndarray, *,
                   outliers_as_singletons: bool = False) -> dict:
    """How well pseudo-identities match true identities (for data whose identities are known).

    Args:
        labels: int [N], cluster or -1 (outlier).
        true_ids: int [N], the true identity of each crop.
        outliers_as_singletons: score every crop, each outlier as a cluster of its own. Then
            the pair recall counts the same-identity pairs an outlier leaves apart, so a
            clustering that keeps more crops is not penalised for it, as it is over the
            clustered crops alone; ``clustered_fraction`` still counts the real clusters.

    Returns:
        {"purity": share of clustered crops that belong to their cluster's most common
        identity, "pair_precision" / "pair_recall": over pairs of clustered crops, the share of
        same-cluster pairs that are one identity and of same-identity pairs that share a
        cluster, "pair_f1", "clustered_fraction"}. Empty clustering: zeros.
    """
    labels, true_ids = np.asarray(labels), np.asarray(true_ids)
    if outliers_as_singletons and (labels < 0).any() and (labels >= 0).any():
        singles = labels.copy()
        outliers = singles < 0
        singles[outliers] = labels.max() + 1 + np.arange(outliers.sum())
        return {**cluster_purity(singles, true_ids),
                "clustered_fraction": float((~outliers).mean())}
    keep = labels >= 0
    if not keep.any():
        return {"purity": 0.0, "pair_precision": 0.0, "pair_recall": 0.0, "pair_f1": 0.0,
                "clustered_fraction": 0.0}
    lab, ids = labels[keep], np.unique(true_ids[keep], return_inverse=True)[1]
    table = sp.csr_matrix((np.ones(len(lab)), (lab, ids))).toarray()  # [clusters, identities]
    purity = float(table.max(axis=1).sum() / len(lab))

    def pairs(counts):
        return float((counts * (counts - 1) / 2).sum())

    together = pairs(table)
    precision = together / max(pairs(table.sum(axis=1)), 1.0)
    recall = together / max(pairs(table.sum(axis=0)), 1.0)
    f1 = 2 * precision * recall / max(precision + recall, 1e-12)
    return {"purity": purity, "pair_precision": precision, "pair_recall": recall,
            "pair_f1": f1, "clustered_fraction": float(keep.mean())}
