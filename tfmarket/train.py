"""``python -m tfmarket.train``: joint attribute + re-ID training.

    python -m tfmarket.train --config configs/demo.yaml --workdir runs/demo [--set k=v ...]

Resume: rerunning the same command continues from the last finished epoch (Keras
``BackupAndRestore`` in ``WORKDIR/backup``, written at every epoch end, survives ``kill -9``).
A finished run is not retrained: the command says so and exits; ``--restart`` wipes the run
directory's training state and starts again.

Run directory: ``config.yaml`` (resolved), ``backup/`` (resume state), ``tensorboard/``
(train + validation events), ``best.keras`` (best validation mAP), ``model.keras`` (final),
``history.csv``, ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tfmarket.errors import ConfigError, TfmarketError

DONE_MARKER = "metrics.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tfmarket.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config (see configs/)")
    parser.add_argument("--workdir", required=True, help="run directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, e.g. train.epochs=2")
    parser.add_argument("--restart", action="store_true",
                        help="discard the run directory's previous training state")
    parser.add_argument("--cpu-replicas", type=int, default=0,
                        help="split the CPU into N logical devices (tests of multi-replica code)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from tfmarket.config import load_config

        config = load_config(args.config, args.overrides)
        result = run(config, Path(args.workdir), restart=args.restart,
                     cpu_replicas=args.cpu_replicas)
    except TfmarketError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.get("status") == "already complete":
        print(f"{args.workdir}: training already complete (see {DONE_MARKER}); "
              "use --restart to train again")
        return 0
    keys = ("status", "epochs_run", "replicas", "global_batch", "weights_sha256", "best_val_mAP")
    print(json.dumps({"workdir": str(args.workdir), **{k: result.get(k) for k in keys}}))
    return 0


def prepare_data(config, workdir: Path):
    """Reads (or generates) the dataset and carves the validation split.

    Returns (dataset, train_records, val_query, val_gallery).
    """
    from tfmarket.data.check import require_readable
    from tfmarket.data.market1501 import load_dataset
    from tfmarket.data.split import default_val_ids, split_validation

    data = config.data
    root = data.root
    if not root:
        from tfmarket.data.synthetic import write_synthetic

        root = workdir / "synthetic"
        if not root.is_dir():
            write_synthetic(root, layout="course", num_train_ids=data.synth_train_ids,
                            num_test_ids=data.synth_test_ids,
                            images_per_id=data.synth_images_per_id, seed=data.seed)
    dataset = load_dataset(root, data.layout)
    require_readable(dataset.train.paths)
    num_ids = len(set(dataset.train.pids.tolist()))
    val_ids = data.val_ids if data.val_ids > 0 else default_val_ids(num_ids)
    train, val_query, val_gallery = split_validation(dataset.train, val_ids, data.seed)
    return dataset, train, val_query, val_gallery


def attribute_targets(records):
    """Per-head int32 targets [N]; -1 where the image's identity has no annotation."""
    import numpy as np

    from tfmarket.attributes import HEADS, columns_to_targets

    known = records.has_attributes
    targets = {h: np.full(len(records), -1, np.int32) for h in HEADS}
    if known.any():
        for head, values in columns_to_targets(records.attributes[known]).items():
            targets[head][known] = values
    return targets


def build_losses(config, targets):
    """Loss and loss-weight dicts keyed by model output name."""
    from tfmarket.attributes import HEADS
    from tfmarket.losses import (
        BinaryLoss,
        SoftmaxLoss,
        TripletLoss,
        binary_weights,
        softmax_class_weights,
    )

    loss_cfg = config.loss
    losses = {
        "id": SoftmaxLoss(loss_cfg.label_smoothing, name="id_loss"),
        "features": TripletLoss(loss_cfg.margin, loss_cfg.soft_margin, name="triplet_loss"),
    }
    weights = {"id": loss_cfg.id_weight, "features": loss_cfg.triplet_weight}
    per_head = loss_cfg.attribute_weight / len(HEADS)
    for head, n_classes in HEADS.items():
        if n_classes == 1:
            pos, neg = binary_weights(targets[head]) if loss_cfg.balance_attributes else (1, 1)
            losses[head] = BinaryLoss(pos, neg, name=f"{head}_loss")
        else:
            cw = softmax_class_weights(targets[head], n_classes) if loss_cfg.balance_attributes \
                else None
            losses[head] = SoftmaxLoss(0.0, cw, name=f"{head}_loss")
        weights[head] = per_head
    return losses, weights


