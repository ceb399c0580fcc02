"""Embedding image files with an exported ONNX model in onnxruntime.

Images are decoded and resized by the shared ``tfmarket.preprocess`` ops (the same ones training
used), batched, and fed as uint8 to the graph, which does the normalisation itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tfmarket.errors import TfmarketError


class OnnxEmbedder:
    """An onnxruntime session over an exported tfmarket model.

    Uses the CUDA execution provider when onnxruntime-gpu provides it, else the CPU.
    ``flip_test``: every image also runs mirrored left-right; the two embeddings are averaged
    and re-normalised, the attribute probabilities averaged (twice the compute; the usual
    re-ID test-time augmentation, as FastReID's ``TEST.FLIP``).
    """

    def __init__(self, model_path: str | Path, threads: int = 0, flip_test: bool = False):
        import onnxruntime as ort

        self.flip_test = bool(flip_test)
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
        card = self.path.parent / "model_card.json"
        self.card = json.loads(card.read_text()) if card.is_file() else None
        self.schema = model_schema(self.card, self.output_names, self.path)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """uint8 [B, H, W, 3] -> {output name: array [B, ...]}."""
        if images.shape[1:] != (self.height, self.width, 3) or images.dtype != np.uint8:
            raise TfmarketError(
                f"model expects uint8 images of {self.height}x{self.width}x3, got "
                f"{images.dtype} {images.shape[1:]}")
        values = self.session.run(self.output_names, {self.input_name: images})
        out = dict(zip(self.output_names, values, strict=True))
        if self.flip_test:
            mirrored = np.ascontiguousarray(images[:, :, ::-1])
            flipped = self.session.run(self.output_names, {self.input_name: mirrored})
            for name, value in zip(self.output_names, flipped, strict=True):
                out[name] = (out[name] + value) / 2
            if "embedding" in out:
                norm = np.linalg.norm(out["embedding"], axis=-1, keepdims=True)
                out["embedding"] = out["embedding"] / np.maximum(norm, 1e-12)
        return out

    def embed_files(self, paths: list[str], batch_size: int = 64, progress: str | None = None
                    ) -> dict[str, np.ndarray]:
        """Decodes and runs every file; returns {output: array [N, ...]} in ``paths`` order."""
        import tensorflow as tf

        from tfmarket.preprocess import load_image

        n = len(paths)
        if n == 0:
            return {name: np.zeros((0,), np.float32) for name in self.output_names}
        ds = tf.data.Dataset.from_tensor_slices([str(p) for p in paths])
        ds = ds.map(lambda p: load_image(p, self.height, self.width),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        ds = ds.batch(batch_size).prefetch(2)
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
