"""tfmarket.retrieval.retrieval_rule: expansion, attribute distance and the rule chooser, on hand
cases."""

import dataclasses
import json

import numpy as np
import pytest

from tfmarket.errors import TfmarketError
from tfmarket.retrieval.metrics import evaluate_ranking
from tfmarket.retrieval.retrieval_rule import (
    RetrievalRule,
    attribute_distance,
    attribute_features,
    choose_rule,
    distances,
    expand,
    load_rule,
    save_rule,
)

HEADS = {"gender": 1, "colour": 3}


def _unit(*rows):
    x = np.array(rows, np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_attribute_distance_is_the_mean_squared_hellinger_distance():
    probs_a = {"gender": np.array([0.5, 1.0]), "colour": np.array([[1, 0, 0], [0, 1, 0]], float)}
    probs_b = {"gender": np.array([1.0]), "colour": np.array([[1, 0, 0]], float)}
    fa, fb = attribute_features(probs_a, HEADS), attribute_features(probs_b, HEADS)
    assert fa.shape == (2, 5)
    dist = attribute_distance(fa, fb, len(HEADS))
    # Row 0: gender H^2 = 1 - sqrt(0.5 * 1) = 0.29289, colour identical (0) -> mean 0.146447.
    # Row 1: gender identical (0), colour disjoint (1) -> mean 0.5.
    np.testing.assert_allclose(dist[:, 0], [(1 - np.sqrt(0.5)) / 2, 0.5], atol=1e-6)
    np.testing.assert_allclose(attribute_distance(fb, fb, 2), [[0.0]], atol=1e-6)


def test_expansion_by_hand():
    g = _unit([1, 0], [0.8, 0.6], [0, 1])
    q = _unit([1, 0.1])
    q0, g0 = expand(q, g, 0, 3.0)
    np.testing.assert_allclose(g0, g, atol=1e-7)
    np.testing.assert_allclose(q0, q, atol=1e-7)
    # k = 1, alpha = 0 (plain mean): gallery 0 -> mean of itself and gallery 1; gallery 2's
    # nearest other is gallery 1 too.
    q1, g1 = expand(q, g, 1, 0.0)
    np.testing.assert_allclose(g1[0], _unit(g[0] + g[1])[0], atol=1e-6)
    np.testing.assert_allclose(g1[2], _unit(g[2] + g[1])[0], atol=1e-6)
    # The query adds its nearest augmented gallery vector.
    near = np.argmax(q @ g1.T)
    np.testing.assert_allclose(q1[0], _unit(q[0] + g1[near])[0], atol=1e-6)
    # alpha weights neighbours by similarity ** alpha.
    _, g3 = expand(q, g, 1, 2.0)
    np.testing.assert_allclose(g3[0], _unit(g[0] + 0.8 ** 2 * g[1])[0], atol=1e-6)


def test_plain_rule_is_cosine_distance_and_weights_add_attributes():
    rng = np.random.default_rng(0)
    q = {"embedding": _unit(*rng.normal(size=(4, 8))),
         "gender": rng.uniform(size=4), "colour": rng.dirichlet(np.ones(3), 4)}
    g = {"embedding": _unit(*rng.normal(size=(6, 8))),
         "gender": rng.uniform(size=6), "colour": rng.dirichlet(np.ones(3), 6)}
    plain = distances(q, g, RetrievalRule(), HEADS)
    np.testing.assert_allclose(plain, 1 - q["embedding"] @ g["embedding"].T, atol=1e-6)
    fused = distances(q, g, RetrievalRule(attribute_weight=0.5), HEADS)
    attr = attribute_distance(attribute_features(q, HEADS), attribute_features(g, HEADS), 2)
    np.testing.assert_allclose(fused, plain + 0.5 * attr, atol=1e-6)
    with pytest.raises(TfmarketError, match="no probabilities"):
        distances({"embedding": q["embedding"]}, g, RetrievalRule(attribute_weight=0.1), HEADS)


def _people(rng, n_ids, per_id, noise, attr_sharpness):
    """Identities whose embeddings overlap (noise) but whose attributes tell them apart."""
    centres = _unit(*rng.normal(size=(n_ids, 16)))
    colours = np.arange(n_ids) % 3
    genders = (np.arange(n_ids) // 3) % 2
    pids = np.repeat(np.arange(1, n_ids + 1), per_id)
    emb = _unit(*(np.repeat(centres, per_id, 0) + noise * rng.normal(size=(len(pids), 16))))
    colour = np.full((len(pids), 3), (1 - attr_sharpness) / 2)
    colour[np.arange(len(pids)), np.repeat(colours, per_id)] = attr_sharpness
    gender = np.where(np.repeat(genders, per_id) == 1, attr_sharpness, 1 - attr_sharpness)
    return {"embedding": emb, "gender": gender, "colour": colour}, pids


def test_chooser_picks_the_attribute_distance_when_it_separates_people():
    rng = np.random.default_rng(1)
    out, pids = _people(rng, n_ids=12, per_id=6, noise=0.9, attr_sharpness=0.95)
    cams = np.tile(np.arange(6), 12)
    qi = np.flatnonzero(cams == 0)
    gi = np.flatnonzero(cams != 0)
    q = {k: v[qi] for k, v in out.items()}
    g = {k: v[gi] for k, v in out.items()}
    labels = (pids[qi], pids[gi], cams[qi], cams[gi])
    rule, rows = choose_rule(q, g, *labels, HEADS, rerank_grid=((5, 2, 0.3),))
    plain = rows[0]
    assert dataclasses.asdict(RetrievalRule()) == {
        k: plain[k] for k in dataclasses.asdict(RetrievalRule())}
    assert rule.attribute_weight > 0
    best = evaluate_ranking(distances(q, g, rule, HEADS), *labels)
    assert best["mAP"] > plain["mAP"] + 0.05
    assert best["mAP"] == max(r["mAP"] for r in rows)
    # Each lever alone is among the rows: expansion only, attributes only, re-ranking only.
    assert any(r["expansion_k"] > 0 and r["attribute_weight"] == 0 and not r["rerank"]
               for r in rows)
    assert any(r["rerank"] and r["expansion_k"] == 0 and r["attribute_weight"] == 0
               for r in rows)


def test_chooser_needs_the_plain_rule_in_its_grids():
    rng = np.random.default_rng(2)
    out, pids = _people(rng, n_ids=4, per_id=2, noise=0.3, attr_sharpness=0.9)
    args = (out, out, pids, pids, np.zeros(8), np.ones(8), HEADS)
    with pytest.raises(TfmarketError, match="attribute weight 0"):
        choose_rule(*args, attribute_weight_grid=(0.1, 0.2))
    with pytest.raises(TfmarketError, match="expansion"):
        choose_rule(*args, expansion_grid=((2, 3.0),))


def test_rule_file_round_trip_and_errors(tmp_path):
    rule = RetrievalRule(expansion_k=3, attribute_weight=0.2, rerank=True, k1=30)
    save_rule(tmp_path / "retrieval.json", rule, {"why": "test"})
    assert load_rule(tmp_path / "retrieval.json") == rule
    assert "k1=30" in rule.describe() and "0.2 x attribute" in rule.describe()
    (tmp_path / "bad.json").write_text(json.dumps({"rule": {"expansion": 3}}))
    with pytest.raises(TfmarketError, match="bad.json: not a retrieval rule"):
        load_rule(tmp_path / "bad.json")
    with pytest.raises(TfmarketError, match="not found"):
        load_rule(tmp_path / "missing.json")
    with pytest.raises(TfmarketError, match="negative"):
        RetrievalRule(attribute_weight=-1)


def test_calibrate_writes_the_retrieval_rule_and_rank_applies_it(exported, course_synth,
                                                                  tmp_path, capsys):
    import shutil

    from tfmarket.attributes import HEADS as MARKET_HEADS
    from tfmarket.calibrate import main as calibrate_main
    from tfmarket.rank import main as rank_main
    from tfmarket.retrieval.metrics import evaluate_ranking
    from tfmarket.serving.ranking import load_inputs

    source, card, _ = exported
    model_dir = tmp_path / "exp"
    shutil.copytree(source, model_dir)
    assert calibrate_main(["--workdir", card["source_run"], "--model",
                           str(model_dir / "model.onnx"), "--neighbours", "1,3",
                           "--prior-weights", "0", "--distractors",
                           str(course_synth / "test")]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((model_dir / "retrieval.json").read_text())
    rule = load_rule(model_dir / "retrieval.json")
    scored = saved["report"]["scored_on"]
    assert scored["distractors"] == len(list((course_synth / "test").iterdir()))
    assert saved["report"]["chosen"]["mAP"] == max(r["mAP"] for r in saved["report"]["grid"])
    assert saved["report"]["chosen"]["mAP"] >= saved["report"]["plain"]["mAP"]
    assert f"chosen {rule.describe()}" in printed and "retrieval.json" in printed

    def run(*extra):
        out = tmp_path / f"rank{len(extra)}"
        code = rank_main(["--model", str(model_dir / "model.onnx"), "--data", str(course_synth),
                          "--out", str(out), "--json", *extra])
        captured = capsys.readouterr()
        if code:
            return code, captured.err, None
        return json.loads(captured.out[captured.out.index("{"):]), out, np.load(
            out / "embeddings.npz")

    summary, out, emb = run()
    assert summary["retrieval"] == f"{rule.describe()} ({model_dir / 'retrieval.json'})"
    # rank's mAP is the rule's distance over the model's outputs, scored by the metrics.
    q_out = {"embedding": emb["query_embedding"],
             **{h: emb[f"query_prob_{h}"] for h in MARKET_HEADS}}
    g_out = {"embedding": emb["gallery_embedding"],
             **{h: emb[f"gallery_prob_{h}"] for h in MARKET_HEADS}}
    query, gallery, _ = load_inputs(data=str(course_synth))
    expected = evaluate_ranking(distances(q_out, g_out, rule, MARKET_HEADS), query.pids,
                                gallery.pids, query.cams, gallery.cams)
    assert summary["metrics"]["mAP"] == pytest.approx(expected["mAP"], abs=1e-6)
    plain, _, _ = run("--retrieval", "plain")
    assert plain["retrieval"] == "cosine distance"
    fused_rule = dataclasses.replace(rule, attribute_weight=0.3)
    save_rule(tmp_path / "fused.json", fused_rule)
    code, err, _ = run("--retrieval", str(tmp_path / "fused.json"), "--search", "faiss-flat")
    assert code == 2 and "needs the full distance matrix" in err
    reranked, _, _ = run("--retrieval", "plain", "--rerank", "--k1", "5")
    assert reranked["retrieval"].startswith("k-reciprocal re-ranking (k1=5, k2=6")