def build_metrics():
    import keras

    from tfmarket.attributes import HEADS

    metrics = {"id": [keras.metrics.SparseCategoricalAccuracy(name="acc")]}
    for head, n_classes in HEADS.items():
        metrics[head] = [
            keras.metrics.BinaryAccuracy(name="acc", threshold=0.0) if n_classes == 1
            else keras.metrics.SparseCategoricalAccuracy(name="acc")
        ]
    return metrics


def build_optimizer(train_cfg, steps_per_epoch: int):
    import keras

    from tfmarket.schedules import WarmupSchedule

    schedule = WarmupSchedule(
        train_cfg.learning_rate,
        total_steps=train_cfg.epochs * steps_per_epoch,
        warmup_steps=train_cfg.warmup_epochs * steps_per_epoch,
        kind=train_cfg.schedule,
        decay_steps=[e * steps_per_epoch for e in train_cfg.decay_epochs],
        decay_factor=train_cfg.decay_factor,
    )
    if train_cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=train_cfg.weight_decay)
    if train_cfg.optimizer == "adam":
        # Classic Adam with L2 folded into the update, as BoT trains.
        return keras.optimizers.Adam(schedule)
    if train_cfg.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True,
                                    weight_decay=train_cfg.weight_decay)
    raise TfmarketError(f"unknown optimizer {train_cfg.optimizer!r}; valid: adam, adamw, sgd")


