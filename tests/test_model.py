import keras
import numpy as np
import pytest

from tfmarket.attributes import HEADS
from tfmarket.model.network import build_inference_model, build_model


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
    from tfmarket.model.network import build_backbone

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


def test_cosine_id_head_gives_scaled_cosines_and_reloads(tmp_path):
    model = build_model(7, height=64, width=32, backbone="tiny", id_head="cosine", id_scale=16.0)
    x = np.random.default_rng(2).uniform(0, 255, (3, 64, 32, 3)).astype(np.float32)
    out = model(x, training=False)
    neck = keras.Model(model.input, model.get_layer("bnneck").output)(x, training=False)
    neck = np.asarray(neck, np.float32)
    w = model.get_layer("id").get_weights()[0]  # [D, C]
    expected = 16.0 * (neck / np.linalg.norm(neck, axis=1, keepdims=True)) @ (
        w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(np.asarray(out["id"]), expected, atol=1e-4)
    assert np.abs(np.asarray(out["id"])).max() <= 16.0 + 1e-4
    model.save(tmp_path / "cos.keras")
    again = keras.models.load_model(tmp_path / "cos.keras")
    np.testing.assert_allclose(np.asarray(again(x, training=False)["id"]),
                               np.asarray(out["id"]), atol=1e-5)
    with pytest.raises(ValueError, match="linear, cosine"):
        build_model(3, backbone="tiny", id_head="arc")


@pytest.mark.parametrize("overrides,message", [
    (["loss.id_margin=0.3"], "needs model.id_head: cosine"),
    (["model.id_head=cosine", "loss.id_margin=1.5"], r"in \[0, 1\)"),
    (["model.id_head=cosine", "model.id_scale=0"], "id_scale must be positive"),
])
def test_id_margin_settings_are_checked(overrides, message):
    from tfmarket.config import load_config
    from tfmarket.errors import ConfigError
    from tfmarket.training.build import build_losses

    config = load_config(None, overrides)
    with pytest.raises(ConfigError, match=message):
        build_losses(config, {}, {})
    assert build_losses(load_config(None, ["model.id_head=cosine", "loss.id_margin=0.25"]),
                        {}, {})[0]["id"].margin == pytest.approx(0.25 * 30.0)
