"""The inputs of ``python -m tfmarket.adapt``, checked before anything is written or TensorFlow
loads: the source run, the crop folders, the resolved config and the run directory (new,
interrupted or finished). See ``tfmarket.adapt`` for the method and the run directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tfmarket.errors import ConfigError, DataError

if TYPE_CHECKING:  # annotations only: at run time these would load Keras on --help
    from tfmarket.config import Config
    from tfmarket.training.data import TrainingData

DONE_MARKER = "metrics.json"
STATE_DIR = "adapt"
STATE_FILE = "state.json"
# The source run's settings an adaptation must keep: its weights fit this model, and its
# validation must score the same held-out identities to stay comparable.
LOCKED_KEYS = ("model", "data.height", "data.width", "data.dataset", "data.layout",
               "data.validation", "data.val_ids", "data.seed")
# Settings a resumed run may change: they only shape clusterings still to come (each round
# records the values it clustered with), e.g. after a round found too few clusters.
RETUNABLE_KEYS = {"adapt.eps", "adapt.eps_quantile", "adapt.min_samples", "adapt.k1",
                  "adapt.k2", "adapt.lambda_value", "adapt.max_cluster_size"}


@dataclass(frozen=True)
class Plan:
    """Everything checked before anything is written or TensorFlow is loaded."""

    config: Config  # resolved: the source's config + --config + --set + what adapt records
    source_dir: Path
    source_model: Path  # the .keras file adaptation starts from
    source_note: str  # which model that is and why
    source_images: int | None  # training images the source model saw (None: unknown)
    data: TrainingData  # the labelled training split, as the source run trained on it
    crops: list[str]  # absolute paths of the unlabelled crops, in a fixed order
    transductive_images: int  # how many crops are the source dataset's own test/query images
    workdir: Path
    state: dict | None  # the interrupted run's state, None for a new run
    complete: bool  # the run directory holds a finished adaptation


def prepare(source: str | Path, crops: list[str | Path], workdir: str | Path,
            extra_config: str | None = None, overrides: list[str] | None = None, *,
            with_validation_images: bool = False) -> Plan:
    """Checks the source run, the crops, the config and the run directory; writes nothing.

    ``with_validation_images`` adds the source run's validation query and gallery images
    (its held-out identities, without their labels) to the crops, as the test images would be
    in a transductive adaptation: the validation scores then estimate what adapting to the test
    set does on the test set, which validation on images never clustered cannot show.

    Raises:
        TfmarketError (DataError / ConfigError): one line saying what is wrong.
    """
    from tfmarket.training.data import load_training_data

    workdir = Path(workdir)
    source_dir, model_path, model_note, source_config = _read_source(Path(source))
    config = _resolve_config(source_config, source_dir, extra_config, overrides)
    check_adapt_settings(config.adapt)
    crop_dirs, crop_paths = list_crops(crops)
    minimum = 2 * config.adapt.min_samples
    if len(crop_paths) < minimum:
        raise DataError(
            f"only {len(crop_paths)} crop image(s) in {', '.join(map(str, crop_dirs))}: "
            f"clustering needs at least {minimum} (2 x adapt.min_samples) and, to be useful, "
            "hundreds")
    data = load_training_data(config.data, source_dir)
    if with_validation_images:
        if data.validation != "holdout":
            raise ConfigError(
                f"--with-validation-images needs held-out validation identities; the source "
                f"run has data.validation: {data.validation}")
        seen = set(crop_paths)
        crop_paths = crop_paths + [
            p for p in (str(Path(q).resolve()) for q in data.val_query.paths
                        + data.val_gallery.paths) if p not in seen]
    own = _dataset_eval_images(config.data)
    transductive_images = sum(p in own for p in crop_paths)
    config = replace(config, adapt=replace(
        config.adapt, source=str(source_dir), source_model=model_path.name,
        crops=tuple(str(d) for d in crop_dirs), transductive=transductive_images > 0,
        validation_in_crops=with_validation_images))
    state, complete = _read_run_dir(workdir, config)
    return Plan(config=config, source_dir=source_dir, source_model=model_path,
                source_note=model_note, source_images=source_images_seen(source_dir),
                data=data, crops=crop_paths,
                transductive_images=transductive_images, workdir=workdir, state=state,
                complete=complete)


def _read_source(source: Path):
    """(resolved run dir, model file, note on which model, its Config) of a trained run."""
    import yaml

    from tfmarket.config import from_dict
    from tfmarket.training.rundir import source_model

    if not source.is_dir():
        raise DataError(f"{source}: source run directory not found")
    if not (source / "config.yaml").is_file():
        raise DataError(f"{source}: not a tfmarket run directory (no config.yaml)")
    try:
        config = from_dict(yaml.safe_load((source / "config.yaml").read_text()) or {})
    except yaml.YAMLError as exc:
        raise DataError(f"{source / 'config.yaml'}: not valid YAML ({exc})") from None
    model_path, note = source_model(source, "best", config.data.validation)
    return source.resolve(), model_path.resolve(), note, config


def _resolve_config(source_config, source_dir: Path, extra_config, overrides):
    """The source's resolved config + ``--config`` + ``--set``, with the data root made
    absolute (export and rank of the new run find the same dataset from anywhere)."""
    from tfmarket.config import load_config, to_dict

    config = load_config(extra_config, overrides, base=source_config)
    before, after = _flat(to_dict(source_config)), _flat(to_dict(config))
    for key in before:
        if key.startswith(LOCKED_KEYS) and before[key] != after[key]:
            raise ConfigError(
                f"{key} cannot change in an adaptation ({before[key]!r} in the source run, "
                f"{after[key]!r} asked): the weights fit the source model and validation must "
                "score the source run's held-out identities")
    root = Path(config.data.root) if config.data.root else source_dir / "synthetic"
    root = root.expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"{root}: the source run's dataset folder not found (it holds the "
                        "labelled identities); pass --set data.root=/where/it/is")
    name = config.name if config.name != source_config.name else f"{config.name}_adapt"
    return replace(config, name=name, data=replace(config.data, root=str(root)))


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_adapt_settings(adapt) -> None:
    """ConfigError naming the first ``adapt.*`` value out of range."""
    limit = 1.0 - adapt.lambda_value
    checks = [
        ("rounds", adapt.rounds >= 1, "at least 1"),
        ("epochs_per_round", adapt.epochs_per_round >= 1, "at least 1"),
        ("steps_per_epoch", adapt.steps_per_epoch >= 1, "at least 1"),
        ("learning_rate", adapt.learning_rate > 0, "positive"),
        ("warmup_steps", adapt.warmup_steps >= 0, "0 or more"),
        ("temperature", adapt.temperature > 0, "positive"),
        ("cluster_weight", adapt.cluster_weight > 0, "positive"),
        ("max_cluster_size", adapt.max_cluster_size == 0
         or adapt.max_cluster_size >= adapt.min_samples,
         f"0 (no limit) or at least adapt.min_samples ({adapt.min_samples})"),
        ("labelled_fraction", 0.0 <= adapt.labelled_fraction < 1.0, "in [0, 1)"),
        ("min_samples", adapt.min_samples >= 2, "at least 2"),
        ("k1", adapt.k1 >= 1, "at least 1"),
        ("k2", adapt.k2 >= 1, "at least 1"),
        ("lambda_value", 0.0 <= adapt.lambda_value < 1.0, "in [0, 1)"),
        ("eps_quantile", 0.0 <= adapt.eps_quantile < 1.0, "in [0, 1) (0 = use adapt.eps)"),
        # Pairs that share no k-reciprocal neighbour sit at distance 1 - lambda or more; a
        # radius reaching them would link unrelated crops (and the sparse graph omits them).
        ("eps", adapt.eps_quantile > 0 or 0.0 < adapt.eps < limit,
         f"in (0, {limit:g}), i.e. below 1 - adapt.lambda_value"),
        ("image_budget", adapt.image_budget >= 0, "0 (unchecked) or positive"),
    ]
    for key, ok, what in checks:
        if not ok:
            raise ConfigError(f"adapt.{key} must be {what}, got {getattr(adapt, key)!r}")


def list_crops(folders: list[str | Path]) -> tuple[list[Path], list[str]]:
    """(resolved folders, absolute image paths): every image of each folder, each file once.

    Raises DataError for a missing or empty folder, a stray non-image file (``Thumbs.db`` and
    the like are skipped), or an image that does not decode, naming the file.
    """
    from tfmarket.data.check import require_readable
    from tfmarket.data.filenames import list_images

    dirs, paths, seen = [], [], set()
    for folder in folders:
        folder = Path(folder).expanduser()
        images = list_images(folder)
        dirs.append(folder.resolve())
        for image in images:
            path = str(image.resolve())
            if path not in seen:
                seen.add(path)
                paths.append(path)
    require_readable(paths)
    return dirs, paths


def _dataset_eval_images(data_cfg) -> set[str]:
    """Resolved paths of the source dataset's own query and gallery (test) images."""
    from tfmarket.config import dataset_name
    from tfmarket.data.registry import load_dataset

    dataset = load_dataset(data_cfg.root, dataset_name(data_cfg))
    return {str(Path(p).resolve()) for p in dataset.query.paths + dataset.gallery.paths}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def source_images_seen(run_dir: Path) -> int | None:
    """Training images the run's model saw: distinct epochs x steps x global batch (an adapted
    run's own total, source included). None when the run does not say."""
    import csv

    metrics = _read_json(run_dir / "metrics.json")
    seen = metrics.get("images_seen")
    if isinstance(seen, dict) and seen.get("with_source") is not None:
        return int(seen["with_source"])
    steps, batch = metrics.get("steps_per_epoch"), metrics.get("global_batch")
    if not steps or not batch:
        return None
    epochs = metrics.get("epochs_run") or 0
    history = run_dir / "history.csv"
    if history.is_file():
        # A resumed run's metrics.json counts only its last session's epochs; the history
        # has every epoch (an epoch redone after a kill appears twice, counted once).
        with history.open() as handle:
            epochs = len({row.get("epoch") for row in csv.DictReader(handle)}) or epochs
    return int(epochs) * int(steps) * int(batch)


