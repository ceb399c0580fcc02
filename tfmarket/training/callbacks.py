"""Small Keras callbacks used by ``tfmarket.train`` (imports Keras; the CLI imports it lazily)."""

from __future__ import annotations

import time

import keras


class LearningRateLogger(keras.callbacks.Callback):
    """Adds the current learning rate to the epoch logs (so TensorBoard plots it)."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(
                keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            )


class Throughput(keras.callbacks.Callback):
    """Training images/s per epoch, into the logs as ``images_per_second``.

    Placed before the validation callback in the list, so validation time is not counted.
    """

    def __init__(self, batch_size: int):
        super().__init__()
        self.batch_size = batch_size
        self.rates: list[float] = []
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.time() - self.start
        self.seconds.append(seconds)
        self.rates.append(self.params["steps"] * self.batch_size / max(seconds, 1e-9))
        if logs is not None:
            logs["images_per_second"] = self.rates[-1]


class EpochProgress(keras.callbacks.Callback):
    """One progress line per epoch: steps, loss, ID accuracy, images/s and ETA. It replaces
    Keras's epoch line of ~40 metrics; every metric still goes to TensorBoard and history.csv.

    On a terminal the line is redrawn in place; in a log file one line per epoch is written.
    ``prefix`` and ``epoch_offset`` label a part of a longer run: ``tfmarket.adapt``'s rounds
    show ``round 2/4 epoch 1/2`` for Keras's epoch 3 of 4.
    """

    def __init__(self, batch_size: int, stream=None, prefix: str = "", epoch_offset: int = 0):
        super().__init__()
        self.batch_size = batch_size
        self.stream = stream
        self.prefix, self.epoch_offset = prefix, epoch_offset

    def on_epoch_begin(self, epoch, logs=None):
        from tfmarket.console import Progress

        first, epochs = epoch + 1 - self.epoch_offset, self.params.get("epochs", 0)
        self.progress = Progress(self.params["steps"],
                                 f"{self.prefix}epoch {first}/{epochs - self.epoch_offset}",
                                 unit="steps", rate_unit="images/s",
                                 rate_scale=self.batch_size, stream=self.stream)

    def on_train_batch_end(self, batch, logs=None):
        logs = logs or {}
        extra = "".join(f", {name} {float(logs[key]):.3f}"
                        for key, name in (("loss", "loss"), ("id_acc", "ID accuracy"))
                        if logs.get(key) is not None)
        self.progress.update(batch + 1, extra)

    def on_epoch_end(self, epoch, logs=None):
        self.progress.close()


class ValidationCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` on a validation score that exists only on validation epochs.

    Keras warns "Can save best model only with val_mAP available" on every other epoch; here
    those epochs are skipped without a word (Keras would skip them too).

    ``saves``: the model to write instead of the one being fit, e.g. ``tfmarket.adapt``'s
    source-architecture model, whose layers the fitted model shares beside a training-only
    output (its "cluster" prototypes), so ``best.keras`` has the same outputs as any run's.
    """

    def __init__(self, *args, saves=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._saves = saves

    def set_model(self, model):
        super().set_model(model if self._saves is None else self._saves)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.monitor in logs:
            super().on_epoch_end(epoch, logs)


class ValidationEarlyStopping(keras.callbacks.EarlyStopping):
    """``EarlyStopping`` that skips epochs without the monitored score, as Keras does, without
    Keras's warning on each of them. Patience counts validations."""

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.monitor in logs:
            super().on_epoch_end(epoch, logs)


class SharedBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` in the shared run directory: every worker restores, the chief writes.

    In a multi-worker job all workers must resume from the same epoch with the same weights, so
    all of them read ``WORKDIR/backup`` at the start; only the chief (``writer``) saves it at
    each epoch end and deletes it when training finishes. A single-host run is its own chief.
    Two copies are kept (``double_checkpoint``) so a kill during a save leaves one to load.
    """

    def __init__(self, backup_dir: str, *, writer: bool):
        super().__init__(backup_dir, double_checkpoint=True)
        self.writer = writer

    def on_epoch_end(self, epoch, logs=None):
        if self.writer:
            super().on_epoch_end(epoch, logs)

    def on_train_end(self, logs=None):
        if self.writer:
            super().on_train_end(logs)
