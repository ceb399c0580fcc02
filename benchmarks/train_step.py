"""Training-step throughput (images/s): tfmarket's Keras ResNet50 vs torchvision ResNet50.

    .venv/bin/python benchmarks/train_step.py [--sizes 128x64,256x128] [--batch 64]
        [--steps 2] [--repeats 7] [--warmup 3] [--precisions float32,mixed_bfloat16]
        [--batchnorm fused,kernel,keras] [--xla off|on|both] [--profile 128x64] [--json out.json]
    .venv/bin/python benchmarks/train_step.py --quick   # 2 rounds of 1 step at batch 8, 128x64

Only the step is timed: inputs are constant in-memory tensors (random pixels in [0, 255],
identity labels laid out P x K with K = 4, random attribute labels).

How it copes with a shared, noisy machine (the same row can measure 2x apart minutes apart):
every row's model lives in its own Python process, built and warmed up once (``--warmup``
steps, which include tracing/compilation); then in each of ``--repeats`` rounds the rows take
turns running ``--steps`` timed steps (a few seconds each), in alternating order. A row's
images/s is the median over the rounds, with its spread (min-max), and its ratio to PyTorch's
best row of the same round (fp32 or bf16 autocast, glibc's malloc or the tuned one) is the
median of the per-round ratios: both sides of a ratio are measured seconds apart, so drift in
the machine's speed cancels. The CPU model and its bf16 / AMX / VNNI flags head the output.
Precisions ``auto`` (the default) adds bf16 rows only on a CPU with native bf16, as
``precision: auto`` trains; elsewhere bf16 is emulated at minutes per step. Each row also
reports its system CPU time per user CPU time (getrusage over its timed steps): page faults
from a churning allocator show there (``tfmarket.allocator``; ``--malloc`` /
``--torch-malloc`` choose each framework's rows' malloc: ``tuned``, ``default`` or ``both``).

* ``tfmarket``: :func:`tfmarket.model.network.build_model` (ResNet50, random init, last stride 1,
  avg pooling, BNNeck, 751-way ID head, attribute heads) compiled exactly as ``tfmarket.train``
  compiles it (``build_losses``: label-smoothed ID softmax + batch-hard triplet + attribute
  losses; ``build_optimizer``; ``build_metrics``), stepped with ``train_on_batch`` (the
  compiled train function that ``fit`` runs). Precision ``float32`` and ``mixed_bfloat16``
  (Keras mixed-precision policy); BN layers ``fused`` (tfmarket's FusedBatchNormalization,
  the default) or ``keras`` (Keras's own layer, as before issue 12); ``--kernels``
  ``tfmarket`` (the fused optimizer and the matmul kernel gradients, the defaults) or ``keras``
  (Keras's optimizer and Conv2D gradient, as before issue 25); ``jit_compile`` (XLA)
  off/on. TensorFlow's default threads.
* ``pytorch``: torchvision ``resnet50`` (random init, the same last-stride-1 change, 751-way
  linear head), channels_last memory format, forward + cross-entropy + backward + Adam step;
  ``float32`` and bfloat16 autocast. PyTorch's default thread settings. Rows in waiting sleep
  in a pipe read, so they take no CPU from the row being timed. torchvision's ResNet50
  is v1.5 (stride in the 3x3 conv), about 6% more compute than Keras's v1 (stride in the 1x1
  conv: 3.86 vs 4.1 GMACs at 224x224); the tfmarket model adds BNNeck, the attribute heads and
  the triplet loss, which cost little. The two do about the same work per image.

The FLOP count is analytic (conv + dense multiply-accumulates of the Keras model, x2 FLOPs per
MAC, backward = 2 x forward). ``--profile SIZE`` adds, after the rounds, two profiled steps of
each tfmarket row at that size and prints its top TensorFlow ops by self time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _report import machine_info, render_table, write_json  # benchmarks/_report.py

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

NUM_IDS = 751  # Market-1501 training identities
K = 4  # images per identity in the synthetic P x K batch
RESNET50_GMACS_224 = 4.1  # torchvision's "4.09 GFLOPS" for ResNet50 are multiply-accumulates
FIT_INPUTS = ("step", "fit-constant", "fit-pipeline", "fit-epoch")  # --fit rows, see fit_trainer
TORCH_HINT = (
    "PyTorch baseline skipped: torch/torchvision not importable ({error}). Install with\n"
    "    .venv/bin/pip install torch==2.14.1 torchvision==0.29.1\n"
    "(or: pip install -e '.[bench]')"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default=None,
                        help="HxW list, default 128x64,256x128 (--quick: 128x64)")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per step, a multiple of 4 (default 64 = 16x4; --quick: 8)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per row per round (default 2; --quick: 1)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps, include compilation (default 3; --quick: 1)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="rounds in which every row runs --steps steps (default 7; "
                        "--quick: 2)")
    parser.add_argument("--precisions", default="auto",
                        help="Keras policies; PyTorch rows use fp32 / bf16 autocast to match. "
                        "auto: float32,mixed_bfloat16 on a CPU with native bf16, else float32 "
                        "only (bf16 is emulated there: minutes per step)")
    parser.add_argument("--malloc", default="tuned",
                        help="tfmarket rows' glibc malloc: tuned (tfmarket.allocator, what the "
                        "commands run), default (glibc's settings), or both")
    parser.add_argument("--onednn", default="auto", choices=("auto", "on", "off", "both"),
                        help="tfmarket rows' TensorFlow kernels: auto (what the commands choose, "
                        "tfmarket.hardware.choose_onednn), on / off (TF_ENABLE_ONEDNN_OPTS=1 / "
                        "0: oneDNN or Eigen), both (an off and an on row)")
    parser.add_argument("--primitive-cache", default="auto",
                        choices=("auto", "on", "off", "both"),
                        help="tfmarket rows' oneDNN primitive cache for convolution gradients "
                        "(TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE): auto (TensorFlow's default, which "
                        "does not cache them), on (=0), off (=1), both (an off and an on row)")
    parser.add_argument("--torch-malloc", default="both",
                        help="PyTorch rows' glibc malloc, as --malloc (default both: the ratio "
                        "column takes PyTorch's best row of each round)")
    parser.add_argument("--batchnorm", default="fused,keras",
                        help="tfmarket BN layers, comma list: fused (tfmarket's: in float32 on "
                        "a CPU, statistics by matmul), kernel (tfmarket's with TensorFlow's fused "
                        "kernel in every precision, as before 2026-12-07), keras (Keras's own)")
    parser.add_argument("--kernels", default="tfmarket",
                        help="tfmarket rows' weight update and kernel gradients, comma "
                        "list: tfmarket (fused optimizer, matmul kernel gradients: what "
                        "tfmarket.train runs), keras (Keras's optimizer and Conv2D gradient, "
                        "as before issue 25)")
    parser.add_argument("--xla", choices=("off", "on", "both"), default="off",
                        help="tfmarket rows with jit_compile off, on or both (XLA compile of "
                        "ResNet50 training takes minutes on CPU)")
    parser.add_argument("--interop", default="0",
                        help="tfmarket rows with these TensorFlow inter-op thread counts "
                        "(TF_NUM_INTEROP_THREADS; 0 = TensorFlow's default), e.g. 0,1")
    parser.add_argument("--last-stride", type=int, default=1, choices=(1, 2))
    parser.add_argument("--config", default=str(REPO / "configs" / "market1501_resnet50.yaml"),
                        help="config whose loss/train sections set losses and optimizer")
    parser.add_argument("--profile", default="",
                        help="HxW: after the repeats, profile each tfmarket row at this size "
                        "and print its top ops")
    parser.add_argument("--fit", action="store_true",
                        help="tfmarket rows three ways on --data with --config: "
                        "train_on_batch (step), fit on a repeated batch, fit on the real input "
                        "pipeline (what python -m tfmarket.train runs); adds 'vs step' ratios")
    parser.add_argument("--fit-inputs", default=",".join(FIT_INPUTS),
                        help="with --fit: which of step, fit-constant, fit-pipeline, fit-epoch "
                        "to run (the 'vs step' column needs step)")
    parser.add_argument("--strategy", default="auto", choices=("auto", "one-device", "both"),
                        help="with --fit: the fit rows' tf.distribute strategy: auto (what "
                        "tfmarket.train chooses: Mirrored over the one CPU), one-device "
                        "(OneDeviceStrategy on the CPU, what it chose before 2026-12-06), both")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data"
                                              / "market1501-course"),
                        help="dataset root for --fit (default ../shared/data/market1501-course)")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument("--no-tf", action="store_true", help="skip the tfmarket rows")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 rounds of 1 step, 1 warm-up, batch 8, 128x64")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a row's worker, JSON spec
    return parser


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in item.lower().split("x")) for item in text.split(",")]


# --- synthetic batch --------------------------------------------------------------------------


def synthetic_batch(batch: int, height: int, width: int, seed: int = 0):
    """(images float32 [B, H, W, 3] in [0, 255], pipeline-style targets {name: int32 [B]})."""
    from tfmarket.attributes import HEADS

    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 255, (batch, height, width, 3)).astype(np.float32)
    targets = {"id": np.repeat(np.arange(batch // K), K).astype(np.int32)}
    for head, n in HEADS.items():
        targets[head] = rng.integers(0, max(n, 2), batch).astype(np.int32)
    return images, targets


def dataset_targets(seed: int = 1) -> dict[str, np.ndarray]:
    """Per-image attribute targets of a fake training set (for the class-balanced weights)."""
    from tfmarket.attributes import HEADS

    rng = np.random.default_rng(seed)
    n = NUM_IDS * 17  # ~Market-1501's 12,936 training images
    return {head: rng.integers(0, max(c, 2), n).astype(np.int32) for head, c in HEADS.items()}


# --- FLOPs ------------------------------------------------------------------------------------


def count_macs(model) -> int:
    """Multiply-accumulates of one image's forward pass: Conv2D and Dense layers only."""
    import keras

    total = 0
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, _ = layer.output.shape
            kh, kw, cin, cout = layer.kernel.shape
            total += h * w * kh * kw * cin * cout // max(1, getattr(layer, "groups", 1))
        elif isinstance(layer, keras.layers.Dense):
            cin, cout = layer.kernel.shape
            total += cin * cout
    return int(total)


