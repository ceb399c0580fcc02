"""Shared fixtures: tiny datasets written as real files, two logical CPU devices."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# As every command does, before TensorFlow is imported: glibc malloc tuned (the training tests
# otherwise spend much of their time re-faulting freed memory) and oneDNN on where TensorFlow
# would leave it off.
from tfmarket.console import quiet_tensorflow  # noqa: E402

quiet_tensorflow()

REAL_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
COURSE = REAL_DATA / "market1501-course"
MINI = REAL_DATA / "mini_market1501"
ATTRIBUTE_MAT = REAL_DATA / "market_attribute.mat"


def _two_logical_cpus():
    # Must happen before TensorFlow touches its devices, hence at conftest import.
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:
        pass


_two_logical_cpus()


def needs(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"real data not available: {path}")


def write_jpeg(path: Path, rgb=(120, 60, 30), size=(64, 128), mode="RGB", fmt="JPEG"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, rgb)
    noise = np.random.default_rng(zlib.crc32(path.name.encode())).integers(
        0, 40, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path, format=fmt)
    return path


@pytest.fixture(scope="session")
def course_synth(tmp_path_factory) -> Path:
    """A small synthetic dataset in the course layout (real JPEG files)."""
    from tfmarket.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("synth") / "course"
    write_synthetic(root, layout="course", num_train_ids=16, num_test_ids=8, images_per_id=6,
                    seed=3)
    return root


@pytest.fixture(scope="session")
def market_synth(tmp_path_factory) -> Path:
    """A small synthetic dataset in the original Market-1501 layout."""
    from tfmarket.data.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("synth") / "market"
    write_synthetic(root, layout="market1501", num_train_ids=12, num_test_ids=8,
                    images_per_id=6, seed=4)
    return root


@pytest.fixture(scope="session")
def exported(tmp_path_factory, course_synth):
    """A one-epoch smoke model exported to SavedModel + ONNX (+ int8): (folder, card, config)."""
    from tfmarket.config import load_config
    from tfmarket.serving.export import export_run
    from tfmarket.training.run import run as train_run

    root = tmp_path_factory.mktemp("export")
    workdir = root / "run"
    config = load_config(Path(__file__).parents[1] / "configs" / "smoke.yaml",
                         [f"data.root={course_synth}", "train.epochs=1"])
    train_run(config, workdir)
    card = export_run(workdir, root / "exp", onnx=True, int8=True, parity_images=8)
    return root / "exp", card, config
