import keras
import numpy as np
import pytest

from tfmarket.attributes import HEADS
from tfmarket.model import build_inference_model, build_model


@pytest.fixture(scope="module")
def tiny():
    return build_model(7, height=64, width=32, backbone="tiny", pooling="gem")


def test_output_names_and_shapes(tiny):
    out = tiny(np.zeros((2, 64, 32, 3), np.float32))
    assert set(out) == {"features", "embedding", "id", *HEADS}
    assert out["id"].shape == (2, 7)
    assert out["embedding"].shape == out["features"].shape == (2, 128)
    for head, n in HEADS.items():
        assert out[head].shape == (2, n)
    norms = np.linalg.norm(np.asarray(out["embedding"]), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_keras_save_reload_parity(tiny, tmp_path):
    x = np.random.default_rng(0).uniform(0, 255, (3, 64, 32, 3)).astype(np.float32)
    before = tiny(x, training=False)
    tiny.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    after = loaded(x, training=False)
    for name in before:
        np.testing.assert_allclose(np.asarray(after[name]), np.asarray(before[name]), atol=1e-6)


def test_inference_model_takes_uint8_and_gives_probabilities(tiny):
    inference = build_inference_model(tiny)
    x = np.random.default_rng(1).integers(0, 255, (2, 64, 32, 3)).astype(np.uint8)
    out = inference(x)
    assert set(out) == {"embedding", *HEADS}
    np.testing.assert_allclose(np.asarray(out["age"]).sum(1), 1.0, rtol=1e-5)
    assert ((np.asarray(out["hat"]) >= 0) & (np.asarray(out["hat"]) <= 1)).all()
    raw = tiny(x.astype(np.float32), training=False)
    np.testing.assert_allclose(np.asarray(out["embedding"]), np.asarray(raw["embedding"]),
                               atol=1e-6)


@pytest.mark.parametrize("last_stride,expected", [(2, (2, 1)), (1, (4, 2))])
def test_resnet50_last_stride(last_stride, expected):
    from tfmarket.model import build_backbone

    trunk, mode = build_backbone("resnet50", (64, 32, 3), None, last_stride)
    assert mode == "caffe"
    assert trunk.output_shape[1:3] == expected


def test_unknown_backbone_lists_valid():
    with pytest.raises(ValueError, match="resnet50, tiny"):
        build_model(3, backbone="vgg")


def test_mixed_precision_outputs_stay_float32():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(5, height=32, width=16, backbone="tiny")
        out = model(np.zeros((2, 32, 16, 3), np.float32))
        assert all(keras.backend.standardize_dtype(v.dtype) == "float32" for v in out.values())
    finally:
        keras.mixed_precision.set_global_policy("float32")
