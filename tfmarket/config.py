"""The typed experiment config: defaults -> YAML file(s) -> ``--set key=value`` overrides.

Only the CLI layer reads this object; library functions take plain arguments.
A YAML file may inherit another with ``_base_: other.yaml`` (resolved relative to the file).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from tfmarket.errors import ConfigError
from tfmarket.hardware import PRECISIONS


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how batches are built."""

    root: str = ""  # dataset folder; "" = generate synthetic data into <workdir>/synthetic
    # The dataset in root (docs/datasets.md): auto (detected) | market1501 | course |
    # dukemtmcreid | msmt17 | cuhk03 (= cuhk03-labeled) | cuhk03-detected | custom.
    # data.layout is the older name of the same setting; set one of them (dataset_name()).
    dataset: str = "auto"
    layout: str = "auto"
    # More datasets whose training images join root's (any layout, detected): identities are
    # kept apart (offset by 100000 per dataset), and they train the attribute heads only when
    # their attribute schema is root's (else re-ID only). Validation uses root alone.
    extra_roots: tuple[str, ...] = ()
    height: int = 128
    width: int = 64
    ids_per_batch: int = 8  # P of the P x K batches
    images_per_id: int = 4  # K
    # What validation scores: holdout (identities held out of training, data.val_ids), official
    # (the dataset's own labelled query/gallery; every training identity trains), none, or auto
    # (official where the layout has a labelled query/gallery, else holdout). Training writes
    # the resolved choice into the run's config.yaml.
    validation: str = "auto"
    val_ids: int = 0  # holdout: identities held out (0 = 10% of training identities)
    flip: bool = True
    pad: int = 10  # pad-and-random-crop margin, pixels
    erase_prob: float = 0.5  # random erasing probability
    synth_train_ids: int = 60  # used when root == ""
    synth_test_ids: int = 30
    synth_images_per_id: int = 8
    cache: bool = True  # cache decoded images in memory (fine for Market-1501 sizes)
    seed: int = 0


def dataset_name(data_cfg) -> str:
    """The dataset ``data`` names: ``data.dataset``, else its older name ``data.layout``.

    Raises ConfigError when both are set and disagree.
    """
    dataset, layout = data_cfg.dataset, data_cfg.layout
    if dataset != "auto" and layout != "auto" and dataset != layout:
        raise ConfigError(f"data.dataset is {dataset!r} but data.layout is {layout!r}: they "
                          "are the same setting (layout is its older name); set one")
    return dataset if dataset != "auto" else layout


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    backbone: str = "resnet50"  # resnet50 | tiny
    weights: str = "none"  # imagenet | none | path to a .weights.h5 / .keras file
    last_stride: int = 1  # 1 = BoT's last-stride trick (higher-resolution final map)
    pooling: str = "avg"  # avg | gem
    embedding_dim: int = 0  # 0 = backbone width (2048 for ResNet50)
    dropout: float = 0.0
    # BN layers train with TensorFlow's fused kernel: same results, faster (issue 12)
    fused_batchnorm: bool = True
    # Convolutions compute their kernel gradient by matmuls where that is faster on a CPU
    # (3x3 from 256 channels in bfloat16, stage 5's 1x1 in float32): same results (issue 25)
    tap_gradient: bool = True
    # ID classifier: linear (BoT) | cosine (normalised weights and feature, logits
    # id_scale x cosine: the head CosFace / ArcFace margins act on; see loss.id_margin)
    id_head: str = "linear"
    id_scale: float = 30.0


