"""``python -m tfmarket.adapt``: adapt a trained run to unlabelled crops of a new camera network.

    python -m tfmarket.adapt --source runs/NAME --crops FOLDER [FOLDER ...] --workdir runs/NEW
        [--config configs/adapt_course_cpu.yaml] [--set adapt.rounds=4 ...] [--json]

Clustering-based unsupervised domain adaptation (as SpCL / Cluster Contrast), in rounds:

1. embed every crop with the current model (the shared ``tfmarket.preprocess`` path, batched);
2. k-reciprocal distances among the crops (``tfmarket.rerank.k_reciprocal_neighbours``;
   Jaccard distance by default, ``adapt.k1``, ``adapt.k2``, ``adapt.lambda_value``);
3. DBSCAN on them (``tfmarket.cluster.dbscan``, ``adapt.eps`` or ``adapt.eps_quantile``,
   ``adapt.min_samples``); outliers, and clusters over ``adapt.max_cluster_size`` crops, are
   dropped; each cluster becomes a pseudo-identity;
4. fine-tune for ``adapt.epochs_per_round`` x ``adapt.steps_per_epoch`` steps on P x K batches
   holding ``adapt.labelled_fraction`` of the P identities from the source run's labelled
   training split (the same holdout split, so its validation stays comparable) and the rest
   from the clusters, with a fresh optimizer warmed up over ``adapt.warmup_steps``. Labelled
   images keep the source run's losses (its ID classifier, unchanged in shape; triplet;
   attributes). Pseudo-labelled images get the triplet loss (identities numbered after the
   labelled ones) and a cluster loss: softmax over cosine similarity to one prototype per
   cluster (``tfmarket.layers.ClusterPrototypes``, started at the cluster's mean embedding,
   ``adapt.temperature``, weight ``adapt.cluster_weight``), the prototype form of Cluster
   Contrast's memory. The saved models keep the source architecture, plus (``best.keras``)
   that "cluster" output, which export and evaluation ignore.

The settings are the source run's resolved config.yaml, then ``--config``, then ``--set``; the
model and the validation split cannot change. ``adapt.image_budget`` refuses a plan whose
training images (source run + adaptation, steps x global batch) exceed it.

Run directory (what ``tfmarket.export`` and ``tfmarket.rank`` take): ``config.yaml`` (resolved,
with the ``adapt`` section naming the source run, the crop folders and ``transductive``),
``model.keras`` (final), ``best.keras`` (best validation mAP of the adapted epochs),
``history.csv``, ``metrics.json`` (per round: clusters, outliers, validation, ``images_seen``),
``tensorboard/`` (``adapt/``: cluster count, outliers, clustered fraction, mean/max cluster size,
a histogram of cluster sizes and validation per round; ``train/``, ``validation/`` per epoch),
``adapt/`` (resume state, the crop list and each round's pseudo-labels).

Transductive: when the crops include the source dataset's own test/query images, results on
those images are transductive (the model saw them, unlabelled, while adapting); the run says so
and records ``adapt.transductive: true``.

Resume: rerunning the same command continues an interrupted run: finished rounds are kept, and
a round interrupted while training continues from its last finished epoch with the same
pseudo-labels (``backup/``). Only the clustering settings (``adapt.eps``, ``eps_quantile``,
``min_samples``, ``k1``, ``k2``, ``lambda_value``) may change on resume, e.g. after a later
round found too few clusters. A finished run is not adapted again.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from tfmarket.errors import ConfigError, DataError, TfmarketError

if TYPE_CHECKING:  # annotations only: at run time these would load Keras on --help

    from tfmarket.config import Config
    from tfmarket.train import TrainingData

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tfmarket.adapt", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, help="run directory of a trained model")
    parser.add_argument("--crops", required=True, nargs="+", metavar="FOLDER",
                        help="folders of unlabelled person crops from the new cameras")
    parser.add_argument("--workdir", required=True, help="new run directory")
    parser.add_argument("--with-validation-images", action="store_true",
                        help="add the source run's validation images (held-out identities), "
                             "unlabelled, to the crops: validation then measures what adapting "
                             "to a test set does for that test set (the transductive proxy)")
    parser.add_argument("--config", help="YAML applied on top of the source run's config "
                        "(e.g. configs/adapt_course_cpu.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, e.g. adapt.rounds=2")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's log lines, every warning and Keras's epoch line")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tfmarket.console import import_tensorflow_quietly, print_result, quiet_tensorflow

    quiet_tensorflow(args.verbose)  # before TensorFlow is imported
    try:
        from tfmarket.versions import check_runtime

        check_runtime()
        # Every check of the inputs runs before TensorFlow loads: a mistake costs a second.
        plan = prepare(args.source, args.crops, args.workdir, args.config, args.overrides,
                       with_validation_images=args.with_validation_images)
        if plan.complete:
            print(f"{args.workdir}: adaptation already complete (see {DONE_MARKER})")
            return 0
        import_tensorflow_quietly(args.verbose)
        result = run(plan)
    except TfmarketError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    seen = result["images_seen"]
    summary = {
        "workdir": str(args.workdir), "transductive": result["transductive"],
        "rounds": len(result["rounds"]),
        "clusters": [r["clusters"] for r in result["rounds"]],
        "images_seen": seen["total"], "images_seen_with_source": seen["with_source"],
        "source_val_mAP": (result["source_validation"] or {}).get("mAP"),
        "val_mAP": [r.get("val_mAP") for r in result["rounds"]],
        "best_val_mAP": result["best_val_mAP"],
    }
    print_result(result if args.json else summary, f"adapted {args.source} -> {args.workdir}",
                 args.json)
    return 0


# --- inputs (no TensorFlow) --------------------------------------------------------------------


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
    from tfmarket.train import load_training_data

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
    from tfmarket.export import _source_model

    if not source.is_dir():
        raise DataError(f"{source}: source run directory not found")
    if not (source / "config.yaml").is_file():
        raise DataError(f"{source}: not a tfmarket run directory (no config.yaml)")
    try:
        config = from_dict(yaml.safe_load((source / "config.yaml").read_text()) or {})
    except yaml.YAMLError as exc:
        raise DataError(f"{source / 'config.yaml'}: not valid YAML ({exc})") from None
    model_path, note = _source_model(source, "best", config.data.validation)
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
    from tfmarket.data.market1501 import load_dataset

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


# --- the rounds (TensorFlow) -------------------------------------------------------------------


@dataclass(frozen=True)
class Batches:
    """How one round's P x K batches are made (per replica), and what a step costs."""

    labelled_ids: int  # identities per replica batch from the labelled training split
    cluster_ids: int  # identities per replica batch from the clusters
    images_per_id: int  # K
    replicas: int

    @property
    def global_batch(self) -> int:
        return (self.labelled_ids + self.cluster_ids) * self.images_per_id * self.replicas


