"""``python -m tfmarket.train``: joint attribute + re-ID training.

    python -m tfmarket.train --config configs/demo.yaml --workdir runs/demo [--set k=v ...]

Resume: rerunning the same command continues from the last finished epoch (Keras
``BackupAndRestore`` in ``WORKDIR/backup``, written at every epoch end, survives ``kill -9``).
A finished run is not retrained: the command says so and exits; ``--restart`` wipes the run
directory's training state and starts again.

Run directory: ``config.yaml`` (resolved), ``schema.json`` (the attribute schema the heads were
built from: the dataset's, see ``tfmarket.attributes``), ``backup/`` (resume state),
``tensorboard/`` (train + validation events), ``best.keras`` (best validation mAP),
``model.keras`` (final), ``history.csv``, ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tfmarket.attributes import MARKET, AttributeSchema
from tfmarket.errors import ConfigError, DataError, TfmarketError

if TYPE_CHECKING:  # for annotations only: at run time these would load Keras on --help
    import numpy as np

    from tfmarket.callbacks import Throughput
    from tfmarket.data.market1501 import Records
    from tfmarket.evaluation import ValidationCallback

DONE_MARKER = "metrics.json"
SCHEMA_FILE = "schema.json"  # the run's attribute schema (AttributeSchema.to_dict())
# Identities of the n-th dataset of data.extra_roots are offset by n x this (identity 23 of the
# first extra dataset trains as 100023), so datasets never share an identity.
EXTRA_PID_OFFSET = 100_000
# What training writes in the run directory; --restart removes it (the data stays).
TRAINING_STATE = ("backup", "tensorboard", "best.keras", "model.keras", "history.csv",
                  DONE_MARKER)


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
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's log lines, every warning and Keras's full epoch "
                        "line (default: one progress line per epoch and one validation line)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tfmarket.console import import_tensorflow_quietly, quiet_tensorflow

    quiet_tensorflow(args.verbose)  # before TensorFlow is imported
    try:
        from tfmarket.config import load_config
        from tfmarket.versions import check_runtime

        check_runtime()  # before TensorFlow is imported: one plain line, not a traceback
        import_tensorflow_quietly(args.verbose)

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


@dataclass(frozen=True)
class RunPaths:
    """Where one worker of a run reads and writes.

    Every worker reads the resume state (``backup/``, ``history.csv``) from the shared
    ``run_dir``, so all of them resume at the same step; only the chief writes there. The other
    workers write their (identical) checkpoints and logs to a temporary ``out_dir``.
    """

    run_dir: Path
    out_dir: Path  # run_dir on the chief
    chief: bool

    @property
    def backup_dir(self) -> Path:
        """The ``BackupAndRestore`` state: written by the chief, restored by every worker."""
        return self.run_dir / "backup"


@dataclass(frozen=True)
class TrainingData:
    """The training split, its labels and targets, and the validation split.

    ``records`` and the per-image arrays are parallel, N = ``len(records)`` training images.
    """

    records: Records  # the training images
    labels: np.ndarray  # int64 [N]: identity label 0..num_identities-1 of each image
    identities: np.ndarray  # int64 [num_identities]: dataset pid of each label
    targets: dict[str, np.ndarray]  # attribute head -> int32 [N], -1 where not annotated
    val_query: Records
    val_gallery: Records
    validation: str = "holdout"  # what val_query/val_gallery are: holdout | official | none
    validation_reason: str = ""  # why (what data.validation: auto chose), one line
    schema: AttributeSchema = MARKET  # the attribute heads: data.root's dataset's schema
    # One entry per dataset trained on (data.root, then data.extra_roots): root, layout,
    # attribute schema, identity offset, images, identities, whether it trains the attributes.
    datasets: tuple[dict, ...] = ()


@dataclass(frozen=True)
class TrainingSetup:
    """How the steps are run; reported in metrics.json under these names."""

    replicas: int  # replicas in sync over all workers
    precision: str  # Keras mixed-precision policy, e.g. "float32"
    global_batch: int  # images per step over all replicas
    steps_per_epoch: int


@dataclass(frozen=True)
class FitResult:
    """What ``model.fit`` did in this session."""

    logs: dict[str, list[float]]  # Keras ``History.history``: log key -> one value per epoch
    seconds: float  # wall time of ``fit``, validation included


def run(config, workdir: Path, *, restart: bool = False, cpu_replicas: int = 0) -> dict:
    """Trains per ``config`` into ``workdir``; returns the metrics dict (also in metrics.json)."""
    workdir = Path(workdir)
    if restart and workdir.exists():
        _remove_training_state(workdir)
    if (workdir / DONE_MARKER).is_file():
        return {"status": "already complete"}

    import keras

    from tfmarket.config import save_config
    from tfmarket.distribute import choose_strategy, is_chief, resolve_precision

    strategy = choose_strategy(cpu_replicas)
    chief = is_chief(strategy)
    # Only the chief writes the run directory; other workers of a multi-worker job write their
    # (identical) checkpoints and logs to a temporary folder that is removed at the end.
    out_dir = workdir if chief else Path(tempfile.mkdtemp(prefix="tfmarket-worker-"))
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = RunPaths(run_dir=workdir, out_dir=out_dir, chief=chief)
    precision, reason = resolve_precision(config.train.precision)
    print(f"precision: {precision} ({reason})", flush=True)
    try:
        data = load_training_data(config.data, out_dir)
    except TfmarketError:
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()  # a bad dataset or choice leaves no empty run directory behind
        raise
    print(f"validation: {data.validation} ({data.validation_reason}); training on "
          f"{len(data.identities)} identities, {len(data.records)} images", flush=True)
    print(f"attributes: {describe_schema(data.schema)}", flush=True)
    for extra in data.datasets[1:]:
        print(f"also training on {extra['layout']} at {extra['root']}: {extra['images']} "
              f"images, {extra['identities']} identities (+{extra['pid_offset']}); attributes "
              f"{'trained' if extra['trains_attributes'] else 'ignored (another schema)'}",
              flush=True)
    config = replace(config, train=replace(
        config.train, precision=precision, precision_reason=reason),
        data=replace(config.data, validation=data.validation))
    if chief:
        save_config(config, workdir / "config.yaml")
        save_schema(data.schema, workdir)
    keras.utils.set_random_seed(config.train.seed)

    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        return _train(config, paths, strategy, data, precision)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
        if not chief:
            shutil.rmtree(out_dir, ignore_errors=True)


def _remove_training_state(workdir: Path) -> None:
    """``--restart``: deletes what training wrote (``config.yaml`` is rewritten, the data in
    ``synthetic/`` is kept)."""
    for name in TRAINING_STATE:
        target = workdir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def describe_schema(schema: AttributeSchema) -> str:
    """One line: the schema's name and heads, or that the run is re-ID only."""
    if not schema.heads:
        return f"none ({schema.name} schema: re-identification only, no attribute heads)"
    return (f"{schema.name} schema, {len(schema.heads)} heads over {len(schema.columns)} "
            f"columns")


