"""Validation during training: embed a query/gallery pair, score re-ID and attributes.

Uses the same NumPy metrics (``tfmarket.retrieval.metrics``) as ``python -m tfmarket.rank``.
"""

from __future__ import annotations

import time

import keras
import numpy as np

from tfmarket.attributes import AttributeSchema
from tfmarket.data.records import Records
from tfmarket.model.network import REID_OUTPUTS


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x):
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def logits_to_probabilities(outputs: dict) -> dict[str, np.ndarray]:
    """Training-model attribute logits -> probabilities ([N, C] softmax, [N, 1] sigmoid), for
    every output that is an attribute head (all but ``features``, ``embedding``, ``id``)."""
    heads = {h: np.asarray(v) for h, v in outputs.items() if h not in REID_OUTPUTS}
    return {
        head: _sigmoid(v) if v.shape[-1] == 1 else _softmax(v) for head, v in heads.items()
    }


def predict_records(model: keras.Model, records: Records, height: int, width: int,
                    batch_size: int = 128, progress: str | None = None) -> dict[str, np.ndarray]:
    """Runs the training model over a split (or anything with ``paths``).

    ``progress``: a label; shows count, images/s and ETA on stderr while predicting.

    Returns:
        {"embedding": float32 [N, D], head: probabilities} in ``records`` order.
    """
    from tfmarket.data.pipeline import eval_dataset

    paths = records.paths
    ds = eval_dataset(paths, height=height, width=width, batch_size=batch_size)
    ds = ds.map(lambda row: row["image"])
    callbacks = [_PredictProgress(len(paths), batch_size, progress)] if progress else []
    raw = model.predict(ds, verbose=0, callbacks=callbacks)
    out = {"embedding": np.asarray(raw["embedding"], np.float32)}
    out.update(logits_to_probabilities(raw))
    return out


class _PredictProgress(keras.callbacks.Callback):
    """``tfmarket.console.Progress`` driven by ``model.predict``'s batches."""

    def __init__(self, total: int, batch_size: int, label: str):
        super().__init__()
        self.total, self.batch_size, self.label = total, batch_size, label

    def on_predict_begin(self, logs=None):
        from tfmarket.console import Progress

        self.bar = Progress(self.total, self.label)

    def on_predict_batch_end(self, batch, logs=None):
        self.bar.update(min((batch + 1) * self.batch_size, self.total))

    def on_predict_end(self, logs=None):
        self.bar.update(self.total)
        self.bar.close()


def schema_matches(schema: AttributeSchema, outputs: dict) -> bool:
    """The model outputs hold every head of ``schema``, each of the schema's width: attribute
    predictions can be scored against labels in that schema."""
    return bool(schema.heads) and all(
        h.name in outputs and np.asarray(outputs[h.name]).reshape(
            len(outputs[h.name]), -1).shape[1] == h.outputs for h in schema.heads)


def score(query_out: dict, gallery_out: dict, query: Records, gallery: Records,
          schema: AttributeSchema | None = None) -> dict:
    """Re-ID metrics (Market-1501 protocol) and attribute metrics on the images with labels.

    ``schema``: the model's attribute schema (default: the records'); attributes are scored
    only when it is the records' schema and the outputs hold its heads.
    """
    from tfmarket.retrieval.attribute_metrics import attribute_metrics
    from tfmarket.retrieval.metrics import evaluate_from_features

    result = evaluate_from_features(
        query_out["embedding"], gallery_out["embedding"],
        query.pids, gallery.pids, query.cams, gallery.cams,
    )
    schema = query.schema if schema is None else schema
    if schema != query.schema or not schema_matches(schema, query_out):
        return result
    known = np.concatenate([query.has_attributes, gallery.has_attributes])
    if known.any():
        truth = np.concatenate([query.attributes, gallery.attributes])[known]
        probs = {h: np.concatenate([query_out[h], gallery_out[h]])[known]
                 for h in schema.head_sizes}
        predicted = schema.predicted_columns(probs)
        result["attributes"] = attribute_metrics(truth, predicted, schema.columns,
                                                 schema.multiclass)
    return result