def _all_layers(model):
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            yield from _all_layers(layer)
        else:
            yield layer


def rule_of_thumb_gmacs(height: int, width: int) -> float:
    """ResNet50's 4.1 GMACs at 224x224 scaled by pixel count (last stride 2)."""
    return RESNET50_GMACS_224 * height * width / (224 * 224)


# --- tfmarket ---------------------------------------------------------------------------------


def with_kernels(config, spec: dict):
    """``config`` with the row's ``--kernels``: tfmarket's (fused optimizer, matmul kernel
    gradients) or Keras's (both off)."""
    from dataclasses import replace

    ours = spec.get("kernels", "tfmarket") == "tfmarket"
    return replace(config, model=replace(config.model, tap_gradient=ours),
                   train=replace(config.train, fused_optimizer=ours))


def uses_fused_batchnorm(spec: dict) -> bool:
    """Whether the row's BN layers are tfmarket's; ``kernel`` rows also turn off its matmul
    statistics (:data:`tfmarket.model.layers.STATISTICS_BY_MATMUL`) in this row's process."""
    from tfmarket.model import layers

    if spec["batchnorm"] == "kernel":
        layers.STATISTICS_BY_MATMUL = False
    return spec["batchnorm"] in ("fused", "kernel")


def tf_trainer(spec: dict, args):
    """A compiled tfmarket model on one constant batch -> (step(n) -> (seconds, loss), facts)."""
    import keras
    import tensorflow as tf

    from tfmarket.config import load_config
    from tfmarket.model.network import build_model
    from tfmarket.training.build import build_losses, build_metrics, build_optimizer, model_targets

    config = load_config(args.config)
    height, width = spec["height"], spec["width"]
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(spec["precision"])
    config = with_kernels(config, spec)
    model = build_model(NUM_IDS, height=height, width=width, backbone="resnet50",
                        weights=None, last_stride=args.last_stride, pooling="avg",
                        fused_batchnorm=uses_fused_batchnorm(spec),
                        tap_gradient=config.model.tap_gradient)
    losses, loss_weights = build_losses(config, dataset_targets())
    model.compile(
        optimizer=build_optimizer(config.train, steps_per_epoch=1000),
        loss=losses, loss_weights=loss_weights, metrics=build_metrics(),
        jit_compile=spec["xla"] == "on",
    )
    images, targets = synthetic_batch(args.batch, height, width)
    x = tf.constant(images)
    y = model_targets({k: tf.constant(v) for k, v in targets.items()})

    def steps(n: int) -> tuple[float, float]:
        # train_on_batch runs the same compiled train function as fit, one step per call.
        start = time.perf_counter()
        for _ in range(n):
            logs = model.train_on_batch(x, y, return_dict=True)
        return time.perf_counter() - start, float(logs["loss"])

    def profile(directory: str) -> list[dict]:
        tf.profiler.experimental.start(directory)
        steps(2)
        tf.profiler.experimental.stop()
        return top_ops(directory)

    return steps, profile, {"fwd_macs_per_image": count_macs(model)}


