"""The Parquet embedding store without Ray: written shard by shard, read back as a ``.npz``
store, indexed shard by shard (the same index as from the whole array), and refused clearly
when unfinished or foreign."""

import json

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from tfmarket.errors import DataError, TfmarketError  # noqa: E402
from tfmarket.gallery import main  # noqa: E402
from tfmarket.serving import parquet_store as ps  # noqa: E402
from tfmarket.serving.store import index_store, load_store, save_store  # noqa: E402


def _store(n: int = 600, dim: int = 32, seed: int = 0) -> dict:
    from tfmarket.attributes import COLUMNS
    from tfmarket.retrieval.search import l2_normalize

    rng = np.random.default_rng(seed)
    return {"files": np.array([f"/g/{i:05d}.jpg" for i in range(n)]),
            "embedding": l2_normalize(rng.normal(size=(n, dim))),
            "attributes": rng.integers(1, 3, (n, 27)).astype(np.int8),
            "prob_age": rng.random((n, 4)).astype(np.float32),
            "prob_backpack": rng.random((n, 1)).astype(np.float32),
            "attribute_columns": np.array(COLUMNS),
            "model": np.array("/exports/m/model.onnx")}


def write_parquet(store: dict, path, shard_size: int) -> None:
    """What the Ray engine's workers and driver write, from a store dict."""
    fs, root = ps.prepare_folder(path)
    rows = {k: v for k, v in store.items() if k not in ("attribute_columns", "model")}
    shards = []
    for i, start in enumerate(range(0, len(store["files"]), shard_size)):
        part = {k: v[start:start + shard_size] for k, v in rows.items()}
        name = f"part-{i:06d}.parquet"
        ps.write_shard(fs, root, name, ps.shard_table(part))
        shards.append({"file": name, "rows": len(part["files"])})
    ps.write_errors(fs, root, [("/g/broken.jpg", "cannot decode")])
    ps.write_manifest(fs, root, {
        "model": str(store["model"]), "attribute_columns": list(store["attribute_columns"]),
        "heads": {"age": 4, "backpack": 1}, "embedding_dim": store["embedding"].shape[1],
        "flip_test": False, "images": len(store["files"]), "errors": 1, "shards": shards})


def test_a_parquet_store_loads_as_the_npz_store_it_holds(tmp_path):
    store = _store(250)
    write_parquet(store, tmp_path / "g", shard_size=64)
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == [
        "errors.csv", "manifest.json", *(f"part-{i:06d}.parquet" for i in range(4))]
    loaded = load_store(tmp_path / "g")
    for key, value in store.items():
        np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    assert loaded["embedding"].dtype == np.float32 and loaded["attributes"].dtype == np.int8
    assert "flip_test" not in loaded
    # the same store through a file:// URI (the pyarrow filesystem path object stores take)
    uri = load_store(f"file://{tmp_path / 'g'}")
    np.testing.assert_array_equal(uri["embedding"], store["embedding"])
    errors = (tmp_path / "g" / "errors.csv").read_text()
    assert errors == "file,error\n/g/broken.jpg,cannot decode\n"
    sample = ps.sample_embeddings(tmp_path / "g", 100, seed=3)
    assert sample.shape == (100, 32)
    assert len({tuple(r) for r in sample}) == 100  # drawn without replacement, from all shards
    rows = {tuple(r): i for i, r in enumerate(store["embedding"])}
    assert max(rows[tuple(r)] for r in sample) > 192  # the last shard is sampled too


def test_streamed_index_equals_the_in_memory_index(tmp_path):
    faiss = pytest.importorskip("faiss")
    from tfmarket.retrieval.search import build_faiss_index, faiss_topk

    store = _store(600)
    write_parquet(store, tmp_path / "g", shard_size=100)
    save_store(store, tmp_path / "g.npz")
    queries = store["embedding"][:25]
    # flat: the same vectors in the same order, so the same answers
    streamed = index_store(tmp_path / "g", kind="flat")
    whole = build_faiss_index(store["embedding"], kind="flat")
    assert streamed.ntotal == 600
    for a, b in zip(faiss_topk(streamed, queries, 10), faiss_topk(whole, queries, 10),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    # IVF trained on a sample of every shard: all nprobe cells -> exact answers again
    ivf = index_store(tmp_path / "g", kind="ivf", train_size=200, nlist=8, nprobe=8)
    assert ivf.ntotal == 600 and faiss.extract_index_ivf(ivf).nlist == 8
    np.testing.assert_array_equal(faiss_topk(ivf, queries, 10)[0],
                                  faiss_topk(whole, queries, 10)[0])
    # the CLI: a Parquet store folder and a .npz store give the same flat index
    for name in ("g", "g.npz"):
        assert main(["index", str(tmp_path / name), "--kind", "flat",
                     "--out", str(tmp_path / f"{name}.faiss")]) == 0
    a, b = (faiss.read_index(str(tmp_path / f"{n}.faiss")) for n in ("g", "g.npz"))
    np.testing.assert_array_equal(faiss.rev_swig_ptr(a.get_xb(), a.ntotal * a.d),
                                  faiss.rev_swig_ptr(b.get_xb(), b.ntotal * b.d))
    assert main(["index", str(tmp_path / "g"), "--kind", "ivf", "--nlist", "1024",
                 "--out", str(tmp_path / "x.faiss")]) == 2  # too few vectors: one clear line


def test_unfinished_and_foreign_stores_are_refused(tmp_path):
    store = _store(50)
    write_parquet(store, tmp_path / "g", shard_size=20)
    with pytest.raises(TfmarketError, match="already exists and is not empty"):
        ps.prepare_folder(tmp_path / "g")
    (tmp_path / "g" / "manifest.json").unlink()  # as a killed driver leaves it
    with pytest.raises(DataError, match="did not finish"):
        load_store(tmp_path / "g")
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="not a tfmarket Parquet store"):
        load_store(tmp_path / "h")
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="not a Parquet embedding store"):
        load_store(tmp_path / "images")
    write_parquet(store, tmp_path / "k", shard_size=20)
    (tmp_path / "k" / "part-000001.parquet").unlink()
    with pytest.raises(DataError, match="part-000001.parquet unreadable"):
        load_store(tmp_path / "k")


def test_the_ray_actors_model_cache(tmp_path, monkeypatch):
    """One copy per model and machine, found again by its hash; copies unused for a week go."""
    import os
    import tempfile
    import time

    from tfmarket.serving.ray_embed import local_model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    stale = tmp_path / "tfmarket-ray-models" / "0123456789abcdef0123"
    stale.mkdir(parents=True)
    os.utime(stale, (time.time() - 8 * 86400,) * 2)
    files = {"model.onnx": b"onnx bytes", "model_card.json": b"{}"}
    path = local_model(files, "model.onnx")
    assert path.read_bytes() == b"onnx bytes" and (path.parent / "model_card.json").is_file()
    assert not stale.exists()
    assert local_model(dict(files), "model.onnx") == path
    assert local_model({**files, "model.onnx": b"other"}, "model.onnx") != path
    assert len(list((tmp_path / "tfmarket-ray-models").iterdir())) == 2
