"""Inference throughput (images/s) of every way to serve a tfmarket model, and int8's accuracy cost.

    .venv/bin/python benchmarks/inference.py --random-init [--sizes 128x64,256x128]
        [--batches 1,64] [--repeats 3] [--seconds 3] [--threads 0] [--json out.json]
    .venv/bin/python benchmarks/inference.py --export exports/NAME --workdir runs/NAME
        [--random-init --sizes 128x64,256x128]      # + mAP / Rank-1 / mA with and without int8
    .venv/bin/python benchmarks/inference.py --quick   # 64x32, tiny backbone, batches 1 and 8

What it measures: images/s of one serving call, uint8 images [B, H, W, 3] in (already decoded
and resized: decoding is the same for every row and not timed), the L2-normalised embedding and
every attribute head's probabilities out as NumPy arrays, at 128x64 and 256x128 (``--sizes``),
batch 1 and 64 (``--batches``). Rows:

* ``ort-fp32``: onnxruntime (CPU provider) on ``model.onnx``: the reference of the ratio column.
* ``ort-int8-dynamic``: ``onnxruntime.quantization.quantize_dynamic(weight_type=QInt8)`` of it
  (``tfmarket.serving.quantize.quantize_dynamic_int8``; what ``export --int8`` wrote until
  2026-12-03).
* ``ort-int8-static``: QDQ, per-channel, calibrated on ``--calibration-images`` (200) real
  training crops, by ``tfmarket.serving.quantize.quantize_static_int8`` with int8 activations
  (S8S8).
  ``ort-int8-static-u8``: the same with uint8 activations (U8S8, the operand layout of x86's
  VNNI int8 dot products): what ``export --int8`` writes as ``model.int8.onnx``.
  Where that function cannot be imported the row is left out and the reason printed.
* ``ov-fp32`` / ``ov-int8``: OpenVINO (CPU) on ``model.onnx`` / on the U8S8 int8 model, through
  tfmarket's own embedder (``open_embedder(runtime="openvino")``, what ``rank --runtime openvino``
  runs).
* ``litert-fp32`` / ``litert-int8``: LiteRT on ``model.tflite`` / ``model.int8.tflite``, converted
  here from the SavedModel by ``tfmarket.serving.litert`` as ``export --litert --int8`` converts
  them (the int8 one calibrated on the same crops), run by tfmarket's LiteRT embedder.
* ``keras``: :func:`tfmarket.model.network.build_inference_model` (the graph export writes), called
  with ``predict_on_batch`` (Keras's compiled predict function; ``__call__`` runs eagerly).
* ``savedmodel``: ``tf.saved_model.load(saved_model/).serve``, what TF Serving would run.
* ``torch-fp32`` / ``torch-bf16``: the original project's stack: torchvision ``resnet50`` (v1.5)
  trunk with the same last-stride-1 change, average pooling, a BatchNorm1d neck, the embedding
  L2-normalised and one linear head per attribute (softmax / sigmoid), eval mode,
  ``channels_last``, ``torch.inference_mode()``; bf16 = ``torch.autocast("cpu", bfloat16)``.
  Its input is the same uint8 NHWC array; the cast to float and the ImageNet normalisation run
  inside the timed call, as they do inside the exported graphs.

Models. ``--random-init`` builds :func:`tfmarket.model.network.build_model` (``--backbone``
resnet50, random weights, last stride 1, avg pooling, 751 identities) at every size and exports it
with :func:`tfmarket.serving.export.export_model` (SavedModel + ONNX, export's parity check) into a
scratch folder (``--models-dir``, default a temporary one): speed does not depend on the weights.
``--export DIR`` (a folder written by ``python -m tfmarket.export --onnx``) serves its own size
from its files: ``model.onnx`` and ``saved_model/``; both int8 variants are quantised here from
``model.onnx`` into the scratch folder. Its
``keras`` row is the architecture of the model card's ``training_config`` with random weights
(export keeps no ``.keras`` file). ``--export`` alone measures its size only; with
``--random-init`` too, the other ``--sizes`` get random-init models.

Images: real crops of the ``train/`` folder of ``--data`` (default
``../shared/data/market1501-course`` relative to the repository root) decoded and resized by
:func:`tfmarket.preprocess.load_images_numpy`, the loader export and ranking use; with
``--workdir`` only the run's training identities (never its validation identities). The
calibration crops (evenly spaced over the folder) and the timed crops (a different stride) are
taken once per size; a batch-1 row cycles through the timed crops.

Timing on a shared, noisy machine: every (row, size) lives in its own Python process (its
threads and memory apart; waiting rows sleep in a pipe read), built and warmed up once
(``--warmup`` calls per batch size: tracing, oneDNN's first slow calls); then, in each of
``--repeats`` rounds, for each batch size the rows take turns (order reversed every other
round), each calling its model until ``--seconds`` have passed (at least one call). A row's
images/s is the median over rounds with min-max; its ratio to ``ort-fp32`` is the median of
per-round ratios (both sides measured seconds apart). Threads: ``--threads N`` sets onnxruntime's
``intra_op_num_threads``, TensorFlow's intra- and inter-op threads and ``torch.set_num_threads``
to N; 0 (default) leaves each library's default (onnxruntime and torch: one per physical core;
TensorFlow: every logical core). The CPU model with its bf16 / AMX / VNNI flags heads the
output; each row's thread setting and peak resident memory are in the table and the JSON.

Accuracy (``--export`` with ``--workdir RUN``, the run it was exported from): the run's validation
split (``config.yaml``'s ``data.validation``, read by ``tfmarket.training.data.load_training_data``,
as ``python -m tfmarket.calibrate`` reads it), every image decoded once and embedded by each ONNX
model (:class:`tfmarket.serving.embed.OnnxEmbedder`, no flip test), scored by
:func:`tfmarket.training.evaluation.score` (what validation during training reports): mAP and Rank-1
of the validation queries vs gallery (Market-1501 protocol) and label-based attribute mA; the int8
rows also show the drop from fp32. Target: int8 at least ``--target-speedup`` (2) x ort-fp32's
images/s at the largest batch, with at most ``--target-map-loss`` (0.01) mAP lost.

``--quick``: one size 64x32, the ``tiny`` backbone (three conv stages; random init), batches 1
and 8, 1 round of 0.3 s, 16 calibration crops. The torch rows then use torchvision
``resnet18`` (the tiny backbone has no torchvision twin; resnet18 keeps the torch code path
running for seconds of CPU): it proves the script runs; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import machine_info, render_table, write_json  # benchmarks/_report.py

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NUM_IDS = 751  # Market-1501 training identities (the random-init models' ID head)
ROWS = ("ort-fp32", "ort-int8-dynamic", "ort-int8-static", "ort-int8-static-u8", "ov-fp32",
        "ov-int8", "litert-fp32", "litert-int8", "keras", "savedmodel", "torch-fp32",
        "torch-bf16")
# Rows served by tfmarket's own embedders in another runtime (open_embedder): row -> (the row
# whose model file it runs, or its LiteRT file, and the runtime). ov-int8 runs the U8S8 QDQ
# model that ``export --int8`` writes; the LiteRT files are converted here from the SavedModel
# as ``export --litert [--int8]`` converts them.
RUNTIME_ROWS = {"ov-fp32": ("ort-fp32", "openvino"), "ov-int8": ("ort-int8-static-u8", "openvino"),
                "litert-fp32": ("model.tflite", "litert"),
                "litert-int8": ("model.int8.tflite", "litert")}
ONNX_FILES = {"ort-fp32": "model.onnx", "ort-int8-dynamic": "model.int8.onnx",
              "ort-int8-static": "model.int8-static.onnx",
              "ort-int8-static-u8": "model.int8-static-u8.onnx"}
INT8_ROWS = ("ort-int8-dynamic", "ort-int8-static", "ort-int8-static-u8")
REFERENCE = "ort-fp32"
TORCH_HINT = ("torch rows skipped: torch/torchvision not importable ({error}); install with "
              ".venv/bin/pip install torch==2.14.1 torchvision==0.29.1")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--export", help="an exported model folder (model.onnx, saved_model/, "
                        "model_card.json): its size is measured with its own files")
    parser.add_argument("--workdir", help="with --export: the run it came from; adds validation "
                        "mAP / Rank-1 / mA of fp32 vs int8")
    parser.add_argument("--random-init", action="store_true",
                        help="random-init models for --sizes (implied without --export)")
    parser.add_argument("--sizes", default=None,
                        help="HxW list, default 128x64,256x128 (--export alone: its size; "
                        "--quick: 64x32)")
    parser.add_argument("--batches", default=None, help="batch sizes, default 1,64 (--quick: 1,8)")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"which rows, default all: {','.join(ROWS)}")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds, default 3 (--quick: 1)")
    parser.add_argument("--seconds", type=float, default=None,
                        help="timed seconds per row, batch and round, default 3 (--quick: 0.3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls per batch size after building, default 3 "
                        "(--quick: 1)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads of every library (0 = each one's default)")
    parser.add_argument("--backbone", default=None, choices=("resnet50", "tiny"),
                        help="random-init models' backbone, default resnet50 (--quick: tiny)")
    parser.add_argument("--torch-arch", default=None, choices=("resnet50", "resnet18"),
                        help="torchvision model of the torch rows, default resnet50 "
                        "(--quick: resnet18)")
    parser.add_argument("--calibration-images", type=int, default=None,
                        help="training crops for static int8 calibration, default 200 "
                        "(--quick: 16)")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"
                                              / "market1501-course"),
                        help="dataset root whose train/ folder gives the crops (default "
                        "../shared/data/market1501-course)")
    parser.add_argument("--layout", default="course", help="--data's layout (course, "
                        "market1501, auto)")
    parser.add_argument("--models-dir", help="keep the built / quantised models here (default: "
                        "a temporary folder, deleted at the end)")
    parser.add_argument("--target-speedup", type=float, default=2.0)
    parser.add_argument("--target-map-loss", type=float, default=0.01)
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 64x32, tiny backbone, batches 1 and 8, 1 round of "
                        "0.3 s, torch rows with resnet18")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a row's worker, JSON spec
    return parser


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")
            if item.strip()]


def _size(height: int, width: int) -> str:
    return f"{height}x{width}"


# --- workers: one (row, size) each ------------------------------------------------------------


def _batches_of(images: np.ndarray, batch: int) -> list[np.ndarray]:
    """Contiguous uint8 batches of ``batch`` distinct crops (a row cycles through them)."""
    count = max(1, len(images) // batch)
    return [np.ascontiguousarray(images[i * batch:(i + 1) * batch]) for i in range(count)]


def ort_runner(spec: dict):
    """onnxruntime CPU session -> (call(batch) -> outputs, facts)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if spec["threads"]:
        options.intra_op_num_threads = spec["threads"]
    session = ort.InferenceSession(spec["model"], options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]

    def call(batch: np.ndarray):
        return session.run(outputs, {name: batch})

    return call, {"threads": spec["threads"] or "ort default",
                  "onnxruntime": ort.__version__}


