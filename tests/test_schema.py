"""Attribute schemas: heads from the dataset's attributes, end to end.

Market-1501's schema reproduces the fixed heads of before (``tests/test_attributes.py`` and the
other Market tests run unchanged); DukeMTMC-reID's 23 attributes train their own heads through
train -> export -> rank; MSMT17 (no attributes) trains re-ID only. Datasets are the real-format
fixtures of ``tfmarket.data.synthetic.formats``; models the tiny backbone at 64x32.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tfmarket.attributes import (
    COLUMNS,
    DUKE,
    HEADS,
    MARKET,
    NO_ATTRIBUTES,
    AttributeSchema,
    schema_for_layout,
    schema_from_card,
)
from tfmarket.data.records import concat_records
from tfmarket.data.registry import load_dataset
from tfmarket.data.synthetic.formats import write_duke, write_msmt17

ROOT = Path(__file__).resolve().parents[1]
DUKE_HEADS = {"backpack": 1, "bag": 1, "handbag": 1, "boots": 1, "gender": 1, "hat": 1,
              "shoes": 1, "top": 1, "upper_color": 9, "lower_color": 8}


# --- the schema itself (NumPy only) --------------------------------------------------------------


def test_market_schema_is_the_fixed_heads_of_before():
    assert MARKET.columns == COLUMNS and MARKET.head_sizes == HEADS
    assert list(MARKET.head_sizes) == list(HEADS)  # same heads, same order
    assert MARKET.multiclass == {"age": 4}
    assert MARKET.head_classes("upper_color")[-1] == "none"
    assert schema_for_layout("course") is MARKET and schema_for_layout("market1501") is MARKET


def test_duke_schema_heads_round_trip_and_ambiguous_colours():
    assert DUKE.head_sizes == DUKE_HEADS and len(DUKE.columns) == 23
    assert DUKE.head("upper_color").columns[2] == "upred"
    assert DUKE.head_classes("lower_color") == ("black", "white", "red", "gray", "blue",
                                                 "green", "brown", "none")
    rng = np.random.default_rng(0)
    targets = {h: rng.integers(0, max(n, 2), 40).astype(np.int32)
               for h, n in DUKE.head_sizes.items()}
    columns = DUKE.targets_to_columns(targets)
    assert columns.shape == (40, 23) and set(np.unique(columns)) <= {1, 2}
    back = DUKE.columns_to_targets(columns)
    for head in DUKE.head_sizes:
        np.testing.assert_array_equal(back[head], targets[head])
    # Two upper colours marked: that head's target is unknown (-1) for the row, not an error
    # (Market-1501's files never do this, and its schema stays strict).
    columns[0, DUKE.columns.index("upred")] = 2
    columns[0, DUKE.columns.index("upblue")] = 2
    assert DUKE.columns_to_targets(columns)["upper_color"][0] == -1
    with pytest.raises(ValueError, match="must be 1 \\(no\\) or 2"):
        DUKE.columns_to_targets(columns * 0)
    probs = {h: rng.random((5, n)) for h, n in DUKE.head_sizes.items()}
    assert DUKE.predicted_columns(probs).shape == (5, 23)


def test_schema_dicts_round_trip_through_json():
    for schema in (MARKET, DUKE, NO_ATTRIBUTES):
        raw = json.loads(json.dumps(schema.to_dict()))
        assert AttributeSchema.from_dict(raw) == schema
    assert schema_from_card({"attributes": {"heads": {}}}) == MARKET, "old cards: Market-1501"
    assert schema_from_card({"attributes": {"schema": DUKE.to_dict()}}) == DUKE
    with pytest.raises(ValueError, match="not an attribute schema"):
        AttributeSchema.from_dict({"name": "x"})
    with pytest.raises(ValueError, match="every column exactly once"):
        AttributeSchema("x", ("a", "b"), (DUKE.head("hat"),))
    assert NO_ATTRIBUTES.heads == () and NO_ATTRIBUTES.head_sizes == {}


def test_datasets_carry_their_schema_and_extra_roots_keep_identities_apart(tmp_path):
    from tfmarket.config import load_config
    from tfmarket.training.data import EXTRA_PID_OFFSET, load_training_data

    write_duke(tmp_path / "duke", train_ids=tuple(range(1, 9)), images_per_id=4)
    write_msmt17(tmp_path / "msmt", num_train_ids=5)
    duke, msmt = load_dataset(tmp_path / "duke"), load_dataset(tmp_path / "msmt")
    assert duke.schema == DUKE and msmt.schema == NO_ATTRIBUTES
    assert msmt.train.attributes.shape == (len(msmt.train), 0)
    assert not msmt.train.has_attributes.any()
    both = concat_records([duke.train, msmt.train], DUKE)
    assert both.attributes.shape == (len(both), 23) and both.schema == DUKE
    assert both.has_attributes.sum() == len(duke.train)

    config = load_config(ROOT / "configs" / "smoke.yaml",
                         [f"data.root={tmp_path / 'duke'}",
                          f"data.extra_roots=[{tmp_path / 'msmt'}]"])
    data = load_training_data(config.data, tmp_path / "run")
    assert data.schema == DUKE and data.validation == "official"
    n_duke = len(duke.train)
    assert len(data.records) == n_duke + len(msmt.train)
    extra = data.records.pids[n_duke:]
    assert (extra > EXTRA_PID_OFFSET).all(), "MSMT17's identities are offset"
    assert len(data.identities) == 8 + 5
    assert (data.targets["hat"][:n_duke] >= 0).all()
    assert (data.targets["hat"][n_duke:] == -1).all(), "another schema: attributes ignored"
    assert [d["trains_attributes"] for d in data.datasets] == [True, False]
    assert data.datasets[1]["pid_offset"] == EXTRA_PID_OFFSET


def test_attribute_rule_and_gallery_filter_follow_the_schema():
    from tfmarket.retrieval.attribute_rule import AttributeRule, class_priors, decide
    from tfmarket.serving.store import parse_filter, store_columns

    rng = np.random.default_rng(1)
    targets = {h: rng.integers(0, max(n, 2), 30).astype(np.int32)
               for h, n in DUKE.head_sizes.items()}
    priors = class_priors(targets, DUKE)
    assert set(priors) == set(DUKE_HEADS) and len(priors["lower_color"]) == 8
    probs = {h: rng.random((6, n)) for h, n in DUKE.head_sizes.items()}
    assert decide(probs, AttributeRule(1, 0.5, priors), schema=DUKE).shape == (6, 23)
    with pytest.raises(Exception, match="needs class priors"):
        decide(probs, AttributeRule(1, 0.5, class_priors(
            {h: np.zeros(3, np.int32) for h in HEADS})), schema=DUKE)
    assert parse_filter("upred, boots", DUKE.columns) == [
        (DUKE.columns.index("upred"), 2), (DUKE.columns.index("boots"), 2)]
    assert store_columns({"files": np.array([])}) == COLUMNS, "old stores: Market-1501"
    with pytest.raises(Exception, match="no attribute heads"):
        parse_filter("upred", ())


# --- end to end: train -> export -> rank (TensorFlow) --------------------------------------------


def _train_and_export(root: Path, workdir: Path, out: Path, *overrides: str):
    from tfmarket.config import load_config
    from tfmarket.serving.export import export_run
    from tfmarket.training.run import run

    config = load_config(ROOT / "configs" / "smoke.yaml",
                         [f"data.root={root}", "train.epochs=1", "train.steps_per_epoch=2",
                          *overrides])
    metrics = run(config, workdir)
    card = export_run(workdir, out, onnx=True, parity_images=4)
    return metrics, card


def _rank(model: Path, data: Path, out: Path, capsys, *extra: str) -> dict:
    from tfmarket.rank import main as rank_main

    capsys.readouterr()
    assert rank_main(["--model", str(model), "--data", str(data), "--out", str(out),
                      "--topk", "5", "--json", *extra]) == 0
    printed = capsys.readouterr().out
    return json.loads(printed[printed.index("{"):])


def test_duke_trains_its_own_heads_exports_calibrates_and_ranks(tmp_path, market_synth, capsys):
    from tfmarket.calibrate import main as calibrate_main
    from tfmarket.retrieval.attribute_rule import load_rule
    from tfmarket.serving.store import embed_store, filter_ids, parse_filter, store_columns
    from tfmarket.serving.submission import read_classification

    duke = tmp_path / "duke"
    write_duke(duke, train_ids=tuple(range(1, 11)), images_per_id=4)
    metrics, card = _train_and_export(duke, tmp_path / "run", tmp_path / "exp",
                                      "data.validation=holdout")
    assert metrics["attribute_schema"] == "dukemtmcreid"
    assert "attributes" in metrics["validation"], "held-out Duke identities scored"
    assert json.loads((tmp_path / "run" / "schema.json").read_text()) == DUKE.to_dict()
    written = json.loads((tmp_path / "exp" / "model_card.json").read_text())
    assert set(written["attributes"]["heads"]) == set(DUKE_HEADS)
    assert written["attributes"]["columns"] == list(DUKE.columns)
    assert schema_from_card(written) == DUKE
    assert set(written["outputs"]) == {"embedding", *DUKE_HEADS}

    model = tmp_path / "exp" / "model.onnx"
    # calibrate chooses the attribute rule over Duke's heads, on the held-out identities.
    assert calibrate_main(["--workdir", str(tmp_path / "run"), "--model", str(model),
                           "--neighbours", "1,2", "--prior-weights", "0,0.5"]) == 0
    assert set(load_rule(tmp_path / "exp" / "attribute_rule.json").priors) == set(DUKE_HEADS)
    assert (tmp_path / "exp" / "retrieval.json").is_file()  # attribute distance over Duke's
    summary = _rank(model, duke, tmp_path / "rank", capsys, "--visualize", "2")
    assert "attribute_rule.json" in summary["attribute_rule"]
    assert summary["attribute_schema"] == "dukemtmcreid"
    assert "upper_color: " in (tmp_path / "rank" / "ranking" / "index.html").read_text()
    names, columns = read_classification(tmp_path / "rank" / "classification_test.csv", DUKE)
    header = (tmp_path / "rank" / "classification_test.csv").read_text().splitlines()[0]
    assert header == "id," + ",".join(DUKE.columns)
    assert columns.shape == (len(names), 23)
    scored = json.loads((tmp_path / "rank" / "metrics.json").read_text())
    assert 0 <= scored["attributes"]["mA"] <= 1 and 0 <= scored["reid"]["mAP"] <= 1
    assert set(scored["attributes"]["per_attribute"]) == set(DUKE.columns)

    # Cross-dataset: the Duke model ranks Market-1501's query/gallery with its protocol; the
    # Market labels are another schema's, so attributes are not scored.
    summary = _rank(model, market_synth, tmp_path / "cross", capsys)
    cross = json.loads((tmp_path / "cross" / "metrics.json").read_text())
    assert "attributes" not in cross and 0 <= cross["reid"]["mAP"] <= 1
    assert "not the dataset's (market1501)" in cross["attributes_not_scored"]
    assert summary["attributes_not_scored"] == cross["attributes_not_scored"]

    # A gallery store keeps the card's columns; --where names Duke's.
    store = embed_store(str(model), sorted(str(p) for p in (duke / "query").iterdir()))
    assert store_columns(store) == DUKE.columns and store["attributes"].shape[1] == 23
    keep = filter_ids(store["attributes"], parse_filter("upblack", store_columns(store)))
    expected = np.flatnonzero(store["attributes"][:, DUKE.columns.index("upblack")] == 2)
    np.testing.assert_array_equal(keep, expected)


def test_msmt17_trains_reid_only(tmp_path, capsys):
    from tfmarket.calibrate import main as calibrate_main

    msmt = tmp_path / "msmt"
    write_msmt17(msmt, num_train_ids=10, images_per_id=5)
    metrics, card = _train_and_export(msmt, tmp_path / "run", tmp_path / "exp",
                                      "data.validation=holdout")
    assert metrics["attribute_schema"] == "none"
    assert "attributes" not in metrics["validation"] and metrics["validation"]["mAP"] > 0
    written = json.loads((tmp_path / "exp" / "model_card.json").read_text())
    assert written["attributes"]["heads"] == {} and set(written["outputs"]) == {"embedding"}
    assert written["parity"]["max_abs_diff"] <= 1e-4
    model = tmp_path / "exp" / "model.onnx"
    capsys.readouterr()
    assert calibrate_main(["--workdir", str(tmp_path / "run"), "--model", str(model)]) == 0
    assert "attributes: none" in capsys.readouterr().out
    assert not (tmp_path / "exp" / "attribute_rule.json").exists()
    assert (tmp_path / "exp" / "retrieval.json").is_file()
    summary = _rank(model, msmt, tmp_path / "rank", capsys)
    assert not (tmp_path / "rank" / "classification_test.csv").exists()
    assert "no attribute heads" in summary["classification"]
    assert "classification_test.csv" not in summary["files"]
    assert 0 <= summary["metrics"]["mAP"] <= 1