def save_schema(schema: AttributeSchema, workdir: Path) -> None:
    """Writes the run's attribute schema to ``workdir/schema.json``."""
    (Path(workdir) / SCHEMA_FILE).write_text(json.dumps(schema.to_dict(), indent=2) + "\n")


def run_schema(workdir: Path) -> AttributeSchema:
    """The attribute schema a run directory's model was built with (``schema.json``);
    Market-1501's for runs written before schemas existed."""
    path = Path(workdir) / SCHEMA_FILE
    if not path.is_file():
        return MARKET
    try:
        return AttributeSchema.from_dict(json.loads(path.read_text()))
    except ValueError as exc:
        raise TfmarketError(f"{path}: {exc}") from None


def load_training_data(data_cfg, workdir: Path) -> TrainingData:
    """Reads the dataset (generating a synthetic one in ``workdir/synthetic`` when
    ``data_cfg.root`` is empty), chooses the validation set (``data_cfg.validation``, see
    :func:`tfmarket.data.split.validation_split`) and labels the training identities.

    ``data_cfg.extra_roots`` add further datasets' training images (identities offset by
    :data:`EXTRA_PID_OFFSET` per dataset, so they stay apart). The run's attribute schema is
    ``data_cfg.root``'s; an extra dataset with the same schema trains the attribute heads too,
    one with another schema (or none) trains re-ID only (its attribute targets are -1, which the
    losses ignore). Validation comes from ``data_cfg.root`` alone.
    """
    import numpy as np

    from tfmarket.config import dataset_name
    from tfmarket.data.check import require_readable
    from tfmarket.data.market1501 import concat_records, load_dataset
    from tfmarket.data.split import relabel, resolve_validation, validation_split

    root = data_cfg.root
    if not root:
        from tfmarket.data.synthetic import write_synthetic

        root = workdir / "synthetic"
        if not root.is_dir():
            write_synthetic(root, layout="course", num_train_ids=data_cfg.synth_train_ids,
                            num_test_ids=data_cfg.synth_test_ids,
                            images_per_id=data_cfg.synth_images_per_id, seed=data_cfg.seed)
    dataset = load_dataset(root, dataset_name(data_cfg))
    require_readable(dataset.train.paths)
    validation, reason = resolve_validation(data_cfg.validation, dataset)
    train, val_query, val_gallery = validation_split(dataset, validation, data_cfg.val_ids,
                                                     data_cfg.seed)
    if validation == "official":
        require_readable(val_query.paths + val_gallery.paths)
    schema = dataset.schema
    datasets = [_dataset_entry(dataset, train, 0, schema)]
    parts = [train]
    for n, extra_root in enumerate(data_cfg.extra_roots, 1):
        extra = load_dataset(extra_root, "auto")
        require_readable(extra.train.paths)
        shifted = extra.train.subset(np.arange(len(extra.train)))
        shifted.pids = shifted.pids + n * EXTRA_PID_OFFSET
        parts.append(shifted)
        datasets.append(_dataset_entry(extra, shifted, n * EXTRA_PID_OFFSET, schema))
    if len(parts) > 1:
        for part, entry in zip(parts, datasets, strict=True):
            if len(part) and part.pids.max() - entry["pid_offset"] >= EXTRA_PID_OFFSET:
                raise DataError(
                    f"{entry['root']}: identity numbers reach "
                    f"{part.pids.max() - entry['pid_offset']}; data.extra_roots keeps datasets "
                    f"apart by adding multiples of {EXTRA_PID_OFFSET}, so identities must stay "
                    "below it")
        train = concat_records(parts, schema)
    labels, identities = relabel(train.pids)
    return TrainingData(records=train, labels=labels, identities=identities,
                        targets=attribute_targets(train), val_query=val_query,
                        val_gallery=val_gallery, validation=validation,
                        validation_reason=reason, schema=schema, datasets=tuple(datasets))


