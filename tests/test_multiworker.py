"""Two worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy (TF_CONFIG)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_in_sync_and_only_the_chief_writes(tmp_path, course_synth):
    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "tfmarket.train", "--config", str(ROOT / "configs/smoke.yaml"),
           "--workdir", str(workdir), "--set", f"data.root={course_synth}",
           "--set", "train.epochs=1", "--set", "train.steps_per_epoch=3"]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3",
               "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["replicas"] == results[1]["replicas"] == 2
    assert results[0]["weights_sha256"] == results[1]["weights_sha256"]
    for name in ("config.yaml", "model.keras", "metrics.json", "history.csv"):
        assert (workdir / name).is_file(), name
    assert list((workdir / "tensorboard").rglob("events.out.tfevents*"))
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["global_batch"] == 2 * 4 * 4