def fit_trainer(spec: dict, args):
    """``tfmarket.train``'s own model, strategy and input on the real data -> step(n), facts.

    Built by the functions ``tfmarket.train`` runs (``load_training_data``, ``choose_strategy``,
    ``compiled_model``, ``make_dataset_fn``) from ``--config`` with the data root, size and
    P x K batch of this benchmark, so the three ``input`` variants step the same model:

    * ``fit-pipeline``: ``model.fit`` on the real input pipeline (decode, augmentation, P x K
      sampling on the CPU cores the step also uses), as in ``python -m tfmarket.train``;
    * ``fit-constant``: ``model.fit`` on one batch of that pipeline repeated (no input work);
    * ``step``: ``train_on_batch`` on that batch (what the plain tfmarket rows measure);
    * ``fit-epoch``: ``model.fit`` of two epochs of n steps on the real input pipeline, timing
      the second: the epoch loop of ``python -m tfmarket.train`` after its first epoch (the
      iterator already running, as Keras keeps it across the epochs of one ``fit``).

    Every ``fit`` call starts a fresh iterator (nothing prefetched while the row waited for
    its turn), so the pipeline's full cost is in the time; an epoch is timed by
    ``tfmarket.training.callbacks.Throughput``, the callback that reports ``tfmarket.train``'s
    images/s.
    """
    import tempfile
    from dataclasses import replace

    import keras
    import tensorflow as tf

    from tfmarket.config import load_config
    from tfmarket.training.build import compiled_model
    from tfmarket.training.callbacks import Throughput
    from tfmarket.training.data import load_training_data
    from tfmarket.training.distribute import choose_strategy, distribute_inputs
    from tfmarket.training.fit import make_dataset_fn

    config = load_config(args.config)
    data_cfg = replace(config.data, root=str(args.data), height=spec["height"],
                       width=spec["width"], ids_per_batch=args.batch // K, images_per_id=K)
    config = replace(with_kernels(config, spec), data=data_cfg)
    config = replace(config, model=replace(
        config.model, last_stride=args.last_stride, fused_batchnorm=uses_fused_batchnorm(spec)),
        train=replace(config.train, jit_compile=spec["xla"] == "on"))
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(spec["precision"])
    strategy = (tf.distribute.OneDeviceStrategy("/cpu:0")
                if spec.get("strategy") == "one-device" else choose_strategy())
    data = load_training_data(data_cfg, Path(tempfile.mkdtemp(prefix="tfmarket-bench-")))
    model = compiled_model(config, strategy, len(data.identities), data.targets,
                           steps_per_epoch=1000)
    dataset_fn = make_dataset_fn(data, data_cfg, first_step=0)
    throughput = Throughput(args.batch)
    x, y = next(iter(dataset_fn(tf.distribute.InputContext())))
    if spec["input"] in ("fit-pipeline", "fit-epoch"):
        inputs = distribute_inputs(strategy, dataset_fn)
    else:
        inputs = strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors((x, y)).repeat())

    def steps(n: int) -> tuple[float, float]:
        start = time.perf_counter()
        if spec["input"] == "step":
            for _ in range(n):
                logs = model.train_on_batch(x, y, return_dict=True)
            return time.perf_counter() - start, float(logs["loss"])
        # Timed as tfmarket.train's Throughput callback times an epoch (from its start to its
        # end, the first batch's input included): fit's own start-up is not part of it.
        history = model.fit(inputs, epochs=2 if spec["input"] == "fit-epoch" else 1,
                            steps_per_epoch=n, verbose=0, callbacks=[throughput])
        return throughput.seconds[-1], float(history.history["loss"][-1])

    return steps, None, {"fwd_macs_per_image": count_macs(model),
                         "training_images": len(data.records.paths),
                         "training_identities": len(data.identities)}


