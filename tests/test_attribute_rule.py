"""Attribute decision rules: hand-computed cases, the validation choice, calibrate + rank CLIs."""

import json
import shutil

import numpy as np
import pytest

from tfmarket.attributes import COLUMNS, HEADS, predicted_columns
from tfmarket.errors import TfmarketError
from tfmarket.retrieval.attribute_rule import (
    AttributeRule,
    class_priors,
    cross_validate,
    decide,
    evaluate_rules,
    load_rule,
    nearest_neighbours,
    pick,
    save_rule,
)


def _random_probs(n, seed=0):
    rng = np.random.default_rng(seed)
    probs = {}
    for head, c in HEADS.items():
        if c == 1:
            probs[head] = rng.uniform(size=(n, 1)).astype(np.float32)
        else:
            probs[head] = rng.dirichlet(np.ones(c), size=n).astype(np.float32)
    return probs


def _uniform_priors():
    return {h: [1.0 / max(c, 2)] * max(c, 2) for h, c in HEADS.items()}


def test_class_priors_are_smoothed_frequencies_ignoring_unknown():
    targets = {h: np.zeros(4, np.int32) for h in HEADS}
    targets["backpack"] = np.array([1, 1, 0, -1])  # 2 yes, 1 no, 1 unknown
    targets["age"] = np.array([2, 2, 2, 3])
    priors = class_priors(targets)
    np.testing.assert_allclose(priors["backpack"], [2 / 5, 3 / 5])  # (1+1, 2+1) / 5
    np.testing.assert_allclose(priors["age"], [1 / 8, 1 / 8, 4 / 8, 2 / 8])
    assert len(priors["upper_color"]) == 9 and len(priors["lower_color"]) == 10


def test_plain_rule_equals_per_image_decisions():
    probs = _random_probs(50)
    probs["backpack"][:3] = 0.5  # the threshold itself counts as yes, as predicted_columns
    np.testing.assert_array_equal(decide(probs, AttributeRule()), predicted_columns(probs))


def test_prior_adjustment_hand_case():
    probs = _random_probs(1)
    probs["hat"] = np.array([[0.4]], np.float32)
    probs["age"] = np.array([[0.30, 0.34, 0.36, 0.0]], np.float32)
    priors = _uniform_priors()
    priors["hat"] = [0.2, 0.8]  # yes is common: log .4 + log .8 > log .6 + log .2
    priors["age"] = [0.7, 0.1, 0.1, 0.1]
    hat, age = COLUMNS.index("hat"), COLUMNS.index("age")
    plain = decide(probs, AttributeRule())
    assert plain[0, hat] == 1 and plain[0, age] == 3  # no hat; adult (argmax 0.36)
    adjusted = decide(probs, AttributeRule(1, 1.0, priors))
    assert adjusted[0, hat] == 2  # .32 vs .12
    assert adjusted[0, age] == 1  # young: log .30 + log .7 beats log .36 + log .1
    half = decide(probs, AttributeRule(1, 0.5, priors))
    # tau = .5: young .30 * .7^.5 = .251 vs adult .36 * .1^.5 = .114 -> young still
    assert half[0, age] == 1


def test_neighbour_voting_hand_case():
    embeddings = np.array([[1, 0], [0.9, 0.1], [0, 1]], np.float32)
    probs = _random_probs(3)
    probs["backpack"] = np.array([[0.9], [0.3], [0.1]], np.float32)
    nearest = nearest_neighbours(embeddings, 2)
    np.testing.assert_array_equal(nearest, [[0, 1], [1, 0], [2, 1]])
    col = COLUMNS.index("backpack")
    voted = decide(probs, AttributeRule(neighbours=2), nearest)
    # image 0: (.9 + .3) / 2 = .6 yes; image 1: same pair, yes; image 2: (.1 + .3) / 2 no
    np.testing.assert_array_equal(voted[:, col], [2, 2, 1])
    assert decide(probs, AttributeRule(), None)[1, col] == 1
    # A rule asking for more images than the pool holds votes over the whole pool.
    everyone = decide(probs, AttributeRule(neighbours=10), nearest_neighbours(embeddings, 10))
    np.testing.assert_array_equal(everyone[:, col], [1, 1, 1])  # mean .433
    with pytest.raises(ValueError, match="neighbours"):
        decide(probs, AttributeRule(neighbours=2))


