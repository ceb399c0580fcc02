"""FusedBatchNormalization against Keras's own BatchNormalization (issue 12).

Same weights, one training step's worth of computation: forward outputs, gradients of every
trainable weight and the updated moving statistics must agree, in float32 and in the two
mixed-precision policies (bfloat16: the CPU path; float16: the GPU path, which runs on a CPU too).
"""

from __future__ import annotations

import numpy as np
import pytest

# (policy, tolerance relative to each tensor's largest magnitude). float32: rounding only.
# bfloat16 has 8 mantissa bits (relative step 2**-8 = 0.4%) and float16 11 (0.05%): the two
# paths round activations at different points, so outputs and gradients differ by a few steps.
POLICIES = [("float32", 1e-5), ("mixed_bfloat16", 3e-2), ("mixed_float16", 4e-3)]


def _model(layer_cls, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((12, 8, 3))
    x = keras.layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    x = layer_cls(momentum=0.9, epsilon=1.001e-5, name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(x)
    x = layer_cls(center=False, name="bn2")(x)  # the BNNeck's form: no shift
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, dtype="float32")(x)
    return keras.Model(inputs, outputs)


def _step(model, images, labels):
    """(logits, {weight: gradient}, {moving statistic: value}) of one training forward.

    Keys are "layer position/weight name", the same for two models built alike.
    """
    import keras
    import tensorflow as tf

    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    with tf.GradientTape() as tape:
        logits = model(images, training=True)
        loss = loss_fn(labels, logits)
    grads = tape.gradient(loss, model.trainable_variables)
    names = {id(v): f"{i}/{v.name}" for i, layer in enumerate(model.layers)
             for v in layer.weights}
    return (np.asarray(logits),
            {names[id(v)]: np.asarray(g, np.float32)
             for v, g in zip(model.trainable_variables, grads, strict=True)},
            {names[id(v)]: np.asarray(v) for v in model.non_trainable_variables})


def _close(actual, expected, tol, what):
    scale = max(float(np.abs(expected).max()), 1e-6)
    err = float(np.abs(actual - expected).max()) / scale
    assert err <= tol, f"{what}: max difference {err:.2e} of its magnitude > {tol:.0e}"


@pytest.mark.parametrize("policy,tol", POLICIES)
def test_fused_matches_keras_forward_gradients_and_moving_stats(policy, tol):
    import keras

    from tfmarket.model.layers import FusedBatchNormalization

    rng = np.random.default_rng(0)
    images = rng.normal(2.0, 3.0, (6, 12, 8, 3)).astype(np.float32)  # off-centre, wide
    labels = rng.integers(0, 5, 6)
    keras.mixed_precision.set_global_policy(policy)
    try:
        reference = _model(keras.layers.BatchNormalization)
        fused = _model(FusedBatchNormalization)
        fused.set_weights(reference.get_weights())
        ref_logits, ref_grads, ref_stats = _step(reference, images, labels)
        logits, grads, stats = _step(fused, images, labels)
        assert fused.get_layer("bn1").compute_dtype == reference.get_layer("bn1").compute_dtype
    finally:
        keras.mixed_precision.set_global_policy("float32")
    _close(logits, ref_logits, tol, "logits")
    assert set(grads) == set(ref_grads) and len(grads) == 7  # 2 convs, 3 BN, dense x2
    for name, value in ref_grads.items():
        _close(grads[name], value, tol, f"gradient of {name}")
    for name, value in ref_stats.items():
        _close(stats[name], value, min(tol, 1e-2), name)  # statistics are float32 in both
    moved = stats["2/moving_variance"]
    assert not np.allclose(moved, 1.0), "moving statistics were updated"


def test_inference_frozen_and_2d_inputs_use_keras_code_and_agree():
    import keras

    from tfmarket.model.layers import FusedBatchNormalization

    rng = np.random.default_rng(1)
    images = rng.normal(size=(4, 12, 8, 3)).astype(np.float32)
    reference = _model(keras.layers.BatchNormalization)
    fused = _model(FusedBatchNormalization)
    fused.set_weights(reference.get_weights())
    np.testing.assert_array_equal(fused(images, training=False),
                                  reference(images, training=False))
    for model in (reference, fused):
        for name in ("bn1", "bn2"):
            model.get_layer(name).trainable = False  # frozen BN uses the moving statistics
    np.testing.assert_array_equal(fused(images, training=True), reference(images, training=True))
    flat = rng.normal(size=(5, 7)).astype(np.float32)
    a, b = keras.layers.BatchNormalization(), FusedBatchNormalization()
    np.testing.assert_array_equal(a(flat, training=True), b(flat, training=True))


def test_float64_layers_train_with_keras_code():
    """FusedBatchNormV3 has no float64 kernel: such a layer takes Keras's code, not an error."""
    import keras

    from tfmarket.model.layers import FusedBatchNormalization

    x = np.random.default_rng(2).normal(3.0, 2.0, size=(4, 6, 5, 3))
    a = keras.layers.BatchNormalization(dtype="float64")
    b = FusedBatchNormalization(dtype="float64")
    assert not b._fusable(keras.ops.convert_to_tensor(x), True, None)
    np.testing.assert_array_equal(b(x, training=True), a(x, training=True))
    np.testing.assert_array_equal(b.moving_variance, a.moving_variance)


def test_saves_loads_and_reads_weights_written_with_keras_layers(tmp_path):
    """.keras round trip; a checkpoint of the old (Keras-BN) model loads into the fused one."""
    import keras

    from tfmarket.model.layers import FusedBatchNormalization
    from tfmarket.model.network import build_model

    images = np.random.default_rng(2).uniform(0, 255, (2, 32, 16, 3)).astype(np.float32)
    old = build_model(5, height=32, width=16, backbone="tiny", fused_batchnorm=False)
    old(images, training=True)  # moves the statistics away from their initial values
    old.save_weights(tmp_path / "old.weights.h5")
    old.save(tmp_path / "old.keras")
    new = build_model(5, height=32, width=16, backbone="tiny")
    assert any(isinstance(layer, FusedBatchNormalization)
               for layer in new.get_layer("tiny_backbone").layers)
    new.load_weights(tmp_path / "old.weights.h5")
    expected = old(images, training=False)["embedding"]
    np.testing.assert_allclose(new(images, training=False)["embedding"], expected, atol=1e-6)
    np.testing.assert_allclose(
        keras.models.load_model(tmp_path / "old.keras")(images, training=False)["embedding"],
        expected, atol=1e-6)
    new.save(tmp_path / "new.keras")
    reloaded = keras.models.load_model(tmp_path / "new.keras")
    assert isinstance(reloaded.get_layer("tiny_backbone").get_layer("tiny_bn0"),
                      FusedBatchNormalization)
    np.testing.assert_allclose(reloaded(images, training=False)["embedding"],
                               new(images, training=False)["embedding"], atol=1e-6)


def test_resnet50_gets_fused_layers_with_the_same_weights():
    import keras

    from tfmarket.model.layers import FusedBatchNormalization
    from tfmarket.model.network import build_backbone

    for last_stride in (1, 2):
        trunk, _ = build_backbone("resnet50", (64, 32, 3), None, last_stride)
        kinds = {type(layer) for layer in trunk.layers
                 if isinstance(layer, keras.layers.BatchNormalization)}
        assert kinds == {FusedBatchNormalization}
        assert sum(isinstance(layer, FusedBatchNormalization) for layer in trunk.layers) == 53
    plain, _ = build_backbone("resnet50", (64, 32, 3), None, 2, fused_batchnorm=False)
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in plain.layers)
    assert [w.shape for w in plain.weights] == [w.shape for w in trunk.weights]