def run(config, workdir: Path, *, restart: bool = False, cpu_replicas: int = 0) -> dict:
    """Trains per ``config`` into ``workdir``; returns the metrics dict (also in metrics.json)."""
    workdir = Path(workdir)
    if restart and workdir.exists():
        for name in ("backup", "tensorboard", "best.keras", "model.keras", "history.csv",
                     DONE_MARKER):
            target = workdir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    if (workdir / DONE_MARKER).is_file():
        return {"status": "already complete"}

    import keras

    from tfmarket.config import save_config
    from tfmarket.data.split import relabel
    from tfmarket.distribute import choose_strategy, is_chief, resolve_precision

    strategy = choose_strategy(cpu_replicas)
    chief = is_chief(strategy)
    # Only the chief writes the run directory; other workers of a multi-worker job write their
    # (identical) checkpoints and logs to a temporary folder that is removed at the end.
    out_dir = workdir if chief else Path(tempfile.mkdtemp(prefix="tfmarket-worker-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    if chief:
        save_config(config, workdir / "config.yaml")
    keras.utils.set_random_seed(config.train.seed)

    dataset, train, val_query, val_gallery = prepare_data(config, out_dir)
    labels, identities = relabel(train.pids)
    targets = attribute_targets(train)

    precision = resolve_precision(config.train.precision)
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        return _fit(config, workdir, out_dir, strategy, chief, train, labels, identities,
                    targets, val_query, val_gallery, precision)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        if not chief:
            shutil.rmtree(out_dir, ignore_errors=True)


def _fit(config, workdir, out_dir, strategy, chief, train, labels, identities, targets,
         val_query, val_gallery, precision) -> dict:
    """Builds the input, model and callbacks under ``strategy`` and trains; see :func:`run`."""
    import keras
    import numpy as np
    import tensorflow as tf

    from tfmarket.callbacks import LearningRateLogger, SharedBackupAndRestore, Throughput
    from tfmarket.data.pipeline import train_dataset
    from tfmarket.evaluation import ValidationCallback
    from tfmarket.model import build_model

    replicas = strategy.num_replicas_in_sync
    data = config.data
    batch = data.ids_per_batch * data.images_per_id * replicas  # global batch
    steps = config.train.steps_per_epoch or max(1, len(train) // batch)

    workers = strategy.extended._num_workers if hasattr(strategy.extended, "_num_workers") else 1
    if len(identities) // max(workers, 1) < data.ids_per_batch:
        raise ConfigError(
            f"data.ids_per_batch = {data.ids_per_batch} identities per batch, but only "
            f"{len(identities)} training identities ({workers} worker(s)); lower it")

    # Read from the shared run directory by every worker, so all resume at the same step.
    done_epochs = backup_epoch(workdir / "backup")
    best_so_far = best_logged_map(workdir / "history.csv")
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        _check_same_resume_epoch(strategy, done_epochs, workdir / "backup")

    def dataset_fn(context):
        # One call per worker (input pipeline): the worker trains on its own shard of the
        # identities and yields per-replica batches of whole identities.
        shard = labels % context.num_input_pipelines == context.input_pipeline_id
        index = np.flatnonzero(shard)
        ds = train_dataset(
            [train.paths[i] for i in index], labels[index],
            {h: t[index] for h, t in targets.items()},
            height=data.height, width=data.width, p=data.ids_per_batch, k=data.images_per_id,
            seed=data.seed + 1000 * context.input_pipeline_id, pad=data.pad, flip=data.flip,
            erase_prob=data.erase_prob, cache_bytes=data.cache,
            first_step=done_epochs * steps,
        )
        return ds.map(lambda x, y: (x, _model_targets(y)))

    ds = strategy.distribute_datasets_from_function(dataset_fn)

    model_cfg = config.model
    with strategy.scope():
        model = build_model(
            len(identities), height=data.height, width=data.width,
            backbone=model_cfg.backbone, weights=model_cfg.weights or None,
            last_stride=model_cfg.last_stride, pooling=model_cfg.pooling,
            embedding_dim=model_cfg.embedding_dim, dropout=model_cfg.dropout,
        )
        losses, loss_weights = build_losses(config, targets)
        model.compile(
            optimizer=build_optimizer(config.train, steps),
            loss=losses, loss_weights=loss_weights, metrics=build_metrics(),
            jit_compile=config.train.jit_compile,
        )

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        _prebuild_for_multi_worker(model, strategy, dataset_fn)

    throughput = Throughput(batch)
    callbacks = [SharedBackupAndRestore(str(workdir / "backup"), writer=chief), throughput]
    validation = None
    has_val = len(val_query) > 0 and config.train.eval_every > 0
    if has_val:
        validation = ValidationCallback(val_query, val_gallery, data.height, data.width,
                                        every=config.train.eval_every,
                                        log_dir=str(out_dir / "tensorboard"))
        callbacks.append(validation)
    callbacks += [
        LearningRateLogger(),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(str(out_dir / "history.csv"), append=True),
        keras.callbacks.TensorBoard(str(out_dir / "tensorboard"), update_freq="epoch"),
    ]
    if has_val:
        callbacks.append(keras.callbacks.ModelCheckpoint(
            str(out_dir / "best.keras"), monitor="val_mAP", mode="max", save_best_only=True,
            initial_value_threshold=best_so_far))
    if config.train.early_stopping_patience > 0:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_mAP" if has_val else "loss", mode="max" if has_val else "min",
            patience=config.train.early_stopping_patience, restore_best_weights=False))

    start = time.time()
    try:
        history = model.fit(ds, epochs=config.train.epochs, steps_per_epoch=steps,
                            callbacks=callbacks, verbose=2 if not sys.stdout.isatty() else 1)
    except (tf.errors.UnavailableError, tf.errors.AbortedError) as exc:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            raise
        raise TfmarketError(lost_worker_message(exc.message, workdir / "backup")) from None
    seconds = time.time() - start
    if not np.isfinite(history.history.get("loss", [0.0])[-1]):
        raise TfmarketError("training stopped: the loss became NaN (see history.csv)")

    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        _average_non_trainable(model, strategy)
    model.save(out_dir / "model.keras")
    metrics = {
        "status": "complete",
        "epochs_run": len(history.history.get("loss", [])),
        "train_images": len(train),
        "train_identities": int(len(identities)),
        "identities": identities.tolist(),
        "val_query_images": len(val_query),
        "val_gallery_images": len(val_gallery),
        "replicas": replicas,
        "precision": precision,
        "global_batch": batch,
        "steps_per_epoch": steps,
        "train_seconds_this_session": seconds,
        "images_per_second": throughput.rates,
        "final_train_loss": float(history.history["loss"][-1]),
        "weights_sha256": weights_digest(model),
        "validation": validation.last if validation else None,
        "best_val_mAP": max((h["mAP"] for h in validation.history), default=None)
        if validation else None,
    }
    if chief:
        (workdir / DONE_MARKER).write_text(json.dumps(metrics, indent=2, default=float))
    return metrics


def _prebuild_for_multi_worker(model, strategy, dataset_fn) -> None:
    """Builds the compiled model from the input's TensorSpecs before ``fit``.

    Keras 3's ``fit`` otherwise builds it from a first batch that it averages across replicas
    with ``strategy.reduce``, which fails eagerly under MultiWorkerMirroredStrategy
    (keras-team/keras#20585). Building here leaves nothing for that step to do, so it is
    skipped for this model; ``tests/test_multiworker.py`` guards the workaround.
    """
    import tensorflow as tf

    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=1)
    spec = dataset_fn(context).element_spec
    with strategy.scope():
        model._symbolic_build(data_batch=spec)
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    _patch_scalar_reduction()


