"""benchmarks/evaluate.py at a tiny size: its inputs, and tfmarket.retrieval.metrics against
references.

The references: a plain per-query loop written here (the Market-1501 protocol spelled out),
and torchreid's Python ``evaluate_rank`` when torchreid is installed (skipped otherwise).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from tfmarket.retrieval.metrics import evaluate_ranking

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))  # evaluate.py imports its sibling _report
_spec = importlib.util.spec_from_file_location("bench_evaluate", BENCHMARKS / "evaluate.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)

MAX_RANK = 50


def reference(dist, q_pids, g_pids, q_cams, g_cams, max_rank=MAX_RANK):
    """Market-1501 protocol, one query at a time: (mAP, CMC [max_rank])."""
    aps, cmcs = [], []
    for i in range(len(q_pids)):
        order = np.argsort(dist[i], kind="stable")
        pids, cams = g_pids[order], g_cams[order]
        ignored = ((pids == q_pids[i]) & (cams == q_cams[i])) | (pids == -1)
        match = (pids == q_pids[i])[~ignored]
        if not match.any():
            continue
        ranks = np.flatnonzero(match) + 1  # 1-based ranks of the true matches
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        cmcs.append(np.arange(1, max_rank + 1) >= ranks[0])
    return float(np.mean(aps)), np.mean(cmcs, axis=0)


def labels(inputs):
    return [inputs[k] for k in ("q_pids", "g_pids", "q_cams", "g_cams")]


@pytest.fixture(scope="module")
def inputs():
    return bench.make_inputs(90, 500, seed=3)


@pytest.fixture(scope="module")
def with_junk():
    return bench.make_inputs(90, 500, junk=60, seed=4)


def test_inputs_have_market_structure(inputs):
    dist, (q_pids, g_pids, q_cams, g_cams) = inputs["distmat"], labels(inputs)
    assert dist.dtype == np.float32 and dist.shape == (90, 500) and dist.flags.c_contiguous
    assert all(a.dtype == np.int64 for a in (q_pids, g_pids, q_cams, g_cams))
    assert np.all(np.diff(np.sort(dist, axis=1), axis=1) > 0)  # no ties in any row
    assert np.sum(g_pids == 0) == round(2793 * 500 / 15913)
    assert not np.any(g_pids == -1)
    assert set(np.unique(q_pids)) == set(np.unique(g_pids[g_pids > 0]))
    assert set(np.unique(np.concatenate([q_cams, g_cams]))) <= set(range(1, 7))
    same = g_pids[None, :] == q_pids[:, None]
    same_cam = same & (g_cams[None, :] == q_cams[:, None])
    assert np.all((same & ~same_cam).any(axis=1))  # every query has a cross-camera match
    assert same_cam.any(axis=1).mean() > 0.5  # and most have same-camera ones to ignore
    # Same seed, same data.
    again = bench.make_inputs(90, 500, seed=3)
    assert all(np.array_equal(inputs[k], again[k]) for k in bench.ARRAYS)


def test_junk_is_appended_and_drop_junk_removes_only_it(with_junk):
    g_pids = with_junk["g_pids"]
    assert with_junk["distmat"].shape == (90, 560) and np.sum(g_pids == -1) == 60
    dropped = bench.drop_junk(with_junk)
    keep = g_pids != -1
    assert dropped["distmat"].shape == (90, 500)
    assert np.array_equal(dropped["distmat"], with_junk["distmat"][:, keep])
    assert np.array_equal(dropped["g_cams"], with_junk["g_cams"][keep])


def test_untie_rows_keeps_order_and_distinct_values():
    dist = np.array([[0.5, 0.5, 0.25, 0.5, 1.0]], dtype=np.float32)
    out = bench.untie_rows(dist.copy())
    assert np.all(np.diff(np.sort(out[0])) > 0)
    assert list(np.argsort(out[0])) == [2, 0, 1, 3, 4]  # ties broken by gallery index
    assert np.allclose(out, dist, atol=1e-6) and out[0, 0] == 0.5 and out[0, 4] == 1.0


def test_tfmarket_equals_reference(inputs):
    res = evaluate_ranking(inputs["distmat"], *labels(inputs), max_rank=MAX_RANK, chunk_size=32)
    mean_ap, cmc = reference(inputs["distmat"], *labels(inputs))
    assert res["num_valid_queries"] == 90
    assert abs(res["mAP"] - mean_ap) < 1e-12
    np.testing.assert_allclose(res["cmc"], cmc, atol=1e-12)


def test_tfmarket_drops_junk_like_torchreids_loader(with_junk):
    res = evaluate_ranking(with_junk["distmat"], *labels(with_junk), max_rank=MAX_RANK)
    dropped = bench.drop_junk(with_junk)
    mean_ap, cmc = reference(dropped["distmat"], *labels(dropped))
    assert abs(res["mAP"] - mean_ap) < 1e-12
    np.testing.assert_allclose(res["cmc"], cmc, atol=1e-12)


def test_torchreid_python_agrees(inputs):
    try:
        rank = bench.load_torchreid_rank()
    except ImportError as exc:
        pytest.skip(f"torchreid not installed: {exc}")
    cmc, mean_ap = rank.evaluate_rank(inputs["distmat"], *labels(inputs), max_rank=MAX_RANK,
                                      use_metric_cuhk03=False, use_cython=False)
    res = evaluate_ranking(inputs["distmat"], *labels(inputs), max_rank=MAX_RANK)
    assert abs(res["mAP"] - mean_ap) < 1e-6
    np.testing.assert_allclose(res["cmc"], cmc, atol=1e-6)


def test_measure_and_table(inputs, tmp_path):
    bench.save_inputs(inputs, tmp_path)
    out = bench.measure("tfmarket", str(tmp_path), MAX_RANK)
    assert out["seconds"] > 0 and out["peak_mb"] >= 0 and len(out["cmc"]) == MAX_RANK
    assert out["mAP"] == evaluate_ranking(inputs["distmat"], *labels(inputs))["mAP"]
    args = bench.build_parser().parse_args([])
    args.max_rank = MAX_RANK
    rows = bench.summarise(["tfmarket"], [{"tfmarket": out}], args)
    assert rows[0]["meets_target"].endswith("speed-up not measured")
    assert "tfmarket evaluate_ranking" in bench.format_table(rows, 1e-6)
