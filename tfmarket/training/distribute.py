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
    (or ``cpu_replicas`` logical CPUs), OneDevice on a single GPU, else TensorFlow's default
    strategy.

    Why the default strategy on one CPU rather than ``OneDeviceStrategy("/cpu:0")``: the latter
    feeds ``fit`` through a ``MultiDeviceIterator`` (a generator dataset per device) whose
    teardown waited up to a minute at the end of every ``fit`` call, and whose generator op
    resets glibc's trim threshold; with nothing to copy to a device it buys nothing. The
    default strategy iterates the dataset itself.
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
    return tf.distribute.get_strategy()


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