class ValidationCallback(keras.callbacks.Callback):
    """Every ``every`` epochs (and at the first and last): validation mAP / Rank-k / attribute mA.

    Keys (``val_mAP``, ``val_rank1``, ``val_rank5``, ``val_mINP``, ``val_attr_mA``,
    ``val_attr_accuracy``) are picked up by the TensorBoard callback, ModelCheckpoint and
    EarlyStopping placed after this callback. ``name`` says which set is scored (``holdout``:
    identities held out of training; ``official``: the dataset's own query/gallery): the same
    scalars go to TensorBoard under ``log_dir/validation`` tagged ``<name>/mAP`` etc., beside
    per-attribute accuracy and mA (``<name>/attribute_mA/<column>``; 54 scalars, too many for
    the progress line).
    """

    def __init__(self, query: Records, gallery: Records, height: int, width: int,
                 every: int = 1, batch_size: int = 128, log_dir: str | None = None,
                 name: str = "holdout", schema: AttributeSchema | None = None):
        super().__init__()
        self.schema = schema
        self.name = name
        self.log_dir = log_dir
        self._writer = None
        self.query, self.gallery = query, gallery
        self.height, self.width = height, width
        self.every = max(1, every)
        self.batch_size = batch_size
        self.last: dict = {}
        self.history: list[dict] = []

    def on_train_begin(self, logs=None):
        self._first_epoch = True

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        last_epoch = self.params.get("epochs", 0) - 1
        # Also on a session's first epoch: CSVLogger fixes its columns from the first logs.
        first, self._first_epoch = getattr(self, "_first_epoch", True), False
        if (epoch + 1) % self.every and epoch != last_epoch and not first:
            return
        start = time.time()
        q = predict_records(self.model, self.query, self.height, self.width, self.batch_size)
        g = predict_records(self.model, self.gallery, self.height, self.width, self.batch_size)
        result = score(q, g, self.query, self.gallery, self.schema)
        logs.update({
            "val_mAP": result["mAP"], "val_rank1": result["rank1"],
            "val_rank5": result["rank5"], "val_mINP": result["mINP"],
        })
        attrs = result.get("attributes")
        if attrs:
            logs["val_attr_mA"] = attrs["mA"]
            logs["val_attr_accuracy"] = attrs["mean_accuracy"]
        self._write_tensorboard(epoch + 1, result)
        self.last = {"epoch": epoch + 1, "seconds": time.time() - start, "set": self.name,
                     "query_images": len(self.query), "gallery_images": len(self.gallery),
                     **result}
        self.history.append(self.last)
        from tfmarket.console import is_verbose

        print(
            ("\n" if is_verbose() else "")  # Keras's epoch bar is still open when verbose
            + f"validation ({self.name}, {len(self.query)} queries x {len(self.gallery)} gallery)"
            f" epoch {epoch + 1}: mAP {result['mAP']:.4f}  rank-1 {result['rank1']:.4f}"
            f"  rank-5 {result['rank5']:.4f}"
            + (f"  attribute mA {attrs['mA']:.4f}  acc {attrs['mean_accuracy']:.4f}"
               if attrs else "")
        )

    def _write_tensorboard(self, step: int, result: dict) -> None:
        """Re-ID and attribute scalars tagged with the set they score, e.g. ``official/mAP``."""
        if not self.log_dir:
            return
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(f"{self.log_dir}/validation")
        with self._writer.as_default(step=step):
            for key in ("mAP", "rank1", "rank5", "mINP"):
                tf.summary.scalar(f"{self.name}/{key}", result[key])
            attrs = result.get("attributes")
            if attrs:
                tf.summary.scalar(f"{self.name}/attribute_mA", attrs["mA"])
                tf.summary.scalar(f"{self.name}/attribute_accuracy", attrs["mean_accuracy"])
                for column, per in attrs["per_attribute"].items():
                    for key in ("mA", "accuracy", "F1"):
                        if per.get(key) is not None:
                            tf.summary.scalar(f"{self.name}/attribute_{key}/{column}", per[key])
        self._writer.flush()
