"""``gallery embed --engine ray`` on a local Ray instance with 2 CPUs: the Parquet store equals
the local engine's store, an unreadable image is reported and skipped, and a worker killed
mid-run leaves every image in the store exactly once.

One Ray instance serves the module (started once, shut down at the end); the runs use the
tiny exported model of ``conftest.exported``, so each costs mostly its actors' start-up.
"""

import contextlib
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from tfmarket.gallery import main  # noqa: E402
from tfmarket.serving.store import load_store  # noqa: E402

ACTOR = "EmbedShard"  # in the process title of every actor of the pool


@pytest.fixture(scope="module")
def local_ray():
    import logging

    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             object_store_memory=200 * 1024 * 1024)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def images(course_synth, tmp_path_factory):
    """(the synthetic test folder, [unreadable files in a folder of their own]): a corrupt
    JPEG (Pillow refuses it), and a TIFF named .jpg (Pillow reads it, TensorFlow does not)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("bad")
    broken = folder / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG" + bytes(range(256)))
    Image.new("RGB", (64, 128), (90, 20, 200)).save(folder / "tiff_inside.jpg", format="TIFF")
    return course_synth / "test", [broken, folder / "tiff_inside.jpg"]


def _embed(*args) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["embed", *args, "--json"]) == 0
    text = out.getvalue()
    return json.loads(text[text.index("{"):])


@pytest.fixture(scope="module")
def stores(local_ray, exported, images, tmp_path_factory):
    """The local engine's .npz store of the folder, and the Ray engine's Parquet store of the
    folder plus the corrupt file (with the run's summary)."""
    folder, bad = images
    root = tmp_path_factory.mktemp("ray_stores")
    model = str(exported[0] / "model.onnx")
    _embed("--model", model, "--images", str(folder), "--out", str(root / "local.npz"))
    summary = _embed("--engine", "ray", "--model", model, "--images", str(folder),
                     *(str(b) for b in bad), "--out", str(root / "ray"), "--shard-size", "16",
                     "--batch-size", "8")
    return root / "local.npz", root / "ray", summary


def _assert_same_store(ray_store: dict, local: dict) -> None:
    assert ray_store["files"].tolist() == local["files"].tolist()
    np.testing.assert_allclose(ray_store["embedding"], local["embedding"], atol=1e-5, rtol=0)
    np.testing.assert_array_equal(ray_store["attributes"], local["attributes"])
    for key in local:
        if key.startswith("prob_"):
            np.testing.assert_allclose(ray_store[key], local[key], atol=1e-5, rtol=0)
    assert ray_store["attribute_columns"].tolist() == local["attribute_columns"].tolist()
    assert str(ray_store["model"]) == str(local["model"])


def test_ray_store_equals_the_local_engines(stores, images):
    local_path, ray_path, summary = stores
    local, ray_store = load_store(local_path), load_store(ray_path)
    assert len(local["files"]) == 63
    _assert_same_store(ray_store, local)
    manifest = json.loads((ray_path / "manifest.json").read_text())
    # 65 files listed and sorted, cut into shards of 16; the two unreadable ones left out
    listed = sorted([*local["files"].tolist(), *(str(b) for b in images[1])])
    rows = [sum(f in set(local["files"].tolist()) for f in listed[i:i + 16])
            for i in range(0, 65, 16)]
    assert [s["rows"] for s in manifest["shards"]] == rows and sum(rows) == 63
    assert [s["file"] for s in manifest["shards"]] == [f"part-{i:06d}.parquet" for i in range(5)]
    assert manifest["embedding_dim"] == local["embedding"].shape[1]
    assert summary["images"] == 63 and summary["shards"] == 5 and summary["actors"] == 2
    # where the actors' time went (which actor got which shard is Ray's choice)
    stages = summary["actor_seconds"]
    assert stages["model"] > 0 and min(stages[k] for k in ("read", "decode", "write")) >= 0
    assert 1 <= len(stages["actors"]) <= 2
    assert min(a for a, _ in stages["actors"].values()) == 0  # seconds after the first start
    assert all(0 <= a <= b <= summary["embedding_seconds"] + 0.01
               for a, b in stages["actors"].values())
    assert summary["store_bytes"] == sum(p.stat().st_size for p in ray_path.iterdir())
    assert not list(ray_path.glob("*.tmp"))


def test_unreadable_images_are_reported_and_skipped(stores, images):
    _, ray_path, summary = stores
    broken, tiff = (str(b) for b in images[1])
    assert summary["errors"] == 2 and summary["errors_file"] == str(ray_path / "errors.csv")
    import csv

    with open(ray_path / "errors.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "error"] and [r[0] for r in rows[1:]] == [broken, tiff]
    assert rows[1][1].startswith("cannot decode:")  # Pillow's check refused it
    # Pillow reads a TIFF, TensorFlow's decoder (the one that decides the pixels) does not
    assert rows[2][1].startswith("cannot decode: Unknown image file format"), rows[2]
    assert json.loads((ray_path / "manifest.json").read_text())["errors"] == 2
    assert not {broken, tiff} & set(load_store(ray_path)["files"].tolist())


def test_index_search_and_the_api_read_the_parquet_store(stores, exported, course_synth,
                                                           tmp_path):
    import tfmarket

    local_path, ray_path, _ = stores
    model = str(exported[0] / "model.onnx")
    hits = {}
    for name, store in (("local", local_path), ("ray", ray_path)):
        assert main(["index", str(store), "--kind", "flat",
                     "--out", str(tmp_path / f"{name}.faiss")]) == 0
        out = tmp_path / f"{name}.json"
        assert main(["search", "--model", model, "--store", str(store), "--index",
                     str(tmp_path / f"{name}.faiss"), "--query", str(course_synth / "queries"),
                     "--topk", "5", "--out", str(out)]) == 0
        hits[name] = json.loads(out.read_text())
    assert [[r["file"] for r in v] for v in hits["ray"].values()] == \
        [[r["file"] for r in v] for v in hits["local"].values()]
    # the Python API: a store as the gallery ranks as the images it was embedded from
    api = tfmarket.load(exported[0])
    queries = sorted(str(p) for p in (course_synth / "queries").iterdir())[:4]
    from_store = api.search(queries, gallery=ray_path, topk=5)
    from_images = api.search(queries, gallery=str(course_synth / "test"), topk=5)
    np.testing.assert_array_equal(from_store.files, from_images.files)
    np.testing.assert_allclose(from_store.distances, from_images.distances, atol=1e-5)


def test_the_local_engine_imports_no_ray(exported, course_synth, tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom tfmarket.gallery import main\n"
            f"assert main(['embed', '--model', {str(exported[0] / 'model.onnx')!r}, '--images', "
            f"{str(course_synth / 'queries')!r}, '--out', {str(tmp_path / 'q.npz')!r}]) == 0\n"
            f"assert main(['index', {str(tmp_path / 'q.npz')!r}, '--out', "
            f"{str(tmp_path / 'q.faiss')!r}]) == 0\n"
            "assert 'ray' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def _actor_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if ACTOR in title and entry.name != str(os.getpid()):
                pids.append(int(entry.name))
    return sorted(pids)


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds actors in /proc")
def test_a_worker_killed_mid_run_leaves_every_image_once(local_ray, exported, images, stores,
                                                          tmp_path):
    folder, _ = images
    out = tmp_path / "killed"
    killed = {}

    def kill_one_actor_after_the_first_shard():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            pids = _actor_pids()
            written = list(out.glob("part-*.parquet")) if out.is_dir() else []
            if written and pids:
                killed.update(pid=pids[0], shards_before=len(written),
                              finished=(out / "manifest.json").exists())
                os.kill(pids[0], signal.SIGKILL)
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_actor_after_the_first_shard, daemon=True)
    killer.start()
    summary = _embed("--engine", "ray", "--model", str(exported[0] / "model.onnx"),
                     "--images", str(folder), "--out", str(out), "--shard-size", "2",
                     "--batch-size", "2")
    killer.join(timeout=5)
    assert killed, "no actor was found to kill"
    assert not killed["finished"] and killed["shards_before"] < 32, killed  # really mid-run
    assert killed["pid"] not in _actor_pids()
    store = load_store(out)
    files, counts = np.unique(store["files"], return_counts=True)
    assert (counts == 1).all() and len(files) == 63 == summary["images"]
    _assert_same_store(store, load_store(stores[0]))
    assert len(list(out.glob("part-*.parquet"))) == 32 and not list(out.glob("*.tmp"))
