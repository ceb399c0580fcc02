"""Tests for tfmarket.retrieval.search: exact chunked top-k (ties included) and faiss agreement."""

from __future__ import annotations

import numpy as np
import pytest

from tfmarket.retrieval.search import (
    build_faiss_index,
    cosine_distance,
    cosine_topk,
    faiss_topk,
    l2_normalize,
    set_search_params,
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


def _planted(rng, nq=20, k=10, d=64, background=3000):
    """Queries with k planted neighbours each at cosine 0.98, 0.94, ..., 0.62 (gaps far above
    SQ8's error), among random unit vectors (cosine with a query < ~0.5 in 64 dims)."""
    q = l2_normalize(rng.normal(size=(nq, d)))
    cosines = 0.98 - 0.04 * np.arange(k)
    planted = []
    for row in q:
        u = rng.normal(size=(k, d))
        u -= np.outer(u @ row, row)  # orthogonal to the query
        u = l2_normalize(u)
        planted.append(cosines[:, None] * row + np.sqrt(1 - cosines[:, None] ** 2) * u)
    g = np.concatenate([np.concatenate(planted), rng.normal(size=(background, d))])
    perm = rng.permutation(len(g))
    g = l2_normalize(g[perm])
    planted_ids = np.argsort(perm)[: nq * k].reshape(nq, k)  # new position of planted row
    return q, g, planted_ids


def _clustered(rng, n=4000, d=64, clusters=40, nq=100):
    centres = l2_normalize(rng.normal(size=(clusters, d)))
    g = l2_normalize(centres[rng.integers(0, clusters, n)] + 0.12 * rng.normal(size=(n, d)))
    q = l2_normalize(centres[rng.integers(0, clusters, nq)] + 0.12 * rng.normal(size=(nq, d)))
    return q, g


def _recall(found, truth):
    return np.mean([len(np.intersect1d(f, t)) / len(t) for f, t in zip(found, truth, strict=True)])


def test_faiss_ivfpq_refine_is_exact_on_separated_data():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(6)
    q, g, planted = _planted(rng)
    exact_idx, exact_dist = cosine_topk(q, g, 10)
    np.testing.assert_array_equal(exact_idx, planted)  # the data is what it claims
    index = build_faiss_index(g, kind="ivfpq-refine", nlist=16, m=8, nprobe=16, k_factor=4)
    idx, dist = faiss_topk(index, q, 10)
    assert idx.dtype == np.int64 and dist.dtype == np.float32
    np.testing.assert_array_equal(idx, exact_idx)
    # distances come from the 8-bit refine codes, not the coarse 8-byte PQ codes
    np.testing.assert_allclose(dist, exact_dist, atol=0.01)
    pq_only = build_faiss_index(g, kind="ivfpq", nlist=16, m=8, nprobe=16)
    assert np.abs(faiss_topk(pq_only, q, 10)[1] - exact_dist).max() > 0.02


def test_faiss_ivfpq_refine_recall_and_k_factor_on_clustered_data():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(7)
    q, g = _clustered(rng)
    truth, _ = cosine_topk(q, g, 20)
    kwargs = {"nlist": 32, "m": 16, "nprobe": 8}
    pq = build_faiss_index(g, kind="ivfpq", **kwargs)
    pq_recall = _recall(faiss_topk(pq, q, 20)[0], truth)
    index = build_faiss_index(g, kind="ivfpq-refine", k_factor=8, **kwargs)
    recall = _recall(faiss_topk(index, q, 20)[0], truth)
    assert recall >= 0.9 and recall > pq_recall + 0.1, (recall, pq_recall)
    set_search_params(index, k_factor=1)  # re-rank only the PQ top-k: no better than PQ
    assert _recall(faiss_topk(index, q, 20)[0], truth) <= pq_recall + 0.05
    set_search_params(index, nprobe=32, k_factor=50)  # every cell, 1000 candidates of 4000
    assert _recall(faiss_topk(index, q, 20)[0], truth) >= 0.97


def test_faiss_ivfpq_refine_filter_returns_only_allowed_ids():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(8)
    q, g, planted = _planted(rng)
    index = build_faiss_index(g, kind="ivfpq-refine", nlist=16, m=8, nprobe=16, k_factor=4)
    # allowed: the odd-ranked planted neighbours and a random half of everything else
    allowed = np.union1d(planted[:, 1::2].ravel(),
                         rng.choice(len(g), len(g) // 2, replace=False))
    allowed = np.setdiff1d(allowed, planted[:, 0::2].ravel())
    for idx_ in (index, faiss.deserialize_index(faiss.serialize_index(index))):
        idx, dist = faiss_topk(idx_, q, 5, allowed=allowed)
        assert np.isin(idx, allowed).all()
        np.testing.assert_array_equal(idx, planted[:, 1::2])  # the exact filtered top-5
        local, _ = cosine_topk(q, g[allowed], 5)
        np.testing.assert_array_equal(idx, allowed[local])
    # everything allowed = no filter: the filter path keeps the index's nprobe and k_factor
    qc, gc = _clustered(rng)
    index = build_faiss_index(gc, kind="ivfpq-refine", nlist=32, m=16, nprobe=6, k_factor=6)
    plain = faiss_topk(index, qc, 20)
    filtered = faiss_topk(index, qc, 20, allowed=np.arange(len(gc)))
    np.testing.assert_array_equal(filtered[0], plain[0])
    np.testing.assert_allclose(filtered[1], plain[1])
    # a selective filter on a partly probed index: only allowed ids, -1 where none was found
    few = rng.choice(len(gc), 40, replace=False)
    idx, dist = faiss_topk(index, qc, 20, allowed=few)
    assert np.isin(idx[idx >= 0], few).all() and (idx >= 0).any()
    assert np.all(np.isinf(dist[idx < 0]))


def test_faiss_search_params_and_refine_errors():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(9)
    g = l2_normalize(rng.normal(size=(300, 16)))
    index = build_faiss_index(g, kind="ivfpq-refine", nlist=4, m=4, nprobe=2, k_factor=3,
                              refine="fp16")
    set_search_params(index, nprobe=4, k_factor=2.5)
    assert index.k_factor == 2.5
    idx, _ = faiss_topk(index, g[:10], 1)
    np.testing.assert_array_equal(idx[:, 0], np.arange(10))  # fp16 codes: finds itself
    with pytest.raises(ValueError, match="needs an IVF"):
        set_search_params(build_faiss_index(g, kind="flat"), nprobe=4)
    with pytest.raises(ValueError, match="needs an ivfpq-refine"):
        set_search_params(build_faiss_index(g, kind="ivf", nlist=4), k_factor=2)
    with pytest.raises(ValueError, match="k_factor must be"):
        set_search_params(index, k_factor=0.5)
    with pytest.raises(ValueError, match="unknown refine"):
        build_faiss_index(g, kind="ivfpq-refine", nlist=4, m=4, refine="sq4")
    with pytest.raises(ValueError, match="divisible"):
        build_faiss_index(g, kind="ivfpq-refine", nlist=4, m=5)


def test_add_to_faiss_index_bounds_pq_encoding_and_continues_ids():
    faiss = pytest.importorskip("faiss")
    from tfmarket.retrieval.search import PQ_ENCODE_BYTES, _bounded_pq_add, add_to_faiss_index

    rng = np.random.default_rng(10)
    g = l2_normalize(rng.normal(size=(900, 64)))
    index = build_faiss_index(g[:600], kind="ivfpq-refine", nlist=8, m=32, nprobe=8,
                              k_factor=8)
    before = faiss.cvar.product_quantizer_compute_codes_bs
    with _bounded_pq_add(faiss, index):
        # faiss's encoder scratch is block x 256 x m float32: capped at PQ_ENCODE_BYTES
        assert faiss.cvar.product_quantizer_compute_codes_bs == PQ_ENCODE_BYTES // (256 * 32 * 4)
    assert faiss.cvar.product_quantizer_compute_codes_bs == before
    with _bounded_pq_add(faiss, build_faiss_index(g, kind="flat")):
        assert faiss.cvar.product_quantizer_compute_codes_bs == before  # no PQ: untouched
    add_to_faiss_index(index, g[600:])
    assert index.ntotal == 900
    idx, _ = faiss_topk(index, g[600:620], 1)
    np.testing.assert_array_equal(idx[:, 0], np.arange(600, 620))
    with pytest.raises(ValueError, match="emb must be"):
        add_to_faiss_index(index, g[:, :32])


def test_on_available_gpus_keeps_cpu_index_where_gpus_cannot_serve():
    """Without a GPU (this machine, faiss-cpu) every index stays the same CPU object; with one,
    ivfpq-refine and filtered searches would still stay on the CPU (no GPU version)."""
    faiss = pytest.importorskip("faiss")
    from tfmarket.retrieval.search import on_available_gpus

    emb = l2_normalize(np.random.default_rng(0).normal(size=(300, 32)).astype(np.float32))
    flat = build_faiss_index(emb, kind="flat")
    refine = build_faiss_index(emb, kind="ivfpq-refine", nlist=4, m=4)
    assert on_available_gpus(refine) == (refine, "cpu")
    assert on_available_gpus(flat, filtered=True) == (flat, "cpu")
    if faiss.get_num_gpus() == 0:
        assert on_available_gpus(flat) == (flat, "cpu")
    else:  # pragma: no cover - needs faiss-gpu and a GPU
        gpu_index, device = on_available_gpus(flat)
        assert device == "gpu"
        np.testing.assert_array_equal(faiss_topk(gpu_index, emb[:5], 3)[0],
                                      faiss_topk(flat, emb[:5], 3)[0])