def test_decisions_for_some_rows_of_a_pool_match_the_whole_pool_s():
    rng = np.random.default_rng(4)
    embeddings = rng.normal(size=(12, 5)).astype(np.float32)
    embeddings[7] = embeddings[3]  # a duplicate: row 7 must still come first for itself
    probs = _random_probs(12)
    rule = AttributeRule(neighbours=3)
    rows = np.array([7, 0, 3])
    some = nearest_neighbours(embeddings, 3, rows=rows)
    whole = nearest_neighbours(embeddings, 3)
    np.testing.assert_array_equal(some, whole[rows])
    assert some[0, 0] == 7 and some[2, 0] == 3
    np.testing.assert_array_equal(decide(probs, rule, some), decide(probs, rule, whole)[rows])
    with pytest.raises(ValueError, match="pool of 12"):
        decide(probs, rule, some + 12)


def test_nearest_neighbours_puts_each_row_first_among_duplicates():
    embeddings = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], np.float32)
    nearest = nearest_neighbours(embeddings, 2)
    np.testing.assert_array_equal(nearest[:, 0], [0, 1, 2, 3])
    assert nearest[2, 1] in (0, 1)


def test_pick_keeps_the_ma_floor():
    rows = [
        {"neighbours": 1, "prior_weight": 0.0, "mA": 0.74, "mean_accuracy": 0.88},
        {"neighbours": 1, "prior_weight": 1.0, "mA": 0.70, "mean_accuracy": 0.95},
        {"neighbours": 5, "prior_weight": 0.5, "mA": 0.73, "mean_accuracy": 0.91},
        {"neighbours": 9, "prior_weight": 0.5, "mA": 0.75, "mean_accuracy": 0.91},
    ]
    assert pick(rows, 0.02)["neighbours"] == 9  # ties on accuracy go to the higher mA
    assert pick(rows, 0.05)["prior_weight"] == 1.0
    assert pick(rows, 0.0)["neighbours"] == 9
    with pytest.raises(ValueError, match="plain"):
        pick(rows[1:], 0.02)


def _identity_pool(seed=0, ids=12, per_id=6):
    """Images of `ids` people: embeddings cluster by person, attribute probabilities are the
    person's truth blurred by per-image noise, so voting over neighbours must help."""
    from tfmarket.attributes import columns_to_targets, targets_to_columns

    rng = np.random.default_rng(seed)
    pids = np.repeat(np.arange(ids), per_id)
    centres = rng.normal(size=(ids, 16))
    embeddings = (centres[pids] + 0.3 * rng.normal(size=(len(pids), 16))).astype(np.float32)
    person = {h: rng.integers(0, max(c, 2), ids) for h, c in HEADS.items()}
    truth = targets_to_columns({h: v[pids] for h, v in person.items()})
    targets = columns_to_targets(truth)
    probs = {}
    for head, c in HEADS.items():
        onehot = np.eye(max(c, 2))[targets[head]]
        noisy = 0.45 * onehot + rng.dirichlet(np.ones(max(c, 2)), size=len(pids)) * 0.55
        probs[head] = noisy[:, 1:2] if c == 1 else noisy
    return probs, embeddings, truth, pids


def test_voting_helps_and_cross_validation_reports_held_out_halves():
    probs, embeddings, truth, pids = _identity_pool()
    rows = evaluate_rules(probs, embeddings, truth, _uniform_priors(),
                          neighbours_grid=(1, 3, 6), prior_weight_grid=(0.0, 0.5))
    assert len(rows) == 6
    plain = rows[0]
    best = pick(rows, 0.02)
    assert best["neighbours"] > 1 and best["mean_accuracy"] > plain["mean_accuracy"]
    cv = cross_validate(probs, embeddings, truth, pids, _uniform_priors(), 0.02, repeats=2,
                        neighbours_grid=(1, 3), prior_weight_grid=(0.0,))
    assert len(cv["folds"]) == 4
    assert cv["chosen"]["mean_accuracy"] >= cv["plain"]["mean_accuracy"]
    with pytest.raises(TfmarketError, match="4 identities"):
        cross_validate(probs, embeddings, truth, np.zeros(len(pids)), _uniform_priors(), 0.02)


def test_rule_file_round_trip_and_errors(tmp_path):
    rule = AttributeRule(5, 0.25, class_priors({h: np.zeros(3, np.int32) for h in HEADS}))
    save_rule(tmp_path / "r.json", rule, {"note": 1})
    assert load_rule(tmp_path / "r.json") == rule
    assert json.loads((tmp_path / "r.json").read_text())["note"] == 1
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(TfmarketError, match="bad.json: not an attribute rule"):
        load_rule(tmp_path / "bad.json")
    with pytest.raises(TfmarketError, match="missing.json: attribute rule file not found"):
        load_rule(tmp_path / "missing.json")
    with pytest.raises(TfmarketError, match="needs class priors"):
        AttributeRule(1, 0.5, {})


