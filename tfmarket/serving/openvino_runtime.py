"""Running an exported ONNX model (``model.onnx`` / ``model.int8.onnx``) in OpenVINO.

OpenVINO reads the ONNX file itself (no conversion step, no IR files to keep beside it) and
compiles it for the CPU. Two settings keep its outputs those of the exported model:

* ``INFERENCE_PRECISION_HINT`` is ``f32``: on CPUs with AVX-512 BF16 or AMX, OpenVINO's
  default runs float layers in bfloat16, which moved the smoke model's embedding by 6e-4 here,
  beyond the export's 1e-4 parity; int8 layers of ``model.int8.onnx`` stay int8 either way.
* the input keeps the graph's dynamic batch: one compiled model serves every batch size.

``threads`` sets ``INFERENCE_NUM_THREADS`` (0: OpenVINO's default, every core of the machine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tfmarket.errors import TfmarketError

INSTALL_HINT = "install it with: pip install 'tfmarket[openvino]'"
DEVICE = "CPU"


def openvino_module():
    """The ``openvino`` package; TfmarketError naming the extra when it is missing."""
    try:
        import openvino
    except ImportError:
        raise TfmarketError(f"--runtime openvino needs OpenVINO: {INSTALL_HINT}") from None
    return openvino


class OpenVinoModel:
    """One exported ONNX model compiled by OpenVINO for the CPU.

    Args:
        path: a tfmarket ``model.onnx`` / ``model.int8.onnx``: one input, uint8 [B, H, W, 3].
        threads: inference threads (0 = OpenVINO's default).

    Attributes:
        height, width: the input size.
        output_names: the graph's output names (``embedding`` and the attribute heads).
        version: OpenVINO's version string.
    """

    def __init__(self, path: str | Path, threads: int = 0):
        ov = openvino_module()
        self.path = Path(path)
        if not self.path.is_file():
            raise TfmarketError(f"{self.path}: model file not found")
        core = ov.Core()
        try:
            model = core.read_model(str(self.path))
        except Exception as exc:  # OpenVINO raises RuntimeError and its own GeneralFailure
            raise TfmarketError(f"{self.path}: not a model OpenVINO reads "
                                f"({str(exc).strip().splitlines()[0][:200]})") from None
        if len(model.inputs) != 1:
            raise TfmarketError(f"{self.path}: expected one image input, got "
                                f"{len(model.inputs)}")
        model_input = model.inputs[0]
        shape = model_input.get_partial_shape()
        if (model_input.get_element_type() != ov.Type.u8 or shape.rank.get_length() != 4
                or not all(shape[i].is_static for i in (1, 2, 3)) or shape[3].get_length() != 3):
            raise TfmarketError(f"{self.path}: expected a uint8 image input [B, H, W, 3], got "
                                f"{model_input.get_element_type()} {shape}")
        self.height, self.width = shape[1].get_length(), shape[2].get_length()
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.compiled = core.compile_model(model, DEVICE, config)
        self.request = self.compiled.create_infer_request()
        self.output_names = [output.get_any_name() for output in self.compiled.outputs]
        self.version = ov.get_version()

    def run(self, images: np.ndarray) -> list[np.ndarray]:
        """uint8 [B, H, W, 3] -> one float32 array per ``output_names`` entry, in that order."""
        # share_outputs=False (the default) copies: the request reuses its buffers next call.
        result = self.request.infer({0: np.ascontiguousarray(images)})
        return [result[output] for output in self.compiled.outputs]
