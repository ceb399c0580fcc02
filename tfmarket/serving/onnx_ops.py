"""The ONNX operators an exported model may contain: the portable set, in one place.

``model.onnx`` is meant to run wherever a re-ID model is deployed: onnxruntime, OpenVINO,
OpenCV's DNN module (5.x, also from C++) and TensorRT. :data:`PORTABLE_OPERATORS` is what
tfmarket's serving graphs are made of (ResNet50 and the tiny test backbone, average or GeM
pooling, with or without the ``reduce`` layer; the normalisation folded into the first
convolution by :func:`tfmarket.model.fold.fold_normalization`) and what each of the four runs:
onnxruntime, OpenVINO and OpenCV DNN are run on tiny exports by the tests
(tests/test_portable_onnx.py), TensorRT is checked against its ONNX parser's operator table
(onnx-tensorrt's docs/operators.md; no GPU here to run it). ``model.int8.onnx`` adds the QDQ
pair (:data:`QUANTIZED_OPERATORS`).

An operator outside the set is a portability regression: export records it in the model card
(``onnx.models.<file>.outside_portable_set``) and the tests fail. Widening the set means
checking the operator in all four runtimes first.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

RUNTIMES = ("onnxruntime", "OpenVINO", "OpenCV DNN 5.x", "TensorRT")
PORTABLE_OPERATORS = frozenset({
    # input: uint8 -> float, minus the ImageNet mean, NHWC -> NCHW
    "Cast", "Sub", "Transpose",
    # backbone (batch normalisation is folded into the convolutions by the converter)
    "Conv", "Relu", "Add", "Pad", "MaxPool",
    # pooling: average, or GeM (clamp, power, mean, root)
    "GlobalAveragePool", "Max", "Pow", "ReduceMean", "Squeeze",
    # BN neck, dense layers and heads (int8: onnxruntime's pre-processing fuses MatMul + Add
    # into Gemm)
    "MatMul", "Gemm", "Mul", "Sigmoid", "Softmax",
    # the embedding's L2 normalisation: x / sqrt(max(sum(x * x), eps))
    "ReduceSum", "Sqrt", "Div",
})
QUANTIZED_OPERATORS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def operator_counts(path: str | Path) -> Counter:
    """How often each operator occurs in the ONNX file's graph, keyed ``op_type`` for the
    standard domain and ``domain:op_type`` for any other (e.g. ``com.microsoft:QLinearAdd``)."""
    return _read(path)[1]


def outside_portable_set(operators, quantized: bool = False) -> list[str]:
    """The ``operators`` (names, or an ONNX file to read them from) that are not in the
    portable set (with the QDQ pair when ``quantized``), sorted; [] for a portable model."""
    if isinstance(operators, (str, Path)):
        operators = operator_counts(operators)
    allowed = PORTABLE_OPERATORS | (QUANTIZED_OPERATORS if quantized else frozenset())
    return sorted(set(operators) - allowed)


def operators_report(paths: list[Path]) -> dict:
    """The model card's ``onnx`` entry for the exported ONNX files ``paths``: the portable set,
    and each file's opset, operators and those outside the set (the QDQ pair counts as
    portable in ``*.int8.onnx``)."""
    models = {}
    for path in paths:
        opset, counts = _read(path)
        models[path.name] = {"opset": opset, "operators": sorted(counts),
                             "outside_portable_set": outside_portable_set(
                                 counts, quantized=".int8." in path.name)}
    return {"portable_runtimes": list(RUNTIMES),
            "portable_operators": sorted(PORTABLE_OPERATORS),
            "quantized_operators": sorted(QUANTIZED_OPERATORS),
            "models": models}


def _read(path: str | Path) -> tuple[int | None, Counter]:
    """(the standard domain's opset, the operator counts) of an ONNX file."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return opset, Counter(node.op_type if node.domain in ("", "ai.onnx") else
                          f"{node.domain}:{node.op_type}" for node in model.graph.node)