def test_calibrate_then_rank_uses_the_rule(exported, course_synth, tmp_path, capsys):
    from tfmarket.calibrate import main as calibrate_main
    from tfmarket.rank import main as rank_main

    source, card, _ = exported
    model_dir = tmp_path / "exp"
    shutil.copytree(source, model_dir)  # the session's export stays rule-free for other tests
    assert calibrate_main(["--workdir", card["source_run"], "--model",
                           str(model_dir / "model.onnx"), "--flip-test",
                           "--neighbours", "1,2,3", "--prior-weights", "0,1",
                           "--distractors", str(course_synth / "test")]) == 0
    printed = capsys.readouterr().out
    assert "2-fold identity cross-validation" in printed and "flip test on" in printed
    saved = json.loads((model_dir / "attribute_rule.json").read_text())
    assert len(saved["grid"]) == 6 and saved["chosen_on"]["flip_test"] is True
    big = saved["validation"]["reid_with_distractors"]
    assert big["distractors"] == len(list((course_synth / "test").iterdir()))
    assert big["mAP"] <= saved["validation"]["reid"]["mAP"] + 1e-9  # more to confuse, not less
    assert "distractor images added to the gallery" in printed
    # Re-ranking is scored at both gallery sizes, so `rank --rerank` is chosen on validation.
    for reid in (saved["validation"]["reid"], big):
        assert set(reid["rerank"]) == {"mAP", "rank1", "rank5", "mINP"}
        assert 0 < reid["rerank"]["mAP"] <= 1 and 0 <= reid["rerank"]["rank1"] <= 1
    assert printed.count("re-ranked (rank --rerank) mAP") == 2
    rule = load_rule(model_dir / "attribute_rule.json")

    def run(*extra):
        out = tmp_path / f"rank{len(extra)}"
        assert rank_main(["--model", str(model_dir / "model.onnx"), "--data", str(course_synth),
                          "--out", str(out), "--json", *extra]) == 0
        text = capsys.readouterr().out
        return json.loads(text[text.index("{"):]), np.load(out / "embeddings.npz")

    summary, emb = run("--flip-test")
    assert summary["flip_test"] is True
    assert summary["attribute_rule"].startswith(rule.describe())
    assert "attribute_rule.json" in summary["attribute_rule"]
    np.testing.assert_allclose(np.linalg.norm(emb["gallery_embedding"], axis=1), 1, rtol=1e-4)
    plain_summary, plain = run("--attribute-rule", "plain")
    assert plain_summary["attribute_rule"].startswith("plain")
    probs = {h: plain[f"gallery_prob_{h}"] for h in HEADS}
    np.testing.assert_array_equal(plain["gallery_attributes"], predicted_columns(probs))
    # The flipped run's embeddings differ from the plain run's (the mirror image was used).
    assert not np.allclose(emb["gallery_embedding"], plain["gallery_embedding"])
    assert rank_main(["--model", str(model_dir / "model.onnx"), "--data", str(course_synth),
                      "--out", str(tmp_path / "x"), "--attribute-rule",
                      str(tmp_path / "nope.json")]) == 2
    assert "nope.json: attribute rule file not found" in capsys.readouterr().err


def test_rank_votes_gallery_attributes_among_the_gallery_only():
    """The course's test folder holds copies of the query images: a gallery image must not
    vote with its own copy in the queries."""
    from tfmarket.attributes import MARKET
    from tfmarket.serving.predictor import decide_columns

    def outputs(embeddings, backpack):
        probs = _random_probs(len(embeddings), seed=len(embeddings))
        probs["backpack"] = np.array(backpack, np.float32)[:, None]
        return {"embedding": np.array(embeddings, np.float32), **probs}

    gallery = outputs([[1, 0], [0.9, 0.2], [0, 1]], [0.4, 0.8, 0.1])
    query = outputs([[1, 0]], [0.0])  # a copy of gallery image 0 with another probability
    rule = AttributeRule(neighbours=2)
    q_cols = decide_columns(query, rule, MARKET, among=gallery)  # as rank decides queries
    g_cols = decide_columns(gallery, rule, MARKET)  # and gallery images
    col = COLUMNS.index("backpack")
    assert g_cols[0, col] == 2  # (.4 + .8) / 2 from the gallery; (.4 + .0) / 2 with the copy
    assert q_cols[0, col] == 1  # the query votes with its copy: (.0 + .4) / 2