def _dataset_entry(dataset, train: Records, offset: int, schema: AttributeSchema) -> dict:
    """What metrics.json records of one dataset a run trains on."""
    import numpy as np

    return {"root": str(dataset.root), "layout": dataset.layout,
            "attribute_schema": dataset.schema.name, "pid_offset": offset,
            "images": len(train), "identities": int(len(np.unique(train.pids))),
            "trains_attributes": bool(schema.heads) and dataset.schema == schema}


def _train(config, paths: RunPaths, strategy, data: TrainingData, precision: str) -> dict:
    """Builds the input, model and callbacks under ``strategy``, trains, saves the model and
    (on the chief) metrics.json; returns the metrics. See :func:`run`."""
    from tfmarket.callbacks import Throughput
    from tfmarket.multiworker import (
        average_non_trainable,
        check_same_resume_epoch,
        is_multi_worker,
        prebuild_for_multi_worker,
        worker_count,
    )
    from tfmarket.resume import backup_epoch, best_logged_map

    data_cfg, train_cfg = config.data, config.train
    replicas = strategy.num_replicas_in_sync
    global_batch = data_cfg.ids_per_batch * data_cfg.images_per_id * replicas
    setup = TrainingSetup(
        replicas=replicas, precision=precision, global_batch=global_batch,
        steps_per_epoch=train_cfg.steps_per_epoch or max(1, len(data.records) // global_batch),
    )
    _require_enough_identities(len(data.identities), data_cfg.ids_per_batch,
                               worker_count(strategy))
    multi_worker = is_multi_worker(strategy)

    # Read from the shared run directory by every worker, so all resume at the same step.
    done_epochs = backup_epoch(paths.backup_dir)
    best_so_far = best_logged_map(paths.run_dir / "history.csv")
    if multi_worker:
        check_same_resume_epoch(strategy, done_epochs, paths.backup_dir)

    dataset_fn = _make_dataset_fn(data, data_cfg, first_step=done_epochs * setup.steps_per_epoch)
    inputs = strategy.distribute_datasets_from_function(dataset_fn)
    model = _compiled_model(config, strategy, len(data.identities), data.targets,
                            setup.steps_per_epoch, schema=data.schema)
    if multi_worker:
        prebuild_for_multi_worker(model, strategy, dataset_fn)

    throughput = Throughput(setup.global_batch)
    validation = _validation_callback(data, data_cfg.height, data_cfg.width,
                                      train_cfg.eval_every, paths.out_dir / "tensorboard")
    if validation is None:
        print("no validation: no best.keras is kept; export uses the final model.keras",
              flush=True)
    callbacks = _callbacks(paths, throughput, validation, best_so_far,
                           train_cfg.early_stopping_patience)
    fit = _fit(model, inputs, callbacks, train_cfg.epochs, setup.steps_per_epoch,
               lost_worker_backup=paths.backup_dir if multi_worker else None)

    if multi_worker:
        average_non_trainable(model, strategy)
    model.save(paths.out_dir / "model.keras")
    metrics = _run_metrics(model, fit, data, setup, throughput, validation)
    if paths.chief:
        (paths.run_dir / DONE_MARKER).write_text(json.dumps(metrics, indent=2, default=float))
    return metrics


def _require_enough_identities(num_identities: int, ids_per_batch: int, workers: int) -> None:
    """Each worker samples its P x K batches from its own share of the identities, so every
    share needs at least ``ids_per_batch`` of them."""
    if num_identities // max(workers, 1) < ids_per_batch:
        raise ConfigError(
            f"data.ids_per_batch = {ids_per_batch} identities per batch, but only "
            f"{num_identities} training identities ({workers} worker(s)); lower it")


def _make_dataset_fn(data: TrainingData, data_cfg, *, first_step: int):
    """The ``dataset_fn`` for ``strategy.distribute_datasets_from_function``.

    It maps a worker's ``tf.distribute.InputContext`` to that worker's endless dataset of
    per-replica batches: (images float32 [B, H, W, 3] in [0, 255], targets per model output,
    see :func:`_model_targets`), B = ids_per_batch * images_per_id. ``first_step`` is the
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
        return ds.map(lambda x, y: (x, _model_targets(y, heads)))

    return dataset_fn


def _compiled_model(config, strategy, num_identities: int, targets: dict[str, np.ndarray],
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
    from tfmarket.model import build_model

    model_cfg = config.model
    return build_model(
        num_identities, height=config.data.height, width=config.data.width,
        backbone=model_cfg.backbone, weights=model_cfg.weights or None,
        last_stride=model_cfg.last_stride, pooling=model_cfg.pooling,
        embedding_dim=model_cfg.embedding_dim, dropout=model_cfg.dropout,
        fused_batchnorm=model_cfg.fused_batchnorm, heads=heads,
        id_head=model_cfg.id_head, id_scale=model_cfg.id_scale,
    )


def _validation_callback(data: TrainingData, height: int, width: int, every: int,
                         log_dir: Path) -> ValidationCallback | None:
    """Validation mAP / Rank-k / attribute mA every ``every`` epochs; None when there is no
    validation split or ``every`` is 0."""
    from tfmarket.evaluation import ValidationCallback

    if len(data.val_query) == 0 or every <= 0:
        return None
    return ValidationCallback(data.val_query, data.val_gallery, height, width, every=every,
                              log_dir=str(log_dir), name=data.validation, schema=data.schema)


def _callbacks(paths: RunPaths, throughput: Throughput, validation: ValidationCallback | None,
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

    from tfmarket.callbacks import (
        EpochProgress,
        LearningRateLogger,
        SharedBackupAndRestore,
        ValidationCheckpoint,
        ValidationEarlyStopping,
    )
    from tfmarket.console import is_verbose

    out_dir = paths.out_dir
    callbacks = [SharedBackupAndRestore(str(paths.backup_dir), writer=paths.chief), throughput]
    if not is_verbose():  # Keras's own epoch line (~40 metrics) when verbose, see _fit
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


def _fit(model, inputs, callbacks: list, epochs: int, steps_per_epoch: int, *,
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
    from tfmarket.multiworker import lost_worker_message

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


def _run_metrics(model, fit: FitResult, data: TrainingData, setup: TrainingSetup,
                 throughput: Throughput, validation: ValidationCallback | None) -> dict:
    """The run's summary: metrics.json and the return value of :func:`run`."""
    return {
        "status": "complete",
        "epochs_run": len(fit.logs.get("loss", [])),
        "train_images": len(data.records),
        "train_identities": int(len(data.identities)),
        "identities": data.identities.tolist(),
        "attribute_schema": data.schema.name,
        "datasets": list(data.datasets),
        "validation_set": data.validation,
        "val_query_images": len(data.val_query),
        "val_gallery_images": len(data.val_gallery),
        "replicas": setup.replicas,
        "precision": setup.precision,
        "global_batch": setup.global_batch,
        "steps_per_epoch": setup.steps_per_epoch,
        "train_seconds_this_session": fit.seconds,
        "images_per_second": throughput.rates,
        "final_train_loss": float(fit.logs["loss"][-1]),
        "weights_sha256": weights_digest(model),
        "validation": validation.last if validation else None,
        "best_val_mAP": max((h["mAP"] for h in validation.history), default=None)
        if validation else None,
    }


def attribute_targets(records, schema: AttributeSchema | None = None):
    """Per-head int32 targets [N] of ``schema``'s heads (default: the records' own schema);
    -1 where the image's identity has no annotation."""
    import numpy as np

    schema = records.schema if schema is None else schema
    targets = {h: np.full(len(records), -1, np.int32) for h in schema.head_sizes}
    if records.schema != schema:
        return targets  # another dataset's attributes: none of these heads is known
    known = records.has_attributes
    if known.any():
        for head, values in schema.columns_to_targets(records.attributes[known]).items():
            targets[head][known] = values
    return targets


def build_losses(config, targets, heads=None):
    """Loss and loss-weight dicts keyed by model output name.

    ``heads``: attribute head -> output width (1 = sigmoid); None = Market-1501's, {} = re-ID
    only (no attribute losses).
    """
    from tfmarket.attributes import HEADS
    from tfmarket.losses import (
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
    from tfmarket.keras_metrics import KnownAccuracy, KnownBinaryAccuracy

    heads = HEADS if heads is None else heads
    metrics = {"id": [KnownAccuracy()]}
    for head, n_classes in heads.items():
        metrics[head] = [KnownBinaryAccuracy() if n_classes == 1 else KnownAccuracy()]
    return metrics


def build_optimizer(train_cfg, steps_per_epoch: int, warmup_steps: int | None = None):
    """``train_cfg``'s optimizer and schedule; ``warmup_steps`` overrides its warm-up epochs."""
    import keras

    from tfmarket.schedules import WarmupSchedule

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
    if train_cfg.optimizer == "adamw":
        return keras.optimizers.AdamW(schedule, weight_decay=train_cfg.weight_decay)
    if train_cfg.optimizer == "adam":
        # Classic Adam with L2 folded into the update, as BoT trains.
        return keras.optimizers.Adam(schedule)
    if train_cfg.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True,
                                    weight_decay=train_cfg.weight_decay)
    raise TfmarketError(f"unknown optimizer {train_cfg.optimizer!r}; valid: adam, adamw, sgd")


def weights_digest(model) -> str:
    """SHA-256 over every weight's bytes: equal on all workers after synchronous training."""
    import hashlib

    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()


def _model_targets(y, heads=None):
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


if __name__ == "__main__":
    sys.exit(main())