def _tf_threads(threads: int):
    import tensorflow as tf

    if threads:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    return tf


def keras_runner(spec: dict):
    """The inference model export writes (random weights), ``predict_on_batch``."""
    tf = _tf_threads(spec["threads"])
    import keras

    from tfmarket.model.network import build_inference_model, build_model

    keras.utils.set_random_seed(0)
    arch = spec["arch"]
    model = build_model(arch["num_ids"], height=spec["height"], width=spec["width"],
                        backbone=arch["backbone"], weights=None,
                        last_stride=arch["last_stride"], pooling=arch["pooling"],
                        embedding_dim=arch["embedding_dim"],
                        fused_batchnorm=arch["fused_batchnorm"])
    inference = build_inference_model(model)

    def call(batch: np.ndarray):
        return inference.predict_on_batch(batch)  # dict of NumPy arrays

    return call, {"threads": spec["threads"] or "tf default", "tensorflow": tf.__version__,
                  "keras": keras.__version__}


def savedmodel_runner(spec: dict):
    """``tf.saved_model.load(...).serve``, outputs copied to NumPy."""
    tf = _tf_threads(spec["threads"])
    loaded = tf.saved_model.load(spec["model"])  # kept referenced: serve uses its variables

    def call(batch: np.ndarray):
        return {k: v.numpy() for k, v in loaded.serve(tf.constant(batch)).items()}

    return call, {"threads": spec["threads"] or "tf default", "tensorflow": tf.__version__}