@pytest.mark.parametrize("by_matmul", [True, False])
def test_float32_compiled_step_matches_keras_with_either_statistics(by_matmul, monkeypatch):
    """Float32 on a CPU normalises with matmul statistics (the fused kernel when turned off),
    checked inside ``tf.function``: the graph TensorFlow rewrites for oneDNN, as training runs."""
    import keras
    import tensorflow as tf

    from tfmarket.model import layers

    calls = []
    by_matmul_fn = layers.batch_norm_training_by_matmul
    monkeypatch.setattr(layers, "STATISTICS_BY_MATMUL", by_matmul)
    monkeypatch.setattr(layers, "batch_norm_training_by_matmul",
                        lambda *args: calls.append(args[0].shape) or by_matmul_fn(*args))
    rng = np.random.default_rng(3)
    images = tf.constant(rng.normal(2.0, 3.0, (6, 12, 8, 3)).astype(np.float32))
    labels = tf.constant(rng.integers(0, 5, 6))
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    reference = _model(keras.layers.BatchNormalization)
    fused = _model(layers.FusedBatchNormalization)
    fused.set_weights(reference.get_weights())
    results = []
    for model in (reference, fused):

        @tf.function
        def step(images, labels, model=model):
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                loss = loss_fn(labels, logits)
            return logits, tape.gradient(loss, model.trainable_variables)

        logits, grads = step(images, labels)
        results.append((logits.numpy(), [g.numpy() for g in grads],
                        [v.numpy() for v in model.non_trainable_variables]))
    assert len(calls) == (2 if by_matmul else 0)  # bn1 and bn2, traced once
    (ref_logits, ref_grads, ref_stats), (logits, grads, stats) = results
    _close(logits, ref_logits, 1e-5, "logits")
    for i, (g, ref) in enumerate(zip(grads, ref_grads, strict=True)):
        _close(g, ref, 1e-5, f"gradient {i}")
    for i, (s, ref) in enumerate(zip(stats, ref_stats, strict=True)):
        _close(s, ref, 1e-5, f"moving statistic {i}")


