"""LiteRT (TensorFlow Lite) models of an export: conversion, and running them with ai-edge-litert.

``export --litert`` converts the SavedModel it has just written (no second trace of the Keras
model) into ``model.tflite`` (float32, built-in ops only, so the plain LiteRT runtime of a phone,
a Raspberry Pi or a Coral board's CPU runs it) and, with ``--int8``, ``model.int8.tflite``:

* weights int8 (per channel for convolutions) and activations int8, their ranges calibrated on
  the same training crops as ``model.int8.onnx``;
* the input stays the graph's own uint8 images [B, H, W, 3] (the cast to float and the
  normalisation are inside, quantised like the rest), the outputs stay float32 under the same
  names, so a consumer sees the float model's tensors;
* the embedding's L2 normalisation (the ``embedding`` layer's square / sum / rsqrt / multiply)
  is left in float32: in int8 its rsqrt has 256 levels and the "unit" rows came out with norms
  from 0.994 to 1.031 on the smoke model; in float they are unit to 1e-7 and the embedding's
  cosine to the float model rose from 0.993 to 0.9994 (minimum over the parity images).

Both keep the SavedModel's dynamic batch (input shape signature [-1, H, W, 3]); the signature
runner resizes the input tensor to each batch (``resize_tensor_input``) before running it.
Outputs are read by name from the ``serving_default`` signature: the flatbuffer's own output
tensors are named ``StatefulPartitionedCall_1:N``, in no useful order.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from tfmarket.errors import TfmarketError
from tfmarket.hardware import usable_cores

INSTALL_HINT = "install it with: pip install 'tfmarket[litert]' (ai-edge-litert)"
SIGNATURE = "serving_default"  # the SavedModel's serving signature, kept by the converter
# Tensors of the L2Normalize layer named "embedding" (tfmarket.model.network) in the converted
# graph: "<model>/<backbone model>/embedding_1/Sum" and the like, ";"-joined where ops fused.
_EMBEDDING_OP = re.compile(r"(^|/)embedding(_\d+)?/")
# The converter's quantisation debugger opens its debug model with tf.lite's own interpreter,
# which warns that it is deprecated in favour of ai-edge-litert's (used everywhere else here).
HARMLESS_CONVERTER_WARNINGS = ((UserWarning, r"\s*Warning: tf\.lite\.Interpreter is deprecated"),)


def interpreter_class():
    """``ai_edge_litert.interpreter.Interpreter``; TfmarketError naming the extra when missing."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise TfmarketError(f"LiteRT models need the ai-edge-litert runtime: {INSTALL_HINT}"
                            ) from None
    return Interpreter


