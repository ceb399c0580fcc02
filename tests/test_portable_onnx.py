"""Portable ONNX: the normalisation folded into the first convolution, the documented operator
set, and the exported models run alike in onnxruntime, OpenVINO and OpenCV DNN (both of its
engines); ``--runtime openvino`` through rank, gallery and the Python API."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from tfmarket.errors import TfmarketError
from tfmarket.model.layers import Normalize
from tfmarket.model.network import build_inference_model, build_model
from tfmarket.serving.export import quantization_report, run_onnx
from tfmarket.serving.onnx_ops import (
    PORTABLE_OPERATORS,
    QUANTIZED_OPERATORS,
    operator_counts,
    outside_portable_set,
)

FLOAT_TOLERANCE = 1e-4  # the export's parity tolerance
# int8 drift against the float Keras model, as test_quantize.py and the card's parity.int8 read
# it: every embedding's cosine to the float one, and the attribute decisions that stay the same.
INT8_COSINE_MIN = 0.9
INT8_AGREEMENT_MIN = 0.9


def _caffe(model: keras.Model) -> keras.Model:
    """``model`` normalising as ResNet50's Keras weights expect (RGB -> BGR flip, mean only):
    the tiny backbone with ResNet50's normalisation, so a seconds-long export has the flip."""
    return keras.models.clone_model(model, clone_function=lambda layer: Normalize(
        "caffe", name="normalize") if layer.name == "normalize" else layer)


def _images(root, count: int = 16, height: int = 64, width: int = 32) -> np.ndarray:
    from tfmarket.preprocess import load_images_numpy

    crops = sorted((root / "test").iterdir())[:count]
    return load_images_numpy(crops, height, width)


def _reference(model: keras.Model, images: np.ndarray) -> dict[str, np.ndarray]:
    """The unfolded Keras inference model's outputs: what every runtime must reproduce."""
    inference = build_inference_model(model, fold=False)
    return {k: np.asarray(v) for k, v in inference(images, training=False).items()}


@pytest.fixture(scope="module")
def caffe_export(tmp_path_factory, course_synth):
    """A tiny caffe-normalised model with GeM pooling and a 16-d ``reduce`` layer, exported
    with ONNX + int8: (folder, reference images, Keras outputs)."""
    from tfmarket.serving.export import export_model

    model = _caffe(build_model(7, height=64, width=32, backbone="tiny", pooling="gem",
                               embedding_dim=16))
    out = tmp_path_factory.mktemp("caffe_export")
    images = _images(course_synth)
    calibration = _images(course_synth, 48)
    result = export_model(model, out, images[:8], onnx=True, int8=True,
                          calibration_images=calibration)
    (out / "model_card.json").write_text(json.dumps({"onnx": result["onnx"]}))
    return out, images, _reference(model, images)


@pytest.fixture(scope="module")
def smoke_export(exported, course_synth):
    """The trained smoke export (torch normalisation, average pooling): (folder, reference
    images, Keras outputs)."""
    from tfmarket.model.network import load_run_model

    out, card, _ = exported
    model = load_run_model(card["source_run"] + "/" + card["source_model"])
    images = _images(course_synth)
    return out, images, _reference(model, images)


def _openvino(path, images):
    from tfmarket.serving.openvino_runtime import OpenVinoModel

    model = OpenVinoModel(path)
    return dict(zip(model.output_names, model.run(images), strict=True))


def _opencv(engine):
    def run(path, images):
        import cv2
        import onnx

        names = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
        net = cv2.dnn.readNetFromONNX(str(path), getattr(cv2.dnn, engine))
        net.setInput(images)  # uint8 NHWC as it is: the graph casts and transposes
        # The classic engine keeps a unit axis where the graph squeezes: [B, 1, D].
        return {n: o.reshape(len(images), -1) for n, o in zip(names, net.forward(names),
                                                               strict=True)}
    return run


RUNNERS = {"onnxruntime": run_onnx, "openvino": _openvino,
           "opencv-new": _opencv("ENGINE_NEW"), "opencv-classic": _opencv("ENGINE_CLASSIC")}