def top_ops(profile_dir: str, count: int = 12) -> list[dict]:
    """TensorFlow ops by self time in a profile: [{op, ms, share}] (share of all op time).

    Reads the profiler's XSpace directly: op events sit on the ``tf_Compute`` threads of the
    host plane, named ``node:OpType``; the intra-op (Eigen/oneDNN) helper threads are not ops.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals: dict[str, int] = {}
    for path in Path(profile_dir).rglob("*.xplane.pb"):
        space = xplane_pb2.XSpace()
        space.ParseFromString(path.read_bytes())
        for plane in space.planes:
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):
                    continue
                for event in line.events:
                    meta = plane.event_metadata[event.metadata_id]
                    if ":" in meta.name and meta.display_name:
                        totals[meta.display_name] = (totals.get(meta.display_name, 0)
                                                     + event.duration_ps)
    whole = sum(totals.values()) or 1
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:count]
    return [{"op": op, "ms": ps / 1e9, "share": ps / whole} for op, ps in ranked]


def import_torch():
    import torch
    import torchvision  # noqa: F401

    return torch, torchvision


# --- PyTorch ----------------------------------------------------------------------------------


def torch_trainer(spec: dict, args):
    """torchvision ResNet50 on one constant batch -> (step(n) -> (seconds, loss), None, facts)."""
    import torch
    import torchvision

    height, width = spec["height"], spec["width"]
    bf16 = spec["precision"] != "float32"
    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None, num_classes=NUM_IDS)
    if args.last_stride == 1:
        model.layer4[0].conv2.stride = (1, 1)
        model.layer4[0].downsample[0].stride = (1, 1)
    model = model.to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=3.5e-4)
    images, targets = synthetic_batch(args.batch, height, width)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(
        memory_format=torch.channels_last) / 255.0
    y = torch.from_numpy(targets["id"]).long()

    def steps(n: int) -> tuple[float, float]:
        start = time.perf_counter()
        for _ in range(n):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
                loss = torch.nn.functional.cross_entropy(logits.float(), y)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - start, float(loss.detach())

    return steps, None, {"threads": torch.get_num_threads()}


# --- rows, worker processes, report -----------------------------------------------------------

TORCH_BF16 = "bf16 autocast"


def row_specs(args, height: int, width: int) -> list[dict]:
    """Every row of one input size, PyTorch first (the reference)."""
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    norms = [b.strip() for b in args.batchnorm.split(",") if b.strip()]
    if set(norms) - {"fused", "kernel", "keras"}:
        raise SystemExit(f"--batchnorm {args.batchnorm!r}; valid: fused, kernel, keras")
    xlas = {"off": ["off"], "on": ["on"], "both": ["off", "on"]}[args.xla]
    specs = []
    if not args.no_torch:
        for precision in precisions:
            if precision != "mixed_float16":  # no fp16 autocast comparison on CPU
                specs += [{"framework": "pytorch", "height": height, "width": width,
                           "precision": "float32" if precision == "float32" else TORCH_BF16,
                           "batchnorm": "-", "xla": "-", "malloc": malloc}
                          for malloc in malloc_choices(args.torch_malloc)]
    if not args.no_tf:
        interops = [int(t) for t in args.interop.split(",") if t.strip()]
        inputs = [i.strip() for i in args.fit_inputs.split(",")] if args.fit else ["step"]
        kernel_choices = [k.strip() for k in args.kernels.split(",") if k.strip()]
        if set(kernel_choices) - {"tfmarket", "keras"}:
            raise SystemExit(f"--kernels {args.kernels!r}; valid: tfmarket, keras")
        onednns = {"auto": ["auto"], "on": ["on"], "off": ["off"],
                   "both": ["off", "on"]}[args.onednn]
        caches = {"auto": ["auto"], "on": ["on"], "off": ["off"],
                  "both": ["off", "on"]}[args.primitive_cache]
        strategies = {"auto": ["auto"], "one-device": ["one-device"],
                      "both": ["one-device", "auto"]}[args.strategy if args.fit else "auto"]
        specs += [{"framework": "tfmarket", "height": height, "width": width,
                   "precision": precision, "batchnorm": norm, "xla": xla, "malloc": malloc,
                   **({"onednn": onednn} if onednn != "auto" else {}),
                   **({"primitive_cache": cache} if cache != "auto" else {}),
                   **({"strategy": strategy} if strategy != "auto" and feed != "step" else {}),
                   **({"interop": interop} if interop else {}),
                   **({"kernels": kernels} if kernels != "tfmarket" else {}),
                   **({"input": feed} if args.fit else {})}
                  for precision in precisions for norm in norms for xla in xlas
                  for kernels in kernel_choices
                  for interop in interops for feed in inputs
                  for malloc in malloc_choices(args.malloc) for onednn in onednns
                  for cache in caches for strategy in strategies
                  if not (feed == "step" and strategy != strategies[-1])]
    return specs


def malloc_choices(text: str) -> list[str]:
    """--malloc / --torch-malloc -> ["tuned"], ["default"] or both."""
    choices = {"tuned": ["tuned"], "default": ["default"], "both": ["default", "tuned"]}
    if text not in choices:
        raise SystemExit(f"malloc choice {text!r}; valid: {', '.join(choices)}")
    return choices[text]


def resolve_precisions(text: str) -> tuple[str, str]:
    """--precisions -> (comma list, why): auto adds bf16 rows only where the CPU has native
    bf16 (tfmarket.hardware.BF16_FLAGS), as ``precision: auto`` trains."""
    from tfmarket.hardware import BF16_FLAGS, cpu_flags

    if text != "auto":
        return text, "as asked"
    native = [f for f in BF16_FLAGS if f in cpu_flags()]
    if native:
        return "float32,mixed_bfloat16", f"auto: native bf16 ({', '.join(native)})"
    return "float32", "auto: no native bf16 on this CPU, so no emulated bf16 rows " \
        "(--precisions float32,mixed_bfloat16 adds them)"


class Worker:
    """One row's model in its own Python process, built and warmed up once, then stepped on
    request: rows take turns a block of steps at a time, so the machine's drift hits all alike.
    """

    def __init__(self, spec: dict, args):
        self.spec = spec
        forwarded = ["--batch", str(args.batch), "--warmup", str(args.warmup),
                     "--last-stride", str(args.last_stride), "--config", args.config,
                     *(["--fit", "--data", str(args.data)] if args.fit else [])]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
        # The child tunes glibc malloc as the commands do, unless the row asks for glibc's own.
        env.pop("TFMARKET_MALLOC", None)
        if spec.get("malloc") == "default":
            env["TFMARKET_MALLOC"] = "default"
        if spec.get("interop"):
            env["TF_NUM_INTEROP_THREADS"] = str(spec["interop"])
        env.pop("TF_ENABLE_ONEDNN_OPTS", None)  # auto: the child chooses as the commands do
        if spec.get("onednn"):
            env["TF_ENABLE_ONEDNN_OPTS"] = "1" if spec["onednn"] == "on" else "0"
        env.pop("TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE", None)  # auto: as the commands choose
        if spec.get("primitive_cache"):
            env["TF_MKL_OPTIMIZE_PRIMITIVE_MEMUSE"] = "0" if spec["primitive_cache"] == "on" \
                else "1"
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--child", json.dumps(spec), *forwarded],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=env)
        self.facts = self._reply("READY")

    def _reply(self, tag: str) -> dict:
        for line in self.process.stdout:
            if line.startswith(tag + " "):
                return json.loads(line[len(tag) + 1:])
        error = self.process.stderr.read().strip().splitlines()[-3:]
        raise RuntimeError(f"{self.spec}: worker died: " + " | ".join(error))

    def run(self, steps: int) -> dict:
        self.process.stdin.write(f"run {steps}\n")
        self.process.stdin.flush()
        return self._reply("TIME")

    def profile(self, directory: str) -> list[dict]:
        self.process.stdin.write(f"profile {directory}\n")
        self.process.stdin.flush()
        return self._reply("PROFILE")["top_ops"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.write("quit\n")
            self.process.stdin.flush()
            self.process.wait(timeout=60)


def child_main(args) -> int:
    """Worker side of :class:`Worker`: build, warm up, then answer run/profile/quit lines."""
    import resource

    from tfmarket.console import quiet_tensorflow

    spec = json.loads(args.child)
    # What every command does before TensorFlow / PyTorch allocate: malloc tuned (unless the
    # row set TFMARKET_MALLOC=default) and oneDNN chosen (unless the row set it).
    quiet_tensorflow()
    if spec["framework"] == "pytorch":
        make = torch_trainer
    else:
        make = fit_trainer if spec.get("input") else tf_trainer
    start = time.perf_counter()
    steps, profile, facts = make(spec, args)
    steps(args.warmup)
    facts["warmup_seconds"] = time.perf_counter() - start
    print("READY " + json.dumps(facts), flush=True)
    for line in sys.stdin:
        command, _, value = line.strip().partition(" ")
        if command == "run":
            before = resource.getrusage(resource.RUSAGE_SELF)
            seconds, loss = steps(int(value))
            after = resource.getrusage(resource.RUSAGE_SELF)
            print("TIME " + json.dumps({
                "seconds": seconds, "loss": loss,
                "user_s": after.ru_utime - before.ru_utime,
                "system_s": after.ru_stime - before.ru_stime,
                "minor_faults": after.ru_minflt - before.ru_minflt}), flush=True)
        elif command == "profile":
            print("PROFILE " + json.dumps({"top_ops": profile(value) if profile else []}),
                  flush=True)
        else:
            break
    return 0


def measure_size(height: int, width: int, args) -> tuple[list[dict], list[dict]]:
    """All rows of one size: rounds of ``--steps`` steps per row, rows in turn.

    Returns (rows with per-round images/s, [{row, top_ops}] when ``--profile`` names the size).
    """
    import tempfile

    workers = []
    try:
        for spec in row_specs(args, height, width):
            workers.append(Worker(spec, args))
            print(f"  ready: {_label(spec)} (build + {args.warmup} warm-up steps "
                  f"{workers[-1].facts['warmup_seconds']:.0f} s)", flush=True)
        rounds, system_shares = [], {}
        for number in range(args.repeats):
            result = {}
            for worker in workers if number % 2 == 0 else workers[::-1]:
                timed = worker.run(args.steps)
                result[_key(worker.spec)] = args.steps * args.batch / timed["seconds"]
                system_shares.setdefault(_key(worker.spec), []).append(
                    timed["system_s"] / max(timed["user_s"], 1e-9))
            rounds.append(result)
            print(f"  round {number + 1}/{args.repeats}: " + ", ".join(
                f"{_label(w.spec)} {result[_key(w.spec)]:.1f}" for w in workers), flush=True)
        profiles = []
        if args.profile and parse_sizes(args.profile)[0] == (height, width):
            for worker in workers:
                if worker.spec["framework"] == "tfmarket":
                    ops = worker.profile(tempfile.mkdtemp(prefix="tfprof-"))
                    profiles.append({**worker.spec, "size": f"{height}x{width}", "top_ops": ops})
    finally:
        for worker in workers:
            worker.close()
    rows = [{**w.spec, "size": f"{height}x{width}", **w.facts,
             "images_per_second": [r[_key(w.spec)] for r in rounds],
             "system_per_user": system_shares[_key(w.spec)]} for w in workers]
    torch_keys = [_key(w.spec) for w in workers if w.spec["framework"] == "pytorch"]
    for row in rows:
        # PyTorch's best row in the same round (fp32 or bf16 autocast, either malloc).
        row["ratio_vs_torch_best"] = [r[_key(row)] / max(r[k] for k in torch_keys)
                                      for r in rounds if torch_keys]
        step = _key({**row, "input": "step"})
        if row.get("input") and step in rounds[0]:
            row["ratio_vs_step"] = [r[_key(row)] / r[step] for r in rounds]
    return rows, profiles


def _label(spec: dict) -> str:
    malloc = (" malloc default" if spec.get("malloc") == "default" else "") + (
        f" oneDNN {spec['onednn']}" if spec.get("onednn") else "") + (
        f" primitive cache {spec['primitive_cache']}" if spec.get("primitive_cache") else "")
    if spec["framework"] == "pytorch":
        return f"pytorch {spec['precision']}{malloc}"
    return f"tfmarket {spec['precision']} BN {spec['batchnorm']}{malloc}" + (
        " XLA" if spec["xla"] == "on" else "") + (
        f" inter-op {spec['interop']}" if spec.get("interop") else "") + (
        f" kernels {spec['kernels']}" if spec.get("kernels") else "") + (
        f" {spec['input']}" if spec.get("input") else "") + (
        f" {spec['strategy']}" if spec.get("strategy") else "")


def _key(row) -> tuple:
    return (row["framework"], row["precision"], row["batchnorm"], row["xla"],
            row.get("interop", 0), row.get("input", "step"), row.get("malloc", "tuned"),
            row.get("onednn", "auto"), row.get("primitive_cache", "auto"),
            row.get("strategy", "auto"), row.get("kernels", "tfmarket"))


def summarise(rows: list[dict]) -> list[dict]:
    """Median and spread over the rounds of images/s and of the ratio to PyTorch's best."""
    out = []
    for row in rows:
        rates, ratios = row["images_per_second"], row["ratio_vs_torch_best"]
        out.append({**row, "median": statistics.median(rates), "min": min(rates),
                    "max": max(rates),
                    "median_system_per_user": statistics.median(row["system_per_user"]),
                    "median_ratio": statistics.median(ratios) if ratios else None,
                    "ratio_min": min(ratios, default=None),
                    "ratio_max": max(ratios, default=None)})
        if row.get("ratio_vs_step"):
            vs_step = row["ratio_vs_step"]
            out[-1].update(vs_step_median=statistics.median(vs_step), vs_step_min=min(vs_step),
                           vs_step_max=max(vs_step))
    return out