@dataclasses.dataclass(frozen=True)
class LossConfig:
    id_weight: float = 1.0
    triplet_weight: float = 1.0
    attribute_weight: float = 1.0
    margin: float = 0.3
    soft_margin: bool = False
    label_smoothing: float = 0.1
    # CosFace additive cosine margin on the target class (model.id_head: cosine): the target
    # logit becomes id_scale x (cos - id_margin). 0 = plain softmax.
    id_margin: float = 0.0
    balance_attributes: bool = True  # class-balanced weights for the attribute losses


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 60
    steps_per_epoch: int = 0  # 0 = number of training images / batch size
    optimizer: str = "adamw"  # adam | adamw | sgd
    # One fused TensorFlow kernel per variable's update (tfmarket.model.optimizers): same
    # math as Keras's optimizer, fewer passes over the weights (issue 25)
    fused_optimizer: bool = True
    learning_rate: float = 3.5e-4
    weight_decay: float = 5e-4
    warmup_epochs: int = 10
    schedule: str = "step"  # step | cosine | constant
    decay_epochs: tuple[int, ...] = (40, 70)  # step schedule milestones
    decay_factor: float = 0.1
    precision: str = "auto"  # auto | float32 | mixed_float16 | mixed_bfloat16
    # Written by training into the run's config.yaml: why this precision (what "auto" chose).
    precision_reason: str = ""
    jit_compile: bool = False
    eval_every: int = 1  # validation mAP every N epochs (0 = never)
    early_stopping_patience: int = 0  # 0 = off
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    onnx: bool = False  # also written with --onnx
    litert: bool = False  # model.tflite (LiteRT), also written with --litert
    opset: int = 17
    parity_tolerance: float = 1e-4
    quantize_int8: bool = False