# --- the fold -----------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["caffe", "torch"])
def test_channel_map_is_what_normalize_computes(mode):
    from tfmarket.preprocess import MEAN_RGB

    x = np.random.default_rng(0).uniform(0, 255, (2, 4, 3, 3)).astype(np.float32)
    order, scale = Normalize(mode).channel_map()
    expected = (x - np.asarray(MEAN_RGB, np.float32))[..., list(order)] * np.asarray(scale)
    np.testing.assert_allclose(np.asarray(Normalize(mode)(x)), expected, rtol=1e-6, atol=1e-5)


def test_resnet50_folds_the_flip_into_conv1():
    from tfmarket.model.fold import fold_normalization

    model = build_model(5, height=64, width=32, backbone="resnet50", weights=None)
    folded = fold_normalization(model)
    assert folded is not None
    kernel = model.get_layer("resnet50").get_layer("conv1_conv").get_weights()[0]
    new = folded.get_layer("resnet50").get_layer("conv1_conv").get_weights()[0]
    np.testing.assert_array_equal(new, kernel[:, :, ::-1, :])  # BGR weights read RGB pixels
    assert type(folded.get_layer("normalize")).__name__ == "SubtractMean"
    images = np.random.default_rng(1).integers(0, 256, (2, 64, 32, 3), dtype=np.uint8)
    expected = _reference(model, images)
    served = build_inference_model(model)(images, training=False)
    for name, value in expected.items():
        np.testing.assert_allclose(np.asarray(served[name]), value, atol=1e-5)
    # The training model's own layers are untouched.
    assert model.get_layer("resnet50").get_layer("conv1_conv").get_weights()[0] is not new
    np.testing.assert_array_equal(
        model.get_layer("resnet50").get_layer("conv1_conv").get_weights()[0], kernel)


def test_graphs_it_cannot_fold_are_served_unfolded():
    from tfmarket.model.fold import fold_normalization

    images = keras.Input((8, 8, 3), name="image")
    x = Normalize("caffe", name="normalize")(images)
    # Two readers of the normalised image: neither convolution may absorb the flip alone.
    a = keras.layers.Conv2D(4, 3, padding="same")(x)
    b = keras.layers.Conv2D(4, 1)(x)
    two = keras.Model(images, {"embedding": keras.layers.GlobalAveragePooling2D(
        name="embedding")(a + b)})
    assert fold_normalization(two) is None
    # A first layer that is not a convolution.
    dense = keras.Model(images, {"embedding": keras.layers.GlobalAveragePooling2D(
        name="embedding")(keras.layers.Dense(4)(x))})
    assert fold_normalization(dense) is None
    pixels = np.random.default_rng(2).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    for model in (two, dense):
        np.testing.assert_allclose(
            np.asarray(build_inference_model(model)(pixels)["embedding"]),
            np.asarray(model(pixels.astype(np.float32))["embedding"]), atol=1e-5)


# --- the operator set ---------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["caffe_export", "smoke_export"])
def test_exported_models_use_only_the_portable_operators(which, request):
    out = request.getfixturevalue(which)[0]
    for name, quantized in (("model.onnx", False), ("model.int8.onnx", True)):
        ops = set(operator_counts(out / name))
        assert outside_portable_set(out / name, quantized=quantized) == [], (name, ops)
        assert "ReverseSequence" not in ops and "Gather" not in ops
        assert {"Cast", "Conv", "Softmax", "Sigmoid"} <= ops
        assert bool(ops & QUANTIZED_OPERATORS) == quantized, (name, ops)
    card = json.loads((out / "model_card.json").read_text())["onnx"]
    assert card["portable_operators"] == sorted(PORTABLE_OPERATORS)
    assert card["models"]["model.onnx"]["outside_portable_set"] == []
    assert card["models"]["model.int8.onnx"]["outside_portable_set"] == []
    assert card["models"]["model.onnx"]["operators"] == sorted(operator_counts(out /
                                                                               "model.onnx"))


def test_the_operator_check_catches_the_unfolded_flip(tmp_path):
    """What Keras's ONNX export made of the flip before the fold: the check must fail on it."""
    model = _caffe(build_model(3, height=32, width=16, backbone="tiny", heads={}))
    inference = build_inference_model(model, fold=False)
    inference(np.zeros((1, 32, 16, 3), np.uint8))
    inference.export(str(tmp_path / "unfolded.onnx"), format="onnx", verbose=False)
    assert "ReverseSequence" in outside_portable_set(tmp_path / "unfolded.onnx")
    # The QDQ pair is portable only in int8 models.
    assert outside_portable_set(["Conv", "QuantizeLinear"]) == ["QuantizeLinear"]
    assert outside_portable_set(["Conv", "QuantizeLinear"], quantized=True) == []


