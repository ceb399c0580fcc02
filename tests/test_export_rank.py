"""Export round trip and the rank CLI on a tiny trained model (synthetic data, real files)."""

import json

import numpy as np
import pytest
from conftest import write_jpeg

from tfmarket.attributes import HEADS
from tfmarket.rank import main as rank_main
from tfmarket.serving.export import export_run, run_onnx
from tfmarket.serving.submission import read_classification, read_reid


def test_export_writes_models_card_and_passes_parity(exported):
    out, card, config = exported
    for name in ("saved_model", "model.onnx", "model.int8.onnx", "model_card.json"):
        assert (out / name).exists(), name
    written = json.loads((out / "model_card.json").read_text())
    assert written["input"]["shape"] == [None, config.data.height, config.data.width, 3]
    assert written["input"]["dtype"] == "uint8"
    assert set(written["outputs"]) == {"embedding", *HEADS}
    assert written["parity"]["max_abs_diff"] <= 1e-4
    assert written["parity"]["int8"]["embedding_cosine_min"] > 0.9
    assert written["attributes"]["heads"]["upper_color"]["classes"][-1] == "none"
    assert written["training_config"]["name"] == "smoke"


def test_keras_savedmodel_onnx_agree_with_dynamic_batch(exported):
    import keras
    import tensorflow as tf

    from tfmarket.model.network import build_inference_model

    out, card, config = exported
    model = keras.models.load_model(card["source_run"] + "/" + card["source_model"])
    inference = build_inference_model(model)
    loaded = tf.saved_model.load(str(out / "saved_model"))
    rng = np.random.default_rng(0)
    for batch in (1, 5):
        images = rng.integers(0, 255, (batch, config.data.height, config.data.width, 3),
                              dtype=np.uint8)
        expected = {k: np.asarray(v) for k, v in inference(images, training=False).items()}
        onnx_out = run_onnx(out / "model.onnx", images)
        served = {k: v.numpy() for k, v in loaded.serve(tf.constant(images)).items()}
        for name, value in expected.items():
            assert onnx_out[name].shape[0] == batch
            np.testing.assert_allclose(onnx_out[name], value, atol=1e-4)
            np.testing.assert_allclose(served[name], value, atol=1e-4)


def test_export_refuses_to_overwrite_and_names_bad_runs(exported, tmp_path):
    from tfmarket.errors import TfmarketError

    out, card, _ = exported
    with pytest.raises(TfmarketError, match="already exists"):
        export_run(__import__("pathlib").Path(card["source_run"]), out)
    with pytest.raises(TfmarketError, match="not a tfmarket run directory"):
        export_run(tmp_path, tmp_path / "x")
    # A damaged model file: one line naming it, nothing written.
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(card["source_run"], broken, ignore=shutil.ignore_patterns("*.keras"))
    (broken / "best.keras").write_bytes(b"not a zip archive")
    with pytest.raises(TfmarketError, match=r"best.keras: not a loadable tfmarket model"):
        export_run(broken, tmp_path / "y")
    assert not (tmp_path / "y").exists()


