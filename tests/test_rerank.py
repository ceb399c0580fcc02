"""Tests for tfmarket.retrieval.rerank: bounded == dense reference, and re-ranking helps a toy
case."""

from __future__ import annotations

import numpy as np
import pytest

from tfmarket.retrieval.metrics import evaluate_ranking
from tfmarket.retrieval.rerank import k_reciprocal_rerank, k_reciprocal_rerank_dense
from tfmarket.retrieval.search import cosine_distance, l2_normalize


def _euclidean(a, b):
    # Euclidean distance of unit vectors; the dense reference squares it to 2 - 2 cos, the
    # distance the bounded version uses.
    return np.sqrt(np.maximum(2.0 - 2.0 * a @ b.T, 0.0))


def _dense(q, g, **kwargs):
    return k_reciprocal_rerank_dense(_euclidean(q, g), _euclidean(q, q), _euclidean(g, g), **kwargs)


@pytest.mark.parametrize(
    "seed, n, m, k1, k2, chunk",
    [
        (0, 7, 30, 5, 3, 4),
        (1, 7, 30, 5, 3, 64),
        (2, 7, 30, 5, 1, 3),
        (3, 4, 12, 20, 6, 5),  # k1 + 1 > N + M: neighbourhoods cover everything
        (4, 1, 9, 4, 2, 2),
        (5, 12, 40, 8, 4, 7),
    ],
)
def test_bounded_matches_dense(seed, n, m, k1, k2, chunk):
    rng = np.random.default_rng(seed)
    q = l2_normalize(rng.normal(size=(n, 8)))
    g = l2_normalize(rng.normal(size=(m, 8)))
    ref = _dense(q, g, k1=k1, k2=k2, lambda_value=0.3)
    out = k_reciprocal_rerank(q, g, k1=k1, k2=k2, lambda_value=0.3, chunk_size=chunk)
    assert out.shape == (n, m) and out.dtype == np.float32
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_lambda_one_is_the_normalised_original_distance():
    rng = np.random.default_rng(6)
    q, g = l2_normalize(rng.normal(size=(5, 8))), l2_normalize(rng.normal(size=(20, 8)))
    out = k_reciprocal_rerank(q, g, k1=4, k2=2, lambda_value=1.0)
    x = np.concatenate([q, g])
    d = np.maximum(2 - 2 * x @ x.T, 0)
    np.testing.assert_allclose(out, (d / d.max(axis=1, keepdims=True))[:5, 5:], atol=1e-5)


def _toy(seed):
    # 10 identities x 6 tight gallery images (cam 2); one noisy query per identity (cam 1).
    rng = np.random.default_rng(seed)
    nid, per, d = 10, 6, 16
    centres = rng.normal(size=(nid, d))
    g_ids = np.repeat(np.arange(1, nid + 1), per)
    g = l2_normalize(centres[g_ids - 1] + 0.45 * rng.normal(size=(len(g_ids), d)))
    q_ids = np.arange(1, nid + 1)
    q = l2_normalize(centres[q_ids - 1] + 0.9 * rng.normal(size=(nid, d)))
    return q, g, q_ids, g_ids, np.ones(nid, int), np.full(len(g_ids), 2)


@pytest.mark.parametrize("seed", [0, 4])
def test_rerank_improves_noisy_queries(seed):
    # The gallery clusters are tight, so a noisy query's k-reciprocal set pulls in its whole
    # identity even when single images of other identities are closer.
    q, g, q_ids, g_ids, q_cams, g_cams = _toy(seed)
    before = evaluate_ranking(cosine_distance(q, g), q_ids, g_ids, q_cams, g_cams, max_rank=10)
    rerank = k_reciprocal_rerank(q, g, k1=6, k2=3, lambda_value=0.3)
    after = evaluate_ranking(rerank, q_ids, g_ids, q_cams, g_cams, max_rank=10)
    assert after["mAP"] > before["mAP"] + 0.02
    assert after["rank1"] >= before["rank1"]


def test_rerank_keeps_a_perfect_ranking():
    rng = np.random.default_rng(7)
    centres = 5 * rng.normal(size=(6, 16))
    g_ids = np.repeat(np.arange(1, 7), 5)
    g = l2_normalize(centres[g_ids - 1] + 0.1 * rng.normal(size=(30, 16)))
    q_ids = np.arange(1, 7)
    q = l2_normalize(centres[q_ids - 1] + 0.1 * rng.normal(size=(6, 16)))
    out = k_reciprocal_rerank(q, g, k1=5, k2=3)
    res = evaluate_ranking(out, q_ids, g_ids, np.ones(6), np.full(30, 2), max_rank=5)
    assert res["mAP"] == pytest.approx(1.0)


def test_rerank_validates_inputs():
    q, g = np.eye(3, 4, dtype=np.float32), np.eye(5, 4, dtype=np.float32)
    with pytest.raises(ValueError, match="lambda_value"):
        k_reciprocal_rerank(q, g, lambda_value=1.5)
    with pytest.raises(ValueError, match="same D"):
        k_reciprocal_rerank(q, g[:, :3])
    with pytest.raises(ValueError, match="q_q"):
        k_reciprocal_rerank_dense(np.zeros((3, 5)), np.zeros((3, 3)), np.zeros((4, 4)))
