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

The served graph has the normalisation's channel flip / scale folded into the first convolution
(:mod:`tfmarket.model.fold`), so ``model.onnx`` is made of the portable operator set of
:mod:`tfmarket.serving.onnx_ops` (onnxruntime, OpenVINO, OpenCV DNN, TensorRT); the card lists
each ONNX file's operators under ``onnx``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from tfmarket.errors import TfmarketError

MODEL_CARD = "model_card.json"
CALIBRATION_IMAGES = 200  # training crops that set static int8's activation ranges
PARITY_BATCH = 2  # images per call in the parity checks: activations, not weights, set the peak


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
                 tolerance: float = 1e-4, calibration_images=None, litert: bool = False,
                 on_phase: Callable[[str], None] | None = None) -> dict:
    """Writes ``saved_model/`` (+ ``model.onnx``, + ``model.tflite``; with ``int8`` their int8
    variants) into ``out`` and checks parity.

    Args:
        model: the training model (float input, logits).
        images: uint8 [N, H, W, 3] real images for the parity check.
        on_phase: called with each phase's name as it starts ("keras", "saved_model",
            "onnx", "litert", "int8", "litert_int8"), e.g. by ``benchmarks/export_memory.py``
            to attribute memory.

    Returns:
        {"files": [...], "parity": {...}, "outputs": {name: shape}}, and with ``onnx`` the ONNX
        files' operators against the portable set ("onnx":
        :func:`tfmarket.serving.onnx_ops.operators_report`).

    Raises:
        TfmarketError: parity beyond ``tolerance``.
    """
    import tensorflow as tf

    from tfmarket.model.network import build_inference_model

    phase = _phase_hook(on_phase)
    phase("keras")
    # Served: the normalisation folded into the first convolution (portable ONNX). Reference:
    # the training model as it is, so the parity check covers the fold too.
    inference = build_inference_model(model)
    unfolded = build_inference_model(model, fold=False)
    reference = in_batches(lambda x: unfolded(x, training=False), images)
    phase("saved_model")
    inference.export(str(out / "saved_model"), format="tf_saved_model", verbose=False)
    files = ["saved_model"]
    loaded = tf.saved_model.load(str(out / "saved_model"))
    served = in_batches(lambda x: loaded.serve(tf.constant(x)), images)
    parity = {"images": int(len(images)), "tolerance": tolerance,
              "saved_model_vs_keras": _max_abs_diff(reference, served)}
    if onnx:
        phase("onnx")
        from tfmarket.console import HARMLESS_EXPORT_WARNINGS, harmless_warnings_ignored

        with harmless_warnings_ignored(HARMLESS_EXPORT_WARNINGS):
            _export_onnx(inference, out / "model.onnx")
        files.append("model.onnx")
        parity["onnx_vs_keras"] = _max_abs_diff(reference, run_onnx(out / "model.onnx", images))
    if litert:
        phase("litert")
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
        from tfmarket.serving.quantize import (
            DYNAMIC_INT8_METHOD,
            quantize_dynamic_int8,
            quantize_static_int8,
            static_int8_method,
        )

        phase("int8")
        target = out / "model.int8.onnx"
        if calibration_images is not None and len(calibration_images):
            options = {"per_channel": True, "activations": "uint8", "reduce_range": True}
            quantize_static_int8(out / "model.onnx", target, calibration_images, **options)
            method = static_int8_method(len(calibration_images), **options)
        else:
            quantize_dynamic_int8(out / "model.onnx", target)
            method = DYNAMIC_INT8_METHOD
        files.append("model.int8.onnx")
        parity["int8"] = {"method": method,
                          **quantization_report(reference, run_onnx(target, images))}
    if int8 and litert:
        phase("litert_int8")
        from tfmarket.serving.litert import convert_int8, run_litert

        target, method = convert_int8(out / "saved_model", out / "model.tflite",
                                      out / "model.int8.tflite", calibration_images)
        files.append("model.int8.tflite")
        parity["litert_int8"] = {"method": method,
                                 **quantization_report(reference, run_litert(target, images))}
    outputs = {k: [None, *v.shape[1:]] for k, v in reference.items()}
    result = {"files": files, "parity": parity, "outputs": outputs}
    if onnx:
        from tfmarket.serving.onnx_ops import operators_report

        result["onnx"] = operators_report([out / f for f in files if f.endswith(".onnx")])
    return result


