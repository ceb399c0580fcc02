"""Embedding image files with an exported model, in whichever runtime serves it.

Images are decoded and resized by the shared ``tfmarket.preprocess`` ops (the same ones training
used), batched, and fed as uint8 to the graph, which does the normalisation itself.
:func:`open_embedder` picks the runtime; every runtime's embedder shares the batching, the
flip test and the attribute schema of :class:`Embedder`, so they differ only in the call that
runs one batch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tfmarket.errors import TfmarketError
from tfmarket.retrieval.search import l2_normalize

# --runtime choices; "auto" goes by the file's extension (.tflite: LiteRT, else onnxruntime)
RUNTIMES = ("auto", "onnxruntime", "openvino", "litert")
RUNTIME_HELP = ("what runs the model (default auto: by the model file's extension, LiteRT for "
                ".tflite, onnxruntime for .onnx); openvino runs the same .onnx in OpenVINO (pip "
                "install 'tfmarket[openvino]'); litert a .tflite ('tfmarket[litert]')")


def open_embedder(model_path: str | Path, runtime: str = "auto", threads: int = 0,
                  flip_test: bool = False) -> Embedder:
    """The embedder of an exported model file in ``runtime`` (``auto``: by its extension)."""
    path = Path(model_path)
    if runtime not in RUNTIMES:
        raise TfmarketError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
    if runtime == "auto":
        runtime = "litert" if path.suffix.lower() == ".tflite" else "onnxruntime"
    if runtime == "litert":
        return LiteRTEmbedder(path, threads=threads, flip_test=flip_test)
    if runtime == "onnxruntime":
        return OnnxEmbedder(path, threads=threads, flip_test=flip_test)
    if runtime == "openvino":
        return OpenVinoEmbedder(path, threads=threads, flip_test=flip_test)
    raise AssertionError(runtime)  # pragma: no cover - every RUNTIMES entry is handled above


class Embedder:
    """What every runtime's embedder shares. A subclass sets ``path``, ``height``, ``width``,
    ``output_names``, ``providers`` (what runs it, for reports) and implements
    :meth:`_infer`, then calls :meth:`_read_card`.

    ``flip_test``: every image also runs mirrored left-right; the two embeddings are averaged
    and re-normalised, the attribute probabilities averaged (twice the compute; the usual
    re-ID test-time augmentation, as FastReID's ``TEST.FLIP``).
    """

    path: Path
    height: int
    width: int
    output_names: list[str]
    providers: list[str]

    def __init__(self, flip_test: bool = False):
        self.flip_test = bool(flip_test)

    def _read_card(self) -> None:
        card = self.path.parent / "model_card.json"
        self.card = json.loads(card.read_text()) if card.is_file() else None
        self.schema = model_schema(self.card, self.output_names, self.path)

    def _infer(self, images: np.ndarray) -> list[np.ndarray]:
        """uint8 [B, H, W, 3] -> one array per ``output_names`` entry, in that order."""
        raise NotImplementedError

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [B, H, W, 3] -> {output name: array [B, ...]}."""
        if images.shape[1:] != (self.height, self.width, 3) or images.dtype != np.uint8:
            raise TfmarketError(
                f"model expects uint8 images of {self.height}x{self.width}x3, got "
                f"{images.dtype} {images.shape[1:]}")
        out = dict(zip(self.output_names, self._infer(images), strict=True))
        if self.flip_test:
            mirrored = np.ascontiguousarray(images[:, :, ::-1])
            flipped = self._infer(mirrored)
            for name, value in zip(self.output_names, flipped, strict=True):
                out[name] = (out[name] + value) / 2
        if "embedding" in out:
            # Ranking takes q . g as the cosine. A float model's rows are unit already; an int8
            # model's come out of its last dequantisation 0.1% off, and the flip average shorter.
            out["embedding"] = l2_normalize(out["embedding"])
        return out

    def embed_files(self, paths: list[str], batch_size: int = 64, progress: str | None = None
                    ) -> dict[str, np.ndarray]:
        """Decodes and runs every file; returns {output: array [N, ...]} in ``paths`` order."""
        from tfmarket.preprocess import image_batches

        n = len(paths)
        if n == 0:
            return {name: np.zeros((0,), np.float32) for name in self.output_names}
        ds = image_batches(paths, self.height, self.width, batch_size)
        bar = _progress(n, progress)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.output_names}
        done = 0
        for batch in ds:
            out = self.run(batch.numpy())
            for name, value in out.items():
                parts[name].append(value)
            done += len(batch)
            if bar:
                bar.update(done)
        if bar:
            bar.close()
        return {name: np.concatenate(v) for name, v in parts.items()}


