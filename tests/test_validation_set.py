"""data.validation: holdout (identities held out), official (the dataset's query/gallery), none."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tfmarket.config import load_config
from tfmarket.data.registry import load_dataset
from tfmarket.data.split import resolve_validation, validation_split
from tfmarket.errors import ConfigError

ROOT = Path(__file__).parents[1]


def smoke(data_root, *extra):
    return load_config(ROOT / "configs" / "smoke.yaml", [f"data.root={data_root}", *extra])


def test_auto_is_official_on_the_original_layout_and_holdout_on_the_course_layout(
        market_synth, course_synth):
    assert resolve_validation("auto", load_dataset(market_synth))[0] == "official"
    assert resolve_validation("auto", load_dataset(course_synth))[0] == "holdout"
    assert resolve_validation("none", load_dataset(course_synth))[0] == "none"


def test_official_on_the_course_layout_is_a_clear_error(course_synth):
    with pytest.raises(ConfigError, match="official needs a labelled query/gallery.*course"):
        resolve_validation("official", load_dataset(course_synth))


def test_official_split_trains_every_identity_and_scores_the_dataset_query_gallery(
        market_synth):
    dataset = load_dataset(market_synth)
    train, query, gallery = validation_split(dataset, "official", num_val_ids=4)
    assert train.paths == dataset.train.paths
    assert query.paths == dataset.query.paths and gallery.paths == dataset.gallery.paths
    assert (gallery.pids == 0).any()  # distractors stay in the gallery

    train, query, gallery = validation_split(dataset, "holdout", num_val_ids=4)
    held_out = set(query.pids.tolist()) | set(gallery.pids.tolist())
    assert len(held_out) == 4 and not held_out & set(train.pids.tolist())
    assert len(train) + len(query) + len(gallery) == len(dataset.train)

    train, query, gallery = validation_split(dataset, "none", num_val_ids=4)
    assert len(train) == len(dataset.train) and len(query) == len(gallery) == 0


def test_unknown_choice_is_refused_when_the_config_is_loaded(course_synth):
    with pytest.raises(ConfigError, match="data.validation: 'test' is not one of"):
        smoke(course_synth, "data.validation=test")


def test_official_training_scores_the_synthetic_query_gallery(tmp_path, market_synth, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tfmarket.calibrate import main as calibrate_main
    from tfmarket.training.run import run

    workdir = tmp_path / "run"
    metrics = run(smoke(market_synth, "train.epochs=1"), workdir)
    dataset = load_dataset(market_synth)
    assert metrics["validation_set"] == "official"
    assert metrics["train_identities"] == len(np.unique(dataset.train.pids))
    assert metrics["train_images"] == len(dataset.train)
    assert metrics["val_query_images"] == len(dataset.query)
    assert metrics["val_gallery_images"] == len(dataset.gallery)
    assert metrics["validation"]["set"] == "official" and 0 < metrics["validation"]["mAP"] <= 1
    written = yaml.safe_load((workdir / "config.yaml").read_text())
    assert written["data"]["validation"] == "official"
    assert (workdir / "best.keras").is_file()
    acc = EventAccumulator(str(workdir / "tensorboard" / "validation"),
                           size_guidance={"tensors": 0})
    acc.Reload()
    assert "official/mAP" in acc.Tags()["tensors"] + acc.Tags()["scalars"]
    # The attribute rule must not be tuned on the official query/gallery (the test set).
    capsys.readouterr()
    assert calibrate_main(["--workdir", str(workdir), "--model", str(tmp_path / "m.onnx")]) == 2
    assert "data.validation: official" in capsys.readouterr().err


def test_holdout_training_is_as_before(tmp_path, market_synth):
    from tfmarket.training.run import run

    metrics = run(smoke(market_synth, "train.epochs=1", "data.validation=holdout"),
                  tmp_path / "run")
    dataset = load_dataset(market_synth)
    assert metrics["validation_set"] == "holdout"
    assert metrics["train_identities"] == len(np.unique(dataset.train.pids)) - 4  # val_ids 4
    assert metrics["val_query_images"] + metrics["val_gallery_images"] + metrics[
        "train_images"] == len(dataset.train)


def test_none_keeps_no_best_model_and_export_says_it_took_the_final_one(tmp_path, course_synth,
                                                                        capsys):
    from tfmarket.export import main as export_main
    from tfmarket.training.run import run

    workdir = tmp_path / "run"
    metrics = run(smoke(course_synth, "train.epochs=1", "data.validation=none"), workdir)
    assert metrics["validation"] is None and metrics["val_query_images"] == 0
    assert not (workdir / "best.keras").exists() and (workdir / "model.keras").is_file()
    assert export_main(["--workdir", str(workdir), "--out", str(tmp_path / "exp"),
                        "--parity-images", "4"]) == 0
    assert "data.validation: none" in capsys.readouterr().out
    card = json.loads((tmp_path / "exp" / "model_card.json").read_text())
    assert card["source_model"] == "model.keras"
    assert "no validation" in card["source_model_note"]


def test_official_course_training_fails_before_writing_anything(tmp_path, course_synth):
    from tfmarket.train import main

    workdir = tmp_path / "run"
    code = main(["--config", str(ROOT / "configs" / "smoke.yaml"), "--workdir", str(workdir),
                 "--set", f"data.root={course_synth}", "--set", "data.validation=official"])
    assert code == 2
    assert not workdir.exists()
