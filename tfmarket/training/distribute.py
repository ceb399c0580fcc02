"""Choosing the tf.distribute strategy and the precision policy from the machine."""

from __future__ import annotations

import json
import os

import tensorflow as tf

from tfmarket.hardware import choose_precision, cpu_flags


def configure_cpu_replicas(count: int) -> None:
    """Splits the CPU into ``count`` logical devices (tests of multi-replica code paths).

    Must run before TensorFlow initialises its devices.
    """
    if count <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current and len(current) == count:
        return
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def choose_strategy(cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """MultiWorkerMirrored when TF_CONFIG names a cluster, Mirrored over several local GPUs
    (or ``cpu_replicas`` logical CPUs), OneDevice on a single GPU, else Mirrored over the one
    CPU, whose input :func:`distribute_inputs` feeds without a ``MultiDeviceIterator``.

    Why not ``OneDeviceStrategy("/cpu:0")``: it always feeds ``fit`` through a
    ``MultiDeviceIterator`` (a generator dataset per device), whose teardown held up the end
    of every ``fit`` by up to a minute, and whose generator op resets glibc's trim threshold.
    TensorFlow's default strategy avoids that but traced the first step ~12 s slower and held
    ~0.25 GB more during training (benchmarks/README.md, "Fixed: up to a minute lost as fit
    returns").
    """
    if os.environ.get("TF_CONFIG") and json.loads(os.environ["TF_CONFIG"]).get("cluster"):
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas > 1:
        configure_cpu_replicas(cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")][:cpu_replicas]
        return tf.distribute.MirroredStrategy(devices)
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy()
    if gpus:
        return tf.distribute.OneDeviceStrategy("/gpu:0")
    return tf.distribute.MirroredStrategy(["/cpu:0"])


def is_one_cpu(strategy: tf.distribute.Strategy) -> bool:
    """True for the strategy :func:`choose_strategy` picks on a machine with one CPU replica
    and no GPU."""
    devices = getattr(strategy.extended, "worker_devices", ())
    return (isinstance(strategy, tf.distribute.MirroredStrategy) and len(devices) == 1
            and "CPU" in devices[0].upper())


def distribute_inputs(strategy: tf.distribute.Strategy, dataset_fn):
    """``strategy.distribute_datasets_from_function(dataset_fn)``; on one CPU, per replica and
    not fetched to a device, so ``fit`` iterates the dataset with a plain iterator (no
    ``MultiDeviceIterator``: nothing to copy, and its teardown is what stalled ``fit``)."""
    options = None
    if is_one_cpu(strategy):
        options = tf.distribute.InputOptions(
            experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA,
            experimental_fetch_to_device=False)
    return strategy.distribute_datasets_from_function(dataset_fn, options)


def resolve_precision(precision: str) -> tuple[str, str]:
    """(Keras policy, reason) for ``train.precision`` on this machine; see
    :func:`tfmarket.hardware.choose_precision`."""
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        capability = tf.config.experimental.get_device_details(gpu).get("compute_capability")
        capabilities.append(tuple(capability) if capability else (0, 0))
    return choose_precision(precision, capabilities, cpu_flags())


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints, logs and the final model."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )
