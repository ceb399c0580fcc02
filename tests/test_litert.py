"""LiteRT (``export --litert``): the tiny model's ``.tflite`` files against Keras and onnxruntime,
and every command serving them through :func:`tfmarket.serving.embed.open_embedder`."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from tfmarket.attributes import HEADS
from tfmarket.errors import TfmarketError

pytest.importorskip("ai_edge_litert", reason="needs ai-edge-litert: pip install -e '.[dev]'")


@pytest.fixture(scope="module")
def litert_export(exported, tmp_path_factory):
    """The session's smoke run exported again with --onnx --litert --int8: (folder, card)."""
    from tfmarket.serving.export import export_run

    _, card, _ = exported
    out = tmp_path_factory.mktemp("litert") / "exp"
    return out, export_run(Path(card["source_run"]), out, onnx=True, litert=True, int8=True,
                           parity_images=8)


def _keras_inference(card):
    from tfmarket.model.network import build_inference_model, load_run_model

    return build_inference_model(load_run_model(Path(card["source_run"]) / card["source_model"]))


def test_export_writes_tflite_models_within_the_parity_and_int8_bounds(litert_export,
                                                                        course_synth):
    from tfmarket.preprocess import load_images_numpy
    from tfmarket.serving.export import quantization_report
    from tfmarket.serving.litert import LiteRTModel, run_litert

    out, card = litert_export
    written = json.loads((out / "model_card.json").read_text())
    assert {"model.tflite", "model.int8.tflite", "model.onnx", "model.int8.onnx"} <= set(
        written["files"])
    assert all((out / name).exists() for name in written["files"])
    parity = written["parity"]
    assert max(parity["litert_vs_keras"].values()) <= 1e-4
    assert parity["max_abs_diff"] >= max(parity["litert_vs_keras"].values())
    assert parity["litert_int8"]["embedding_cosine_min"] > 0.9, parity["litert_int8"]
    assert "calibrated on" in parity["litert_int8"]["method"]

    height, width = written["input"]["shape"][1:3]
    for name in ("model.tflite", "model.int8.tflite"):
        model = LiteRTModel(out / name)
        assert (model.height, model.width) == (height, width)
        assert set(model.output_names) == {"embedding", *HEADS}
    # Dynamic batch, against Keras, on images the export never saw.
    inference = _keras_inference(card)
    rng = np.random.default_rng(1)
    for batch in (1, 5):
        images = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
        expected = {k: np.asarray(v) for k, v in inference(images, training=False).items()}
        got = run_litert(out / "model.tflite", images)
        for key, value in expected.items():
            assert got[key].dtype == np.float32 and got[key].shape == value.shape, key
            np.testing.assert_allclose(got[key], value, atol=1e-4, err_msg=key)
    # int8 on real crops: float32 outputs of the same shapes, close to Keras, and unit-length
    # embeddings (the L2 normalisation stays in float32).
    crops = load_images_numpy(sorted((course_synth / "test").iterdir())[:24], height, width)
    expected = {k: np.asarray(v) for k, v in inference(crops, training=False).items()}
    quantized = run_litert(out / "model.int8.tflite", crops)
    assert {k: (v.dtype, v.shape) for k, v in quantized.items()} == {
        k: (np.dtype(np.float32), v.shape) for k, v in expected.items()}
    report = quantization_report(expected, quantized)
    assert report["embedding_cosine_min"] > 0.9, report
    np.testing.assert_allclose(np.linalg.norm(quantized["embedding"], axis=1), 1.0, atol=1e-5)


def test_rank_tflite_ranks_as_onnx_does(litert_export, course_synth, tmp_path, capsys):
    from tfmarket.rank import main as rank_main
    from tfmarket.serving.submission import read_classification, read_reid

    out, _ = litert_export
    summaries = {}
    for name in ("model.onnx", "model.tflite", "model.int8.tflite"):
        assert rank_main(["--model", str(out / name), "--data", str(course_synth),
                          "--out", str(tmp_path / name), "--topk", "10", "--json"]) == 0
        text = capsys.readouterr().out
        summaries[name] = json.loads(text[text.index("{"):])
    assert summaries["model.tflite"]["providers"] == ["LiteRT CPU"]
    onnx, tflite = (read_reid(tmp_path / n / "reid_test.txt") for n in ("model.onnx",
                                                                         "model.tflite"))
    assert tflite == onnx and all(len(v) == 10 for v in tflite.values())
    onnx_cls, tflite_cls = (read_classification(tmp_path / n / "classification_test.csv")
                            for n in ("model.onnx", "model.tflite"))
    assert onnx_cls[0] == tflite_cls[0]
    np.testing.assert_array_equal(onnx_cls[1], tflite_cls[1])
    a, b = (np.load(tmp_path / n / "embeddings.npz")["gallery_embedding"]
            for n in ("model.onnx", "model.tflite"))
    np.testing.assert_allclose(a, b, atol=1e-5)
    fp32, int8 = (summaries[n]["metrics"] for n in ("model.onnx", "model.int8.tflite"))
    assert abs(fp32["mAP"] - int8["mAP"]) < 0.1, (fp32, int8)


def test_gallery_api_and_calibrate_serve_tflite(litert_export, course_synth, tmp_path, capsys):
    import tfmarket
    from tfmarket.calibrate import main as calibrate_main
    from tfmarket.gallery import main as gallery_main
    from tfmarket.serving.store import load_store

    out, card = litert_export
    images = str(course_synth / "test")
    for name in ("model.onnx", "model.tflite"):  # batches of 7: the last one is smaller
        assert gallery_main(["embed", "--model", str(out / name), "--images", images,
                             "--batch-size", "7", "--out", str(tmp_path / f"{name}.npz")]) == 0
    onnx, tflite = (load_store(tmp_path / f"{n}.npz") for n in ("model.onnx", "model.tflite"))
    assert tflite["files"].tolist() == onnx["files"].tolist()
    np.testing.assert_allclose(tflite["embedding"], onnx["embedding"], atol=1e-5)

    model = tfmarket.load(out / "model.tflite", flip_test=True)
    assert model.path == out / "model.tflite" and model.schema.name == "market1501"
    pixels = np.random.default_rng(2).integers(0, 256, (3, model.height, model.width, 3),
                                               dtype=np.uint8)
    expected = tfmarket.load(out / "model.onnx", flip_test=True).predict(pixels)
    np.testing.assert_allclose(model.predict(pixels).embeddings, expected.embeddings, atol=1e-5)
    # A folder of LiteRT models alone serves them (int8 when asked).
    only = tmp_path / "only-litert"
    only.mkdir()
    for name in ("model.tflite", "model.int8.tflite", "model_card.json"):
        shutil.copy(out / name, only / name)
    assert tfmarket.load(only).path == only / "model.tflite"
    assert tfmarket.load(only, int8=True).path == only / "model.int8.tflite"

    assert calibrate_main(["--workdir", card["source_run"], "--model", str(only / "model.tflite"),
                           "--neighbours", "1,3", "--prior-weights", "0"]) == 0
    assert (only / "attribute_rule.json").is_file() and (only / "retrieval.json").is_file()
    capsys.readouterr()


def test_bad_tflite_files_and_runtimes_give_clear_errors(litert_export, course_synth, tmp_path,
                                                         capsys):
    from tfmarket.rank import main as rank_main
    from tfmarket.serving.embed import open_embedder

    out, _ = litert_export
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"not a flatbuffer at all" * 8)
    with pytest.raises(TfmarketError, match=r"model.tflite: not a loadable LiteRT model"):
        open_embedder(bad)
    onnx_named_tflite = tmp_path / "renamed" / "model.tflite"
    onnx_named_tflite.parent.mkdir()
    shutil.copy(out / "model.onnx", onnx_named_tflite)
    with pytest.raises(TfmarketError, match="not a loadable LiteRT model"):
        open_embedder(onnx_named_tflite)
    with pytest.raises(TfmarketError, match="not a loadable ONNX model"):
        open_embedder(out / "model.tflite", runtime="onnxruntime")
    with pytest.raises(TfmarketError, match="model file not found"):
        open_embedder(tmp_path / "missing.tflite")
    with pytest.raises(TfmarketError, match="unknown runtime"):
        open_embedder(out / "model.tflite", runtime="tflite")
    assert type(open_embedder(out / "model.tflite", runtime="litert")).__name__ == \
        "LiteRTEmbedder"
    with pytest.raises(TfmarketError, match="threads must be >= 0"):
        open_embedder(out / "model.tflite", threads=-1)
    assert rank_main(["--model", str(bad), "--data", str(course_synth),
                      "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "not a loadable LiteRT model" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "reid_test.txt").exists(), "nothing half-written"


def test_missing_runtime_names_the_extra_before_any_work(litert_export, tmp_path, monkeypatch):
    from tfmarket.serving.embed import open_embedder
    from tfmarket.serving.export import export_run

    out, card = litert_export
    # As when ai-edge-litert is not installed: importing it raises ImportError.
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    with pytest.raises(TfmarketError, match=r"tfmarket\[litert\]"):
        open_embedder(out / "model.tflite")
    with pytest.raises(TfmarketError, match=r"tfmarket\[litert\]"):
        export_run(Path(card["source_run"]), tmp_path / "x", litert=True)
    assert not list(tmp_path.iterdir())


def test_litert_parity_failure_aborts_and_leaves_nothing(litert_export, tmp_path, monkeypatch):
    import tfmarket.serving.export as export_module

    _, card = litert_export
    real = export_module.export_model
    monkeypatch.setattr(export_module, "export_model",
                        lambda *a, **k: real(*a, **{**k, "tolerance": -1.0}))
    out = tmp_path / "out"
    with pytest.raises(TfmarketError, match="parity check failed.*litert_vs_keras"):
        export_module.export_run(Path(card["source_run"]), out, litert=True, parity_images=2)
    assert not out.exists()
    assert not list(tmp_path.iterdir()), "no staging folder left behind"


def test_docs_litert_snippet_runs_without_tensorflow(litert_export, course_synth, tmp_path):
    """docs/export_serving.md's Raspberry Pi snippet, on the tiny export: no TensorFlow needed,
    and its embedding is the one tfmarket's embedder gives (up to the resize)."""
    import re
    import subprocess

    out, _ = litert_export
    page = (Path(__file__).resolve().parents[1] / "docs" / "export_serving.md").read_text()
    section = page[page.index("## LiteRT"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    shutil.copy(out / "model.int8.tflite", tmp_path / "model.int8.tflite")
    shutil.copy(sorted((course_synth / "test").iterdir())[0], tmp_path / "person.jpg")
    check = ("\nimport sys\nassert 'tensorflow' not in sys.modules\n"
             "assert abs(float((out['embedding'] ** 2).sum()) - 1) < 1e-4\n"
             "assert 0 <= float(out['gender'][0, 0]) <= 1\n")
    proc = subprocess.run([sys.executable, "-c", code + check], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
