"""Building and compiling the training model from a config: the network, its losses and
loss weights, training metrics, optimizer and learning-rate schedule, and the mapping from
pipeline targets to model outputs. Shared by ``tfmarket.train``, ``tfmarket.adapt`` (its rounds
rebuild the source architecture) and export (a float32 copy of a mixed-precision model).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tfmarket.attributes import MARKET, AttributeSchema
from tfmarket.errors import TfmarketError

if TYPE_CHECKING:  # annotations only
    import numpy as np


def compiled_model(config, strategy, num_identities: int, targets: dict[str, np.ndarray],
                   steps_per_epoch: int, schema: AttributeSchema | None = None):
    """The training model, compiled with its losses, optimizer and metrics.

    Built under ``strategy.scope()`` so its variables are mirrored across replicas.
    ``targets`` (attribute head -> int32 [N]) set the attribute losses' class weights;
    ``schema`` gives the attribute heads (default Market-1501's).
    """
    heads = (MARKET if schema is None else schema).head_sizes
    with strategy.scope():
        model = build_training_model(config, num_identities, heads)
        losses, loss_weights = build_losses(config, targets, heads)
        model.compile(
            optimizer=build_optimizer(config.train, steps_per_epoch),
            loss=losses, loss_weights=loss_weights, metrics=build_metrics(heads),
            jit_compile=config.train.jit_compile,
        )
    return model


def build_training_model(config, num_identities: int, heads: dict[str, int]):
    """The training model ``config.model`` describes, uncompiled (call under a strategy's
    scope); ``heads``: attribute head -> output width."""
    from tfmarket.model.network import build_model

    model_cfg = config.model
    return build_model(
        num_identities, height=config.data.height, width=config.data.width,
        backbone=model_cfg.backbone, weights=model_cfg.weights or None,
        last_stride=model_cfg.last_stride, pooling=model_cfg.pooling,
        embedding_dim=model_cfg.embedding_dim, dropout=model_cfg.dropout,
        fused_batchnorm=model_cfg.fused_batchnorm, tap_gradient=model_cfg.tap_gradient,
        heads=heads,
        id_head=model_cfg.id_head, id_scale=model_cfg.id_scale,
    )


def build_losses(config, targets, heads=None):
    """Loss and loss-weight dicts keyed by model output name.

    ``heads``: attribute head -> output width (1 = sigmoid); None = Market-1501's, {} = re-ID
    only (no attribute losses).
    """
    from tfmarket.attributes import HEADS
    from tfmarket.model.losses import (
        BinaryLoss,
        SoftmaxLoss,
        TripletLoss,
        binary_weights,
        softmax_class_weights,
    )

    heads = HEADS if heads is None else heads
    loss_cfg = config.loss
    margin = _id_margin(config)
    losses = {
        "id": SoftmaxLoss(loss_cfg.label_smoothing, margin=margin, name="id_loss"),
        "features": TripletLoss(loss_cfg.margin, loss_cfg.soft_margin, name="triplet_loss"),
    }
    weights = {"id": loss_cfg.id_weight, "features": loss_cfg.triplet_weight}
    per_head = loss_cfg.attribute_weight / max(len(heads), 1)
    for head, n_classes in heads.items():
        if n_classes == 1:
            pos, neg = binary_weights(targets[head]) if loss_cfg.balance_attributes else (1, 1)
            losses[head] = BinaryLoss(pos, neg, name=f"{head}_loss")
        else:
            cw = softmax_class_weights(targets[head], n_classes) if loss_cfg.balance_attributes \
                else None
            losses[head] = SoftmaxLoss(0.0, cw, name=f"{head}_loss")
        weights[head] = per_head
    return losses, weights


def _id_margin(config) -> float:
    """``loss.id_margin`` in logit units (x ``model.id_scale``); ConfigError when it cannot
    apply."""
    from tfmarket.errors import ConfigError

    margin, model_cfg = config.loss.id_margin, config.model
    if model_cfg.id_head == "cosine" and not model_cfg.id_scale > 0:
        raise ConfigError(f"model.id_scale must be positive, got {model_cfg.id_scale!r}")
    if not 0.0 <= margin < 1.0:
        raise ConfigError(f"loss.id_margin must be in [0, 1) (a cosine), got {margin!r}")
    if margin and model_cfg.id_head != "cosine":
        raise ConfigError("loss.id_margin needs model.id_head: cosine (a margin on a cosine); "
                          f"model.id_head is {model_cfg.id_head!r}")
    return margin * model_cfg.id_scale


def build_metrics(heads=None):
    """Training accuracy per output with a class target, keyed by output name; samples whose
    target is -1 (unknown) are skipped, as the losses skip them.

    The binary heads output logits [B, 1], so their accuracy thresholds at 0 (probability 0.5).
    ``heads`` as in :func:`build_losses`.
    """
    from tfmarket.attributes import HEADS
    from tfmarket.model.keras_metrics import KnownAccuracy, KnownBinaryAccuracy

    heads = HEADS if heads is None else heads
    metrics = {"id": [KnownAccuracy()]}
    for head, n_classes in heads.items():
        metrics[head] = [KnownBinaryAccuracy() if n_classes == 1 else KnownAccuracy()]
    return metrics


def build_optimizer(train_cfg, steps_per_epoch: int, warmup_steps: int | None = None):
    """``train_cfg``'s optimizer and schedule; ``warmup_steps`` overrides its warm-up epochs.

    ``train_cfg.fused_optimizer``: tfmarket's :mod:`~tfmarket.model.optimizers` (one fused
    kernel per variable, same math) instead of Keras's classes.
    """
    import keras

    from tfmarket.model import optimizers
    from tfmarket.model.schedules import WarmupSchedule

    if warmup_steps is None:
        warmup_steps = train_cfg.warmup_epochs * steps_per_epoch
    schedule = WarmupSchedule(
        train_cfg.learning_rate,
        total_steps=train_cfg.epochs * steps_per_epoch,
        warmup_steps=warmup_steps,
        kind=train_cfg.schedule,
        decay_steps=[e * steps_per_epoch for e in train_cfg.decay_epochs],
        decay_factor=train_cfg.decay_factor,
    )
    classes = optimizers if train_cfg.fused_optimizer else keras.optimizers
    if train_cfg.optimizer == "adamw":
        return classes.AdamW(schedule, weight_decay=train_cfg.weight_decay)
    if train_cfg.optimizer == "adam":
        # Classic Adam with L2 folded into the update, as BoT trains.
        return classes.Adam(schedule)
    if train_cfg.optimizer == "sgd":
        return classes.SGD(schedule, momentum=0.9, nesterov=True,
                           weight_decay=train_cfg.weight_decay)
    raise TfmarketError(f"unknown optimizer {train_cfg.optimizer!r}; valid: adam, adamw, sgd")


def model_targets(y, heads=None):
    """Pipeline targets -> one entry per model output that has a loss.

    ``y``: {"id": int32 [B], attribute head: int32 [B]}. Returns int32 [B] for "id",
    "features", "embedding" and the softmax heads, [B, 1] for the binary heads (as their
    outputs). ``heads`` as in :func:`build_losses`.
    """
    from tfmarket.attributes import HEADS

    heads = HEADS if heads is None else heads
    # Keras matches targets to every output by name, also those without a loss.
    out = {"id": y["id"], "features": y["id"], "embedding": y["id"]}
    for head, n_classes in heads.items():
        out[head] = y[head][:, None] if n_classes == 1 else y[head]
    return out
