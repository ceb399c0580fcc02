"""Smoke training runs: tiny backbone, 64x32 synthetic images, a few steps."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfmarket.config import load_config
from tfmarket.training.run import run

ROOT = Path(__file__).resolve().parents[1]


def smoke_config(data_root, *extra):
    return load_config(ROOT / "configs" / "smoke.yaml", [f"data.root={data_root}", *extra])


def test_smoke_train_writes_a_complete_run_directory(tmp_path, course_synth):
    workdir = tmp_path / "run"
    metrics = run(smoke_config(course_synth), workdir)
    for name in ("config.yaml", "model.keras", "best.keras", "history.csv", "metrics.json"):
        assert (workdir / name).is_file(), name
    events = list((workdir / "tensorboard").rglob("events.out.tfevents*"))
    assert any("train" in str(e) for e in events) and any("validation" in str(e) for e in events)
    assert metrics["epochs_run"] == 2 and metrics["validation"]["mAP"] > 0
    assert 0 <= metrics["validation"]["attributes"]["mA"] <= 1
    written = json.loads((workdir / "metrics.json").read_text())
    assert written["train_images"] == metrics["train_images"]
    # Reruns of a finished run do not retrain.
    assert run(smoke_config(course_synth), workdir) == {"status": "already complete"}


def test_tensorboard_has_losses_lr_and_validation(tmp_path, course_synth):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    workdir = tmp_path / "run"
    run(smoke_config(course_synth, "train.epochs=1"), workdir)
    tags = set()
    for sub in ("train", "validation"):
        acc = EventAccumulator(str(workdir / "tensorboard" / sub), size_guidance={"tensors": 0})
        acc.Reload()
        tags |= {f"{sub}/{t}" for t in acc.Tags()["tensors"] + acc.Tags()["scalars"]}
    for tag in ("train/epoch_features_loss", "train/epoch_id_loss", "train/epoch_hat_loss",
                "train/epoch_learning_rate", "train/epoch_hat_acc", "validation/epoch_mAP",
                "validation/epoch_rank1", "validation/epoch_attr_mA",
                "validation/holdout/mAP", "validation/holdout/attribute_mA/hat"):
        assert tag in tags, f"{tag} missing from {sorted(tags)}"


def test_two_replicas_train_with_the_cosine_margin_id_head(tmp_path, course_synth):
    import csv

    metrics = run(smoke_config(course_synth, "train.epochs=1", "model.id_head=cosine",
                               "loss.id_margin=0.25"), tmp_path / "run", cpu_replicas=2)
    assert metrics["replicas"] == 2
    assert metrics["global_batch"] == 2 * 4 * 4
    with (tmp_path / "run" / "history.csv").open() as handle:
        row = next(csv.DictReader(handle))
    assert 0 < float(row["id_loss"]) < 50  # finite: the margin is in logit units x 30


def test_resume_after_kill_9_continues_from_the_saved_epoch(tmp_path, course_synth):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "tfmarket.train", "--config", str(ROOT / "configs/smoke.yaml"),
           "--workdir", str(workdir), "--set", f"data.root={course_synth}",
           "--set", "train.epochs=30", "--set", "train.steps_per_epoch=2",
           "--set", "train.eval_every=100"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    history = workdir / "history.csv"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) >= 4:  # header + 3
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with history.open() as handle:
        done = [int(r["epoch"]) for r in csv.DictReader(handle)]
    assert done and done[-1] < 29, "killed mid-run"
    short = cmd[:-6] + ["--set", "train.epochs=" + str(done[-1] + 3), "--set",
                        "train.steps_per_epoch=2", "--set", "train.eval_every=100"]
    subprocess.run(short, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env, timeout=300)
    with history.open() as handle:
        epochs = [int(r["epoch"]) for r in csv.DictReader(handle)]
    resumed = epochs[len(done):]
    # The backup is written at each epoch end; the kill may land after the CSV row and before
    # the backup, so training resumes at the last or the one before last logged epoch.
    assert resumed[0] in (done[-1], done[-1] + 1), (done, resumed)
    assert resumed[-1] == done[-1] + 2
    assert json.loads((workdir / "metrics.json").read_text())["status"] == "complete"


@pytest.mark.parametrize("override,message", [
    ("data.root=/definitely/missing", "dataset folder not found"),
    ("model.backbone=vgg", "resnet50, tiny"),
])
def test_cli_errors_are_one_clear_line(tmp_path, override, message):
    proc = subprocess.run(
        [sys.executable, "-m", "tfmarket.train", "--config", str(ROOT / "configs/smoke.yaml"),
         "--workdir", str(tmp_path / "r"), "--set", override],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_lost_worker_message_names_the_worker_and_the_backup_epoch(tmp_path):
    from tfmarket.training.multiworker import lost_worker_message

    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "training_metadata.json").write_text('{"epoch": 3, "batch": 0}')
    error = ("Collective ops is aborted by: Error reported from /job:worker/task:1: The following "
             "tasks are unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\n"
             "The tasks have crashed.")
    message = lost_worker_message(error, backup)
    assert "/job:worker/replica:0/task:1" in message
    assert "epoch 3" in message and str(backup) in message
    assert "\n" not in message


def test_mixed_float16_trains_with_loss_scaling(tmp_path, course_synth):
    """The GPU path's precision, run on the CPU: the optimizer scales the loss, loss is finite."""
    import math

    import keras
    import numpy as np
    import tensorflow as tf
    import yaml

    from tfmarket.attributes import HEADS
    from tfmarket.training.build import compiled_model

    config = smoke_config(course_synth, "train.epochs=1", "train.precision=mixed_float16")
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        targets = {h: np.array([0, 1, 0], np.int32) for h in HEADS}
        model = compiled_model(config, tf.distribute.get_strategy(), 12, targets,
                               steps_per_epoch=4)
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert model.get_layer("tiny_backbone").get_layer("tiny_bn0").compute_dtype == "float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    metrics = run(config, tmp_path / "run")
    assert metrics["precision"] == "mixed_float16"
    assert math.isfinite(metrics["final_train_loss"])
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert written["precision"] == "mixed_float16"
    assert written["precision_reason"] == "set in the config"


def test_auto_precision_is_resolved_and_written(tmp_path, course_synth, capsys):
    import yaml

    from tfmarket.hardware import choose_precision, cpu_flags

    expected, reason = choose_precision("auto", [], cpu_flags())
    metrics = run(smoke_config(course_synth, "train.epochs=1", "train.steps_per_epoch=1",
                               "train.precision=auto"), tmp_path / "run")
    assert metrics["precision"] == expected
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]
    assert (written["precision"], written["precision_reason"]) == (expected, reason)
    assert f"precision: {expected} ({reason})" in capsys.readouterr().out