def run(plan: Plan) -> dict:
    """Adapts per ``plan`` (see :func:`prepare`) into ``plan.workdir``; returns metrics.json."""
    if plan.complete:
        return {"status": "already complete"}
    import keras

    from tfmarket.distribute import choose_strategy, resolve_precision
    from tfmarket.multiworker import is_multi_worker

    strategy = choose_strategy(0)
    if is_multi_worker(strategy):
        raise ConfigError("adapt runs on one host (TF_CONFIG names a multi-worker cluster)")
    config = plan.config
    _check_budget(config, plan.source_images, strategy.num_replicas_in_sync)
    precision, reason = resolve_precision(config.train.precision)
    keras.utils.set_random_seed(config.train.seed)
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(precision)
    try:
        print(f"precision: {precision} ({reason})", flush=True)
        with _retracing_warnings_ignored():
            return _Adaptation(plan, strategy, precision).run()
    finally:
        keras.mixed_precision.set_global_policy(previous)


@contextlib.contextmanager
def _retracing_warnings_ignored():
    """Drops TensorFlow's "triggered tf.function retracing" warning (unless verbose).

    Each round predicts with a new model on sets of different sizes (crops, validation query
    and gallery), so TensorFlow traces new functions on purpose and warns that it does.
    """
    import logging

    from tfmarket.console import is_verbose

    class Retracing(logging.Filter):
        def filter(self, record):
            return "triggered tf.function retracing" not in record.getMessage()

    logger, dropped = logging.getLogger("tensorflow"), Retracing()
    if not is_verbose():
        logger.addFilter(dropped)
    try:
        yield
    finally:
        logger.removeFilter(dropped)


