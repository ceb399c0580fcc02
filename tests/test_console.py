"""What a person sees: no TensorFlow C++ log lines, no Python warnings, one line per epoch."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tfmarket.console import Progress, readable

ROOT = Path(__file__).parents[1]
# TensorFlow/absl C++ log lines ("I0000 00:00:17... port.cc:153] ...", "WARNING: All log
# messages before absl::InitializeLog()...") and Python's warning format ("file:12: XWarning:").
NOISE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|absl::InitializeLog|oneDNN custom operations|"
                   r"rebuild TensorFlow|GeneratorDatasetOp|\w+Warning: ", re.MULTILINE)


def run_cli(*args: str, env_extra: dict | None = None) -> str:
    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TFMARKET_VERBOSE", "PYTHONWARNINGS")}
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def test_train_export_rank_print_no_log_lines_or_warnings(tmp_path):
    workdir = tmp_path / "run"
    train = run_cli("tfmarket.train", "--config", "configs/smoke.yaml", "--workdir",
                    str(workdir), "--set", "train.epochs=2")
    assert not NOISE.search(train), train
    lines = train.splitlines()
    # One progress line per epoch (a log file gets only the final one) and one validation line.
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2 and all(re.search(r"epoch \d/2: 4/4 steps, loss [\d.]+, "
                                              r"ID accuracy [\d.]+, [\d.]+ images/s", line)
                                    for line in epochs), train
    assert sum(line.startswith("validation (holdout") for line in lines) == 2, train
    assert not any("_acc" in line or "Epoch 1/2" in line for line in lines), train

    export = run_cli("tfmarket.export", "--workdir", str(workdir), "--out",
                     str(tmp_path / "exp"), "--onnx", "--parity-images", "4")
    assert not NOISE.search(export), export
    assert f"wrote {tmp_path / 'exp'}" in export

    rank = run_cli("tfmarket.rank", "--model", str(tmp_path / "exp" / "model.onnx"), "--data",
                   str(workdir / "synthetic"), "--out", str(tmp_path / "rank"))
    assert not NOISE.search(rank), rank
    assert re.search(r"embedding \d+ queries: \d+/\d+ images, [\d.,]+ images/s", rank), rank
    assert "ranked" in rank and "mAP" in rank
    summary = json.loads((tmp_path / "rank" / "summary.json").read_text())
    assert summary["queries"] > 0 and "summary.json" in summary["files"]


def test_verbose_shows_keras_epoch_line_and_tensorflow_logs(tmp_path):
    train = run_cli("tfmarket.train", "--config", "configs/smoke.yaml", "--workdir",
                    str(tmp_path / "run"), "--set", "train.epochs=1", "--verbose")
    assert "4/4" in train and "id_acc" in train  # Keras's own epoch line, every metric


def test_progress_writes_one_line_to_a_log_file():
    stream = io.StringIO()
    bar = Progress(100, "embedding 100 images", stream=stream)
    for done in range(10, 101, 10):
        bar.update(done)
    bar.close()
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert re.fullmatch(r"embedding 100 images: 100/100 images, [\d.,]+ images/s, 0:\d\d\n",
                        text), text


def test_readable_shortens_lists_and_flattens_one_level():
    text = readable({"queries": 3, "metrics": {"mAP": 0.123456, "cmc": [1, 2]},
                     "files": ["a", "b"], "rows": list(range(50))})
    assert text.splitlines() == ["  queries: 3", "  metrics: mAP 0.1235", "  files: a, b",
                                 "  rows: [50 items]"]


def test_only_tensorflow_info_and_warning_notes_are_dropped_at_import():
    from tfmarket.console import _TF_NOISE

    dropped = [
        "I0000 00:00:1796283245.540767   15726 port.cc:153] oneDNN custom operations are on.",
        "W0000 00:00:1796280211.588084    1927 dataset.cc:997] Input of GeneratorDatasetOp",
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "2026-12-03 06:43:22.123456: I tensorflow/core/platform/cpu_feature_guard.cc:210] ...",
        "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
        "TensorFlow with the appropriate compiler flags.",
    ]
    kept = [
        "E0000 00:00:1796283245.540767   15726 cuda_dnn.cc:8579] Unable to register cuDNN",
        "F0000 00:00:1796283245.540767   15726 check.cc:1] Check failed",
        "ImportError: libcudart.so.12: cannot open shared object file",
        "Traceback (most recent call last):",
    ]
    assert all(_TF_NOISE.search(line) for line in dropped)
    assert not any(_TF_NOISE.search(line) for line in kept)