@dataclasses.dataclass(frozen=True)
class AdaptConfig:
    """``python -m tfmarket.adapt``: rounds of clustering the unlabelled crops of a new camera
    network into pseudo-identities and fine-tuning on them beside the labelled identities."""

    rounds: int = 4
    epochs_per_round: int = 2
    steps_per_epoch: int = 100  # fixed, so the images a run will see are known before it starts
    learning_rate: float = 3.5e-4  # constant within a round, after the warm-up
    # Each round starts a fresh optimizer (its pseudo-identities are new): Adam's first steps
    # move every weight by about the learning rate whatever its gradient, so they ramp up
    # linearly from 1% over this many steps.
    warmup_steps: int = 20
    # Pseudo-identity loss: softmax over cosine similarity to per-cluster prototypes (started at
    # the cluster means) / temperature (Cluster Contrast: 0.05), this weight beside the source
    # run's ID loss (labelled images), triplet loss (both) and attribute losses (labelled).
    temperature: float = 0.05
    cluster_weight: float = 1.0
    # Clusters with more crops than this become outliers (0 = keep all): a cluster far larger
    # than one person's images has merged several people.
    max_cluster_size: int = 0
    # Share of a batch's P identities drawn from the source run's labelled training identities
    # (the rest are cluster identities); 0 = clusters only.
    labelled_fraction: float = 0.5
    # DBSCAN on the k-reciprocal distance: radius and core size (SpCL / Cluster Contrast: 0.6, 4).
    eps: float = 0.6
    # > 0: eps is recomputed each round as the mean of this smallest fraction of all pairwise
    # distances (SSG / MMT use 1.6e-3 on Market-1501), instead of the fixed eps above.
    eps_quantile: float = 0.0
    min_samples: int = 4
    k1: int = 30  # k-reciprocal neighbourhood (SpCL / Cluster Contrast cluster with 30, 6)
    k2: int = 6  # local query expansion
    lambda_value: float = 0.0  # weight of the original distance; 0 = Jaccard distance only
    image_budget: int = 0  # training images allowed, source run + adaptation; 0 = unchecked
    # Written by adapt into the run's config.yaml: where the run came from.
    source: str = ""  # the source run directory
    source_model: str = ""  # the source run's model it started from (best.keras / model.keras)
    crops: tuple[str, ...] = ()  # the folders of unlabelled crops
    # The crops include the source dataset's own test/query images: results on them are
    # transductive (the model has seen those images, without labels, while adapting).
    transductive: bool = False
    # The source run's validation images were among the crops (adapt --with-validation-images):
    # its validation scores are then the transductive proxy, not an inductive estimate.
    validation_in_crops: bool = False


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything one run needs; written as ``config.yaml`` into each run directory."""

    name: str = "default"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()
    adapt: AdaptConfig = AdaptConfig()


# data.dataset / data.layout: "auto" or a dataset name (= tfmarket.data.registry.LAYOUTS,
# spelled out so that loading a config imports no dataset code).
DATASETS = ("auto", "market1501", "course", "dukemtmcreid", "msmt17", "cuhk03", "cuhk03-labeled",
            "cuhk03-detected", "custom")
# Allowed values of the string options, checked when a config is loaded.
CHOICES = {
    "data.dataset": DATASETS,
    "data.layout": DATASETS,
    "data.validation": ("auto", "holdout", "official", "none"),
    "model.backbone": ("resnet50", "tiny"),
    "model.pooling": ("avg", "gem"),
    "model.id_head": ("linear", "cosine"),
    "train.optimizer": ("adam", "adamw", "sgd"),
    "train.schedule": ("step", "cosine", "constant"),
    "train.precision": PRECISIONS,
}


def _section_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Checks/converts one leaf value against its annotation (YAML or command-line text)."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        if isinstance(value, str):
            value = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, item_type, key) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        try:
            if isinstance(value, str) or float(value) == int(value):
                return int(value)
        except (TypeError, ValueError):
            pass
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if annotation is str:
        if value is None:
            return ""
        return str(value)
    if isinstance(annotation, types.UnionType):  # pragma: no cover - not used yet
        return value
    return value


def _merge(config: Any, updates: dict, prefix: str = "") -> Any:
    """Returns ``config`` with ``updates`` (a nested dict) applied, type-checked."""
    hints = _section_types(type(config))
    changes = {}
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in hints:
            valid = ", ".join(f"{prefix}{k}" for k in hints)
            raise ConfigError(f"unknown config key {full!r}; valid keys: {valid}")
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"{full}: expected a mapping of {type(current).__name__} keys")
            changes[key] = _merge(current, value, f"{full}.")
        else:
            changes[key] = _coerce(value, hints[key], full)
            if full in CHOICES and changes[key] not in CHOICES[full]:
                raise ConfigError(
                    f"{full}: {changes[key]!r} is not one of {', '.join(CHOICES[full])}"
                )
    return dataclasses.replace(config, **changes)


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: _base_ inheritance loops")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = raw.pop("_base_", None)
    if base is None:
        return raw
    merged = _read_yaml(path.parent / base, seen + (path,))
    return _deep_update(merged, raw)


def _deep_update(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_update(out[key], value)
        else:
            out[key] = value
    return out


def parse_overrides(overrides: list[str] | None) -> dict:
    """``["train.epochs=2", "data.root=/x"]`` -> nested dict with YAML-parsed values."""
    nested: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, text = item.split("=", 1)
        value = yaml.safe_load(text) if text else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: Config | None = None) -> Config:
    """Defaults (or ``base``, e.g. a run's resolved config), then the YAML file (with its
    ``_base_`` chain), then ``key=value`` overrides."""
    config = Config() if base is None else base
    if path:
        config = _merge(config, _read_yaml(Path(path)))
    return _merge(config, parse_overrides(overrides))


def to_dict(config: Config) -> dict:
    def convert(value):
        if isinstance(value, tuple):
            return [convert(v) for v in value]
        return value

    return {
        k: ({kk: convert(vv) for kk, vv in v.items()} if isinstance(v, dict) else convert(v))
        for k, v in dataclasses.asdict(config).items()
    }


def to_yaml(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


def from_dict(raw: dict) -> Config:
    return _merge(Config(), raw)


def save_config(config: Config, path: str | Path) -> None:
    Path(path).write_text(to_yaml(config))