def test_matmul_statistics_keep_their_digits_when_the_mean_dwarfs_the_spread():
    """Mean 40, spread 0.5 per channel: E[x^2] - mean^2 in float32 would lose the variance to
    rounding (x^2 ~ 1600 against a variance of 0.25); squares about the first row keep it."""
    import tensorflow as tf

    from tfmarket.model.layers import batch_norm_training_by_matmul

    rng = np.random.default_rng(4)
    x = (40.0 + rng.normal(0.0, 0.5, (16, 8, 4, 6))).astype(np.float32)
    gamma = np.linspace(0.5, 1.5, 6).astype(np.float32)
    beta = np.linspace(-1.0, 1.0, 6).astype(np.float32)
    y, mean, variance = tf.function(batch_norm_training_by_matmul)(
        tf.constant(x), tf.constant(gamma), tf.constant(beta), 1e-3)
    x64 = x.astype(np.float64)
    mean64, var64 = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
    expected = (x64 - mean64) / np.sqrt(var64 + 1e-3) * gamma + beta
    np.testing.assert_allclose(mean.numpy(), mean64, rtol=1e-6)
    np.testing.assert_allclose(variance.numpy(), var64, rtol=1e-3)
    _close(y.numpy(), expected, 1e-4, "normalised output")
    naive = (x64.astype(np.float32) ** 2).mean(axis=(0, 1, 2), dtype=np.float32) - mean64 ** 2
    assert np.abs(naive / var64 - 1).max() > 1e-3  # what the test guards against


def test_matmul_statistics_of_an_empty_batch_do_not_fail():
    import tensorflow as tf

    from tfmarket.model.layers import batch_norm_training_by_matmul

    y, mean, variance = batch_norm_training_by_matmul(
        tf.zeros((0, 4, 2, 3)), tf.ones(3), tf.zeros(3), 1e-3)
    assert y.shape == (0, 4, 2, 3) and mean.shape == (3,) and variance.shape == (3,)


def test_cpu_forms_step_aside_when_a_gpu_is_visible(monkeypatch):
    """With a GPU visible, BN keeps the fused kernel and convolutions Keras's gradient."""
    import tensorflow as tf

    from tfmarket.model import layers
    from tfmarket.model.conv import TapGradConv2D

    assert layers.trains_on_cpu()
    bn = layers.FusedBatchNormalization()
    conv = TapGradConv2D(2048, 1)
    x = tf.zeros((1, 2, 2, 1024))
    assert bn._statistics_by_matmul() and conv._kernel_gradient(x) is not None
    monkeypatch.setattr(tf.config, "list_logical_devices",
                        lambda kind=None: ["/GPU:0"] if kind == "GPU" else [])
    assert not layers.trains_on_cpu()
    assert not bn._statistics_by_matmul() and conv._kernel_gradient(x) is None
