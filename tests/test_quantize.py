"""Static int8 (QDQ, per-channel, calibrated on real crops) of an exported model."""

from __future__ import annotations

import numpy as np
import pytest

from tfmarket.errors import TfmarketError


def test_static_int8_is_qdq_and_close_to_float(exported, course_synth, tmp_path):
    import onnx

    from tfmarket.preprocess import load_images_numpy
    from tfmarket.serving.export import quantization_report, run_onnx
    from tfmarket.serving.quantize import quantize_static_int8

    out, card, config = exported
    height, width = config.data.height, config.data.width
    crops = sorted((course_synth / "train").iterdir())
    calibration = load_images_numpy(crops[:48], height, width)
    target = quantize_static_int8(out / "model.onnx", tmp_path / "model.int8-static.onnx",
                                  calibration, batch=16)
    ops = {node.op_type for node in onnx.load(str(target)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    # Scored on other crops than the calibration ones, with the same inputs/outputs.
    images = load_images_numpy(crops[48:80], height, width)
    reference, quantized = run_onnx(out / "model.onnx", images), run_onnx(target, images)
    assert set(quantized) == set(reference)
    assert all(quantized[k].shape == reference[k].shape for k in reference)
    report = quantization_report(reference, quantized)
    assert report["embedding_cosine_min"] > 0.9, report


def test_static_int8_refuses_bad_calibration_images(exported, tmp_path):
    from tfmarket.serving.quantize import quantize_static_int8

    out, _, _ = exported
    with pytest.raises(TfmarketError, match="uint8"):
        quantize_static_int8(out / "model.onnx", tmp_path / "x.onnx",
                             np.zeros((4, 64, 32, 3), np.float32))


def test_rank_serves_the_int8_model_as_it_serves_the_float_one(exported, course_synth, tmp_path,
                                                               capsys):
    import json

    from tfmarket.rank import main as rank_main

    out, _, _ = exported
    summaries = {}
    for name in ("model.onnx", "model.int8.onnx"):
        target = tmp_path / name
        assert rank_main(["--model", str(out / name), "--data", str(course_synth),
                          "--out", str(target), "--retrieval", "plain",
                          "--attribute-rule", "plain", "--json"]) == 0
        text = capsys.readouterr().out
        summaries[name] = json.loads(text[text.index("{"):])
        assert sorted(p.name for p in target.iterdir()) == [
            "classification_test.csv", "embeddings.npz", "metrics.json", "reid_test.txt",
            "summary.json"]
    fp32, int8 = summaries["model.onnx"]["metrics"], summaries["model.int8.onnx"]["metrics"]
    assert set(fp32) == set(int8)
    # The smoke model is barely trained; int8 must still rank nearly as the float model does.
    assert abs(fp32["mAP"] - int8["mAP"]) < 0.1, (fp32, int8)
    a = np.load(tmp_path / "model.onnx" / "embeddings.npz")["gallery_embedding"]
    b = np.load(tmp_path / "model.int8.onnx" / "embeddings.npz")["gallery_embedding"]
    assert np.median(np.sum(a * b, axis=1)) > 0.9


def test_static_int8_with_uint8_activations(exported, course_synth, tmp_path):
    import onnx
    from onnx import numpy_helper

    from tfmarket.preprocess import load_images_numpy
    from tfmarket.serving.quantize import quantize_static_int8

    out, _, config = exported
    crops = sorted((course_synth / "train").iterdir())[:16]
    calibration = load_images_numpy(crops, config.data.height, config.data.width)
    target = quantize_static_int8(out / "model.onnx", tmp_path / "u8.onnx", calibration,
                                  activations="uint8")
    graph = onnx.load(str(target)).graph
    initial = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [initial[n.input[2]] for n in graph.node
                   if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in initial]
    assert zero_points and all(z.dtype == np.uint8 for z in zero_points)
    with pytest.raises(TfmarketError, match="activations"):
        quantize_static_int8(out / "model.onnx", tmp_path / "x.onnx", calibration,
                             activations="int4")


def test_the_card_names_the_options_the_static_model_was_written_with():
    from tfmarket.serving.quantize import static_int8_method

    shipped = static_int8_method(200, per_channel=True, activations="uint8", reduce_range=True)
    assert shipped == ("static: QDQ, per-channel int8 weights in 7 bits (reduce_range), uint8 "
                       "activations (U8S8) calibrated on 200 training crops")
    other = static_int8_method(8, per_channel=False, activations="int8", reduce_range=False)
    assert "7 bits" not in other and "per-tensor" in other and "(S8S8)" in other
