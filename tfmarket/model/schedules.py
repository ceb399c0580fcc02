"""Learning-rate schedule: linear warm-up, then step or cosine decay (BoT / FastReID style)."""

from __future__ import annotations

import math

import keras
from keras import ops

SCHEDULES = ("step", "cosine", "constant")


@keras.saving.register_keras_serializable(package="tfmarket")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """lr(step): linear from ``base_lr * warmup_factor`` to ``base_lr`` over ``warmup_steps``,
    then ``step`` (multiply by ``decay_factor`` at each of ``decay_steps``), ``cosine`` (to 0 at
    ``total_steps``) or ``constant``."""

    def __init__(self, base_lr, total_steps, warmup_steps=0, kind="step", decay_steps=(),
                 decay_factor=0.1, warmup_factor=0.01):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; valid: {', '.join(SCHEDULES)}")
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)
        self.warmup_steps = int(warmup_steps)
        self.kind = kind
        self.decay_steps = [int(s) for s in decay_steps]
        self.decay_factor = float(decay_factor)
        self.warmup_factor = float(warmup_factor)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        if self.kind == "step":
            lr = ops.convert_to_tensor(self.base_lr, "float32")
            for boundary in self.decay_steps:
                lr = ops.where(step >= boundary, lr * self.decay_factor, lr)
        elif self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
            lr = 0.5 * self.base_lr * (1.0 + ops.cos(math.pi * progress))
        else:
            lr = ops.convert_to_tensor(self.base_lr, "float32")
        if self.warmup_steps > 0:
            alpha = ops.clip(step / self.warmup_steps, 0.0, 1.0)
            factor = self.warmup_factor * (1.0 - alpha) + alpha
            lr = ops.where(step < self.warmup_steps, lr * factor, lr)
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr, "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps, "kind": self.kind,
            "decay_steps": self.decay_steps, "decay_factor": self.decay_factor,
            "warmup_factor": self.warmup_factor,
        }
