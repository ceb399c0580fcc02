"""Training accuracies that skip unknown targets (-1), as the losses do.

Targets are -1 where a sample has no label for that output: attributes of identities without
annotations, and in ``tfmarket.adapt``'s batches, which mix labelled and pseudo-labelled
images, the "id" target of a pseudo-labelled image and the "cluster" and attribute targets of
a labelled one. Keras's accuracies would count those samples as misses.
"""

from __future__ import annotations

import keras
from keras import ops


class _KnownMean(keras.metrics.Metric):
    """Fraction of correct predictions among the samples whose target is known."""

    def __init__(self, name="acc", **kwargs):
        super().__init__(name=name, **kwargs)
        self.correct = self.add_variable(shape=(), initializer="zeros", name="correct")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def _hits(self, labels, y_pred):
        raise NotImplementedError

    def update_state(self, y_true, y_pred, sample_weight=None):
        labels = ops.reshape(ops.cast(y_true, "int32"), (-1,))
        known = ops.cast(labels >= 0, "float32")
        self.correct.assign_add(ops.sum(ops.cast(self._hits(labels, y_pred), "float32") * known))
        self.count.assign_add(ops.sum(known))

    def result(self):
        return self.correct / ops.maximum(self.count, 1.0)

    def reset_state(self):
        self.correct.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="tfmarket")
class KnownAccuracy(_KnownMean):
    """Top-1 accuracy: y_true int [B] (or [B, 1]), -1 = unknown; y_pred logits [B, C]."""

    def _hits(self, labels, y_pred):
        return ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), labels)


@keras.saving.register_keras_serializable(package="tfmarket")
class KnownBinaryAccuracy(_KnownMean):
    """Binary accuracy at probability 0.5: y_true int [B] (or [B, 1]) in {0, 1}, -1 = unknown;
    y_pred logits [B, 1]."""

    def _hits(self, labels, y_pred):
        positive = ops.reshape(y_pred, (-1,)) > 0
        return ops.equal(ops.cast(positive, "int32"), labels)