def _read_run_dir(workdir: Path, config) -> tuple[dict | None, bool]:
    """(state of an interrupted adaptation or None, finished?) for ``workdir``.

    Raises ConfigError when the folder holds something else, or an adaptation with other
    settings (resuming it would mix two runs).
    """
    import yaml

    from tfmarket.config import to_dict

    if not workdir.exists():
        return None, False
    if not workdir.is_dir():
        raise ConfigError(f"{workdir}: exists and is not a folder")
    state_file = workdir / STATE_DIR / STATE_FILE
    entries = {p.name for p in workdir.iterdir()}
    if not state_file.is_file():
        # Only an ``adapt/`` folder: a first round killed before its state was written.
        if entries - {STATE_DIR}:
            raise ConfigError(f"{workdir}: folder exists and is not an interrupted adaptation "
                              f"(holds {', '.join(sorted(entries)[:5])}); choose a new --workdir")
        return None, False
    saved_config = workdir / "config.yaml"
    if saved_config.is_file():
        saved = _flat(yaml.safe_load(saved_config.read_text()) or {})
        wanted = _flat(yaml.safe_load(yaml.safe_dump(to_dict(config))))  # as YAML reads back
        differ = sorted(k for k in wanted if saved.get(k) != wanted[k])
        fixed = [k for k in differ if k not in RETUNABLE_KEYS]
        if fixed:
            raise ConfigError(
                f"{workdir}: holds an adaptation with other settings ({', '.join(fixed[:5])} "
                "differ); rerun the same command to resume it (only the clustering settings "
                f"{', '.join(sorted(RETUNABLE_KEYS))} may change), or choose a new --workdir")
        if differ and not (workdir / DONE_MARKER).is_file():
            print("resuming with other clustering settings for the rounds to come: "
                  + ", ".join(f"{k} {saved.get(k)} -> {wanted[k]}" for k in differ), flush=True)
    return json.loads(state_file.read_text()), (workdir / DONE_MARKER).is_file()
