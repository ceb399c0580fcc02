"""What users already have still works: a run directory, its backup and its export, written by
tfmarket before issue 24 moved the modules into packages (``tests/fixtures/pre_move/``, made by
``tests/fixtures/make_pre_move.py`` at f108a52), are loaded, resumed, exported and ranked by
today's code, with the numbers the old code gave.

The fixture holds no images: its data is regenerated from the run's ``data.seed`` the way
training does it (and checked against the old data's digest).
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "pre_move"
REPO = Path(__file__).resolve().parents[1]


def data_digest(root: Path) -> str:
    """As make_pre_move.py: SHA-256 over every file's relative path and bytes, sorted."""
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def copy_run(name: str, dest: Path, data: Path | None = None) -> Path:
    """A writable copy of a fixture run directory, with the regenerated ``data`` beside its
    config (as ``synthetic/``, where the run looks for it) when given."""
    run = dest / name
    shutil.copytree(FIXTURE / name, run)
    if data is not None:
        shutil.copytree(data, run / "synthetic")
    return run


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    """The fixture runs' synthetic dataset, regenerated from their config by the code that
    trains (``load_training_data`` writes ``WORKDIR/synthetic`` when ``data.root`` is empty)."""
    from tfmarket.config import from_dict
    from tfmarket.training.data import load_training_data

    workdir = tmp_path_factory.mktemp("regenerated")
    config = from_dict(yaml.safe_load((FIXTURE / "run" / "config.yaml").read_text()))
    load_training_data(config.data, workdir)
    return workdir / "synthetic"


def test_regenerated_data_is_the_data_the_fixture_was_trained_on(regenerated):
    assert data_digest(regenerated) == (FIXTURE / "synthetic.sha256").read_text().strip()


def test_best_and_final_keras_files_load_and_compute_what_they_did():
    import keras

    from tfmarket.model.network import load_run_model

    expected = np.load(FIXTURE / "expected" / "keras_outputs.npz")
    images = expected["images"].astype("float32")
    for name in ("best", "model"):
        path = FIXTURE / "run" / f"{name}.keras"
        # Every class the file names by a registered "tfmarket>..." name still resolves.
        with zipfile.ZipFile(path) as archive:
            config = archive.read("config.json").decode()
        registered = sorted(set(part.split('"')[0] for part in
                                config.split('"registered_name": "tfmarket>')[1:]))
        assert "FusedBatchNormalization" in registered and "L2Normalize" in registered
        model = load_run_model(path)
        for class_name in registered:
            assert keras.saving.get_registered_object(f"tfmarket>{class_name}") is not None
        outputs = model(images, training=False)
        keys = sorted(k.split("/", 1)[1] for k in expected.files if k.startswith(f"{name}/"))
        assert sorted(outputs) == keys
        for key in keys:
            np.testing.assert_allclose(np.asarray(outputs[key]), expected[f"{name}/{key}"],
                                       rtol=1e-5, atol=1e-5, err_msg=f"{name}.keras {key}")


def test_interrupted_run_resumes_from_its_backup_with_more_epochs(tmp_path):
    run = copy_run("interrupted", tmp_path)
    assert json.loads((run / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    assert not (run / "history.csv").read_text().strip()  # killed before epoch 1's row
    # The train command, as a user reruns it; the data is regenerated from data.seed.
    proc = subprocess.run(
        [sys.executable, "-m", "tfmarket.train", "--config", str(run / "config.yaml"),
         "--workdir", str(run), "--set", "train.epochs=3"],
        cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "complete"
    assert metrics["epochs_run"] == 2  # epochs 2 and 3: epoch 1 came from the backup
    with (run / "history.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]
    assert (run / "model.keras").is_file() and (run / "best.keras").is_file()
    assert not (run / "backup").exists()  # a finished run drops its backup


def test_run_exports_to_onnx_that_computes_what_the_old_export_did(tmp_path, regenerated):
    from tfmarket.export import main as export_main
    from tfmarket.serving.export import run_onnx

    run = copy_run("run", tmp_path, regenerated)
    out = tmp_path / "export"
    assert export_main(["--workdir", str(run), "--onnx", "--out", str(out)]) == 0
    old_card = json.loads((FIXTURE / "export" / "model_card.json").read_text())
    new_card = json.loads((out / "model_card.json").read_text())
    for key in ("input", "outputs", "embedding", "attributes",
                "validation", "train_identities", "source_model", "source_model_note"):
        assert new_card[key] == old_card[key], key
    # The same config, read by today's code: keys added since (export.litert) take their
    # defaults, which are the old behaviour.
    from tfmarket.config import from_dict

    assert from_dict(new_card["training_config"]) == from_dict(old_card["training_config"])
    images = np.load(FIXTURE / "expected" / "keras_outputs.npz")["images"]
    old = run_onnx(FIXTURE / "export" / "model.onnx", images)
    new = run_onnx(out / "model.onnx", images)
    assert sorted(new) == sorted(old)
    for key in old:
        np.testing.assert_allclose(new[key], old[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_rank_with_the_old_export_and_its_rules_writes_the_same_files(tmp_path, regenerated):
    from tfmarket.rank import main as rank_main

    out = tmp_path / "ranked"
    assert rank_main(["--model", str(FIXTURE / "export" / "model.onnx"),
                      "--data", str(regenerated), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # The calibrated rules written beside the old export are picked up.
    assert "retrieval.json" in summary["retrieval"]
    assert "attribute_rule.json" in summary["attribute_rule"]
    for name in ("reid_test.txt", "classification_test.csv", "metrics.json"):
        assert (out / name).read_bytes() == (FIXTURE / "expected" / "rank" / name
                                             ).read_bytes(), name
