"""Two worker processes on 127.0.0.1 under MultiWorkerMirroredStrategy (TF_CONFIG)."""

import json
import os
import socket
import subprocess
import sys
import time
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


def _train_command(workdir, data_root, *overrides):
    return [sys.executable, "-m", "tfmarket.train", "--config", str(ROOT / "configs/smoke.yaml"),
            "--workdir", str(workdir), "--set", f"data.root={data_root}",
            *[arg for item in overrides for arg in ("--set", item)]]


def _launch_workers(cmd, count=2):
    """``count`` processes of ``cmd`` (or of each command of a list of them), one per worker
    of a fresh 127.0.0.1 cluster."""
    commands = cmd if isinstance(cmd[0], list) else [cmd] * count
    workers = [f"127.0.0.1:{p}" for p in _free_ports(len(commands))]
    procs = []
    for index, cmd in enumerate(commands):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**os.environ, "TF_CONFIG": json.dumps(tf_config), "TF_CPP_MIN_LOG_LEVEL": "3",
               "CUDA_VISIBLE_DEVICES": ""}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, env=env))
    return procs


def _final_results(procs):
    """Each worker's final JSON line; fails with its stderr if one did not exit cleanly."""
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_two_workers_train_in_sync_and_only_the_chief_writes(tmp_path, course_synth):
    workdir = tmp_path / "run"
    procs = _launch_workers(_train_command(workdir, course_synth,
                                           "train.epochs=1", "train.steps_per_epoch=3"))
    results = _final_results(procs)
    assert results[0]["replicas"] == results[1]["replicas"] == 2
    assert results[0]["weights_sha256"] == results[1]["weights_sha256"]
    for name in ("config.yaml", "model.keras", "metrics.json", "history.csv"):
        assert (workdir / name).is_file(), name
    assert list((workdir / "tensorboard").rglob("events.out.tfevents*"))
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["replicas"] == 2 and metrics["global_batch"] == 2 * 4 * 4


def test_killed_worker_job_restarts_from_the_last_backup(tmp_path, course_synth):
    """kill -9 one worker mid-epoch, restart the job: both resume from the chief's backup."""
    workdir = tmp_path / "run"
    epochs = 4
    cmd = _train_command(workdir, course_synth, f"train.epochs={epochs}",
                         "train.steps_per_epoch=20", "train.eval_every=0")
    procs = _launch_workers(cmd)
    metadata = workdir / "backup" / "training_metadata.json"
    deadline = time.time() + 400
    while time.time() < deadline and all(proc.poll() is None for proc in procs):
        try:
            if json.loads(metadata.read_text())["epoch"] >= 1:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    assert all(proc.poll() is None for proc in procs), "a worker exited before the first backup"
    procs[1].kill()  # the failure: one worker dies mid-epoch
    procs[0].kill()  # the job is then restarted as a whole, as a scheduler does
    for proc in procs:
        proc.communicate(timeout=60)
    saved = json.loads(metadata.read_text())["epoch"]
    assert 1 <= saved < epochs
    assert not (workdir / "model.keras").exists()

    results = _final_results(_launch_workers(cmd))
    # A kill during the chief's save leaves the previous epoch's copy (double checkpoint).
    assert results[0]["epochs_run"] == results[1]["epochs_run"]
    assert results[0]["epochs_run"] in (epochs - saved, epochs - saved + 1)
    assert results[0]["weights_sha256"] == results[1]["weights_sha256"]
    assert (workdir / "model.keras").is_file()
    assert not (workdir / "backup").exists(), "the chief removes the backup when done"


def test_workers_that_would_resume_from_different_epochs_all_stop(tmp_path, course_synth):
    """A run directory that is not shared: only the chief sees the backup; nobody trains."""
    chief_dir, other_dir = tmp_path / "chief", tmp_path / "other"
    (chief_dir / "backup").mkdir(parents=True)
    (chief_dir / "backup" / "training_metadata.json").write_text('{"epoch": 1, "batch": 0}')
    procs = _launch_workers([_train_command(workdir, course_synth, "train.epochs=2")
                             for workdir in (chief_dir, other_dir)])
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 2, err[-3000:]
        assert "resume from different epochs" in err and "all workers share" in err
        assert "Traceback" not in err
    assert not (chief_dir / "model.keras").exists()