# --- one model, four runtimes -------------------------------------------------------------------


@pytest.mark.parametrize("runner", list(RUNNERS))
@pytest.mark.parametrize("which", ["caffe_export", "smoke_export"])
def test_float_model_matches_keras_in_every_runtime(which, runner, request):
    out, images, reference = request.getfixturevalue(which)
    for batch in (1, len(images)):
        got = RUNNERS[runner](out / "model.onnx", images[:batch])
        assert set(got) == set(reference)
        for name, value in reference.items():
            np.testing.assert_allclose(got[name].reshape(value[:batch].shape), value[:batch],
                                       atol=FLOAT_TOLERANCE, err_msg=f"{runner} {name}")


def test_int8_weights_are_held_to_seven_bits(smoke_export):
    """x86 CPUs without VNNI add u8 x s8 products in saturating 16-bit sums (onnxruntime,
    OpenVINO): with |weights| <= 64 a pair of products (2 x 255 x 64 = 32,640) cannot
    overflow them."""
    import onnx
    from onnx import numpy_helper

    out, _, _ = smoke_export
    weights = [numpy_helper.to_array(t) for t in onnx.load(str(out / "model.int8.onnx")).graph
               .initializer if t.data_type == onnx.TensorProto.INT8 and t.dims]
    assert weights, "no int8 weight tensors in the int8 model"
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64


@pytest.mark.parametrize("runner", list(RUNNERS))
def test_int8_model_stays_within_the_drift_bounds_in_every_runtime(smoke_export, runner):
    out, images, reference = smoke_export
    got = RUNNERS[runner](out / "model.int8.onnx", images)
    got = {k: v.reshape(reference[k].shape) for k, v in got.items()}
    report = quantization_report(reference, got)
    assert report["embedding_cosine_min"] > INT8_COSINE_MIN, (runner, report)
    assert report["attribute_decision_agreement"] > INT8_AGREEMENT_MIN, (runner, report)
    # The same QDQ model: every runtime's int8 outputs are onnxruntime's, to int8 rounding.
    ort = run_onnx(out / "model.int8.onnx", images)
    a, b = ort["embedding"], got["embedding"]
    cosine = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.999, runner
    assert quantization_report(ort, got)["attribute_decision_agreement"] > 0.95, runner


def test_embedders_give_unit_embeddings_from_float_and_int8_models(smoke_export):
    """Ranking takes q . g as the cosine; the int8 model's raw rows are not unit length."""
    from tfmarket.serving.embed import open_embedder
    from tfmarket.serving.export import run_onnx

    out, images, _ = smoke_export
    raw = np.linalg.norm(run_onnx(out / "model.int8.onnx", images)["embedding"], axis=1)
    assert np.abs(raw - 1).max() > 1e-5  # what the embedder corrects
    for name in ("model.onnx", "model.int8.onnx"):
        for runtime in ("onnxruntime", "openvino"):
            for flip in (False, True):
                embedder = open_embedder(out / name, runtime, threads=1, flip_test=flip)
                norms = np.linalg.norm(embedder.run(images)["embedding"], axis=1)
                np.testing.assert_allclose(norms, 1.0, atol=1e-6,
                                           err_msg=f"{name} {runtime} flip={flip}")


# --- --runtime openvino -------------------------------------------------------------------------


def test_openvino_embedder_serves_as_onnxruntime_does(smoke_export):
    from tfmarket.serving.embed import open_embedder

    out, images, _ = smoke_export
    for name in ("model.onnx", "model.int8.onnx"):
        ort = open_embedder(out / name, flip_test=True)
        ov = open_embedder(out / name, "openvino", threads=1, flip_test=True)
        assert ov.providers == ["OpenVINO CPU"] and ov.schema == ort.schema
        assert (ov.height, ov.width) == (ort.height, ort.width)
        assert ov.model.compiled.get_property("INFERENCE_NUM_THREADS") == 1
        a, b = ort.run(images), ov.run(images)
        tolerance = FLOAT_TOLERANCE if name == "model.onnx" else 0.02
        for key in a:
            np.testing.assert_allclose(b[key], a[key], atol=tolerance, err_msg=f"{name} {key}")