def quantization_report(reference: dict, quantized: dict) -> dict:
    """How far int8 outputs drift: embedding cosine similarity and attribute decision agreement."""
    import numpy as np

    from tfmarket.retrieval.search import l2_normalize

    # A true cosine: the int8 model's rows are not exactly unit length.
    cos = np.sum(l2_normalize(reference["embedding"]) * l2_normalize(quantized["embedding"]),
                 axis=1)
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
    input_name = session.get_inputs()[0].name
    return in_batches(lambda x: dict(zip(names, session.run(names, {input_name: x}),
                                         strict=True)), images)


def in_batches(run: Callable, images, batch: int = PARITY_BATCH) -> dict:
    """``run`` ({name: array [b, ...]} from uint8 [b, H, W, 3]) over ``images`` ``batch`` at a
    time, outputs concatenated: a ResNet50's activations for 32 images at 256x128 alone took
    3.5 GB in one call."""
    import numpy as np

    parts: dict[str, list] = {}
    for start in range(0, len(images), batch):
        for name, value in run(images[start:start + batch]).items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {name: np.concatenate(values) for name, values in parts.items()}


def _export_onnx(inference, path: Path) -> None:
    """``model.export(format="onnx")`` (tf2onnx) without tf2onnx's memory growth, written as
    one ordinary ``.onnx`` file.

    Two things took the export of a ResNet50 from 2.3 GB to 7 GB and more
    (``benchmarks/export_memory.py``):

    * tf2onnx rewrites every node's protobuf after each of its ~15 graph optimizers, weights
      included, into the same message; protobuf (upb) frees a message's replaced fields only
      with the message, so every pass left a copy of the weights behind (4 GB). Here each
      rewrite goes into a fresh message, which frees the old one.
    * TensorFlow's freezing and Grappler pass copy the weights a dozen times over while they
      are constants inside graph protobufs. tf2onnx's large-model mode keeps them outside,
      skips Grappler (tf2onnx's own optimizers still fold constants and fuse; the ResNet50
      graph came out with the same 281 operators) and the deep copy of the graph before each
      optimizer; the weights are put back into the model before it is written.

    Should the conversion fail that way, it is repeated with tf2onnx's defaults.
    """
    import gc

    import tf2onnx
    from tf2onnx.graph import Node

    convert, update_proto = tf2onnx.convert.from_function, Node.update_proto

    def large_model_from_function(*args, output_path=None, **kwargs):
        model_proto, external = convert(*args, **{**kwargs, "large_model": True})
        _inline_external_tensors(model_proto, external.name_to_tensor_data)
        Path(output_path).write_bytes(model_proto.SerializeToString())
        return model_proto, None

    def update_fresh_proto(node, external_tensor_storage=None):
        old = node._op
        old.ClearField("attribute")  # the copy below then carries no weights
        node._op = type(old)()
        node._op.CopyFrom(old)
        update_proto(node, external_tensor_storage)

    def restore():
        tf2onnx.convert.from_function, Node.update_proto = convert, update_proto

    # Keras looks tf2onnx's function up at every export
    tf2onnx.convert.from_function, Node.update_proto = large_model_from_function, update_fresh_proto
    try:
        inference.export(str(path), format="onnx", verbose=False)
    except Exception:  # noqa: BLE001 - whatever failed: tf2onnx's defaults
        restore()
        gc.collect()
        inference.export(str(path), format="onnx", verbose=False)
    finally:
        restore()


def _inline_external_tensors(model_proto, data: dict[str, bytes]) -> None:
    """Moves tf2onnx's external tensor data (``{location: raw bytes}``) back into the model."""
    from onnx.external_data_helper import load_external_data_for_model

    with tempfile.TemporaryDirectory(prefix="tfmarket-onnx-") as tmp:
        for name, raw in data.items():
            Path(tmp, name).write_bytes(raw)
        data.clear()
        load_external_data_for_model(model_proto, tmp)


def _phase_hook(on_phase: Callable[[str], None] | None) -> Callable[[str], None]:
    """Calls ``on_phase`` after a full garbage collection: TensorFlow's traced graphs and
    tf2onnx's are reference cycles, and a phase should not start on the previous one's."""
    import gc

    def phase(name: str) -> None:
        gc.collect()
        if on_phase:
            on_phase(name)

    return phase


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
               litert: bool = False, on_phase: Callable[[str], None] | None = None) -> dict:
    """Exports a run directory; writes the model card; returns it. ``on_phase``: as
    :func:`export_model`'s, also called with "load" (the run's model) first."""
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

    if on_phase:
        on_phase("load")
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
            if want_int8 else None, on_phase=on_phase)
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
            "onnx": result.get("onnx"),
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
