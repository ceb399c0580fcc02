"""Exporting a trained run for serving: SavedModel (+ ONNX, + LiteRT, + their int8 variants)
with a model card.

What ``python -m tfmarket.export`` runs. The exported graph takes uint8 images [B, H, W, 3] at
the training size (dynamic batch) and contains the normalisation, so callers only decode and
resize (``tfmarket.preprocess``). Outputs: ``embedding`` [B, D] (L2-normalised) and every
attribute head's probabilities (the run's attribute schema, ``schema.json``, is written into
``model_card.json``).

A parity check runs at export time on real images (the run's validation/training images):
the max absolute difference between Keras, the SavedModel, onnxruntime and LiteRT outputs must be
within ``export.parity_tolerance`` (default 1e-4) or the export is aborted and nothing is left
behind.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from tfmarket.errors import TfmarketError

MODEL_CARD = "model_card.json"
CALIBRATION_IMAGES = 200  # training crops that set static int8's activation ranges


def _parity_images(config, workdir: Path, count: int):
    """uint8 [n, H, W, 3] real images from the run's dataset, decoded the shared way."""
    from tfmarket.config import dataset_name
    from tfmarket.data.registry import load_dataset
    from tfmarket.preprocess import load_images_numpy

    root = config.data.root or workdir / "synthetic"
    dataset = load_dataset(root, dataset_name(config.data))
    paths = dataset.train.paths[:: max(1, len(dataset.train) // count)][:count]
    return load_images_numpy(paths, config.data.height, config.data.width)


def _calibration_images(config, workdir: Path, count: int):
    """uint8 [n <= count, H, W, 3] crops of the run's training identities (never validation
    ones), spread over the training set, for static int8 calibration."""
    from tfmarket.preprocess import load_images_numpy
    from tfmarket.training.data import load_training_data

    records = load_training_data(config.data, workdir).records
    paths = records.paths[:: max(1, len(records) // count)][:count]
    return load_images_numpy(paths, config.data.height, config.data.width)


def _max_abs_diff(a: dict, b: dict) -> dict[str, float]:
    import numpy as np

    return {k: float(np.abs(np.asarray(a[k], np.float64) - np.asarray(b[k])).max()) for k in a}


def export_model(model, out: Path, images, *, onnx: bool = True, int8: bool = False,
                 tolerance: float = 1e-4, calibration_images=None, litert: bool = False) -> dict:
    """Writes ``saved_model/`` (+ ``model.onnx``, + ``model.tflite``; with ``int8`` their int8
    variants) into ``out`` and checks parity.

    Args:
        model: the training model (float input, logits).
        images: uint8 [N, H, W, 3] real images for the parity check.

    Returns:
        {"files": [...], "parity": {...}, "outputs": {name: shape}}.

    Raises:
        TfmarketError: parity beyond ``tolerance``.
    """
    import numpy as np
    import tensorflow as tf

    from tfmarket.model.network import build_inference_model

    inference = build_inference_model(model)
    reference = {k: np.asarray(v) for k, v in inference(images, training=False).items()}
    inference.export(str(out / "saved_model"), format="tf_saved_model", verbose=False)
    files = ["saved_model"]
    loaded = tf.saved_model.load(str(out / "saved_model"))
    served = {k: v.numpy() for k, v in loaded.serve(tf.constant(images)).items()}
    parity = {"images": int(len(images)), "tolerance": tolerance,
              "saved_model_vs_keras": _max_abs_diff(reference, served)}
    if onnx:
        from tfmarket.console import HARMLESS_EXPORT_WARNINGS, harmless_warnings_ignored

        with harmless_warnings_ignored(HARMLESS_EXPORT_WARNINGS):
            inference.export(str(out / "model.onnx"), format="onnx", verbose=False)
        files.append("model.onnx")
        parity["onnx_vs_keras"] = _max_abs_diff(reference, run_onnx(out / "model.onnx", images))
    if litert:
        from tfmarket.serving.litert import convert_float, run_litert

        # From the SavedModel just written: Keras's own LiteRT export would trace the model
        # into a second SavedModel first.
        convert_float(out / "saved_model", out / "model.tflite")
        files.append("model.tflite")
        parity["litert_vs_keras"] = _max_abs_diff(reference,
                                                  run_litert(out / "model.tflite", images))
    worst = max(v for key in ("saved_model_vs_keras", "onnx_vs_keras", "litert_vs_keras")
                if key in parity for v in parity[key].values())
    parity["max_abs_diff"] = worst
    if not worst <= tolerance:
        raise TfmarketError(
            f"export parity check failed: max |difference| {worst:.3g} > {tolerance:g} "
            f"({json.dumps(parity)})")
    if int8 and onnx:
        from tfmarket.serving.quantize import quantize_dynamic_int8, quantize_static_int8

        target = out / "model.int8.onnx"
        if calibration_images is not None and len(calibration_images):
            quantize_static_int8(out / "model.onnx", target, calibration_images,
                                 activations="uint8")
            method = (f"static: QDQ, per-channel int8 weights, uint8 activations (U8S8) "
                      f"calibrated on {len(calibration_images)} training crops")
        else:
            quantize_dynamic_int8(out / "model.onnx", target)
            method = "dynamic: int8 weights, activations quantised per batch"
        files.append("model.int8.onnx")
        parity["int8"] = {"method": method,
                          **quantization_report(reference, run_onnx(target, images))}
    if int8 and litert:
        from tfmarket.serving.litert import convert_int8, run_litert

        target, method = convert_int8(out / "saved_model", out / "model.tflite",
                                      out / "model.int8.tflite", calibration_images)
        files.append("model.int8.tflite")
        parity["litert_int8"] = {"method": method,
                                 **quantization_report(reference, run_litert(target, images))}
    outputs = {k: [None, *v.shape[1:]] for k, v in reference.items()}
    return {"files": files, "parity": parity, "outputs": outputs}


def quantization_report(reference: dict, quantized: dict) -> dict:
    """How far int8 outputs drift: embedding cosine similarity and attribute decision agreement."""
    import numpy as np

    cos = np.sum(reference["embedding"] * quantized["embedding"], axis=1)
    ref_t, q_t = _decisions(reference), _decisions(quantized)
    agree = float(np.mean([np.mean(ref_t[h] == q_t[h]) for h in ref_t])) if ref_t else None
    return {"max_abs_diff": _max_abs_diff(reference, quantized),
            "embedding_cosine_min": float(cos.min()), "embedding_cosine_mean": float(cos.mean()),
            "attribute_decision_agreement": agree}


def _decisions(outputs: dict) -> dict:
    """Each attribute head's per-image decision (sigmoid >= 0.5, softmax argmax)."""

    return {k: (v.reshape(len(v), -1)[:, 0] >= 0.5) if v.reshape(len(v), -1).shape[1] == 1
            else v.argmax(axis=-1) for k, v in outputs.items() if k != "embedding"}


def run_onnx(path: Path, images) -> dict:
    """Runs an ONNX model on uint8 images; returns {output name: array}."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, {session.get_inputs()[0].name: images})
    return dict(zip(names, values, strict=True))


def float32_copy(model, config, schema=None):
    """The same network and weights with float32 compute (a run may have trained in mixed
    precision): serving graphs and the parity check are defined in float32. ``schema``: the
    run's attribute schema (default Market-1501's), whose heads the model must have."""
    from dataclasses import replace

    import keras

    from tfmarket.attributes import MARKET
    from tfmarket.model.network import model_heads
    from tfmarket.training.build import build_training_model

    schema = MARKET if schema is None else schema
    heads = schema.head_sizes
    if model_heads(model) != heads:
        raise TfmarketError(
            f"the model's attribute heads {model_heads(model)} are not its run's "
            f"{schema.name} schema's {heads}")
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        # weights="": the copy's weights come from the model below, never from a download.
        copy = build_training_model(replace(config, model=replace(config.model, weights="")),
                                    model.get_layer("id").units, heads)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    # By layer name: the best.keras of runs adapted before ``ValidationCheckpoint(saves=)``
    # also holds adapt's "cluster" output, which serving does not use.
    for layer in copy.layers:
        if layer.weights:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return copy


def export_run(workdir: Path, out: Path | None = None, *, onnx: bool = False, int8: bool = False,
               checkpoint: str = "best", parity_images: int = 32, overwrite: bool = False,
               litert: bool = False) -> dict:
    """Exports a run directory; writes the model card; returns it."""
    import yaml

    from tfmarket import __version__
    from tfmarket.config import from_dict, to_dict
    from tfmarket.training.rundir import run_schema, source_model

    workdir = Path(workdir)
    if not (workdir / "config.yaml").is_file():
        raise TfmarketError(f"{workdir}: not a tfmarket run directory (no config.yaml)")
    config = from_dict(yaml.safe_load((workdir / "config.yaml").read_text()))
    schema = run_schema(workdir)
    model_path, model_note = source_model(workdir, checkpoint, config.data.validation)
    out = Path(out) if out else Path("exports") / workdir.name
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise TfmarketError(f"{out}: already exists; pass --overwrite to replace it")
    litert = litert or config.export.litert
    if litert:  # before the model loads: a missing runtime should cost nothing
        from tfmarket.serving.litert import interpreter_class

        interpreter_class()

    from tfmarket.model.network import load_run_model

    model = float32_copy(load_run_model(model_path), config, schema)
    images = _parity_images(config, workdir, parity_images)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        want_int8 = int8 or config.export.quantize_int8
        result = export_model(
            model, staging, images, onnx=onnx or config.export.onnx, int8=want_int8,
            litert=litert, tolerance=config.export.parity_tolerance,
            # Static int8 (calibrated) ran 2.2-2.6x onnxruntime fp32 on the tiny model here,
            # dynamic int8 0.2-0.9x (benchmarks/inference.py --quick, 2026-12-03).
            calibration_images=_calibration_images(config, workdir, CALIBRATION_IMAGES)
            if want_int8 else None)
        metrics_file = workdir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        card = {
            "tfmarket_version": __version__,
            "source_run": str(workdir.resolve()),
            "source_model": model_path.name,
            "source_model_note": model_note,
            "input": {"name": "image", "dtype": "uint8", "shape": [None, config.data.height,
                      config.data.width, 3], "layout": "NHWC, RGB",
                      "preprocessing": "decode to RGB, resize bilinear to H x W "
                                       "(tfmarket.preprocess.load_image); normalisation is "
                                       "inside the graph"},
            "outputs": result["outputs"],
            "embedding": {"name": "embedding", "normalised": "L2", "distance": "cosine"},
            "attributes": {
                "heads": {h.name: {"activation": h.activation, "classes": list(h.classes)}
                          for h in schema.heads},
                "columns": list(schema.columns),
                "encoding": schema.encoding,
                # The whole schema: rank, calibrate and gallery read the heads from it.
                "schema": schema.to_dict(),
            },
            "training_config": to_dict(config),
            # without the validation's wall time: the card is reproducible from the run
            "validation": {k: v for k, v in (metrics.get("validation") or {}).items()
                           if k != "seconds"} or None,
            "train_identities": metrics.get("train_identities"),
            "parity": result["parity"],
            "files": result["files"] + [MODEL_CARD],
        }
        (staging / MODEL_CARD).write_text(json.dumps(card, indent=2, default=float))
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    card["out"] = str(out)
    return card