def test_rank_course_layout_writes_parseable_submission(exported, course_synth, tmp_path,
                                                         capsys):
    out, _, _ = exported
    result_dir = tmp_path / "rank"
    assert rank_main(["--model", str(out / "model.onnx"), "--data", str(course_synth),
                      "--out", str(result_dir), "--topk", "7", "--visualize", "3",
                      "--json"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads(printed[printed.index("{"):])
    queries = sorted(p.name for p in (course_synth / "queries").iterdir())
    tests = sorted(p.name for p in (course_synth / "test").iterdir())
    ranking = read_reid(result_dir / "reid_test.txt")
    assert sorted(ranking) == queries
    assert all(len(v) == 7 and set(v) <= set(tests) and len(set(v)) == 7
               for v in ranking.values())
    names, columns = read_classification(result_dir / "classification_test.csv")
    assert sorted(names) == tests and columns.shape == (len(tests), 27)
    metrics = json.loads((result_dir / "metrics.json").read_text())
    assert 0 <= metrics["reid"]["mAP"] <= 1 and "mAP_trapezoid" in metrics["reid"]
    assert 0 <= metrics["attributes"]["mA"] <= 1
    assert (result_dir / "ranking" / "index.html").is_file()
    assert summary["queries"] == len(queries)
    emb = np.load(result_dir / "embeddings.npz")
    norms = np.linalg.norm(emb["gallery_embedding"], axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-4)


def test_rank_folders_with_rerank_equals_metrics_contract(exported, market_synth, tmp_path):
    out, _, _ = exported
    result_dir = tmp_path / "rank"
    assert rank_main(["--model", str(out / "model.onnx"), "--query", str(market_synth / "query"),
                      "--gallery", str(market_synth / "bounding_box_test"),
                      "--out", str(result_dir), "--rerank", "--k1", "5", "--k2", "2"]) == 0
    metrics = json.loads((result_dir / "metrics.json").read_text())
    assert metrics["reid"]["num_valid_queries"] > 0


def test_rank_reports_unreadable_images_by_name(exported, course_synth, tmp_path, capsys):
    import shutil

    out, _, _ = exported
    root = tmp_path / "c"
    shutil.copytree(course_synth, root)
    (root / "synthetic_truth.csv").unlink()  # unlabelled, like the real course folder
    bad = root / "test" / "000001.jpg"
    bad.write_bytes(b"garbage")
    write_jpeg(root / "queries" / "999999.png", fmt="PNG", size=(50, 100))  # PNG and odd size
    (root / "test" / "Thumbs.db").write_bytes(b"\0" * 10)
    code = rank_main(["--model", str(out / "model.onnx"), "--data", str(root),
                      "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "000001.jpg" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "reid_test.txt").exists(), "nothing half-written"


def test_rank_accepts_png_grayscale_and_odd_sizes(exported, course_synth, tmp_path):
    out, _, _ = exported
    queries = tmp_path / "q"
    write_jpeg(queries / "odd.png", fmt="PNG", size=(50, 111))
    write_jpeg(queries / "gray.jpg", mode="L", size=(64, 128))
    write_jpeg(queries / "big.jpg", size=(300, 700))
    (queries / "Thumbs.db").write_bytes(b"\0" * 16)
    result_dir = tmp_path / "r"
    assert rank_main(["--model", str(out / "model.onnx"), "--query", str(queries),
                      "--gallery", str(course_synth / "test"), "--out", str(result_dir),
                      "--topk", "3"]) == 0
    ranking = read_reid(result_dir / "reid_test.txt")
    assert sorted(ranking) == ["big.jpg", "gray.jpg", "odd.png"]
    assert not (result_dir / "metrics.json").exists(), "unlabelled names: no metrics"


def test_parity_failure_aborts_and_leaves_nothing(exported, tmp_path, monkeypatch):
    import pathlib

    import tfmarket.serving.export as export_module
    from tfmarket.errors import TfmarketError

    _, card, _ = exported
    images = np.zeros((2, 64, 32, 3), np.uint8)
    model = export_module.float32_copy(
        __import__("keras").models.load_model(card["source_run"] + "/" + card["source_model"]),
        exported[2])
    with pytest.raises(TfmarketError, match="parity check failed"):
        export_module.export_model(model, tmp_path / "direct", images, onnx=True,
                                   tolerance=-1.0)
    # Through the CLI entry: the staging folder is removed and no output appears.
    real = export_module.export_model
    monkeypatch.setattr(export_module, "export_model",
                        lambda *a, **k: real(*a, **{**k, "tolerance": -1.0}))
    out = tmp_path / "out"
    with pytest.raises(TfmarketError, match="parity"):
        export_run(pathlib.Path(card["source_run"]), out, onnx=True, parity_images=2)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.tmp-")]


def test_rank_faiss_flat_search_equals_exact(exported, course_synth, tmp_path):
    out, _, _ = exported
    rankings = []
    for search in ("exact", "faiss-flat"):
        result_dir = tmp_path / search
        assert rank_main(["--model", str(out / "model.onnx"), "--data", str(course_synth),
                          "--out", str(result_dir), "--topk", "10", "--search", search]) == 0
        rankings.append(read_reid(result_dir / "reid_test.txt"))
    assert rankings[0] == rankings[1]


def test_same_model_and_data_give_byte_identical_outputs(exported, course_synth, tmp_path):
    """Export and rank outputs carry no wall-clock time: rerunning reproduces them byte for byte."""
    import pathlib

    out, card, _ = exported
    again = tmp_path / "exp"
    export_run(pathlib.Path(card["source_run"]), again, onnx=True, int8=True, parity_images=8)
    assert (again / "model_card.json").read_bytes() == (out / "model_card.json").read_bytes()
    written = []
    for name in ("a", "b"):
        assert rank_main(["--model", str(out / "model.onnx"), "--data", str(course_synth),
                          "--out", str(tmp_path / name), "--topk", "5"]) == 0
        written.append({p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())})
    assert set(written[0]) >= {"reid_test.txt", "classification_test.csv", "embeddings.npz",
                               "metrics.json"}
    assert written[0] == written[1]


def test_onnx_conversion_falls_back_to_tf2onnx_defaults_and_restores_it(exported, tmp_path,
                                                                        monkeypatch):
    """The low-memory conversion (tf2onnx's large-model mode, fresh node protobufs) writes a
    self-contained model computing what tf2onnx's defaults compute; if it fails, the defaults
    run; tf2onnx is left as found."""
    import onnx
    import tf2onnx
    from tf2onnx.graph import Node

    import tfmarket.serving.export as export_module
    from tfmarket.model.network import build_inference_model

    _, card, config = exported
    model = export_module.float32_copy(
        __import__("keras").models.load_model(card["source_run"] + "/" + card["source_model"]),
        config)
    inference = build_inference_model(model)
    images = np.random.default_rng(0).integers(0, 256, (3, 64, 32, 3), dtype=np.uint8)
    inference(images)  # Keras exports only a model that has been called
    functions = (tf2onnx.convert.from_function, Node.update_proto)
    export_module._export_onnx(inference, tmp_path / "low.onnx")
    assert (tf2onnx.convert.from_function, Node.update_proto) == functions

    def broken(*args, **kwargs):
        raise ValueError("simulated failure of the large-model conversion")

    monkeypatch.setattr(export_module, "_inline_external_tensors", broken)
    export_module._export_onnx(inference, tmp_path / "default.onnx")
    assert (tf2onnx.convert.from_function, Node.update_proto) == functions
    low, default = (onnx.load(str(tmp_path / f)) for f in ("low.onnx", "default.onnx"))
    assert len(low.graph.node) == len(default.graph.node)
    assert not [t for t in low.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    a, b = run_onnx(tmp_path / "low.onnx", images), run_onnx(tmp_path / "default.onnx", images)
    for name in a:
        np.testing.assert_allclose(a[name], b[name], atol=1e-6)
