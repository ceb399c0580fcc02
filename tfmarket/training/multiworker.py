"""Training under ``tf.distribute.MultiWorkerMirroredStrategy``: the workarounds it needs.

Imported by the training code only (it imports TensorFlow), never by ``import tfmarket`` or a
CLI's ``--help``. Each helper exists for one reason:

* :func:`prebuild_for_multi_worker` -- Keras 3's ``fit`` builds a model from a first batch that
  it averages across replicas with ``strategy.reduce``, which fails eagerly under
  MultiWorkerMirroredStrategy (keras-team/keras#20585). The model is built from the input's
  TensorSpecs before ``fit`` instead, which leaves nothing for that step to do.
* :func:`_patch_scalar_reduction` (installed by :func:`prebuild_for_multi_worker`) -- Keras
  3.15's per-step log reduction averages every value along axis 0, which fails for the scalar
  losses and metrics it reduces (keras-team/keras#20585); scalars are averaged with
  ``axis=None`` instead. ``tests/test_multiworker.py`` guards both workarounds.
* :func:`check_same_resume_epoch` -- workers that would resume from different epochs (a run
  directory that is not on shared storage) would train different numbers of steps and hang or
  diverge; all of them stop with one clear line instead.
* :func:`average_non_trainable` -- gradients are all-reduced, but each worker updates its
  BatchNorm moving statistics from its own batches; averaging them after training makes every
  worker end with the same model.
* :func:`lost_worker_message` -- a worker that dies aborts the others' collective ops with a
  long TensorFlow error; the job ends with one line naming it and the epoch to resume from.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf

from tfmarket.errors import TfmarketError
from tfmarket.training.resume import backup_epoch


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True for a MultiWorkerMirroredStrategy (a TF_CONFIG cluster), which needs the helpers
    of this module."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """Worker processes of the job (input pipelines); 1 for a single-host strategy."""
    return strategy.extended._num_workers if hasattr(strategy.extended, "_num_workers") else 1


def prebuild_for_multi_worker(
    model, strategy: tf.distribute.Strategy,
    dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset],
) -> None:
    """Builds the compiled model from the input's TensorSpecs before ``fit``.

    ``dataset_fn`` is the function given to ``distribute_datasets_from_function``; its element
    spec (images [B, H, W, 3], targets per output [B] or [B, 1]) is what the model is built
    from. Keras 3's ``fit`` otherwise builds it from a first batch that it averages across
    replicas with ``strategy.reduce``, which fails eagerly under MultiWorkerMirroredStrategy
    (keras-team/keras#20585). Building here leaves nothing for that step to do, so it is
    skipped for this model; ``tests/test_multiworker.py`` guards the workaround.
    """
    context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                         num_replicas_in_sync=1)
    spec = dataset_fn(context).element_spec
    with strategy.scope():
        model._symbolic_build(data_batch=spec)
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    _patch_scalar_reduction()


def check_same_resume_epoch(
    strategy: tf.distribute.Strategy, done_epochs: int, backup_dir: Path
) -> None:
    """Stops every worker, with one clear line, unless all resume from the same epoch.

    Workers that disagree (a run directory that is not on shared storage, so only the chief
    sees its backup) would otherwise train different numbers of steps and hang or diverge.
    All workers compute the same spread of the epochs, so all of them stop together.
    """
    # Mean and mean square of the epochs over workers: their variance is 0 only if all agree.
    local = strategy.experimental_distribute_values_from_function(
        lambda _context: tf.constant([done_epochs, done_epochs**2], tf.float32))
    mean, mean_square = strategy.reduce("MEAN", local, axis=None).numpy()
    if mean_square - mean**2 > 1e-3:
        raise TfmarketError(
            f"the workers would resume from different epochs (this worker: {done_epochs}, "
            f"mean over workers: {mean:g}); every worker must read the chief's backup in "
            f"{backup_dir}: put the run directory on storage all workers share")


def average_non_trainable(model, strategy: tf.distribute.Strategy) -> None:
    """Averages BatchNorm moving statistics across workers after training.

    Gradients are all-reduced, but each worker updates its moving mean/variance from its own
    batches; averaging them makes every worker end with the same model (the chief saves it).
    """
    for variable in model.non_trainable_weights:
        local = strategy.experimental_distribute_values_from_function(
            lambda _context, v=variable: tf.identity(v.value))
        variable.assign(strategy.reduce("MEAN", local, axis=None))


def lost_worker_message(error: str, backup_dir: Path) -> str:
    """One clear line for a multi-worker job whose collective ops were aborted.

    ``error`` is the TensorFlow error message, which lists the unhealthy tasks one per line.
    """
    lost = sorted(set(re.findall(r"^(/job:\S+)", error, re.MULTILINE)))
    who = f"worker {', '.join(lost)} stopped responding" if lost else "a worker stopped"
    return (f"{who}, so the multi-worker job stopped; restart every worker with the same "
            f"command to resume from the last backup (epoch {backup_epoch(backup_dir)}, "
            f"in {backup_dir})")


def _patch_scalar_reduction() -> None:
    """Keras 3.15's per-step log reduction under MultiWorkerMirroredStrategy averages every
    value along axis 0, which fails for the scalar losses and metrics it reduces
    (keras-team/keras#20585). Scalars are averaged with ``axis=None`` instead; everything else
    goes through Keras's own code."""
    from keras import tree
    from keras.src.backend.tensorflow import trainer as tf_trainer

    # Wrap Keras's own function even if an earlier call already installed the patch.
    original = getattr(tf_trainer.reduce_per_replica, "__wrapped__", tf_trainer.reduce_per_replica)

    def reduce_per_replica(values, strategy, reduction):
        if is_multi_worker(strategy) and reduction in ("auto", "mean"):
            def reduce(value):
                rank = value.shape.rank if hasattr(value, "shape") else None
                if rank == 0 or _per_replica_rank(value, strategy) == 0:
                    return strategy.reduce("MEAN", value, axis=None)
                return original(value, strategy, reduction)

            return tree.map_structure(reduce, values)
        return original(values, strategy, reduction)

    reduce_per_replica.__wrapped__ = original
    tf_trainer.reduce_per_replica = reduce_per_replica


def _per_replica_rank(value, strategy: tf.distribute.Strategy) -> int | None:
    """Rank of the replicas' local values of ``value`` (None if this worker holds none)."""
    local = strategy.experimental_local_results(value)
    return local[0].shape.rank if local else None
