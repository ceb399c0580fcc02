"""int8 variants of an exported ONNX model, for CPU serving (onnxruntime).

* dynamic: weights int8 ahead of time, activations quantised per batch at run time (no data
  needed; what ``export --int8`` wrote until 2026-12-03; far slower than fp32 on ResNet50 here);
* static: weights int8 per output channel and activations uint8 (or int8) with ranges
  calibrated once on real crops, written in QDQ format (QuantizeLinear/DequantizeLinear pairs
  that onnxruntime fuses into int8 kernels: VNNI on AVX-512 CPUs, AMX-INT8 where present);
  what ``export --int8`` writes.

Both take and give the same tensors as the float model (uint8 images [N, H, W, 3] in; embedding
and attribute outputs in float32), so ``rank --model model.int8.onnx`` needs nothing else.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from tfmarket.errors import TfmarketError

INPUT_NAME = "image"


DYNAMIC_INT8_METHOD = "dynamic: int8 weights, activations quantised per batch"


def static_int8_method(calibration_count: int, *, per_channel: bool = True,
                       activations: str = "uint8", reduce_range: bool = True) -> str:
    """The model card's words for :func:`quantize_static_int8` called with these options on
    ``calibration_count`` crops."""
    weights = ("per-channel int8 weights" if per_channel else "per-tensor int8 weights") + (
        " in 7 bits (reduce_range)" if reduce_range else "")
    layout = "U8S8" if activations == "uint8" else "S8S8"
    return (f"static: QDQ, {weights}, {activations} activations ({layout}) calibrated on "
            f"{calibration_count} training crops")


def quantize_dynamic_int8(onnx_path: str | Path, out_path: str | Path) -> Path:
    """Dynamic int8 (weights QInt8) -> ``out_path``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(onnx_path), str(out_path), weight_type=QuantType.QInt8)
    return Path(out_path)


class _Batches:
    """onnxruntime's CalibrationDataReader over uint8 images [N, H, W, 3], ``batch`` at a time."""

    def __init__(self, images: np.ndarray, batch: int):
        self.images, self.batch, self.start = images, batch, 0

    def get_next(self):
        if self.start >= len(self.images):
            return None
        chunk = self.images[self.start:self.start + self.batch]
        self.start += self.batch
        return {INPUT_NAME: chunk}

    def rewind(self):
        self.start = 0


def quantize_static_int8(onnx_path: str | Path, out_path: str | Path,
                         calibration_images: np.ndarray, *, batch: int = 2,
                         per_channel: bool = True, activations: str = "uint8",
                         reduce_range: bool = True) -> Path:
    """Static int8, QDQ format, per-channel weights, activation ranges from real crops.

    Args:
        onnx_path: the exported float model (input ``image`` uint8 [N, H, W, 3]).
        calibration_images: uint8 [N, H, W, 3], e.g. ~200 training crops decoded with
            :func:`tfmarket.preprocess.load_images_numpy` (the same preprocessing as serving).
        batch: images per calibration run. MinMax ranges are the minimum and maximum over
            every batch, so the batch changes only the memory: onnxruntime's calibration
            session holds every activation of a batch (5 GB for 32 crops of a ResNet50 at
            256x128, about a quarter of that at 8).
        activations: ``"uint8"`` (U8S8 with the int8 weights: the operand layout of x86's VNNI
            int8 dot products; 3.2x fp32 at batch 64 on the AMD EPYC here, see
            benchmarks/README.md) or ``"int8"`` (S8S8, onnxruntime's default for QDQ: 1.2x
            there). On x86 CPUs without VNNI (AVX2 only) U8S8's 16-bit intermediate sums can
            saturate unless ``reduce_range``.
        reduce_range: weights in 7 bits (|w| <= 64), so that a pair of u8 x s8 products fits
            the 16-bit sums of x86 CPUs without VNNI (``vpmaddubsw``), as onnxruntime advises
            for them. A model file does not know the CPU it will run on: with full-range
            weights the same file gave, on a 2-core AVX2-only AMD EPYC, attribute-decision
            agreement with Keras 0.90 in onnxruntime and 0.88 in OpenVINO (which saturate)
            against 0.95 in OpenCV's (which does not); with 7-bit weights 0.94 in all four
            runtimes (``tests/test_portable_onnx.py``'s smoke model).

    Returns:
        ``out_path``. The model is first shape-inferred (ONNX's inference, not the
        symbolic one) and optimised (``quant_pre_process``), as onnxruntime recommends
        before static quantisation.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if activations not in ("int8", "uint8"):
        raise TfmarketError(f"activations must be 'int8' or 'uint8', got {activations!r}")
    images = np.asarray(calibration_images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3 or not len(images):
        raise TfmarketError(
            f"calibration images must be uint8 [N, H, W, 3] with N > 0, got {images.dtype} "
            f"{list(images.shape)}")
    with tempfile.TemporaryDirectory(prefix="tfmarket-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # ONNX's own shape inference covers a CNN whose only free dimension is the batch;
        # the symbolic pass would add sympy, which no install extra brings in.
        quant_pre_process(str(onnx_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(out_path), _Batches(images, batch),
            quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            calibration_cache_path=None, reduce_range=reduce_range,
            nodes_to_exclude=one_wide_nodes(prepared),
        )
    return Path(out_path)


def one_wide_nodes(path: str | Path) -> list[str]:
    """The nodes of a shape-inferred ONNX model with an output of one channel (axis 1 of size
    1: [N, 1], [N, 1, H, W]), which static int8 leaves in float.

    In tfmarket's graphs these are the binary attribute heads (a one-unit Gemm and its Sigmoid)
    and the embedding's L2 norm: a tenth of a per cent of the compute. OpenCV DNN 5.0's engine
    quantises such a tensor to uint8 as all zeros (its QuantizeLinear is right for int8 and for
    two or more channels), so every binary head read 0.5; in float they run alike everywhere.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {info.name: info.type.tensor_type.shape for info in
              [*graph.value_info, *graph.output]}

    def one_wide(name: str) -> bool:
        shape = shapes.get(name)
        return (shape is not None and len(shape.dim) >= 2
                and shape.dim[1].HasField("dim_value") and shape.dim[1].dim_value == 1)

    return [node.name for node in graph.node if node.name and any(map(one_wide, node.output))]
