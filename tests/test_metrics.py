"""Tests for tfmarket.retrieval.metrics and attribute_metrics: hand-computed ranking and attribute
cases, plus references."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from tfmarket.attributes import COLUMNS
from tfmarket.retrieval.attribute_metrics import attribute_metrics
from tfmarket.retrieval.metrics import (
    evaluate_from_features,
    evaluate_ranking,
    market1501_cmc_map,
    per_query_metrics,
    per_query_metrics_from_order,
)

# ----------------------------------------------------------------------------------------
# Hand-computed ranking case
#
# Gallery (index: id, cam), ranked in index order for every query (distances 0.0 .. 0.5):
#   g0: id 1, cam 1      g1: id 0 (distractor), cam 2    g2: id 1, cam 2
#   g3: id -1 (junk), cam 3     g4: id 5, cam 2          g5: id 1, cam 3
#
# qa = (id 1, cam 1): g0 same id+cam -> removed; g3 junk -> removed.
#   kept: g1 neg, g2 MATCH (n=2, j=1), g4 neg, g5 MATCH (n=4, j=2)
#   AP     = (1/2 + 2/4) / 2 = 1/2          (a distractor-free AP would be 1)
#   AP_trap: match 1: (prec@1 = 0 + 1/2)/2 = 1/4; match 2: (prec@3 = 1/3 + 2/4)/2 = 5/12
#            -> (1/2) * (1/4 + 5/12) = 1/3
#   INP    = 2 / 4 = 1/2;   first hit at rank 2 (g0 at rank 1 must not count)
# qb = (id 7, cam 1): no id 7 in the gallery -> skipped.
# qc = (id 5, cam 2): its only image g4 is in its own camera -> removed -> skipped.
# qd = (id 1, cam 3): g5 same cam -> removed, g3 junk.
#   kept: g0 MATCH (n=1, j=1), g1 neg, g2 MATCH (n=3, j=2), g4 neg
#   AP     = (1/1 + 2/3) / 2 = 5/6
#   AP_trap: match 1: (1 + 1)/2 = 1 (n=1 -> previous precision 1); match 2: (1/2 + 2/3)/2 = 7/12
#            -> (1/2) * (1 + 7/12) = 19/24
#   INP    = 2 / 3;   first hit at rank 1
# Means over the 2 valid queries: mAP = 2/3, mAP_trap = (1/3 + 19/24)/2 = 9/16,
# mINP = (1/2 + 2/3)/2 = 7/12, CMC = [1/2, 1, 1, 1, 1, 1] (gallery of 6 -> CMC length 6).
# ----------------------------------------------------------------------------------------

G_IDS = np.array([1, 0, 1, -1, 5, 1])
G_CAMS = np.array([1, 2, 2, 3, 2, 3])
Q_IDS = np.array([1, 7, 5, 1])
Q_CAMS = np.array([1, 1, 2, 3])
DIST = np.tile(np.arange(6) / 10.0, (4, 1))


def _hand_eval(**kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return evaluate_ranking(DIST, Q_IDS, G_IDS, Q_CAMS, G_CAMS, **kwargs)


def test_hand_computed_per_query():
    res = per_query_metrics(DIST, Q_IDS, G_IDS, Q_CAMS, G_CAMS, max_rank=6)
    assert res["valid"].tolist() == [True, False, False, True]
    np.testing.assert_allclose(res["ap"][[0, 3]], [1 / 2, 5 / 6])
    np.testing.assert_allclose(res["ap_trapezoid"][[0, 3]], [1 / 3, 19 / 24])
    np.testing.assert_allclose(res["inp"][[0, 3]], [1 / 2, 2 / 3])
    assert res["cmc_hits"][0].tolist() == [False, True, True, True, True, True]
    assert res["cmc_hits"][3].tolist() == [True] * 6
    assert not res["cmc_hits"][1].any() and np.isnan(res["ap"][1])


def test_hand_computed_summary():
    res = _hand_eval()
    assert res["mAP"] == pytest.approx(2 / 3)
    assert res["mAP_trapezoid"] == pytest.approx(9 / 16)
    assert res["mINP"] == pytest.approx(7 / 12)
    assert res["cmc"] == pytest.approx([0.5, 1, 1, 1, 1, 1])
    assert res["rank1"] == 0.5 and res["rank5"] == 1.0 and res["rank10"] == 1.0
    assert res["num_valid_queries"] == 2 and res["num_queries"] == 4
    json.dumps(res, allow_nan=False)


def test_small_gallery_says_so_once_and_truncates_like_torchreid(capsys):
    import tfmarket.console

    tfmarket.console._NOTICES_SHOWN.clear()
    for _ in range(3):
        cmc, m_ap = market1501_cmc_map(DIST, Q_IDS, G_IDS, Q_CAMS, G_CAMS, max_rank=50)
    assert cmc.shape == (6,)
    assert m_ap == pytest.approx(2 / 3)
    err = capsys.readouterr().err.splitlines()
    assert err == ["tfmarket: the gallery has only 6 images, so the CMC curve stops at rank 6"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_search_ranks_equal_a_full_stable_argsort(seed):
    # Coarse distances (many ties, inside and across identities), junk, distractors,
    # same-camera matches and queries without any match: the fast path of per_query_metrics
    # must give exactly what ranking each whole row by a stable argsort gives.
    rng = np.random.default_rng(seed)
    n, m = 40, 300
    dist = np.round(rng.uniform(0, 1, (n, m)), 1).astype(np.float32)
    g_ids = rng.integers(-1, 12, m)
    g_cams = rng.integers(1, 4, m)
    q_ids = rng.integers(1, 14, n)  # 12, 13: no gallery image at all
    q_cams = rng.integers(1, 4, n)
    fast = per_query_metrics(dist, q_ids, g_ids, q_cams, g_cams, max_rank=20)
    order = np.argsort(dist, axis=1, kind="stable")
    reference = per_query_metrics_from_order(order, q_ids, g_ids, q_cams, g_cams, max_rank=20)
    assert not fast["valid"].all() and fast["valid"].any()
    for key, value in reference.items():
        np.testing.assert_array_equal(fast[key], value, err_msg=key)


def test_non_finite_distances_rank_last_like_a_stable_argsort():
    dist = np.array([[np.nan, 0.5, np.inf, 0.1]])
    res = per_query_metrics(dist, [1], [1, 1, 2, 3], [1], [2, 2, 2, 2], max_rank=4)
    # ranked: 0.1 (id 3), 0.5 (match), inf (id 2), nan (match) -> matches at ranks 2 and 4
    assert res["ap"][0] == pytest.approx((1 / 2 + 2 / 4) / 2)


def test_chunking_does_not_change_results():
    assert _hand_eval(chunk_size=1) == _hand_eval(chunk_size=3) == _hand_eval()


def test_distractor_counts_as_negative_and_junk_is_ignored():
    # q (id 1, cam 1); gallery: junk, distractor, match. Junk removed -> kept: distractor, match
    # -> AP = 1/2, rank-1 miss. If junk counted: AP 1/3; if distractors were dropped: AP 1.
    dist = np.array([[0.0, 0.1, 0.2]])
    res = per_query_metrics(dist, [1], [-1, 0, 1], [1], [2, 2, 2], max_rank=3)
    assert res["ap"][0] == pytest.approx(0.5)
    assert res["cmc_hits"][0].tolist() == [False, True, True]


def test_same_camera_match_ranked_first_does_not_count():
    dist = np.array([[0.0, 0.1, 0.2]])
    # g0: same id & cam (removed), g1: other id, g2: same id other cam -> kept rank 2.
    res = per_query_metrics(dist, [3], [3, 4, 3], [1], [1, 2, 2], max_rank=2)
    assert res["cmc_hits"][0].tolist() == [False, True]
    assert res["ap"][0] == pytest.approx(0.5)
    assert res["inp"][0] == pytest.approx(0.5)


def test_ties_are_ranked_by_gallery_index():
    dist = np.array([[0.5, 0.5]])
    res = per_query_metrics(dist, [1], [2, 1], [1], [2, 2], max_rank=2)
    assert res["ap"][0] == pytest.approx(0.5)


def test_all_invalid_raises():
    with pytest.raises(ValueError, match="no valid query"):
        evaluate_ranking(np.zeros((2, 3)), [1, 2], [1, 3, 4], [1, 1], [1, 2, 2], max_rank=3)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="gallery_ids"):
        evaluate_ranking(np.zeros((2, 3)), [1, 2], [1, 3], [1, 1], [1, 2, 2])


# ----------------------------------------------------------------------------------------
# Straightforward per-query references (torchreid's loop, the MATLAB loop, Ye et al.'s INP)
# ----------------------------------------------------------------------------------------


def _reference(distmat, q_ids, g_ids, q_cams, g_cams, max_rank):
    order = np.argsort(distmat, axis=1, kind="stable")
    cmcs, aps, traps, inps = [], [], [], []
    for i in range(len(q_ids)):
        o = order[i]
        keep = ~(((g_ids[o] == q_ids[i]) & (g_cams[o] == q_cams[i])) | (g_ids[o] == -1))
        raw = (g_ids[o][keep] == q_ids[i]).astype(int)
        if not raw.any():
            continue
        cmc = np.minimum(raw.cumsum(), 1)[:max_rank]
        cmcs.append(np.pad(cmc, (0, max_rank - len(cmc)), mode="edge"))
        cum = raw.cumsum()
        aps.append(((cum / np.arange(1, len(raw) + 1)) * raw).sum() / raw.sum())
        last = np.flatnonzero(raw).max()
        inps.append(cum[last] / (last + 1))
        # Official compute_AP.m on the kept list.
        ngood, ap, old_recall, old_prec, hit = raw.sum(), 0.0, 0.0, 1.0, 0
        for j, r in enumerate(raw):
            hit += r
            recall, prec = hit / ngood, hit / (j + 1)
            ap += (recall - old_recall) * (old_prec + prec) / 2
            old_recall, old_prec = recall, prec
        traps.append(ap)
    return np.mean(cmcs, axis=0), np.mean(aps), np.mean(traps), np.mean(inps)


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_loops(seed):
    rng = np.random.default_rng(seed)
    nq, ng = 23, 61
    q_ids = rng.integers(1, 8, nq)
    g_ids = rng.integers(-1, 8, ng)
    q_cams, g_cams = rng.integers(1, 4, nq), rng.integers(1, 4, ng)
    # Rounded distances create many ties, exercising the tie rule.
    dist = np.round(rng.random((nq, ng)), 1)
    cmc, m_ap, m_trap, m_inp = _reference(dist, q_ids, g_ids, q_cams, g_cams, 20)
    res = evaluate_ranking(dist, q_ids, g_ids, q_cams, g_cams, max_rank=20, chunk_size=7)
    assert res["mAP"] == pytest.approx(m_ap, abs=1e-12)
    assert res["mAP_trapezoid"] == pytest.approx(m_trap, abs=1e-12)
    assert res["mINP"] == pytest.approx(m_inp, abs=1e-12)
    np.testing.assert_allclose(res["cmc"], cmc, atol=1e-12)
    cmc2, m_ap2 = market1501_cmc_map(dist, q_ids, g_ids, q_cams, g_cams, max_rank=20)
    assert m_ap2 == res["mAP"]
    np.testing.assert_allclose(cmc2, res["cmc"])


def test_evaluate_from_features_equals_dense():
    rng = np.random.default_rng(0)
    nq, ng, d = 40, 150, 16
    q = rng.normal(size=(nq, d)).astype(np.float32)
    g = rng.normal(size=(ng, d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    q_ids, g_ids = rng.integers(0, 10, nq), rng.integers(-1, 10, ng)
    q_cams, g_cams = rng.integers(1, 7, nq), rng.integers(1, 7, ng)
    dense = evaluate_ranking(1.0 - q @ g.T, q_ids, g_ids, q_cams, g_cams, max_rank=50)
    chunked = evaluate_from_features(q, g, q_ids, g_ids, q_cams, g_cams, max_rank=50, chunk_size=9)
    assert chunked.keys() == dense.keys()
    for key in dense:
        assert chunked[key] == pytest.approx(dense[key], abs=1e-9), key


# ----------------------------------------------------------------------------------------
# Attribute metrics
# ----------------------------------------------------------------------------------------

NAMES = ("age", "backpack", "hat")
# Rows: truth / prediction (age 0 in row 3 = unknown -> ignored).
TRUE = np.array([[1, 2, 1], [2, 1, 1], [2, 2, 1], [0, 1, 1]])
PRED = np.array([[1, 2, 1], [2, 2, 2], [3, 1, 1], [4, 1, 1]])


def test_attribute_metrics_hand_computed():
    res = attribute_metrics(TRUE, PRED, names=NAMES)
    age, backpack, hat = (res["per_attribute"][n] for n in NAMES)
    # age, known rows 0-2: truth [1, 2, 2], pred [1, 2, 3]. acc 2/3.
    # recall: class 1 -> 1/1, class 2 -> 1/2 => mA 3/4; precision class 1: 1/1, class 2: 1/1.
    # F1: class 1 -> 1, class 2 -> 2*1/(2+1) = 2/3 => macro 5/6. Class 3 absent from truth.
    assert age["count"] == 3 and age["classes_present"] == 2
    assert age["accuracy"] == pytest.approx(2 / 3)
    assert age["mA"] == pytest.approx(3 / 4)
    assert age["precision"] == pytest.approx(1.0)
    assert age["F1"] == pytest.approx(5 / 6)
    # backpack: truth [2,1,2,1], pred [2,2,1,1]: TP 1, FP 1, FN 1, TN 1.
    assert backpack["accuracy"] == 0.5 and backpack["mA"] == 0.5
    assert backpack["precision"] == 0.5 and backpack["recall"] == 0.5 and backpack["F1"] == 0.5
    # hat: no positives in truth; pred has 1 FP, 3 TN. mA falls back to TNR = 3/4;
    # recall undefined (None), precision 0/1 = 0, F1 = 0 / (0 + 1 + 0) = 0.
    assert hat["accuracy"] == 0.75 and hat["mA"] == 0.75
    assert hat["recall"] is None and hat["precision"] == 0.0 and hat["F1"] == 0.0
    assert res["mean_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 3 / 4) / 3)
    assert res["mA"] == pytest.approx((3 / 4 + 1 / 2 + 3 / 4) / 3)
    assert res["mean_F1"] == pytest.approx((5 / 6 + 1 / 2 + 0) / 3)
    assert res["mean_precision"] == pytest.approx(0.5)
    assert res["mean_recall"] == pytest.approx((3 / 4 + 1 / 2) / 2)
    # Instance labels (backpack, hat, age one-hot):
    #   row 0: Y={bp, age1} P={bp, age1}        -> acc 1,   prec 1,   rec 1, F1 1
    #   row 1: Y={age2}     P={bp, hat, age2}   -> acc 1/3, prec 1/3, rec 1, F1 1/2
    #   row 2: Y={bp, age2} P={age3}            -> 0, 0, 0, 0
    #   row 3: Y={}         P={} (age unknown)  -> 0, 0, 0, 0 (empty denominators)
    inst = res["instance"]
    assert inst["accuracy"] == pytest.approx(1 / 3)
    assert inst["precision"] == pytest.approx(1 / 3)
    assert inst["recall"] == pytest.approx(1 / 2)
    assert inst["F1"] == pytest.approx(3 / 8)
    json.dumps(res, allow_nan=False)


def test_attribute_metrics_unanswered_prediction_is_wrong():
    # Prediction 0 on a known truth: neither positive nor negative -> TPR and TNR both drop.
    res = attribute_metrics([[1, 2], [1, 1]], [[1, 0], [1, 0]], names=("age", "hat"))
    hat = res["per_attribute"]["hat"]
    assert hat["accuracy"] == 0.0 and hat["mA"] == 0.0 and hat["recall"] == 0.0


def test_attribute_metrics_full_columns_perfect():
    rng = np.random.default_rng(0)
    cols = np.concatenate([rng.integers(1, 5, (20, 1)), rng.integers(1, 3, (20, 26))], axis=1)
    res = attribute_metrics(cols, cols)
    assert len(res["per_attribute"]) == len(COLUMNS)
    assert res["mean_accuracy"] == 1.0 and res["mA"] == 1.0 and res["mean_F1"] == 1.0
    assert res["instance"]["accuracy"] == 1.0
    json.dumps(res, allow_nan=False)


def test_attribute_metrics_rejects_bad_values():
    with pytest.raises(ValueError, match="'hat'"):
        attribute_metrics([[1, 3]], [[1, 1]], names=("age", "hat"))
    with pytest.raises(ValueError, match="shape"):
        attribute_metrics(np.ones((2, 27)), np.ones((2, 26)))
