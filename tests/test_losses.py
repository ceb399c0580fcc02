import numpy as np
import pytest

from tfmarket.model.losses import (
    BinaryLoss,
    SoftmaxLoss,
    TripletLoss,
    batch_hard_triplet,
    binary_weights,
    pairwise_distances,
    softmax_class_weights,
)


def test_triplet_hand_computed():
    # Points on a line: id 0 at x = 0 and 2, id 1 at x = 1 and 3.
    # Anchor 0: hardest positive d = 2, hardest negative d = 1 -> 2 - 1 + 0.3 = 1.3.
    # Anchor 1 (x=2): positive 2, negatives 1 (x=1, x=3) -> 1.3; anchors 2 and 3 likewise.
    features = np.array([[0.0], [2.0], [1.0], [3.0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    loss = np.asarray(batch_hard_triplet(labels, features, margin=0.3))
    np.testing.assert_allclose(loss, [1.3, 1.3, 1.3, 1.3], rtol=1e-6)
    soft = np.asarray(batch_hard_triplet(labels, features, soft_margin=True))
    np.testing.assert_allclose(soft, np.log1p(np.exp(1.0)) * np.ones(4), rtol=1e-6)


def test_triplet_zero_when_well_separated():
    features = np.array([[0, 0], [0, 0.1], [5, 0], [5, 0.1]], np.float32)
    loss = np.asarray(batch_hard_triplet(np.array([0, 0, 1, 1]), features, margin=0.3))
    np.testing.assert_array_equal(loss, 0.0)


def test_triplet_finite_in_float16_with_large_features():
    rng = np.random.default_rng(0)
    # |x|^2 of 2048-d features of magnitude 10 is ~2e5: beyond float16's 65504.
    features = (rng.normal(size=(8, 2048)) * 10).astype(np.float16)
    loss = np.asarray(batch_hard_triplet(np.repeat(np.arange(4), 2), features))
    assert np.isfinite(loss).all() and loss.dtype == np.float32


def test_triplet_gradient_finite_for_identical_points():
    import tensorflow as tf

    x = tf.Variable(np.zeros((4, 3), np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(batch_hard_triplet(tf.constant([0, 0, 1, 1]), x))
    assert np.isfinite(tape.gradient(loss, x).numpy()).all()


def test_anchor_without_positive_contributes_zero():
    features = np.array([[0.0], [1.0], [5.0]], np.float32)
    loss = np.asarray(batch_hard_triplet(np.array([0, 0, 1]), features, margin=0.3))
    assert loss[2] == 0.0


def test_pairwise_distances_match_numpy():
    x = np.random.default_rng(1).normal(size=(5, 7)).astype(np.float32)
    expected = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.testing.assert_allclose(np.asarray(pairwise_distances(x)), expected, atol=1e-5)


def test_softmax_loss_label_smoothing_and_ignore():
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    per = np.asarray(SoftmaxLoss(0.1).call(np.array([0, -1]), logits))
    logp = logits[0] - np.log(np.exp(logits[0]).sum())
    target = np.array([0.9 + 0.1 / 3, 0.1 / 3, 0.1 / 3])
    np.testing.assert_allclose(per, [-(target * logp).sum(), 0.0], rtol=1e-6)
    weighted = np.asarray(SoftmaxLoss(0.0, [2.0, 1.0, 1.0]).call(np.array([0, 1]), logits))
    np.testing.assert_allclose(weighted[0], -2 * logp[0], rtol=1e-6)


def test_softmax_loss_margin_lowers_the_target_logit():
    # CosFace: target logit minus the margin. Logits [2, 1], class 0, margin 0.5:
    # -log(e^1.5 / (e^1.5 + e^1)) = log(1 + e^-0.5); the unknown row stays 0.
    logits = np.array([[2.0, 1.0], [2.0, 1.0]], np.float32)
    per = np.asarray(SoftmaxLoss(0.0, margin=0.5).call(np.array([0, -1]), logits))
    np.testing.assert_allclose(per, [np.log1p(np.exp(-0.5)), 0.0], rtol=1e-6)
    assert SoftmaxLoss.from_config(SoftmaxLoss(0.1, margin=0.5).get_config()).margin == 0.5


def test_binary_loss_weights_and_ignore():
    logits = np.array([[0.0], [0.0], [3.0]], np.float32)
    per = np.asarray(BinaryLoss(pos_weight=2.0, neg_weight=0.5).call(
        np.array([[1], [0], [-1]]), logits))
    np.testing.assert_allclose(per, [2 * np.log(2), 0.5 * np.log(2), 0.0], rtol=1e-6)


def test_class_weights():
    pos, neg = binary_weights(np.array([1, 0, 0, 0, -1]))
    assert pos == pytest.approx(np.exp(0.75)) and neg == pytest.approx(np.exp(0.25))
    w = softmax_class_weights(np.array([0, 0, 0, 1]), 3)
    freq = np.array([0.75, 0.25, 0.0])
    assert (freq * w).sum() == pytest.approx(1.0)
    assert w[1] > w[0] and w[2] == w.max()


def test_losses_serialise():
    loss = TripletLoss(margin=0.5, soft_margin=True)
    clone = TripletLoss.from_config(loss.get_config())
    assert clone.margin == 0.5 and clone.soft_margin
