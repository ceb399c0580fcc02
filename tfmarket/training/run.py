"""One training run, as ``python -m tfmarket.train`` starts it: the strategy and precision, the
data, the compiled model, the fit loop, then ``model.keras`` and ``metrics.json``.

Resume: calling :func:`run` again on the same run directory continues from the last finished
epoch (Keras ``BackupAndRestore`` in ``WORKDIR/backup``, written at every epoch end, survives
``kill -9``). A finished run is not retrained (``{"status": "already complete"}``);
``restart=True`` wipes the run directory's training state and starts again. What the run
directory holds: :mod:`tfmarket.training.rundir`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tfmarket.errors import ConfigError, TfmarketError
from tfmarket.training.build import compiled_model
from tfmarket.training.data import TrainingData, load_training_data
from tfmarket.training.fit import (
    FitResult,
    build_callbacks,
    fit_model,
    make_dataset_fn,
    validation_callback,
    weights_digest,
)
from tfmarket.training.rundir import (
    DONE_MARKER,
    RunPaths,
    describe_schema,
    remove_training_state,
    save_schema,
)

if TYPE_CHECKING:  # annotations only
    from tfmarket.training.callbacks import Throughput
    from tfmarket.training.evaluation import ValidationCallback


@dataclass(frozen=True)
class TrainingSetup:
    """How the steps are run; reported in metrics.json under these names."""

    replicas: int  # replicas in sync over all workers
    precision: str  # Keras mixed-precision policy, e.g. "float32"
    global_batch: int  # images per step over all replicas
    steps_per_epoch: int


def run(config, workdir: Path, *, restart: bool = False, cpu_replicas: int = 0) -> dict:
    """Trains per ``config`` into ``workdir``; returns the metrics dict (also in metrics.json)."""
    workdir = Path(workdir)
    if restart and workdir.exists():
        remove_training_state(workdir)
    if (workdir / DONE_MARKER).is_file():
        return {"status": "already complete"}

    import keras

    from tfmarket.config import save_config
    from tfmarket.training.distribute import choose_strategy, is_chief, resolve_precision

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


def _train(config, paths: RunPaths, strategy, data: TrainingData, precision: str) -> dict:
    """Builds the input, model and callbacks under ``strategy``, trains, saves the model and
    (on the chief) metrics.json; returns the metrics. See :func:`run`."""
    from tfmarket.training.callbacks import Throughput
    from tfmarket.training.distribute import distribute_inputs
    from tfmarket.training.multiworker import (
        average_non_trainable,
        check_same_resume_epoch,
        is_multi_worker,
        prebuild_for_multi_worker,
        worker_count,
    )
    from tfmarket.training.resume import backup_epoch, best_logged_map

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

    dataset_fn = make_dataset_fn(data, data_cfg, first_step=done_epochs * setup.steps_per_epoch)
    inputs = distribute_inputs(strategy, dataset_fn)
    model = compiled_model(config, strategy, len(data.identities), data.targets,
                           setup.steps_per_epoch, schema=data.schema)
    if multi_worker:
        prebuild_for_multi_worker(model, strategy, dataset_fn)

    throughput = Throughput(setup.global_batch)
    validation = validation_callback(data, data_cfg.height, data_cfg.width,
                                     train_cfg.eval_every, paths.out_dir / "tensorboard")
    if validation is None:
        print("no validation: no best.keras is kept; export uses the final model.keras",
              flush=True)
    callbacks = build_callbacks(paths, throughput, validation, best_so_far,
                                train_cfg.early_stopping_patience)
    fit = fit_model(model, inputs, callbacks, train_cfg.epochs, setup.steps_per_epoch,
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
