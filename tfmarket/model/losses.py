"""Losses: batch-hard triplet, label-smoothed ID cross-entropy, class-balanced attribute losses.

All are computed in float32 whatever the compute dtype: squared distances between 2048-d
features overflow float16, and log-softmax of float16 logits loses precision.
Attribute targets of -1 mean "unknown" and contribute nothing.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


def pairwise_distances(features):
    """float [B, D] -> float32 [B, B] Euclidean distances (gradient-safe at 0)."""
    x = ops.cast(features, "float32")
    sq = ops.sum(x * x, axis=1)
    d2 = sq[:, None] - 2.0 * ops.matmul(x, ops.transpose(x)) + sq[None, :]
    d2 = ops.maximum(d2, 0.0)
    # sqrt'(0) is infinite: take the root of a value kept away from 0 and zero it back.
    zero = ops.cast(d2 <= 1e-12, "float32")
    return ops.sqrt(d2 + zero * 1e-12) * (1.0 - zero)


def batch_hard_triplet(labels, features, margin: float = 0.3, soft_margin: bool = False):
    """Batch-hard triplet loss (Hermans et al. 2017), one value per anchor.

    For each anchor: hardest positive = farthest same-label sample, hardest negative = closest
    other-label sample; loss = max(0, d_ap - d_an + margin), or softplus(d_ap - d_an).
    Anchors with no positive or no negative in the batch contribute 0.

    Args:
        labels: int [B] (or [B, 1]).
        features: float [B, D].

    Returns:
        float32 [B].
    """
    labels = ops.reshape(ops.cast(labels, "int32"), (-1,))
    dist = pairwise_distances(features)
    same = ops.equal(labels[:, None], labels[None, :])
    eye = ops.eye(ops.shape(labels)[0], dtype="bool")
    positive = ops.logical_and(same, ops.logical_not(eye))
    negative = ops.logical_not(same)
    hardest_pos = ops.max(ops.where(positive, dist, 0.0), axis=1)
    big = ops.max(dist) + 1.0
    hardest_neg = ops.min(ops.where(negative, dist, big), axis=1)
    gap = hardest_pos - hardest_neg
    loss = ops.softplus(gap) if soft_margin else ops.relu(gap + margin)
    valid = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))
    return ops.where(valid, loss, 0.0)


@keras.saving.register_keras_serializable(package="tfmarket")
class TripletLoss(keras.losses.Loss):
    """Keras wrapper of :func:`batch_hard_triplet`; y_true = identity labels, y_pred = features.

    Under ``tf.distribute`` each replica mines within its own slice of the global batch; the
    input pipeline gives every replica whole identities (see ``tfmarket.data.pipeline``).
    """

    def __init__(self, margin: float = 0.3, soft_margin: bool = False, name="triplet", **kw):
        super().__init__(name=name, **kw)
        self.margin = margin
        self.soft_margin = soft_margin

    def call(self, y_true, y_pred):
        return batch_hard_triplet(y_true, y_pred, self.margin, self.soft_margin)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "soft_margin": self.soft_margin}


@keras.saving.register_keras_serializable(package="tfmarket")
class SoftmaxLoss(keras.losses.Loss):
    """Sparse softmax cross-entropy with label smoothing, optional class weights and an
    optional additive margin.

    y_true int [B] (or [B, 1]), -1 = unknown (zero loss); y_pred logits [B, C].
    ``class_weights`` float [C] multiplies each sample's loss by its class's weight.
    ``margin`` is subtracted from the target class's logit before the softmax: with a
    :class:`~tfmarket.model.layers.CosineClassifier`'s logits s x cos it is CosFace (Wang et al.
    2018) with margin ``margin / s``; the sample must then beat the other classes by it.
    """

    def __init__(self, label_smoothing: float = 0.0, class_weights=None, name="softmax", *,
                 margin: float = 0.0, **kw):
        super().__init__(name=name, **kw)
        self.label_smoothing = float(label_smoothing)
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.margin = float(margin)

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        n_classes = ops.shape(logits)[-1]
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        known = labels >= 0
        safe = ops.where(known, labels, 0)
        target = ops.one_hot(safe, n_classes, dtype="float32")
        if self.margin:
            logits = logits - self.margin * target
        if self.label_smoothing:
            eps = self.label_smoothing
            target = target * (1.0 - eps) + eps / ops.cast(n_classes, "float32")
        loss = -ops.sum(target * ops.log_softmax(logits, axis=-1), axis=-1)
        if self.class_weights is not None:
            loss = loss * ops.take(ops.convert_to_tensor(self.class_weights, "float32"), safe)
        return ops.where(known, loss, 0.0)

    def get_config(self):
        return {
            **super().get_config(),
            "label_smoothing": self.label_smoothing,
            "class_weights": self.class_weights,
            "margin": self.margin,
        }


@keras.saving.register_keras_serializable(package="tfmarket")
class BinaryLoss(keras.losses.Loss):
    """Sigmoid cross-entropy with separate weights for positives and negatives.

    y_true int [B] or [B, 1] in {0, 1}, -1 = unknown (zero loss); y_pred logits [B, 1].
    """

    def __init__(self, pos_weight: float = 1.0, neg_weight: float = 1.0, name="binary", **kw):
        super().__init__(name=name, **kw)
        self.pos_weight = float(pos_weight)
        self.neg_weight = float(neg_weight)

    def call(self, y_true, y_pred):
        logits = ops.reshape(ops.cast(y_pred, "float32"), (-1,))
        labels = ops.reshape(ops.cast(y_true, "float32"), (-1,))
        known = labels >= 0
        target = ops.where(known, labels, 0.0)
        # Stable BCE with logits: softplus(x) - t * x.
        loss = ops.softplus(logits) - target * logits
        weight = target * self.pos_weight + (1.0 - target) * self.neg_weight
        return ops.where(known, loss * weight, 0.0)

    def get_config(self):
        return {**super().get_config(), "pos_weight": self.pos_weight,
                "neg_weight": self.neg_weight}


def binary_weights(targets: np.ndarray) -> tuple[float, float]:
    """(pos_weight, neg_weight) from positive rate p: exp(1 - p), exp(p) (DeepMAR, Li et al. 2015).

    Rare positives (hat: p ~ 0.03) get weight ~ e, common negatives ~ 1; unknown (-1) ignored.
    """
    known = targets[targets >= 0]
    p = float(known.mean()) if len(known) else 0.5
    return float(np.exp(1.0 - p)), float(np.exp(p))


def softmax_class_weights(targets: np.ndarray, n_classes: int, power: float = 0.5) -> np.ndarray:
    """float [C]: (1 / frequency)^power, normalised so the average sample weight is 1.

    Classes absent from the targets get the largest observed weight.
    """
    known = targets[targets >= 0]
    counts = np.bincount(known, minlength=n_classes).astype(np.float64)
    freq = counts / max(counts.sum(), 1.0)
    weights = np.where(counts > 0, 1.0 / np.maximum(freq, 1e-12) ** power, 0.0)
    if (counts > 0).any():
        weights = np.where(counts > 0, weights, weights.max())
        weights = weights / (freq * weights).sum()
    else:
        weights = np.ones(n_classes)
    return weights.astype(np.float32)