def _check_budget(config, source_images: int | None, replicas: int) -> None:
    """Prints the plan's training images; ConfigError when it exceeds ``adapt.image_budget``."""
    a = config.adapt
    batch = config.data.ids_per_batch * config.data.images_per_id * replicas
    planned = a.rounds * a.epochs_per_round * a.steps_per_epoch * batch
    total = planned + (source_images or 0)
    source_text = (f"source run {source_images:,}" if source_images is not None
                   else "source run: unknown")
    print(f"plan: {a.rounds} rounds x {a.epochs_per_round} epochs x {a.steps_per_epoch} steps x "
          f"{batch} images = {planned:,} training images ({source_text}; total {total:,}"
          + (f" of the {a.image_budget:,} budget)" if a.image_budget else ")"), flush=True)
    if a.image_budget and total > a.image_budget:
        raise ConfigError(
            f"the plan sees {total:,} training images (source run {source_images or 0:,} + "
            f"adaptation {planned:,}), over adapt.image_budget {a.image_budget:,}; lower "
            "adapt.rounds, adapt.epochs_per_round or adapt.steps_per_epoch")


class _Adaptation:
    """The rounds of one adaptation; state in ``WORKDIR/adapt/state.json`` between rounds."""

    def __init__(self, plan: Plan, strategy, precision: str):
        self.plan, self.strategy, self.precision = plan, strategy, precision
        self.config = plan.config
        self.a = plan.config.adapt
        self.workdir = plan.workdir
        self.state_dir = plan.workdir / STATE_DIR
        self.num_labelled = len(plan.data.identities)
        self._writer = None

    # --- the loop ---

    def run(self) -> dict:
        from tfmarket.config import save_config
        from tfmarket.train import save_schema

        plan, a = self.plan, self.a
        self._announce()
        state = plan.state
        model = self._load_model(state["model"] if state else None)
        if state is None:
            # Everything up to the first clustering runs before the run directory exists, so a
            # clustering that finds too few clusters leaves nothing behind.
            source_validation = self._validate(model, "source model")
            clusters = self._cluster(model, 1)
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / "crops.txt").write_text("\n".join(plan.crops) + "\n")
            state = {"rounds_done": 0, "model": None, "rounds": [],
                     "source_validation": source_validation, "pending": None}
            self._start_round(state, 1, clusters)
            save_config(self.config, self.workdir / "config.yaml")
            save_schema(plan.data.schema, self.workdir)
            self._log_round(0, None, source_validation)
        else:  # the same settings, or clustering settings changed for the rounds to come
            save_config(self.config, self.workdir / "config.yaml")
            save_schema(plan.data.schema, self.workdir)
        if state["rounds_done"]:
            print(f"resuming after round {state['rounds_done']}/{a.rounds}", flush=True)
        for r in range(state["rounds_done"] + 1, a.rounds + 1):
            pending = state.get("pending")
            if pending and pending["round"] == r:
                clusters = self._load_clusters(r, pending)
            else:
                clusters = self._cluster(model, r)
                self._start_round(state, r, clusters)
            model, record = self._train_round(model, r, clusters)
            self._finish_round(state, r, model, record)
        model.save(self.workdir / "model.keras")
        metrics = self._metrics(model, state)
        (self.workdir / DONE_MARKER).write_text(json.dumps(metrics, indent=2, default=float))
        for path in self.state_dir.glob("round_*.keras"):
            path.unlink()  # the last one is model.keras now
        return metrics

    def _announce(self) -> None:
        plan = self.plan
        data = plan.data
        print(f"source: {plan.source_dir} ({plan.source_model.name}: {plan.source_note}); "
              f"{self.num_labelled} labelled identities, {len(data.records)} images; "
              f"validation: {data.validation} ({len(data.val_query)} queries x "
              f"{len(data.val_gallery)} gallery)", flush=True)
        if plan.transductive_images:
            print(f"transductive: true ({plan.transductive_images:,} of {len(plan.crops):,} "
                  "crops are the source dataset's own test/query images: report results on "
                  "them as transductive)", flush=True)
        else:
            print(f"transductive: false (none of the {len(plan.crops):,} crops is one of the "
                  "source dataset's test/query images)", flush=True)
        if self.config.adapt.validation_in_crops:
            print(f"validation images among the crops: the {len(data.val_query)} + "
                  f"{len(data.val_gallery)} validation images are clustered too (unlabelled), "
                  "so validation scores are the transductive proxy", flush=True)

    # --- models ---

    def _load_model(self, round_model: str | None):
        """The model to continue from: the last finished round's, else the source run's."""
        import keras

        import tfmarket.layers  # noqa: F401  (registers the custom layers for loading)
        import tfmarket.losses  # noqa: F401
        import tfmarket.schedules  # noqa: F401

        path = self.workdir / round_model if round_model else self.plan.source_model
        model = keras.models.load_model(path, compile=False)
        units = model.get_layer("id").units
        if units < self.num_labelled:
            raise DataError(
                f"{path}: its ID classifier has {units} identities, but the source run's "
                f"training split now has {self.num_labelled}; has the dataset changed?")
        return model

    def _round_model(self, previous, clusters: dict):
        """(base, model): ``base`` is the source architecture with ``previous``'s weights;
        ``model`` shares its layers and adds the "cluster" output (prototypes at the cluster
        centroids), compiled with the round's losses and a fresh, warmed-up optimizer.

        The labelled identities keep their trained classifier as it is: rebuilding it with
        rows for the clusters gave each new identity a miscalibrated logit, and the first
        probes on the course data lost validation mAP within 10 steps.
        """
        import keras

        from tfmarket.layers import ClusterPrototypes
        from tfmarket.losses import KnownAccuracy, SoftmaxLoss
        from tfmarket.train import (
            build_losses,
            build_metrics,
            build_optimizer,
            build_training_model,
        )

        a = self.a
        heads = self.plan.data.schema.head_sizes
        centroids = clusters["centroids"]  # [C, D]
        round_train = replace(self.config.train, learning_rate=a.learning_rate,
                              epochs=a.epochs_per_round, warmup_epochs=0, schedule="constant",
                              decay_epochs=())
        with self.strategy.scope():
            base = build_training_model(self.config, previous.get_layer("id").units, heads)
            for layer in base.layers:
                if layer.weights:
                    layer.set_weights(previous.get_layer(layer.name).get_weights())
            outputs = dict(base.output)
            outputs["cluster"] = ClusterPrototypes(len(centroids), a.temperature,
                                                   name="cluster")(outputs["embedding"])
            model = keras.Model(base.input, outputs, name=base.name)
            model.get_layer("cluster").set_weights([centroids.T])
            losses, weights = build_losses(replace(self.config, train=round_train),
                                           self.plan.data.targets, heads)
            losses["cluster"] = SoftmaxLoss(0.0, name="cluster_loss")
            weights["cluster"] = a.cluster_weight
            metrics = build_metrics(heads)
            metrics["id"] = [KnownAccuracy()]
            metrics["cluster"] = [KnownAccuracy()]
            model.compile(optimizer=build_optimizer(round_train, a.steps_per_epoch,
                                                    warmup_steps=a.warmup_steps),
                          loss=losses, loss_weights=weights, metrics=metrics,
                          jit_compile=self.config.train.jit_compile)
        return base, model

    # --- clustering ---

    def _cluster(self, model, r: int) -> dict:
        """Embeds the crops with ``model`` and clusters them.

        Returns:
            {"labels": int64 [N] cluster or -1, "centroids": float32 [C, D], "stats": dict}.

        Raises:
            TfmarketError: fewer than two clusters (the message says which setting to change).
        """
        import time

        from tfmarket.cluster import (
            cluster_centroids,
            cluster_stats,
            dbscan,
            drop_large_clusters,
            eps_from_quantile,
        )
        from tfmarket.evaluation import predict_records
        from tfmarket.rerank import k_reciprocal_distance_rows, k_reciprocal_neighbours

        a, crops = self.a, self.plan.crops
        emb = predict_records(model, SimpleNamespace(paths=crops), self.config.data.height,
                              self.config.data.width,
                              progress=f"round {r}/{a.rounds}: embedding crops")["embedding"]
        start = time.time()
        eps = a.eps
        if a.eps_quantile > 0:
            eps = eps_from_quantile(
                k_reciprocal_distance_rows(emb, a.k1, a.k2, a.lambda_value), len(emb),
                a.eps_quantile)
            if not eps < 1.0 - a.lambda_value:
                raise TfmarketError(
                    f"round {r}: adapt.eps_quantile {a.eps_quantile:g} gives eps {eps:.3f}, "
                    "among pairs that share no k-reciprocal neighbour; lower it")
        graph = k_reciprocal_neighbours(emb, eps, a.k1, a.k2, a.lambda_value)
        found = dbscan(graph, eps, a.min_samples)
        labels = drop_large_clusters(found, a.max_cluster_size)
        dropped = int(found.max()) - int(labels.max())  # labels are 0..C-1, -1 for outliers
        stats = {"round": r, "eps": float(eps), "min_samples": a.min_samples, "k1": a.k1,
                 "k2": a.k2, "lambda_value": a.lambda_value,
                 "max_cluster_size": a.max_cluster_size, "large_clusters_dropped": dropped,
                 **cluster_stats(labels), "cluster_seconds": time.time() - start}
        large = (f", {dropped} over {a.max_cluster_size} crops dropped" if dropped else "")
        print(f"round {r}/{a.rounds}: eps {eps:.3f}, min_samples {a.min_samples}: "
              f"{stats['clusters']} clusters (mean {stats['mean_size']:.1f}, max "
              f"{stats['max_size']} images{large}), {stats['outliers']:,} outliers, "
              f"{stats['clustered_fraction']:.1%} of {len(crops):,} crops clustered "
              f"({stats['cluster_seconds']:.1f} s)", flush=True)
        if stats["clusters"] < 2:
            kept = (f"; rounds 1-{r - 1} are kept in {self.workdir}: rerun with other "
                    "clustering settings to continue from there" if r > 1 else "")
            raise TfmarketError(_too_few_clusters(r, stats, a) + kept)
        return {"labels": labels, "centroids": cluster_centroids(emb, labels, stats["clusters"]),
                "stats": stats}

    def _start_round(self, state: dict, r: int, clusters: dict) -> None:
        """Saves round ``r``'s pseudo-labels before it trains, so an interrupted round resumes
        with the same identities (and the same classifier shape its backup was saved with)."""
        import numpy as np

        np.save(self.state_dir / f"round_{r}_labels.npy", clusters["labels"])
        np.save(self.state_dir / f"round_{r}_centroids.npy", clusters["centroids"])
        state["pending"] = {"round": r, "stats": clusters["stats"]}
        _write_json(self.state_dir / STATE_FILE, state)
        self._log_clusters(r, clusters["stats"])

    def _load_clusters(self, r: int, pending: dict) -> dict:
        import numpy as np

        return {"labels": np.load(self.state_dir / f"round_{r}_labels.npy"),
                "centroids": np.load(self.state_dir / f"round_{r}_centroids.npy"),
                "stats": pending["stats"]}

    # --- training ---

    def _batches(self, num_clusters: int, r: int) -> Batches:
        """P x K with ``adapt.labelled_fraction`` of the P identities labelled; fewer clusters
        than their share leaves the rest to labelled identities (the batch keeps its size, so
        the plan's image count holds)."""
        p = self.config.data.ids_per_batch
        cluster_ids = p - int(round(p * self.a.labelled_fraction))
        cluster_ids = max(1, cluster_ids)
        if cluster_ids > num_clusters:
            print(f"round {r}: {num_clusters} clusters, fewer than the {cluster_ids} cluster "
                  f"identities a batch should hold; batches take {p - num_clusters} labelled "
                  "identities instead", flush=True)
            cluster_ids = num_clusters
        return Batches(labelled_ids=p - cluster_ids, cluster_ids=cluster_ids,
                       images_per_id=self.config.data.images_per_id,
                       replicas=self.strategy.num_replicas_in_sync)

    def _train_round(self, previous, r: int, clusters: dict):
        """Fine-tunes round ``r``; returns (model, the round's record)."""
        from tfmarket.callbacks import EpochProgress, Throughput
        from tfmarket.resume import backup_epoch, best_logged_map
        from tfmarket.train import RunPaths, _callbacks, _fit, _validation_callback

        a, data_cfg = self.a, self.config.data
        stats = clusters["stats"]
        batches = self._batches(stats["clusters"], r)
        first_epoch = (r - 1) * a.epochs_per_round
        paths = RunPaths(run_dir=self.workdir, out_dir=self.workdir, chief=True)
        # A round interrupted while training resumes from its backup's epoch (global numbering).
        done = max(backup_epoch(paths.backup_dir), first_epoch)
        print(f"round {r}/{a.rounds}: batches of {batches.labelled_ids} labelled + "
              f"{batches.cluster_ids} cluster identities x {batches.images_per_id} images; "
              f"{a.epochs_per_round} epochs x {a.steps_per_epoch} steps x "
              f"{batches.global_batch} = "
              f"{a.epochs_per_round * a.steps_per_epoch * batches.global_batch:,} images",
              flush=True)
        dataset_fn = self._dataset_fn(clusters["labels"], batches, r,
                                      labelled_step=done * a.steps_per_epoch,
                                      cluster_step=(done - first_epoch) * a.steps_per_epoch)
        inputs = self.strategy.distribute_datasets_from_function(dataset_fn)
        base, model = self._round_model(previous, clusters)
        throughput = Throughput(batches.global_batch)
        validation = _validation_callback(self.plan.data, data_cfg.height, data_cfg.width,
                                          a.epochs_per_round, self.workdir / "tensorboard")
        callbacks = _callbacks(paths, throughput, validation,
                               best_logged_map(self.workdir / "history.csv"), 0)
        callbacks = [EpochProgress(batches.global_batch, prefix=f"round {r}/{a.rounds} ",
                                   epoch_offset=first_epoch)
                     if isinstance(c, EpochProgress) else c for c in callbacks]
        fit = _fit(model, inputs, callbacks, first_epoch + a.epochs_per_round,
                   a.steps_per_epoch, lost_worker_backup=None, initial_epoch=first_epoch)
        steps = a.epochs_per_round * a.steps_per_epoch
        per_id = batches.images_per_id * batches.replicas
        record = {
            **{k: v for k, v in stats.items() if k != "sizes"},
            "labelled_ids_per_batch": batches.labelled_ids,
            "cluster_ids_per_batch": batches.cluster_ids,
            "global_batch": batches.global_batch,
            "steps": steps,
            "images_seen": steps * batches.global_batch,
            "labelled_images_seen": steps * batches.labelled_ids * per_id,
            "pseudo_images_seen": steps * batches.cluster_ids * per_id,
            "train_seconds_this_session": fit.seconds,
            "images_per_second": throughput.rates,
            "final_train_loss": (fit.logs.get("loss") or [None])[-1],
        }
        if validation is not None and validation.last:
            last = validation.last
            record.update({"val_mAP": last["mAP"], "val_rank1": last["rank1"],
                           "validation": {k: v for k, v in last.items() if k != "seconds"}})
        return base, record

    def _dataset_fn(self, labels, batches: Batches, r: int, *, labelled_step: int,
                    cluster_step: int):
        """Per-replica batches: ``labelled_ids`` labelled identities then ``cluster_ids``
        cluster identities, K images each: (images float32 [B, H, W, 3], targets per output).

        Two P x K streams (``tfmarket.data.pipeline.train_dataset`` through the training
        run's own ``dataset_fn``) concatenated per batch, so every batch, and every replica's
        share of it, holds both kinds in a fixed proportion; batch-hard triplet mining then
        also contrasts cluster identities with labelled ones. The labelled stream continues
        across rounds (``labelled_step``), so rounds do not replay the same batches.
        """
        import numpy as np
        import tensorflow as tf

        from tfmarket.data.market1501 import Records
        from tfmarket.train import TrainingData, _make_dataset_fn

        data, data_cfg = self.plan.data, self.config.data
        keep = np.flatnonzero(labels >= 0)
        n = len(keep)
        crops = Records([self.plan.crops[i] for i in keep], labels[keep] + self.num_labelled,
                        np.full(n, -1), np.zeros((n, data.records.attributes.shape[1]),
                                                 np.int64), labelled=False,
                        schema=data.schema)
        pseudo = TrainingData(
            records=crops, labels=crops.pids, identities=np.unique(crops.pids),
            # -1: no attribute target, so the attribute losses ignore pseudo-labelled images
            targets={h: np.full(n, -1, np.int32) for h in data.schema.head_sizes},
            val_query=data.val_query, val_gallery=data.val_gallery, schema=data.schema)
        streams = []
        if batches.labelled_ids:
            streams.append(_make_dataset_fn(
                data, replace(data_cfg, ids_per_batch=batches.labelled_ids),
                first_step=labelled_step))
        # Its own seed per round: the clusters change, and the labelled stream's augmentation
        # draws should not repeat on the cluster images.
        streams.append(_make_dataset_fn(
            pseudo, replace(data_cfg, ids_per_batch=batches.cluster_ids,
                            seed=data_cfg.seed + 7919 * r), first_step=cluster_step))

        labelled = self.num_labelled

        def concat(*parts):
            return tf.nest.map_structure(lambda *xs: tf.concat(xs, axis=0), *parts)

        def split_targets(images, targets):
            # The triplet loss sees one numbering of labelled and cluster identities; the ID
            # classifier only the labelled images, the cluster loss only the pseudo-labelled.
            pid = targets["id"]
            return images, {**targets, "id": tf.where(pid < labelled, pid, -1),
                            "cluster": tf.where(pid >= labelled, pid - labelled, -1)}

        def dataset_fn(context):
            datasets = [fn(context) for fn in streams]
            if len(datasets) == 1:
                return datasets[0].map(split_targets)
            return tf.data.Dataset.zip(tuple(datasets)).map(concat).map(split_targets)

        return dataset_fn

    def _finish_round(self, state: dict, r: int, model, record: dict) -> None:
        """Saves the round's model, then the state naming it (a kill between the two leaves
        the state on the previous round: the round is redone, never half counted)."""
        name = f"{STATE_DIR}/round_{r}.keras"
        model.save(self.workdir / name)
        previous = state.get("model")
        state.update(rounds_done=r, model=name, pending=None)
        state["rounds"].append(record)
        _write_json(self.state_dir / STATE_FILE, state)
        if previous:
            (self.workdir / previous).unlink(missing_ok=True)
        (self.state_dir / f"round_{r}_centroids.npy").unlink(missing_ok=True)
        seen = sum(x["images_seen"] for x in state["rounds"])
        self._log_round(r, seen, record.get("validation"))

    def _validate(self, model, what: str) -> dict | None:
        """Validation metrics of ``model`` on the source run's validation split (None without
        one)."""
        from tfmarket.evaluation import predict_records, score

        data, h, w = self.plan.data, self.config.data.height, self.config.data.width
        if len(data.val_query) == 0:
            return None
        result = score(predict_records(model, data.val_query, h, w),
                       predict_records(model, data.val_gallery, h, w),
                       data.val_query, data.val_gallery)
        print(f"validation ({data.validation}) {what}: mAP {result['mAP']:.4f}  rank-1 "
              f"{result['rank1']:.4f}  rank-5 {result['rank5']:.4f}", flush=True)
        return result

    # --- logs ---

    def _summary_writer(self):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.workdir / "tensorboard" /
                                                             "adapt"))
        return self._writer

    def _log_clusters(self, r: int, stats: dict) -> None:
        """Round ``r``'s clustering: TensorBoard ``adapt/clusters/...`` at step r."""
        import numpy as np
        import tensorflow as tf

        with self._summary_writer().as_default(step=r):
            for key in ("clusters", "outliers", "clustered_fraction", "mean_size", "max_size",
                        "eps"):
                tf.summary.scalar(f"clusters/{key}", stats[key])
            if stats["sizes"]:
                tf.summary.histogram("clusters/size", np.asarray(stats["sizes"], np.float32))
        self._writer.flush()

    def _log_round(self, r: int, images_seen: int | None, validation: dict | None) -> None:
        """Validation after round ``r`` (0: the source model) and images seen so far."""
        import tensorflow as tf

        name = self.plan.data.validation
        with self._summary_writer().as_default(step=r):
            if images_seen is not None:
                tf.summary.scalar("images_seen", images_seen)
            for key in ("mAP", "rank1", "rank5", "mINP"):
                if validation and key in validation:
                    tf.summary.scalar(f"{name}/{key}", validation[key])
        self._writer.flush()

    def _metrics(self, model, state: dict) -> dict:
        from tfmarket.resume import best_logged_map
        from tfmarket.train import weights_digest

        plan, rounds = self.plan, state["rounds"]
        total = sum(r["images_seen"] for r in rounds)
        last = rounds[-1]
        return {
            "status": "complete",
            "source_run": str(plan.source_dir),
            "source_model": plan.source_model.name,
            "transductive": plan.transductive_images > 0,
            "transductive_images": plan.transductive_images,
            "crop_folders": list(self.a.crops),
            "crops": len(plan.crops),
            "rounds": rounds,
            "images_seen": {
                "rounds": [r["images_seen"] for r in rounds],
                "total": total,
                "labelled": sum(r["labelled_images_seen"] for r in rounds),
                "pseudo": sum(r["pseudo_images_seen"] for r in rounds),
                "source_run": plan.source_images,
                "with_source": total + (plan.source_images or 0),
            },
            "train_identities": self.num_labelled,
            "identities": plan.data.identities.tolist(),
            "cluster_identities": last["clusters"],
            "validation_set": plan.data.validation,
            "val_query_images": len(plan.data.val_query),
            "val_gallery_images": len(plan.data.val_gallery),
            "source_validation": state.get("source_validation"),
            "validation": last.get("validation"),
            # best.keras's score: every validated epoch counts, not only the rounds' last ones
            "best_val_mAP": best_logged_map(self.workdir / "history.csv"),
            "replicas": self.strategy.num_replicas_in_sync,
            "precision": self.precision,
            "global_batch": last["global_batch"],
            "steps_per_epoch": self.a.steps_per_epoch,
            "weights_sha256": weights_digest(model),
        }


def _too_few_clusters(r: int, stats: dict, a) -> str:
    """One line: what DBSCAN found and which setting to move."""
    found = (f"round {r}: DBSCAN (eps {stats['eps']:.3f}, min_samples {a.min_samples}) on "
             f"{stats['crops']:,} crops found {stats['clusters']} cluster(s) and "
             f"{stats['outliers']:,} outliers; adaptation needs at least 2 clusters: ")
    if stats["clusters"] == 1 and stats["clustered_fraction"] > 0.5:
        return found + ("nearly everything is one cluster, so lower adapt.eps (or "
                        "adapt.eps_quantile), or raise adapt.min_samples")
    return found + ("neighbourhoods are too sparse, so raise adapt.eps (or adapt.eps_quantile) "
                    "or lower adapt.min_samples; with few crops per person also lower adapt.k1")


def _write_json(path: Path, value) -> None:
    """Written whole or not at all: a kill mid-write leaves the previous file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, default=_json_default))
    os.replace(tmp, path)


def _json_default(value):
    import numpy as np

    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


if __name__ == "__main__":
    sys.exit(main())
