"""The fit loop every training shares (``tfmarket.train`` and each round of
``tfmarket.adapt``): the distributed input stream, the callbacks in their order, validation
during training, ``model.fit`` itself, and a digest of the trained weights.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tfmarket.errors import TfmarketError
from tfmarket.training.build import model_targets
from tfmarket.training.data import TrainingData
from tfmarket.training.rundir import RunPaths

if TYPE_CHECKING:  # annotations only: at run time these would load Keras
    from tfmarket.training.callbacks import Throughput
    from tfmarket.training.evaluation import ValidationCallback


@dataclass(frozen=True)
class FitResult:
    """What ``model.fit`` did in this session."""

    logs: dict[str, list[float]]  # Keras ``History.history``: log key -> one value per epoch
    seconds: float  # wall time of ``fit``, validation included


def make_dataset_fn(data: TrainingData, data_cfg, *, first_step: int):
    """The ``dataset_fn`` for ``strategy.distribute_datasets_from_function``.

    It maps a worker's ``tf.distribute.InputContext`` to that worker's endless dataset of
    per-replica batches: (images float32 [B, H, W, 3] in [0, 255], targets per model output,
    see :func:`model_targets`), B = ids_per_batch * images_per_id. ``first_step`` is the
    number of steps already trained, so a resumed run continues the input stream.
    """
    import numpy as np

    from tfmarket.data.pipeline import train_dataset

    heads = data.schema.head_sizes

    def dataset_fn(context):
        # One call per worker (input pipeline): the worker trains on its own shard of the
        # identities and yields per-replica batches of whole identities.
        shard = data.labels % context.num_input_pipelines == context.input_pipeline_id
        index = np.flatnonzero(shard)
        ds = train_dataset(
            [data.records.paths[i] for i in index], data.labels[index],
            {h: t[index] for h, t in data.targets.items()},
            height=data_cfg.height, width=data_cfg.width, p=data_cfg.ids_per_batch,
            k=data_cfg.images_per_id, seed=data_cfg.seed + 1000 * context.input_pipeline_id,
            pad=data_cfg.pad, flip=data_cfg.flip, erase_prob=data_cfg.erase_prob,
            cache_bytes=data_cfg.cache, first_step=first_step,
        )
        return ds.map(lambda x, y: (x, model_targets(y, heads)))

    return dataset_fn


def validation_callback(data: TrainingData, height: int, width: int, every: int,
                        log_dir: Path) -> ValidationCallback | None:
    """Validation mAP / Rank-k / attribute mA every ``every`` epochs; None when there is no
    validation split or ``every`` is 0."""
    from tfmarket.training.evaluation import ValidationCallback

    if len(data.val_query) == 0 or every <= 0:
        return None
    return ValidationCallback(data.val_query, data.val_gallery, height, width, every=every,
                              log_dir=str(log_dir), name=data.validation, schema=data.schema)


def build_callbacks(paths: RunPaths, throughput: Throughput, validation: ValidationCallback | None,
                    best_so_far: float | None, early_stopping_patience: int, *,
                    best_model=None) -> list:
    """The ``fit`` callbacks, in the order they must run.

    The backup comes first, so the weights and epoch are restored before any other callback
    starts. Throughput precedes validation, so validation time is not counted. Validation
    precedes the loggers, ``ModelCheckpoint`` and ``EarlyStopping``, which read the ``val_*``
    logs it adds.
    ``best_so_far`` (an interrupted run's best val_mAP) keeps ``best.keras`` from being
    overwritten by a worse model. ``best_model``: what ``best.keras`` saves, when not the model
    being fit (``tfmarket.adapt``).
    """
    import keras

    from tfmarket.console import is_verbose
    from tfmarket.training.callbacks import (
        EpochProgress,
        LearningRateLogger,
        SharedBackupAndRestore,
        ValidationCheckpoint,
        ValidationEarlyStopping,
    )

    out_dir = paths.out_dir
    callbacks = [SharedBackupAndRestore(str(paths.backup_dir), writer=paths.chief), throughput]
    if not is_verbose():  # Keras's own epoch line (~40 metrics) when verbose, see fit_model
        callbacks.append(EpochProgress(throughput.batch_size))
    if validation is not None:
        callbacks.append(validation)
    callbacks += [
        LearningRateLogger(),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(out_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(out_dir / "tensorboard"), update_freq="epoch"),
    ]
    if validation is not None:
        callbacks.append(ValidationCheckpoint(
            str(out_dir / "best.keras"), monitor="val_mAP", mode="max", save_best_only=True,
            initial_value_threshold=best_so_far, saves=best_model))
    if early_stopping_patience > 0:
        has_val = validation is not None
        callbacks.append(ValidationEarlyStopping(
            monitor="val_mAP" if has_val else "loss", mode="max" if has_val else "min",
            patience=early_stopping_patience, restore_best_weights=False))
    return callbacks


def fit_model(model, inputs, callbacks: list, epochs: int, steps_per_epoch: int, *,
              lost_worker_backup: Path | None, initial_epoch: int = 0) -> FitResult:
    """``model.fit`` on the distributed ``inputs``; stops with one clear line on a NaN loss.

    ``epochs`` is the index to stop at, ``initial_epoch`` the one to start from (Keras's
    meaning; ``tfmarket.adapt`` numbers the epochs of all its rounds in one sequence).

    ``lost_worker_backup`` is the backup folder of a multi-worker job: a lost worker then ends
    the run with one line naming it and the epoch to resume from. None for a single-host run,
    whose errors propagate unchanged.
    """
    import numpy as np
    import tensorflow as tf

    from tfmarket.console import HARMLESS_FIT_WARNINGS, harmless_warnings_ignored, is_verbose
    from tfmarket.training.multiworker import lost_worker_message

    verbose = (2 if not sys.stdout.isatty() else 1) if is_verbose() else 0
    start = time.time()
    try:
        with harmless_warnings_ignored(HARMLESS_FIT_WARNINGS):
            history = model.fit(inputs, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                callbacks=callbacks, verbose=verbose,
                                initial_epoch=initial_epoch)
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as exc:
        if lost_worker_backup is None:
            raise
        raise TfmarketError(lost_worker_message(exc.message, lost_worker_backup)) from None
    seconds = time.time() - start
    if not np.isfinite((history.history.get("loss") or [0.0])[-1]):
        raise TfmarketError("training stopped: the loss became NaN (see history.csv)")
    return FitResult(logs=history.history, seconds=seconds)


def weights_digest(model) -> str:
    """SHA-256 over every weight's bytes: equal on all workers after synchronous training."""
    import hashlib

    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()