def format_table(summary: list[dict], flops_per_image: dict[str, float]) -> str:
    fit = any(r.get("input") for r in summary)
    caches = any(r.get("primitive_cache") for r in summary)
    kernels = any(r.get("kernels") for r in summary)
    header = ["framework", "size", "precision", "BN", "xla", "inter-op", "malloc", "oneDNN",
              *(["prim. cache"] if caches else []), *(["kernels"] if kernels else []),
              *(["input"] if fit else []),
              "images/s median", "min-max",
              "vs PyTorch best: median", "min-max", "system/user CPU",
              *(["vs step: median", "min-max"] if fit else []), "GFLOP/s"]
    lines = []
    for r in summary:
        flops = flops_per_image.get(r["size"])
        ratio = r["median_ratio"] is not None
        vs_step = r.get("vs_step_median") is not None
        lines.append([
            r["framework"], r["size"], r["precision"], r["batchnorm"], r["xla"],
            str(r.get("interop") or ("-" if r["framework"] == "pytorch" else "default")),
            r.get("malloc", "tuned"),
            "-" if r["framework"] == "pytorch" else r.get("onednn", "auto"),
            *([r.get("primitive_cache", "-")] if caches else []),
            *([("-" if r["framework"] == "pytorch" else r.get("kernels", "tfmarket"))]
              if kernels else []),
            *([r.get("input", "-") + (f" ({r['strategy']})" if r.get("strategy") else "")]
              if fit else []),
            f"{r['median']:.2f}", f"{r['min']:.1f}-{r['max']:.1f}",
            f"{r['median_ratio']:.2f}x" if ratio else "n/a",
            f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}" if ratio else "",
            f"{r['median_system_per_user']:.2f}",
            *([f"{r['vs_step_median']:.2f}x" if vs_step else "",
               f"{r['vs_step_min']:.2f}-{r['vs_step_max']:.2f}" if vs_step else ""]
              if fit else []),
            f"{r['median'] * flops / 1e9:.0f}" if flops else "n/a",
        ])
    return render_table(header, lines, left=tuple(range(8 + fit + caches + kernels)))


