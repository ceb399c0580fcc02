"""tfmarket's fused optimizers against Keras's own (issue 25).

Two identical models, compiled alike, one with Keras's optimizer and one with tfmarket's fused
twin, trained on the same batches through Keras's real train function: weights and optimizer
state must agree to float rounding, on one device and mirrored over two logical CPUs, and the
fused model's train step must actually run the fused kernels.
"""

from __future__ import annotations

import numpy as np
import pytest


def _model(seed: int = 0):
    import keras

    from tfmarket.model.layers import FusedBatchNormalization

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 6, 3))
    # No bias before the BN: its gradient is zero up to rounding, which Adam would amplify.
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(inputs)
    x = FusedBatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, dtype="float32")(x)
    return keras.Model(inputs, outputs)


def _schedule():
    from tfmarket.model.schedules import WarmupSchedule

    return WarmupSchedule(1e-2, total_steps=10, warmup_steps=2, kind="cosine")


def _optimizers():
    """(name, Keras optimizer factory, fused factory, fused kernel op type)."""
    import keras

    from tfmarket.model import optimizers

    return [
        ("adam", lambda: keras.optimizers.Adam(_schedule()),
         lambda: optimizers.Adam(_schedule()), "ResourceApplyAdam"),
        ("adamw", lambda: keras.optimizers.AdamW(_schedule(), weight_decay=5e-2),
         lambda: optimizers.AdamW(_schedule(), weight_decay=5e-2), "ResourceApplyAdam"),
        ("sgd", lambda: keras.optimizers.SGD(_schedule(), momentum=0.9, nesterov=True,
                                             weight_decay=5e-2),
         lambda: optimizers.SGD(_schedule(), momentum=0.9, nesterov=True, weight_decay=5e-2),
         "ResourceApplyKerasMomentum"),
    ]


def _train(make_optimizer, strategy, steps: int = 4):
    """(model, optimizer) after ``steps`` train_on_batch calls on fixed random batches."""
    import keras

    with strategy.scope():
        model = _model()
        optimizer = make_optimizer()
        model.compile(optimizer=optimizer,
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(1)
    for _ in range(steps):
        images = rng.uniform(0, 1, (4, 8, 6, 3)).astype("float32")
        labels = rng.integers(0, 5, 4).astype("int32")
        model.train_on_batch(images, labels)
    return model, optimizer


def _close(fused, reference, what):
    for a, b in zip(fused, reference, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-5, atol=2e-6,
                                   err_msg=what)


@pytest.mark.parametrize("replicas", [1, 2])
@pytest.mark.parametrize("index", [0, 1, 2], ids=["adam", "adamw", "sgd"])
def test_fused_optimizer_trains_the_same_weights_as_keras(index, replicas):
    import tensorflow as tf

    name, keras_factory, fused_factory, _ = _optimizers()[index]
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:replicas]
    assert len(devices) == replicas
    # Gradients summed on one device: collective all-reduces would leave instance keys behind
    # that clash with a later test's strategy in this process. The update path under test
    # (each replica's variables updated in strategy.extended.update) is the same.
    strategy = tf.distribute.MirroredStrategy(
        devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
    reference, keras_opt = _train(keras_factory, strategy)
    fused, fused_opt = _train(fused_factory, strategy)
    start = [np.asarray(w) for w in _model().weights]
    moved = [np.abs(np.asarray(w) - s).max() for w, s in zip(reference.weights, start,
                                                              strict=True)]
    assert max(moved) > 1e-3, "the reference did not train: the comparison would be empty"
    _close(fused.weights, reference.weights, f"{name}: model weights")
    # The same state variables, in the same order (what a backup restores them by).
    assert [tuple(v.shape) for v in fused_opt.variables] == \
        [tuple(v.shape) for v in keras_opt.variables]
    _close(fused_opt.variables, keras_opt.variables, f"{name}: optimizer state")


@pytest.mark.parametrize("index", [0, 1, 2], ids=["adam", "adamw", "sgd"])
def test_fused_optimizer_step_runs_one_kernel_per_variable(index):
    import tensorflow as tf

    _, _, fused_factory, kernel = _optimizers()[index]
    model = _model()
    optimizer = fused_factory()
    optimizer.build(model.trainable_variables)
    grads = [tf.ones_like(v) for v in model.trainable_variables]

    @tf.function
    def apply():
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

    graph = apply.get_concrete_function().graph
    op_types = [op.type for op in graph.get_operations()]
    assert op_types.count(kernel) == len(model.trainable_variables)


def test_fused_returns_the_twin_of_a_keras_optimizer():
    import keras

    from tfmarket.model import optimizers

    twin = optimizers.fused(keras.optimizers.AdamW(_schedule(), weight_decay=1e-3))
    assert type(twin) is optimizers.AdamW and twin.weight_decay == pytest.approx(1e-3)
    assert type(optimizers.fused(keras.optimizers.SGD(0.1, momentum=0.9))) is optimizers.SGD
    rmsprop = keras.optimizers.RMSprop()
    assert optimizers.fused(rmsprop) is rmsprop