def test_openvino_refuses_what_it_cannot_serve(smoke_export, tmp_path, monkeypatch):
    import sys

    from tfmarket.serving.embed import open_embedder

    out, _, _ = smoke_export
    with pytest.raises(TfmarketError, match="model file not found"):
        open_embedder(tmp_path / "missing.onnx", "openvino")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(TfmarketError, match="bad.onnx: not a model OpenVINO reads"):
        open_embedder(tmp_path / "bad.onnx", "openvino")
    with pytest.raises(TfmarketError, match="unknown runtime 'tensorrt'"):
        open_embedder(out / "model.onnx", "tensorrt")
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if it were not installed
    with pytest.raises(TfmarketError, match=r"pip install 'tfmarket\[openvino\]'"):
        open_embedder(out / "model.onnx", "openvino")


def test_rank_with_openvino_gives_onnxruntime_top10(exported, course_synth, tmp_path, capsys):
    from tfmarket.rank import main as rank_main
    from tfmarket.serving.submission import read_reid

    out, _, _ = exported
    rankings, summaries = {}, {}
    for runtime in ("onnxruntime", "openvino"):
        result = tmp_path / runtime
        assert rank_main(["--model", str(out / "model.onnx"), "--data", str(course_synth),
                          "--out", str(result), "--topk", "10", "--runtime", runtime,
                          "--retrieval", "plain", "--attribute-rule", "plain", "--json"]) == 0
        printed = capsys.readouterr().out
        summaries[runtime] = json.loads(printed[printed.index("{"):])
        rankings[runtime] = read_reid(result / "reid_test.txt")
    assert rankings["openvino"] == rankings["onnxruntime"]
    assert summaries["openvino"]["providers"] == ["OpenVINO CPU"]
    for key in ("mAP", "rank1"):
        assert summaries["openvino"]["metrics"][key] == pytest.approx(
            summaries["onnxruntime"]["metrics"][key], abs=1e-6)


def test_gallery_and_api_take_the_runtime(exported, course_synth, tmp_path):
    import tfmarket
    from tfmarket.gallery import main as gallery_main
    from tfmarket.serving.store import load_store

    out, _, _ = exported
    for runtime in ("onnxruntime", "openvino"):
        assert gallery_main(["embed", "--model", str(out / "model.onnx"), "--images",
                             str(course_synth / "test"), "--runtime", runtime,
                             "--out", str(tmp_path / f"{runtime}.npz")]) == 0
    a, b = (load_store(tmp_path / f"{r}.npz") for r in ("onnxruntime", "openvino"))
    np.testing.assert_allclose(b["embedding"], a["embedding"], atol=FLOAT_TOLERANCE)
    assert (a["attributes"] == b["attributes"]).mean() > 0.99
    assert gallery_main(["search", "--model", str(out / "model.onnx"), "--store",
                         str(tmp_path / "openvino.npz"), "--query", str(course_synth / "queries"),
                         "--runtime", "openvino", "--out", str(tmp_path / "s.json")]) == 0
    model = tfmarket.load(out, runtime="openvino", threads=1)
    assert model.providers == ["OpenVINO CPU"]
    images = _images(course_synth, 4)
    np.testing.assert_allclose(model.predict(images).embeddings,
                               tfmarket.load(out).predict(images).embeddings,
                               atol=FLOAT_TOLERANCE)
    with pytest.raises(TfmarketError, match="unknown runtime"):
        tfmarket.load(out, runtime="tvm")


def test_calibrate_with_openvino_chooses_what_onnxruntime_does(exported, tmp_path, capsys):
    import shutil

    from tfmarket.calibrate import main as calibrate_main

    source, card, _ = exported
    reports = {}
    for runtime in ("onnxruntime", "openvino"):
        model_dir = tmp_path / runtime
        shutil.copytree(source, model_dir)
        assert calibrate_main(["--workdir", card["source_run"], "--model",
                               str(model_dir / "model.onnx"), "--runtime", runtime,
                               "--neighbours", "1,3", "--prior-weights", "0,1",
                               "--no-retrieval", "--json"]) == 0
        printed = capsys.readouterr().out
        reports[runtime] = json.loads(printed[printed.index("{"):])
    ort, ov = reports["onnxruntime"], reports["openvino"]
    assert ov["rule"] == ort["rule"]
    assert ov["validation"]["reid"]["mAP"] == pytest.approx(ort["validation"]["reid"]["mAP"],
                                                           abs=1e-6)