class OnnxEmbedder(Embedder):
    """An onnxruntime session over an exported tfmarket model.

    Uses the CUDA execution provider when onnxruntime-gpu provides it, else the CPU.
    """

    def __init__(self, model_path: str | Path, threads: int = 0, flip_test: bool = False):
        import onnxruntime as ort

        super().__init__(flip_test)
        self.path = Path(model_path)
        if not self.path.is_file():
            raise TfmarketError(f"{self.path}: model file not found")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        available = ort.get_available_providers()
        if "CUDAExecutionProvider" in available and hasattr(ort, "preload_dlls"):
            # onnxruntime-gpu finds the CUDA/cuDNN libraries of pip's nvidia-* wheels (the
            # [gpu] install) only once they are preloaded; without it the CUDA provider fails
            # to load and the session silently runs on the CPU.
            try:
                ort.preload_dlls()
            except Exception:  # noqa: BLE001 - system CUDA (e.g. Colab) needs no preloading
                pass
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise TfmarketError(f"{self.path}: not a loadable ONNX model ({exc})") from None
        self.providers = self.session.get_providers()
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        if model_input.type != "tensor(uint8)":
            raise TfmarketError(
                f"{self.path}: expected a uint8 image input, got {model_input.type}")
        self.height, self.width = int(model_input.shape[1]), int(model_input.shape[2])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._read_card()

    def _infer(self, images: np.ndarray) -> list[np.ndarray]:
        return self.session.run(self.output_names, {self.input_name: images})


class _ModelEmbedder(Embedder):
    """An embedder over a runtime's model wrapper (``height``, ``width``, ``output_names``,
    ``run(images)``): what the OpenVINO and LiteRT embedders share."""

    def _adopt(self, model_path: str | Path, model, providers: list[str]) -> None:
        self.path = Path(model_path)
        self.model = model
        self.height, self.width = model.height, model.width
        self.output_names = model.output_names
        self.providers = providers
        self._read_card()


class OpenVinoEmbedder(_ModelEmbedder):
    """An exported ONNX model compiled by OpenVINO for the CPU
    (:mod:`tfmarket.serving.openvino_runtime`: float layers in float32, dynamic batch);
    ``threads`` 0 = OpenVINO's default."""

    def __init__(self, model_path: str | Path, threads: int = 0, flip_test: bool = False):
        from tfmarket.serving.openvino_runtime import DEVICE, OpenVinoModel

        super().__init__(flip_test)
        self._adopt(model_path, OpenVinoModel(Path(model_path), threads=threads),
                    [f"OpenVINO {DEVICE}"])

    def _infer(self, images: np.ndarray) -> list[np.ndarray]:
        return self.model.run(images)


class LiteRTEmbedder(_ModelEmbedder):
    """A LiteRT interpreter (ai-edge-litert, XNNPACK on the CPU) over an exported ``.tflite``
    model (:mod:`tfmarket.serving.litert`); ``threads`` 0 = every usable core."""

    def __init__(self, model_path: str | Path, threads: int = 0, flip_test: bool = False):
        from tfmarket.serving.litert import LiteRTModel

        super().__init__(flip_test)
        self._adopt(model_path, LiteRTModel(Path(model_path), threads=threads), ["LiteRT CPU"])

    def _infer(self, images: np.ndarray) -> list[np.ndarray]:
        out = self.model.run(images)
        return [out[name] for name in self.output_names]


def model_schema(card: dict | None, output_names: list[str], path: Path):
    """The attribute schema of an exported model: its card's (Market-1501's for cards written
    before schemas); without a card, none for a model whose only output is the embedding, else
    Market-1501's. TfmarketError when the model lacks a head of that schema."""
    from tfmarket.attributes import MARKET, NO_ATTRIBUTES, schema_from_card

    if card is not None:
        try:
            schema = schema_from_card(card)
        except ValueError as exc:
            raise TfmarketError(f"{path.parent / 'model_card.json'}: {exc}") from None
    else:
        schema = NO_ATTRIBUTES if set(output_names) == {"embedding"} else MARKET
    missing = [h for h in schema.head_sizes if h not in output_names]
    if missing:
        raise TfmarketError(f"{path}: the model has no output for the {schema.name} attribute "
                            f"heads {', '.join(missing)} its card names")
    return schema


def _progress(total: int, label: str | None):
    """Count, images/s and ETA on stderr while embedding (None: silent)."""
    if not label:
        return None
    from tfmarket.console import Progress

    return Progress(total, label)
