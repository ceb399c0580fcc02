"""Tests for tfmarket.search: exact chunked top-k (ties included) and faiss agreement."""

from __future__ import annotations

import numpy as np
import pytest

from tfmarket.search import (
    build_faiss_index,
    cosine_distance,
    cosine_topk,
    faiss_topk,
    l2_normalize,
    topk_from_distances,
)


def _quantised(rng, n, d):
    # Entries in {-0.5, -0.25, ..., 0.5}: every dot product is exact in float32, so any
    # BLAS summation order gives identical distances and the tie rule can be checked exactly.
    return (rng.integers(-2, 3, size=(n, d)) / 4).astype(np.float32)


def _stable_reference(q, g, k):
    dist = 1.0 - q.astype(np.float64) @ g.astype(np.float64).T
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, axis=1)


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_cosine_topk_equals_stable_argsort_with_ties(k):
    rng = np.random.default_rng(k)
    q = _quantised(rng, 17, 4)
    g = _quantised(rng, 40, 4)
    g[20:30] = g[:10]  # exact duplicates: tied distances at every depth
    idx, dist = cosine_topk(q, g, k, chunk_size=5)
    ref_idx, ref_dist = _stable_reference(q, g, k)
    assert idx.dtype == np.int64 and dist.dtype == np.float32
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, atol=1e-6)


def test_topk_from_distances_heavy_ties():
    rng = np.random.default_rng(0)
    dist = rng.integers(0, 3, size=(200, 25)).astype(np.float32)
    for k in (1, 4, 12, 24, 25):
        idx, vals = topk_from_distances(dist, k)
        ref = np.argsort(dist, axis=1, kind="stable")[:, :k]
        np.testing.assert_array_equal(idx, ref)
        np.testing.assert_array_equal(vals, np.take_along_axis(dist, ref, axis=1))


def test_cosine_topk_clips_k_and_validates():
    rng = np.random.default_rng(1)
    q, g = l2_normalize(rng.normal(size=(3, 8))), l2_normalize(rng.normal(size=(5, 8)))
    idx, dist = cosine_topk(q, g, 50)
    assert idx.shape == dist.shape == (3, 5)
    np.testing.assert_allclose(dist, np.sort(cosine_distance(q, g), axis=1), atol=1e-6)
    with pytest.raises(ValueError, match="same D"):
        cosine_topk(q, g[:, :4], 2)
    with pytest.raises(ValueError, match="k must be"):
        cosine_topk(q, g, 0)


def test_cosine_distance_dense():
    rng = np.random.default_rng(2)
    q, g = l2_normalize(rng.normal(size=(4, 6))), l2_normalize(rng.normal(size=(7, 6)))
    dist = cosine_distance(q, g)
    assert dist.shape == (4, 7) and dist.dtype == np.float32
    np.testing.assert_allclose(dist, 1 - q @ g.T, atol=1e-6)
    np.testing.assert_allclose(cosine_distance(q, q).diagonal(), 0, atol=1e-6)


def test_faiss_flat_equals_exact():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(3)
    q = l2_normalize(rng.normal(size=(30, 32)))
    g = l2_normalize(rng.normal(size=(500, 32)))
    idx, dist = cosine_topk(q, g, 20)
    f_idx, f_dist = faiss_topk(build_faiss_index(g, kind="flat"), q, 20)
    np.testing.assert_array_equal(f_idx, idx)
    np.testing.assert_allclose(f_dist, dist, atol=1e-5)


def test_faiss_ivf_probing_every_cell_is_exact():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(4)
    q = l2_normalize(rng.normal(size=(20, 16)))
    g = l2_normalize(rng.normal(size=(400, 16)))
    index = build_faiss_index(g, kind="ivf", nlist=8, nprobe=8)
    f_idx, _ = faiss_topk(index, q, 10)
    np.testing.assert_array_equal(f_idx, cosine_topk(q, g, 10)[0])


def test_faiss_ivfpq_format_and_errors():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(5)
    g = l2_normalize(rng.normal(size=(300, 16)))
    index = build_faiss_index(g, kind="ivfpq", nlist=4, m=4, nbits=8, nprobe=4)
    idx, dist = faiss_topk(index, g[:10], 5)
    assert idx.shape == dist.shape == (10, 5) and idx.dtype == np.int64
    assert dist.dtype == np.float32 and np.all(np.diff(dist, axis=1) >= 0)
    assert np.mean(idx[:, 0] == np.arange(10)) >= 0.5  # a rough PQ still finds itself
    with pytest.raises(ValueError, match="unknown faiss index kind"):
        build_faiss_index(g, kind="hnsw")
    with pytest.raises(ValueError, match="divisible"):
        build_faiss_index(g, kind="ivfpq", nlist=4, m=5)