def torch_reid_model(arch: str, last_stride: int = 1):
    """torchvision trunk + avg pool + BN neck + attribute heads: uint8 NHWC -> outputs dict."""
    import torch
    import torchvision

    from tfmarket.attributes import HEADS
    from tfmarket.preprocess import MEAN_RGB, STD_RGB

    class ReidNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            net = getattr(torchvision.models, arch)(weights=None)
            if last_stride == 1:
                block = net.layer4[0]
                for conv in (block.conv1, getattr(block, "conv2", None), block.downsample[0]):
                    if conv is not None and conv.stride == (2, 2):
                        conv.stride = (1, 1)
            features = net.fc.in_features
            self.trunk = torch.nn.Sequential(*list(net.children())[:-2])
            self.neck = torch.nn.BatchNorm1d(features)
            self.neck.bias.requires_grad_(False)
            self.heads = torch.nn.ModuleDict(
                {h: torch.nn.Linear(features, n) for h, n in HEADS.items()})
            self.register_buffer("mean", torch.tensor(MEAN_RGB).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(STD_RGB).view(1, 3, 1, 1))

        def forward(self, images):  # uint8 [B, H, W, 3]
            # NHWC permuted to NCHW is already channels_last in memory.
            x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
            pooled = self.trunk(x).mean(dim=(2, 3))
            neck = self.neck(pooled)
            out = {"embedding": torch.nn.functional.normalize(neck.float(), dim=1)}
            for head, linear in self.heads.items():
                logits = linear(neck).float()
                out[head] = torch.sigmoid(logits) if HEADS[head] == 1 else logits.softmax(-1)
            return out

    return ReidNet()


def torch_runner(spec: dict):
    import torch

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model = torch_reid_model(spec["torch_arch"]).to(memory_format=torch.channels_last).eval()
    bf16 = spec["row"] == "torch-bf16"

    def call(batch: np.ndarray):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(torch.from_numpy(batch))
        return {k: v.numpy() for k, v in out.items()}

    return call, {"threads": torch.get_num_threads(), "torch": torch.__version__,
                  "torch_arch": spec["torch_arch"]}