class LiteRTModel:
    """One exported ``.tflite`` model in a LiteRT interpreter.

    Args:
        path: a tfmarket ``model.tflite`` / ``model.int8.tflite``: one signature whose one input
            is uint8 [B, H, W, 3].
        threads: CPU threads (0 = every core this process may use; LiteRT's own default is 1).

    Attributes:
        height, width: the input size.
        output_names: the signature's output names (``embedding`` and the attribute heads).
    """

    def __init__(self, path: str | Path, threads: int = 0):
        interpreter = interpreter_class()
        self.path = Path(path)
        if not self.path.is_file():
            raise TfmarketError(f"{self.path}: model file not found")
        if int(threads) < 0:
            raise TfmarketError(f"threads must be >= 0 (0 = every core), got {threads}")
        self.threads = int(threads) or usable_cores()
        try:
            self.interpreter = interpreter(model_path=str(self.path), num_threads=self.threads)
            signatures = self.interpreter.get_signature_list()
        except (ValueError, RuntimeError) as exc:
            raise TfmarketError(f"{self.path}: not a loadable LiteRT model "
                                f"({str(exc).strip().splitlines()[0][:200]})") from None
        if not signatures:
            raise TfmarketError(f"{self.path}: the LiteRT model has no signature; tfmarket's "
                                "export writes one named serving_default")
        key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
        self.runner = self.interpreter.get_signature_runner(key)
        inputs = self.runner.get_input_details()
        if len(inputs) != 1:
            raise TfmarketError(f"{self.path}: expected one image input, got {sorted(inputs)}")
        (self.input_name, spec), = inputs.items()
        shape = [int(d) for d in spec["shape_signature"]]
        if spec["dtype"] != np.uint8 or len(shape) != 4 or shape[3] != 3:
            raise TfmarketError(f"{self.path}: expected a uint8 image input [B, H, W, 3], got "
                                f"{np.dtype(spec['dtype']).name} {shape}")
        self.height, self.width = shape[1], shape[2]
        self.output_names = list(signatures[key]["outputs"])

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [B, H, W, 3] -> {output name: float32 array [B, ...]}."""
        return self.runner(**{self.input_name: np.ascontiguousarray(images)})


def run_litert(path: str | Path, images: np.ndarray, threads: int = 0) -> dict[str, np.ndarray]:
    """Runs a ``.tflite`` model on uint8 images; returns {output name: array}."""
    return LiteRTModel(path, threads).run(images)


def _converter(saved_model: Path):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model), [SIGNATURE])
    # Built-in ops only: no Flex (TensorFlow) ops, which the plain LiteRT runtime lacks.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter


def _convert(convert, target: Path) -> Path:
    try:
        content = convert()
    except Exception as exc:  # noqa: BLE001 - the converter raises ConverterError and others
        raise TfmarketError(f"{target.name}: the LiteRT converter failed on the SavedModel "
                            f"({type(exc).__name__}: {str(exc).strip()[:400]})") from None
    target.write_bytes(content)
    return target


def convert_float(saved_model: str | Path, target: str | Path) -> Path:
    """SavedModel (uint8 images in, ``serve`` signature) -> float32 ``.tflite`` at ``target``."""
    target = Path(target)
    return _convert(_converter(Path(saved_model)).convert, target)


def convert_int8(saved_model: str | Path, float_model: str | Path, target: str | Path,
                 calibration_images: np.ndarray | None, batch: int = 16) -> tuple[Path, str]:
    """SavedModel -> integer-quantised ``.tflite`` at ``target``; returns (target, method).

    Args:
        saved_model: the export's SavedModel.
        float_model: its float ``.tflite`` (:func:`convert_float`), whose tensor names say which
            ops are the embedding's L2 normalisation, kept in float32.
        calibration_images: uint8 [N, H, W, 3] training crops, run ``batch`` at a time to set
            the activations' int8 ranges; None or empty: dynamic-range quantisation instead
            (int8 weights, float activations).
    """
    import tensorflow as tf

    target = Path(target)
    converter = _converter(Path(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if calibration_images is None or not len(calibration_images):
        return (_convert(converter.convert, target),
                "dynamic range: int8 weights, float32 activations")
    images = np.asarray(calibration_images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise TfmarketError(f"calibration images must be uint8 [N, H, W, 3], got "
                            f"{images.dtype} {list(images.shape)}")

    def batches():
        for start in range(0, len(images), batch):
            yield [images[start:start + batch]]

    converter.representative_dataset = batches
    # Float kernels stay allowed for the ops kept in float32 below.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
                                           tf.lite.OpsSet.TFLITE_BUILTINS]
    keep_float = embedding_normalisation_tensors(float_model)

    def convert():
        from tfmarket.console import harmless_warnings_ignored

        # The quantisation debugger is TensorFlow's public way to leave named ops unquantised.
        with harmless_warnings_ignored(HARMLESS_CONVERTER_WARNINGS):
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter, debug_dataset=batches,
                debug_options=tf.lite.experimental.QuantizationDebugOptions(
                    denylisted_nodes=keep_float))
            return debugger.get_nondebug_quantized_model()

    method = (f"full integer: per-channel int8 weights, int8 activations calibrated on "
              f"{len(images)} training crops; uint8 input, float32 outputs, the embedding's L2 "
              f"normalisation in float32")
    return _convert(convert, target), method


def embedding_normalisation_tensors(float_model: str | Path) -> list[str]:
    """Output tensor names of the ops of the ``embedding`` L2 normalisation in a float tfmarket
    ``.tflite``: the ``embedding`` layer's ops and the op writing the ``embedding`` output."""
    model = LiteRTModel(float_model, threads=1)
    names = [t["name"] for t in model.interpreter.get_tensor_details()
             if any(_EMBEDDING_OP.search(part) for part in t["name"].split(";"))]
    outputs = model.runner.get_output_details()
    if "embedding" not in outputs:
        raise TfmarketError(f"{float_model}: no 'embedding' output in its {SIGNATURE} signature")
    return sorted({*names, outputs["embedding"]["name"]})
