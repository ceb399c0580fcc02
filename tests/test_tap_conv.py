"""TapGradConv2D: the 3x3 kernel gradient as nine matmuls, the 1x1 one as one (issue 25).

Both must equal TensorFlow's own filter gradient (float32, odd sizes, several channel counts);
the layer must give Keras's Conv2D outputs and gradients where it uses them (3x3: bfloat16
training; 1x1: float32 training with large kernels) and be Keras's layer everywhere else; and
models built with it must share weights files with models built without it.
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("shape", [(2, 5, 3, 4, 6), (3, 8, 4, 16, 8), (1, 1, 1, 2, 3)])
def test_tap_kernel_gradient_equals_tensorflows_filter_gradient(shape):
    import tensorflow as tf

    from tfmarket.model.conv import tap_kernel_gradient

    batch, height, width, c_in, c_out = shape
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, height, width, c_in)), tf.float32)
    dy = tf.constant(rng.normal(size=(batch, height, width, c_out)), tf.float32)
    expected = tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=[3, 3, c_in, c_out], out_backprop=dy, strides=[1, 1, 1, 1],
        padding="SAME")
    np.testing.assert_allclose(tap_kernel_gradient(x, dy).numpy(), expected.numpy(),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 5, 3, 4, 6), (3, 2, 7, 16, 8), (1, 1, 1, 2, 3)])
def test_pointwise_kernel_gradient_equals_tensorflows_filter_gradient(shape):
    import tensorflow as tf

    from tfmarket.model.conv import pointwise_kernel_gradient

    batch, height, width, c_in, c_out = shape
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(batch, height, width, c_in)), tf.float32)
    dy = tf.constant(rng.normal(size=(batch, height, width, c_out)), tf.float32)
    expected = tf.raw_ops.Conv2DBackpropFilter(
        input=x, filter_sizes=[1, 1, c_in, c_out], out_backprop=dy, strides=[1, 1, 1, 1],
        padding="VALID")
    np.testing.assert_allclose(pointwise_kernel_gradient(x, dy).numpy(), expected.numpy(),
                               rtol=1e-5, atol=1e-5)


def _pair(policy: str, use_bias: bool = True, channels: int = 256, kernel_size: int = 3,
          filters: int = 16):
    """(Keras Conv2D, TapGradConv2D) with the same weights, built under ``policy``."""
    import keras

    from tfmarket.model.conv import TapGradConv2D

    keras.mixed_precision.set_global_policy(policy)
    try:
        layers = []
        for cls in (keras.layers.Conv2D, TapGradConv2D):
            keras.utils.set_random_seed(0)
            layer = cls(filters, kernel_size, padding="same", use_bias=use_bias,
                        bias_initializer="random_normal")
            layer.build((None, 6, 4, channels))
            layers.append(layer)
        layers[1].set_weights(layers[0].get_weights())
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return layers


def _forward_and_grads(layer, x, training: bool):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.linspace(-1.0, 1.0, y.shape[-1]))
    grads = tape.gradient(loss, [x, *layer.trainable_variables])
    return np.asarray(tf.cast(y, tf.float32)), [np.asarray(tf.cast(g, tf.float32))
                                                  for g in grads]


@pytest.mark.parametrize("use_bias", [True, False])
def test_tap_layer_matches_keras_in_bfloat16_training(monkeypatch, use_bias):
    import tensorflow as tf

    from tfmarket.model import conv

    calls = []
    original = conv.tap_kernel_gradient
    monkeypatch.setattr(conv, "tap_kernel_gradient",
                        lambda *a: calls.append(1) or original(*a))
    keras_bf16, tapped = _pair("mixed_bfloat16", use_bias)
    exact, _ = _pair("float32", use_bias)
    x = tf.constant(np.random.default_rng(1).normal(size=(4, 6, 4, 256)), tf.float32)
    y_keras, _ = _forward_and_grads(keras_bf16, x, training=True)
    y_exact, g_exact = _forward_and_grads(exact, x, training=True)
    y_tap, g_tap = _forward_and_grads(tapped, x, training=True)
    assert calls, "the tap gradient did not run: the comparison would test Keras against itself"
    np.testing.assert_array_equal(y_tap, y_keras)  # the forward pass is Keras's
    # Against float32: bfloat16 keeps 8 significant bits (Keras's own bfloat16 bias gradient,
    # summed in bfloat16, is off by 3% of its largest value here; ours is summed in float32).
    for name, a, b in zip(["input", "kernel", "bias"], g_tap, g_exact, strict=False):
        scale = np.abs(b).max()
        assert np.abs(a - b).max() <= 2e-2 * scale, f"{name} gradient differs"


def test_pointwise_layer_matches_keras_in_float32_training(monkeypatch):
    import tensorflow as tf

    from tfmarket.model import conv

    calls = []
    original = conv.pointwise_kernel_gradient
    monkeypatch.setattr(conv, "pointwise_kernel_gradient",
                        lambda *a: calls.append(1) or original(*a))
    # 1024 x 512 weights: the smallest of ResNet50's stage-5 1x1 kernels, where it applies.
    reference, matmul = _pair("float32", channels=1024, kernel_size=1, filters=512)
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 3, 2, 1024)), tf.float32)
    y_ref, g_ref = _forward_and_grads(reference, x, training=True)
    y_mm, g_mm = _forward_and_grads(matmul, x, training=True)
    assert calls, "the matmul gradient did not run: the comparison would test Keras against itself"
    np.testing.assert_array_equal(y_mm, y_ref)
    for name, a, b in zip(["input", "kernel", "bias"], g_mm, g_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max(),
                                   err_msg=f"{name} gradient differs")


@pytest.mark.parametrize("policy,channels,kernel_size,filters,training", [
    ("float32", 256, 3, 16, True),          # 3x3 in float32: TensorFlow's kernel is faster
    ("mixed_bfloat16", 128, 3, 16, True),   # too few channels to gain
    ("mixed_bfloat16", 256, 3, 16, False),  # inference
    ("float32", 256, 1, 1024, True),        # 1x1, 256 x 1024 weights (stage 4): too small
    ("mixed_bfloat16", 1024, 1, 512, True),  # 1x1 in bfloat16: not measured to gain
    ("float32", 1024, 1, 512, False),       # inference
])
def test_tap_layer_is_keras_where_the_matmul_gradients_do_not_pay(
        monkeypatch, policy, channels, kernel_size, filters, training):
    import tensorflow as tf

    from tfmarket.model import conv

    monkeypatch.setattr(conv, "tap_kernel_gradient",
                        lambda *a: pytest.fail("tap gradient used"))
    monkeypatch.setattr(conv, "pointwise_kernel_gradient",
                        lambda *a: pytest.fail("matmul gradient used"))
    reference, tapped = _pair(policy, channels=channels, kernel_size=kernel_size,
                              filters=filters)
    x = tf.constant(np.random.default_rng(2).normal(size=(2, 6, 4, channels)), tf.float32)
    y_ref, g_ref = _forward_and_grads(reference, x, training)
    y_tap, g_tap = _forward_and_grads(tapped, x, training)
    np.testing.assert_array_equal(y_tap, y_ref)
    for a, b in zip(g_tap, g_ref, strict=True):
        np.testing.assert_array_equal(a, b)


def test_models_with_and_without_tap_gradient_share_weights_files(tmp_path):
    import keras

    from tfmarket.model.conv import TapGradConv2D
    from tfmarket.model.network import build_model

    def model(tap_gradient):
        keras.utils.set_random_seed(0)
        return build_model(5, height=64, width=32, backbone="resnet50", heads={},
                           tap_gradient=tap_gradient)

    tapped, plain = model(True), model(False)
    trunk = tapped.get_layer("resnet50")
    swapped = [layer for layer in trunk.layers if isinstance(layer, TapGradConv2D)]
    assert len(swapped) == 52  # all of ResNet50's 3x3 (16) and 1x1 (36) convolutions
    plain.save_weights(tmp_path / "plain.weights.h5")
    for w in tapped.weights:
        w.assign(np.zeros(w.shape, w.dtype))
    tapped.load_weights(tmp_path / "plain.weights.h5")
    for a, b in zip(tapped.weights, plain.weights, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    tapped.save(tmp_path / "tapped.keras")
    reloaded = keras.models.load_model(tmp_path / "tapped.keras", compile=False)
    assert isinstance(reloaded.get_layer("resnet50").get_layer("conv4_block1_2_conv"),
                      TapGradConv2D)