def embedder_runner(spec: dict):
    """tfmarket's embedder of the row's runtime (OpenVINO, LiteRT), no flip test."""
    from tfmarket.serving.embed import open_embedder

    embedder = open_embedder(spec["model"], runtime=spec["runtime"], threads=spec["threads"])

    def call(batch: np.ndarray):
        return embedder.run(batch)

    return call, {"threads": spec["threads"] or f"{spec['runtime']} default",
                  "runtime": spec["runtime"], "providers": list(embedder.providers)}


RUNNERS = {"ort-fp32": ort_runner, "ort-int8-dynamic": ort_runner,
           "ort-int8-static": ort_runner, "ort-int8-static-u8": ort_runner,
           **{row: embedder_runner for row in RUNTIME_ROWS},
           "keras": keras_runner,
           "savedmodel": savedmodel_runner, "torch-fp32": torch_runner,
           "torch-bf16": torch_runner}


def peak_rss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` (Linux; reset by exec, unlike
    ``ru_maxrss``, which keeps the forking parent's peak), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_main(spec_text: str) -> int:
    """Worker side of :class:`Worker`: build, warm up, then answer ``run B SECONDS`` lines."""
    spec = json.loads(spec_text)
    start = time.perf_counter()
    call, facts = RUNNERS[spec["row"]](spec)
    images = np.load(spec["images"])
    batches = {b: _batches_of(images, b) for b in spec["batches"]}
    for b in spec["batches"]:
        for i in range(spec["warmup"]):
            call(batches[b][i % len(batches[b])])
    facts["warmup_seconds"] = time.perf_counter() - start
    facts["peak_rss_mb"] = peak_rss_mb()
    print("READY " + json.dumps(facts), flush=True)
    for line in sys.stdin:
        command, *values = line.split()
        if command != "run":
            break
        batch, seconds = int(values[0]), float(values[1])
        calls, elapsed, start = 0, 0.0, time.perf_counter()
        while calls == 0 or elapsed < seconds:
            call(batches[batch][calls % len(batches[batch])])
            calls += 1
            elapsed = time.perf_counter() - start
        print("TIME " + json.dumps({"images": calls * batch, "seconds": elapsed, "calls": calls}),
              flush=True)
    return 0


class Worker:
    """One (row, size) in its own Python process, built and warmed up once, then timed on
    request; its stderr goes to a file (read back when it dies), so it can never block."""

    def __init__(self, spec: dict, log_dir: Path):
        self.spec = spec
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        self.log = log_dir / f"{spec['row']}-{_size(spec['height'], spec['width'])}.stderr"
        with self.log.open("w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, __file__, "--child", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
                env=env)
        self.facts = self._reply("READY")

    def _reply(self, tag: str) -> dict:
        for line in self.process.stdout:
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1:])
        self.process.wait(timeout=60)
        error = self.log.read_text().strip().splitlines()[-3:]
        raise RuntimeError(f"{self.spec['row']} worker died: " + " | ".join(error))

    def run(self, batch: int, seconds: float) -> dict:
        self.process.stdin.write(f"run {batch} {seconds}\n")
        self.process.stdin.flush()
        return self._reply("TIME")

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                self.process.stdin.write("quit\n")
                self.process.stdin.flush()
            except BrokenPipeError:
                pass
            self.process.wait(timeout=60)


# --- models and images ------------------------------------------------------------------------


def crop_paths(args, run_data=None) -> list[str]:
    """Training crops: the run's training identities (with --workdir), else --data's train/."""
    if run_data is not None:
        return list(run_data.records.paths)
    from tfmarket.data.registry import load_dataset

    root = Path(args.data)
    if not root.is_dir():
        raise SystemExit(f"--data {root}: no such folder (the crops timed and used for "
                         "calibration come from its train/ folder)")
    return list(load_dataset(root, args.layout).train.paths)


def spread(paths: list[str], count: int, offset: int = 0) -> list[str]:
    """``count`` paths evenly spaced over the list, starting ``offset`` into each step."""
    step = max(1, len(paths) // max(1, count))
    return paths[min(offset, step - 1)::step][:count]


def quantize_dynamic_int8(onnx_path: Path, out: Path) -> Path:
    """What ``tfmarket.export --int8`` writes: weights int8 per tensor, activations at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(onnx_path), str(out), weight_type=QuantType.QInt8)
    return out


def prepare_size(height: int, width: int, source: str, args, paths: list[str],
                 folder: Path, notes: list[str]) -> dict:
    """Models and images of one size -> {row: model path or None, "images", "arch", ...}.

    ``source``: "export" (``args.export``'s files) or "random" (built here).
    """
    from tfmarket.preprocess import load_images_numpy

    folder.mkdir(parents=True, exist_ok=True)
    size = _size(height, width)
    timed = load_images_numpy(spread(paths, max(args.batch_list), offset=1), height, width)
    if len(timed) < max(args.batch_list):  # a small folder: repeat crops to fill a batch
        timed = np.resize(timed, (max(args.batch_list), *timed.shape[1:]))
    np.save(folder / "images.npy", timed)
    calibration = load_images_numpy(spread(paths, args.calibration_images), height, width)
    prepared = {"size": size, "images": str(folder / "images.npy"), "source": source,
                "models": {}, "quantize_seconds": {}}
    if source == "export":
        export = Path(args.export)
        card = read_card(export)
        prepared["arch"] = card_arch(card) if card else None
        if card is None:
            notes.append(f"{size}: keras row skipped: {export} has no model_card.json (its "
                         "architecture)")
        prepared["models"]["savedmodel"] = str(export / "saved_model")
        fp32 = export / "model.onnx"
    else:
        print(f"  {size}: building a random-init {args.backbone} model and exporting it "
              "(SavedModel + ONNX)", flush=True)
        fp32, arch = build_random_export(height, width, args.backbone, folder, calibration[:8])
        prepared["arch"] = arch
        prepared["models"]["savedmodel"] = str(folder / "saved_model")
    prepared["models"]["ort-fp32"] = str(fp32)
    wanted = {r.strip() for r in args.rows.split(",")}
    wanted |= {RUNTIME_ROWS[r][0] for r in wanted if r in RUNTIME_ROWS}  # ov-int8's model
    for row in INT8_ROWS:
        if row not in wanted:
            continue
        # Both variants are always made here from model.onnx (an export's model.int8.onnx is
        # one of them, static since 2026-12-03), so each row is what its name says.
        out = folder / ONNX_FILES[row]
        start = time.perf_counter()
        try:
            if row == "ort-int8-dynamic":
                quantize_dynamic_int8(fp32, out)
            else:
                try:
                    from tfmarket.serving.quantize import quantize_static_int8
                except ImportError as exc:
                    notes.append(f"{size}: ort-int8-static skipped: "
                                 "tfmarket.serving.quantize.quantize_static_int8 not "
                                 f"importable ({exc})")
                    continue
                out = Path(quantize_static_int8(
                    fp32, out, calibration,
                    activations="uint8" if row == "ort-int8-static-u8" else "int8"))
        except Exception as exc:  # noqa: BLE001 - reported, the other rows still run
            notes.append(f"{size}: {row} skipped: quantisation failed: "
                         f"{type(exc).__name__}: {exc}")
            continue
        prepared["models"][row] = str(out)
        prepared["quantize_seconds"][row] = time.perf_counter() - start
        print(f"  {size}: {row}: quantised in {time.perf_counter() - start:.1f} s"
              + (f" ({len(calibration)} calibration crops)" if "static" in row else ""),
              flush=True)
    prepared["calibration_images"] = len(calibration)
    if wanted & {"litert-fp32", "litert-int8"}:
        _prepare_runtime_rows(prepared, Path(prepared["models"]["savedmodel"]), calibration,
                              folder, notes)
    else:
        _prepare_runtime_rows(prepared, None, calibration, folder, notes, litert=False)
    return prepared


def _prepare_runtime_rows(prepared: dict, saved_model: Path | None, calibration: np.ndarray,
                          folder: Path, notes: list[str], litert: bool = True) -> None:
    """The OpenVINO rows' files (the ONNX rows') and (``litert``) the LiteRT files, converted
    from the SavedModel the way ``export --litert --int8`` converts them."""
    size = prepared["size"]
    for row, (source, runtime) in RUNTIME_ROWS.items():
        if runtime == "openvino" and source in prepared["models"]:
            prepared["models"][row] = prepared["models"][source]
    if not litert:
        return
    try:
        from tfmarket.serving.litert import convert_float, convert_int8
    except ImportError as exc:
        notes.append(f"{size}: litert rows skipped: tfmarket.serving.litert not importable "
                     f"({exc})")
        return
    start = time.perf_counter()
    try:
        fp32 = convert_float(saved_model, folder / "model.tflite")
        prepared["models"]["litert-fp32"] = str(fp32)
        int8, _ = convert_int8(saved_model, fp32, folder / "model.int8.tflite", calibration)
        prepared["models"]["litert-int8"] = str(int8)
    except Exception as exc:  # noqa: BLE001 - reported, the other rows still run
        notes.append(f"{size}: litert rows skipped: conversion failed: "
                     f"{type(exc).__name__}: {exc}")
        return
    prepared["quantize_seconds"]["litert-int8"] = time.perf_counter() - start
    print(f"  {size}: LiteRT float32 + int8 converted in {time.perf_counter() - start:.1f} s",
          flush=True)


def read_card(export: Path) -> dict | None:
    card = export / "model_card.json"
    return json.loads(card.read_text()) if card.is_file() else None


def card_arch(card: dict) -> dict:
    model = card["training_config"]["model"]
    return {"backbone": model["backbone"], "last_stride": model["last_stride"],
            "pooling": model["pooling"], "embedding_dim": model["embedding_dim"],
            "fused_batchnorm": model.get("fused_batchnorm", True),
            "num_ids": card.get("train_identities") or NUM_IDS}


def build_random_export(height: int, width: int, backbone: str, folder: Path, images
                        ) -> tuple[Path, dict]:
    """build_model (random init) -> export_model into ``folder``: (model.onnx, architecture)."""
    import keras

    from tfmarket.model.network import build_model
    from tfmarket.serving.export import export_model

    arch = {"backbone": backbone, "last_stride": 1, "pooling": "avg", "embedding_dim": 0,
            "fused_batchnorm": True, "num_ids": NUM_IDS}
    keras.utils.set_random_seed(0)
    model = build_model(NUM_IDS, height=height, width=width, backbone=backbone, weights=None,
                        last_stride=1, pooling="avg")
    # Random weights: the parity check only guards against a broken export here.
    result = export_model(model, folder, images, onnx=True, tolerance=1e-3)
    arch["parity_max_abs_diff"] = result["parity"]["max_abs_diff"]
    keras.backend.clear_session()
    return folder / "model.onnx", arch


def export_size(export: Path) -> tuple[int, int]:
    import onnx

    graph_input = onnx.load(str(export / "model.onnx"), load_external_data=False).graph.input[0]
    dims = graph_input.type.tensor_type.shape.dim
    return int(dims[1].dim_value), int(dims[2].dim_value)


# --- accuracy ---------------------------------------------------------------------------------


def load_run_data(workdir: Path):
    """The run's training data and validation split, as training and calibrate read them."""
    from dataclasses import replace

    import yaml

    from tfmarket.config import from_dict
    from tfmarket.training.data import load_training_data

    if not (workdir / "config.yaml").is_file():
        raise SystemExit(f"--workdir {workdir}: not a tfmarket run directory (no config.yaml)")
    config = from_dict(yaml.safe_load((workdir / "config.yaml").read_text()))
    data_cfg = config.data
    if data_cfg.root and not Path(data_cfg.root).is_absolute() and not Path(
            data_cfg.root).exists() and (REPO / data_cfg.root).exists():
        data_cfg = replace(data_cfg, root=str(REPO / data_cfg.root))  # relative to the repo
    if data_cfg.validation == "none":
        raise SystemExit(f"--workdir {workdir}: data.validation: none (no validation split "
                         "to score int8 on)")
    return load_training_data(data_cfg, workdir), (data_cfg.height, data_cfg.width)


def validation_accuracy(models: dict[str, str], data, height: int, width: int,
                        threads: int) -> dict[str, dict]:
    """{row: {mAP, rank1, mA, ...}} of each served model on the run's validation split."""
    from tfmarket.preprocess import load_images_numpy
    from tfmarket.serving.embed import open_embedder
    from tfmarket.training.evaluation import score

    start = time.perf_counter()
    query = load_images_numpy(data.val_query.paths, height, width)
    gallery = load_images_numpy(data.val_gallery.paths, height, width)
    print(f"  validation ({data.validation}): {len(query)} queries x {len(gallery)} gallery "
          f"images decoded in {time.perf_counter() - start:.1f} s", flush=True)
    results = {}
    for row, path in models.items():
        start = time.perf_counter()
        runtime = RUNTIME_ROWS[row][1] if row in RUNTIME_ROWS else "onnxruntime"
        embedder = open_embedder(path, runtime=runtime, threads=threads)
        q, g = (_embed_all(embedder, images) for images in (query, gallery))
        scored = score(q, g, data.val_query, data.val_gallery)
        attributes = scored.get("attributes") or {}
        results[row] = {"mAP": scored["mAP"], "rank1": scored["rank1"], "rank5": scored["rank5"],
                        "mINP": scored["mINP"], "mA": attributes.get("mA"),
                        "attribute_accuracy": attributes.get("mean_accuracy"),
                        "seconds": time.perf_counter() - start}
        print(f"  {row}: mAP {scored['mAP']:.4f}, Rank-1 {scored['rank1']:.4f}"
              + (f", mA {attributes['mA']:.4f}" if attributes else "")
              + f" ({results[row]['seconds']:.0f} s)", flush=True)
    return results


def _embed_all(embedder, images: np.ndarray, batch: int = 64) -> dict[str, np.ndarray]:
    parts = [embedder.run(images[i:i + batch]) for i in range(0, len(images), batch)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --- rounds and report ------------------------------------------------------------------------


def measure_size(height: int, width: int, prepared: dict, rows: list[str], args,
                 log_dir: Path, notes: list[str]) -> list[dict]:
    """Every row of one size: workers built, then rounds of --seconds per row and batch."""
    size = _size(height, width)
    workers = []
    try:
        for row in rows:
            spec = {"row": row, "height": height, "width": width, "threads": args.threads,
                    "batches": args.batch_list, "warmup": args.warmup,
                    "images": prepared["images"], "torch_arch": args.torch_arch}
            if row in RUNTIME_ROWS:
                spec["runtime"] = RUNTIME_ROWS[row][1]
            if row in ONNX_FILES or row in RUNTIME_ROWS or row == "savedmodel":
                if row not in prepared["models"]:
                    continue  # skipped while preparing; the note says why
                spec["model"] = prepared["models"][row]
            if row == "keras":
                if not prepared.get("arch"):
                    continue
                spec["arch"] = prepared["arch"]
            try:
                workers.append(Worker(spec, log_dir))
            except RuntimeError as exc:
                notes.append(f"{size}: {row} left out: {exc}")
                print(f"  {size}: {row} left out: {exc}", flush=True)
                continue
            facts = workers[-1].facts
            print(f"  ready: {row} {size} (build + warm-up {facts['warmup_seconds']:.1f} s, "
                  f"peak {facts['peak_rss_mb']:,.0f} MB)", flush=True)
        rounds = []
        for number in range(args.repeats):
            result = {}
            for batch in args.batch_list:
                order = workers if number % 2 == 0 else workers[::-1]
                for worker in order:
                    timed = worker.run(batch, args.seconds)
                    result[(worker.spec["row"], batch)] = timed["images"] / timed["seconds"]
            rounds.append(result)
            print(f"  round {number + 1}/{args.repeats} {size}: " + "; ".join(
                f"b{b} " + ", ".join(f"{w.spec['row']} {result[(w.spec['row'], b)]:.1f}"
                                     for w in workers) for b in args.batch_list), flush=True)
    finally:
        for worker in workers:
            worker.close()
    out = []
    for worker in workers:
        row = worker.spec["row"]
        for batch in args.batch_list:
            rates = [r[(row, batch)] for r in rounds]
            ratios = [r[(row, batch)] / r[(REFERENCE, batch)] for r in rounds
                      if (REFERENCE, batch) in r]
            out.append({"row": row, "size": size, "batch": batch, "source": prepared["source"],
                        "model": worker.spec.get("model"), **worker.facts,
                        "images_per_second": rates, "median": statistics.median(rates),
                        "min": min(rates), "max": max(rates), "ratio_vs_ort_fp32": ratios,
                        "median_ratio": statistics.median(ratios) if ratios else None,
                        "ratio_min": min(ratios, default=None),
                        "ratio_max": max(ratios, default=None)})
    return out


def add_accuracy(rows: list[dict], accuracy: dict[str, dict], size: str) -> None:
    base = accuracy.get(REFERENCE)
    for row in rows:
        acc = accuracy.get(row["row"]) if row["size"] == size else None
        if acc is None:
            continue
        row["accuracy"] = acc
        if base and row["row"] != REFERENCE:
            row["mAP_drop"] = base["mAP"] - acc["mAP"]
            row["rank1_drop"] = base["rank1"] - acc["rank1"]
            if acc["mA"] is not None and base["mA"] is not None:
                row["mA_drop"] = base["mA"] - acc["mA"]


def add_targets(rows: list[dict], args) -> None:
    """int8 rows at the largest batch: >= target speed-up and <= target mAP loss."""
    largest = max(args.batch_list)
    for row in rows:
        if row["row"] not in INT8_ROWS or row["batch"] != largest:
            continue
        failed = []
        if row["median_ratio"] is None:
            failed.append("no fp32 reference")
        elif row["median_ratio"] < args.target_speedup:
            failed.append("speed")
        if "mAP_drop" in row and row["mAP_drop"] > args.target_map_loss:
            failed.append("mAP")
        if failed:
            row["meets_target"] = "no (" + ", ".join(failed) + ")"
        else:
            row["meets_target"] = "yes" if "mAP_drop" in row else "speed yes; mAP not measured"


def format_table(rows: list[dict]) -> str:
    header = ("size", "batch", "row", "threads", "images/s median", "min-max",
              "vs ort-fp32", "min-max", "peak MB", "mAP", "dmAP", "Rank-1", "mA", "dmA",
              "meets target")
    lines = []
    for r in sorted(rows, key=lambda r: (r["size"], r["batch"], ROWS.index(r["row"]))):
        acc = r.get("accuracy") or {}
        ratio = r["median_ratio"] is not None
        lines.append((
            r["size"], str(r["batch"]), r["row"], str(r["threads"]), f"{r['median']:.1f}",
            f"{r['min']:.1f}-{r['max']:.1f}",
            f"{r['median_ratio']:.2f}x" if ratio else "n/a",
            f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}" if ratio else "",
            f"{r['peak_rss_mb']:,.0f}",
            f"{acc['mAP']:.4f}" if acc else "-",
            f"{-r['mAP_drop']:+.4f}" if "mAP_drop" in r else "-",
            f"{acc['rank1']:.4f}" if acc else "-",
            f"{acc['mA']:.4f}" if acc.get("mA") is not None else "-",
            f"{-r['mA_drop']:+.4f}" if "mA_drop" in r else "-",
            r.get("meets_target", "-"),
        ))
    return render_table(header, lines, left=(0, 2, 3, 14))


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("onnxruntime", "tensorflow-cpu", "tensorflow", "keras", "torch", "torchvision",
                 "onnx", "numpy"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def resolve_args(args) -> None:
    quick = args.quick
    args.batches = args.batches or ("1,8" if quick else "1,64")
    args.batch_list = sorted({int(b) for b in args.batches.split(",") if b.strip()})
    args.repeats = args.repeats or (1 if quick else 3)
    args.seconds = args.seconds or (0.3 if quick else 3.0)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    args.backbone = args.backbone or ("tiny" if quick else "resnet50")
    args.torch_arch = args.torch_arch or ("resnet18" if quick else "resnet50")
    args.calibration_images = args.calibration_images or (16 if quick else 200)
    args.random_init = args.random_init or not args.export
    if args.workdir and not args.export:
        raise SystemExit("--workdir scores an export: give --export too")
    if args.repeats < 1 or args.warmup < 0 or min(args.batch_list) < 1:
        raise SystemExit("--repeats and every batch must be at least 1, --warmup at least 0")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.child:
        return child_main(args.child)
    resolve_args(args)
    from tfmarket.console import import_tensorflow_quietly

    import_tensorflow_quietly()
    notes: list[str] = []
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - set(ROWS)
    if unknown:
        raise SystemExit(f"--rows: unknown {', '.join(sorted(unknown))}; valid: {', '.join(ROWS)}")
    if any(r.startswith("torch") for r in rows):
        # Only looked up: importing torch into a process that has TensorFlow loaded crashes
        # it (segmentation fault); the torch rows import it in their own workers.
        missing = [m for m in ("torch", "torchvision") if importlib.util.find_spec(m) is None]
        if missing:
            notes.append(TORCH_HINT.format(error=f"{', '.join(missing)} not found"))
            rows = [r for r in rows if not r.startswith("torch")]
    if REFERENCE not in rows:
        notes.append("ort-fp32 not measured: no ratio column")

    export_hw = export_size(Path(args.export)) if args.export else None
    if args.sizes:
        sizes = parse_sizes(args.sizes)
    elif args.quick:
        sizes = [export_hw] if export_hw else [(64, 32)]
    else:
        sizes = [export_hw] if export_hw and not args.random_init else [(128, 64), (256, 128)]
    if export_hw and export_hw not in sizes:
        sizes.insert(0, export_hw)
    if args.export and not args.random_init and sizes != [export_hw]:
        raise SystemExit(f"--export {args.export} is {_size(*export_hw)}; other --sizes need "
                         "--random-init")

    machine = machine_info()
    print(f"CPU: {machine['cpu']}; {machine['affinity_cpus']} usable cores")
    print(f"threads: {args.threads or 'each library default'} (--threads); sizes "
          f"{', '.join(_size(*s) for s in sizes)}; batches {args.batch_list}; rows "
          f"{', '.join(rows)}; {args.repeats} round(s) of {args.seconds:g} s per row and batch, "
          f"each (row, size) in its own process", flush=True)

    run_data, run_hw = None, None
    if args.workdir:
        run_data, run_hw = load_run_data(Path(args.workdir))
        if run_hw != export_hw:
            raise SystemExit(f"--workdir {args.workdir} trained at {_size(*run_hw)}, "
                             f"--export {args.export} is {_size(*export_hw)}")
    paths = crop_paths(args, run_data)

    scratch = Path(args.models_dir) if args.models_dir else Path(
        tempfile.mkdtemp(prefix="tfmarket-inference-"))
    results, accuracy, prepared_sizes = [], {}, []
    try:
        for height, width in sizes:
            size = _size(height, width)
            source = "export" if (height, width) == export_hw else "random"
            prepared = prepare_size(height, width, source, args, paths, scratch / size, notes)
            prepared_sizes.append(prepared)
            results += measure_size(height, width, prepared, rows, args, scratch, notes)
            if source == "export" and run_data is not None:
                onnx_models = {r: p for r, p in prepared["models"].items()
                               if r in ONNX_FILES or r in RUNTIME_ROWS}
                accuracy = validation_accuracy(onnx_models, run_data, height, width,
                                               args.threads)
                add_accuracy(results, accuracy, size)
    finally:
        if not args.models_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    add_targets(results, args)

    print()
    print(f"CPU: {machine['cpu']}; {machine['affinity_cpus']} usable cores; threads "
          f"{args.threads or 'library defaults'}")
    print(f"images/s of one call, uint8 in, embedding + attributes out as NumPy; median of "
          f"{args.repeats} round(s) (rows interleaved), vs ort-fp32 = median of per-round ratios"
          + ("; mAP / Rank-1 / mA on the run's validation split, d = change vs ort-fp32"
             if accuracy else ""))
    print(format_table(results))
    print(f"target: int8 >= {args.target_speedup:g}x ort-fp32 throughput (batch "
          f"{max(args.batch_list)}) and <= {args.target_map_loss:g} mAP loss")
    for note in notes:
        print(f"note: {note}")
    if args.json:
        write_json(args.json, {
            "benchmark": "inference", "quick": args.quick,
            "args": {k: v for k, v in vars(args).items() if k not in ("json", "child")},
            "targets": {"speedup_vs_ort_fp32": args.target_speedup,
                        "map_loss": args.target_map_loss},
            "machine": machine, "versions": versions(), "notes": notes,
            "accuracy": accuracy, "models": prepared_sizes, "rows": results,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
