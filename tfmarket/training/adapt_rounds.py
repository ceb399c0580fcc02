"""The rounds of ``python -m tfmarket.adapt`` (TensorFlow): embed and cluster the crops,
fine-tune on labelled and pseudo-labelled identities, save and log each round, resume an
interrupted run. ``run`` takes the :class:`tfmarket.training.adapt_plan.Plan` that ``prepare``
checked.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

from tfmarket.errors import ConfigError, DataError, TfmarketError
from tfmarket.training.adapt_plan import DONE_MARKER, STATE_DIR, STATE_FILE, Plan


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
    """Adapts per ``plan`` (from :func:`tfmarket.training.adapt_plan.prepare`) into
    ``plan.workdir``; returns what it writes to metrics.json."""
    if plan.complete:
        return {"status": "already complete"}
    import keras

    from tfmarket.training.distribute import choose_strategy, resolve_precision
    from tfmarket.training.multiworker import is_multi_worker

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
        from tfmarket.training.rundir import save_schema

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
        from tfmarket.model.network import load_run_model

        path = self.workdir / round_model if round_model else self.plan.source_model
        model = load_run_model(path)
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

        from tfmarket.model.keras_metrics import KnownAccuracy
        from tfmarket.model.layers import ClusterPrototypes
        from tfmarket.model.losses import SoftmaxLoss
        from tfmarket.training.build import (
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

        from tfmarket.retrieval.cluster import (
            cluster_centroids,
            cluster_stats,
            dbscan,
            drop_large_clusters,
            eps_from_quantile,
        )
        from tfmarket.retrieval.rerank import k_reciprocal_distance_rows, k_reciprocal_neighbours
        from tfmarket.training.evaluation import predict_records

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
        from tfmarket.training.callbacks import EpochProgress, Throughput
        from tfmarket.training.distribute import distribute_inputs
        from tfmarket.training.fit import build_callbacks, fit_model, validation_callback
        from tfmarket.training.resume import backup_epoch, best_logged_map
        from tfmarket.training.rundir import RunPaths

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
        inputs = distribute_inputs(self.strategy, dataset_fn)
        base, model = self._round_model(previous, clusters)
        throughput = Throughput(batches.global_batch)
        validation = validation_callback(self.plan.data, data_cfg.height, data_cfg.width,
                                         a.epochs_per_round, self.workdir / "tensorboard")
        callbacks = build_callbacks(paths, throughput, validation,
                                    best_logged_map(self.workdir / "history.csv"), 0,
                                    best_model=base)
        callbacks = [EpochProgress(batches.global_batch, prefix=f"round {r}/{a.rounds} ",
                                   epoch_offset=first_epoch)
                     if isinstance(c, EpochProgress) else c for c in callbacks]
        fit = fit_model(model, inputs, callbacks, first_epoch + a.epochs_per_round,
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

        from tfmarket.data.records import Records
        from tfmarket.training.data import TrainingData
        from tfmarket.training.fit import make_dataset_fn

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
            streams.append(make_dataset_fn(
                data, replace(data_cfg, ids_per_batch=batches.labelled_ids),
                first_step=labelled_step))
        # Its own seed per round: the clusters change, and the labelled stream's augmentation
        # draws should not repeat on the cluster images.
        streams.append(make_dataset_fn(
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
        from tfmarket.training.evaluation import predict_records, score

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
        from tfmarket.training.fit import weights_digest
        from tfmarket.training.resume import best_logged_map

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