def flops_report(sizes, macs_by_size: dict[str, int], last_stride: int) -> tuple[str, dict]:
    """Text block + {size: fwd+bwd FLOPs per image}."""
    lines = ["FLOPs per image (1 MAC = 2 FLOPs; training step = fwd + bwd ~ 3 x fwd):"]
    per_image = {}
    for height, width in sizes:
        size = f"{height}x{width}"
        thumb = rule_of_thumb_gmacs(height, width)
        macs = macs_by_size.get(size)
        if macs:
            gmacs, source = macs / 1e9, "analytic, Keras model conv+dense"
        else:
            gmacs = thumb * (1.0 if last_stride == 2 else 1.6)
            source = "rule of thumb" + (" x1.6 for last stride 1" if last_stride == 1 else "")
        per_image[size] = 3 * 2 * gmacs * 1e9
        lines.append(
            f"  {size}: fwd {gmacs:.2f} GMACs = {2 * gmacs:.2f} GFLOPs ({source}); "
            f"train step {3 * 2 * gmacs:.2f} GFLOPs/image"
        )
    return "\n".join(lines), per_image


def format_profiles(profiles: list[dict]) -> str:
    blocks = []
    for r in profiles:
        lines = [[o["op"], f"{o['ms'] / 2:.0f}", f"{100 * o['share']:.1f}%"]
                 for o in r["top_ops"]]
        blocks.append(f"top ops, tfmarket {r['size']} {r['precision']} BN {r['batchnorm']} "
                      f"xla {r['xla']} (self time per step, 2 profiled steps):\n"
                      + render_table(["op", "ms/step", "share"], lines))
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or "128x64"
        args.batch = args.batch or 8
        args.steps = args.steps or 1
        args.warmup = args.warmup if args.warmup is not None else 1
        args.repeats = args.repeats or 2
    args.sizes = args.sizes or "128x64,256x128"
    args.batch = args.batch or 64
    args.steps = args.steps or 2
    args.warmup = args.warmup if args.warmup is not None else 3
    args.repeats = args.repeats or 7
    if args.child:
        return child_main(args)
    if args.batch % K:
        raise SystemExit(f"--batch must be a multiple of {K} (P x K batches)")
    args.precisions, precision_reason = resolve_precisions(args.precisions)
    if args.warmup < 1:
        raise SystemExit("--warmup must be at least 1 (the first step compiles)")
    if not args.no_torch:
        try:
            import_torch()
        except (ImportError, RuntimeError, OSError) as exc:
            print(TORCH_HINT.format(error=f"{type(exc).__name__}: {exc}"))
            args.no_torch = True
    machine = machine_info()
    print(f"CPU: {machine['cpu']}; {machine['affinity_cpus']} usable cores; precisions "
          f"{args.precisions} ({precision_reason})")
    print(f"batch {args.batch}, sizes {args.sizes}, last stride {args.last_stride}; every row "
          f"in its own process, built and warmed up ({args.warmup} steps), then {args.repeats} "
          f"rounds in which the rows take turns running {args.steps} timed steps", flush=True)
    rows, profiles = [], []
    for height, width in parse_sizes(args.sizes):
        size_rows, size_profiles = measure_size(height, width, args)
        rows += size_rows
        profiles += size_profiles
    summary = summarise(rows)
    macs_by_size = {r["size"]: r["fwd_macs_per_image"] for r in rows
                    if r.get("fwd_macs_per_image")}
    flops_text, flops_per_image = flops_report(parse_sizes(args.sizes), macs_by_size,
                                               args.last_stride)
    print()
    print(f"CPU: {machine['cpu']}")
    print(format_table(summary, flops_per_image))
    print()
    print(flops_text)
    if profiles:
        print()
        print(format_profiles(profiles))
    if args.json:
        write_json(args.json, {
            "benchmark": "train_step", "quick": args.quick, "batch": args.batch,
            "steps_per_round": args.steps, "warmup": args.warmup, "rounds": args.repeats,
            "last_stride": args.last_stride, "train_flops_per_image": flops_per_image,
            "machine": machine, "rows": summary, "profiles": profiles,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