def _check_same_resume_epoch(strategy, done_epochs: int, backup_dir: Path) -> None:
    """Stops every worker, with one clear line, unless all resume from the same epoch.

    Workers that disagree (a run directory that is not on shared storage, so only the chief
    sees its backup) would otherwise train different numbers of steps and hang or diverge.
    All workers compute the same spread of the epochs, so all of them stop together.
    """
    import tensorflow as tf

    local = strategy.experimental_distribute_values_from_function(
        lambda _context: tf.constant([done_epochs, done_epochs**2], tf.float32))
    mean, mean_square = strategy.reduce("MEAN", local, axis=None).numpy()
    if mean_square - mean**2 > 1e-3:
        raise TfmarketError(
            f"the workers would resume from different epochs (this worker: {done_epochs}, "
            f"mean over workers: {mean:g}); every worker must read the chief's backup in "
            f"{backup_dir}: put the run directory on storage all workers share")


def _average_non_trainable(model, strategy) -> None:
    """Averages BatchNorm moving statistics across workers after training.

    Gradients are all-reduced, but each worker updates its moving mean/variance from its own
    batches; averaging them makes every worker end with the same model (the chief saves it).
    """
    import tensorflow as tf

    for variable in model.non_trainable_weights:
        local = strategy.experimental_distribute_values_from_function(
            lambda _context, v=variable: tf.identity(v.value))
        variable.assign(strategy.reduce("MEAN", local, axis=None))


def _patch_scalar_reduction() -> None:
    """Keras 3.15's per-step log reduction under MultiWorkerMirroredStrategy averages every
    value along axis 0, which fails for the scalar losses and metrics it reduces
    (keras-team/keras#20585). Scalars are averaged with ``axis=None`` instead; everything else
    goes through Keras's own code."""
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = getattr(tf_trainer.reduce_per_replica, "__wrapped__", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction):
        import tensorflow as tf
        from keras import tree

        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) and reduction in (
            "auto", "mean"
        ):
            def reduce(value):
                rank = value.shape.rank if hasattr(value, "shape") else None
                if rank == 0 or _per_replica_rank(value, strategy) == 0:
                    return strategy.reduce("MEAN", value, axis=None)
                return original(value, strategy, reduction)

            return tree.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original
    tf_trainer.reduce_per_replica = reduce_per_replica


def _per_replica_rank(value, strategy):
    local = strategy.experimental_local_results(value)
    return local[0].shape.rank if local else None


def lost_worker_message(error: str, backup_dir: Path) -> str:
    """One clear line for a multi-worker job whose collective ops were aborted."""
    import re

    lost = sorted(set(re.findall(r"^(/job:\S+)", error, re.MULTILINE)))
    who = f"worker {', '.join(lost)} stopped responding" if lost else "a worker stopped"
    return (f"{who}, so the multi-worker job stopped; restart every worker with the same "
            f"command to resume from the last backup (epoch {backup_epoch(backup_dir)}, "
            f"in {backup_dir})")


def backup_epoch(backup_dir: Path) -> int:
    """Epochs finished according to the ``BackupAndRestore`` state (0 for a new run).

    The resumed run continues the input stream from this epoch, as Keras does the epochs.
    """
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        try:
            return int(json.loads((backup_dir / name).read_text())["epoch"])
        except (OSError, ValueError, KeyError):
            continue
    return 0


def best_logged_map(history_csv: Path) -> float | None:
    """Best ``val_mAP`` logged by an interrupted run (None for a new one).

    Keeps a resumed run's ``best.keras`` from being overwritten by a worse model.
    """
    import csv

    if not history_csv.is_file():
        return None
    with history_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    scores = []
    for row in rows:
        try:  # CSVLogger writes "NA" for epochs without validation
            value = float(row.get("val_mAP") or "nan")
        except ValueError:
            continue
        if value == value:
            scores.append(value)
    return max(scores) if scores else None


def weights_digest(model) -> str:
    """SHA-256 over every weight's bytes: equal on all workers after synchronous training."""
    import hashlib

    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()


def _model_targets(y):
    """Pipeline targets -> one entry per model output that has a loss."""

    from tfmarket.attributes import HEADS

    # Keras matches targets to every output by name, also those without a loss.
    out = {"id": y["id"], "features": y["id"], "embedding": y["id"]}
    for head, n_classes in HEADS.items():
        out[head] = y[head][:, None] if n_classes == 1 else y[head]
    return out


if __name__ == "__main__":
    sys.exit(main())
