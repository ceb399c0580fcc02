"""Training-step throughput (images/s): tfmarket's Keras ResNet50 vs torchvision ResNet50.

    .venv/bin/python benchmarks/train_step.py [--sizes 256x128,128x64] [--batch 64]
        [--steps 10] [--precisions float32,mixed_bfloat16] [--xla off|on|both]
        [--peak-gflops 2000] [--json results.json]
    .venv/bin/python benchmarks/train_step.py --quick   # 2 steps at batch 8, 128x64 only

Only the step is timed: inputs are constant in-memory tensors (random pixels in [0, 255],
identity labels laid out P x K with K = 4, random attribute labels), repeated by tf.data.

* ``tfmarket``: :func:`tfmarket.model.build_model` (ResNet50, random init, last stride 1, avg
  pooling, BNNeck, 751-way ID head, attribute heads) compiled exactly as ``tfmarket.train``
  compiles it (``build_losses``: label-smoothed ID softmax + batch-hard triplet + attribute
  losses; ``build_optimizer``; ``build_metrics``), trained with ``model.fit``. Precision
  ``float32`` and ``mixed_bfloat16`` (Keras mixed-precision policy), ``jit_compile`` (XLA)
  off/on. TensorFlow's default thread settings.
* ``pytorch``: torchvision ``resnet50`` (random init, the same last-stride-1 change, 751-way
  linear head), channels_last memory format, forward + cross-entropy + backward + Adam step;
  ``float32`` and bfloat16 autocast. PyTorch's default thread settings. torchvision's ResNet50
  is v1.5 (stride in the 3x3 conv), about 6% more compute than Keras's v1 (stride in the 1x1
  conv: 3.86 vs 4.1 GMACs at 224x224); the tfmarket model adds BNNeck, the attribute heads and
  the triplet loss, which cost little. The two do about the same work per image.

Warm-up steps (``--warmup``, which include tracing/compilation) are not timed; the compile
time is reported separately. The FLOP count is analytic (conv + dense multiply-accumulates of
the Keras model, x2 FLOPs per MAC, backward = 2 x forward); with ``--peak-gflops`` the table
also shows the images/s that peak would give.
"""

from __future__ import annotations

import argparse
import gc
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
                        help="HxW list, default 256x128,128x64 (--quick: 128x64)")
    parser.add_argument("--batch", type=int, default=None,
                        help="images per step, a multiple of 4 (default 64 = 16x4; --quick: 8)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed steps, include compilation (default 5; --quick: 1)")
    parser.add_argument("--precisions", default="float32,mixed_bfloat16",
                        help="Keras policies; PyTorch rows use fp32 / bf16 autocast to match")
    parser.add_argument("--xla", choices=("off", "on", "both"), default="off",
                        help="tfmarket rows with jit_compile off, on or both (XLA compile of "
                        "ResNet50 training takes minutes on CPU)")
    parser.add_argument("--last-stride", type=int, default=1, choices=(1, 2))
    parser.add_argument("--config", default=str(REPO / "configs" / "market1501_resnet50.yaml"),
                        help="config whose loss/train sections set losses and optimizer")
    parser.add_argument("--peak-gflops", type=float, default=0.0,
                        help="machine peak GFLOP/s (for the precision in question); adds a "
                        "theoretical images/s column")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch rows")
    parser.add_argument("--no-tf", action="store_true", help="skip the tfmarket rows")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 timed steps, 1 warm-up, batch 8, 128x64")
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


def bench_tf(height, width, precision, xla, args, config) -> dict:
    import keras
    import tensorflow as tf

    from tfmarket.model import build_model
    from tfmarket.train import _model_targets, build_losses, build_metrics, build_optimizer

    keras.backend.clear_session()
    gc.collect()
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy(precision)
    try:
        model = build_model(NUM_IDS, height=height, width=width, backbone="resnet50",
                            weights=None, last_stride=args.last_stride, pooling="avg")
        losses, loss_weights = build_losses(config, dataset_targets())
        model.compile(
            optimizer=build_optimizer(config.train, steps_per_epoch=1000),
            loss=losses, loss_weights=loss_weights, metrics=build_metrics(), jit_compile=xla,
        )
        macs = count_macs(model)
        images, targets = synthetic_batch(args.batch, height, width)
        y = _model_targets({k: tf.constant(v) for k, v in targets.items()})
        ds = tf.data.Dataset.from_tensors((tf.constant(images), y)).repeat()
        timer = _StepTimer()
        start = time.perf_counter()
        history = model.fit(ds, epochs=1, steps_per_epoch=args.warmup + args.steps, verbose=0,
                            callbacks=[timer])
        times = [start] + timer.times
        seconds = times[-1] - times[args.warmup]
        loss = float(history.history["loss"][-1])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    del model
    keras.backend.clear_session()
    gc.collect()
    return _row(
        "tfmarket", "Keras ResNet50 + BNNeck + heads, full loss set", height, width,
        precision, "on" if xla else "off", args, seconds,
        compile_seconds=times[1] - times[0], macs=macs, loss=loss,
    )


class _StepTimer:
    """Keras callback recording the wall time at the end of every training step."""

    def __new__(cls):
        import keras

        class StepTimer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.times: list[float] = []

            def on_train_batch_end(self, batch, logs=None):
                self.times.append(time.perf_counter())

        return StepTimer()


# --- PyTorch ----------------------------------------------------------------------------------


def import_torch():
    import torch
    import torchvision  # noqa: F401

    return torch, torchvision


def bench_torch(height, width, bf16: bool, args) -> dict:
    import torch
    import torchvision

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

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    start = time.perf_counter()
    for _ in range(args.warmup):
        step()
    compile_seconds = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    seconds = time.perf_counter() - start
    return _row(
        "pytorch", "torchvision resnet50, channels_last, CE + Adam", height, width,
        "bf16 autocast" if bf16 else "float32", "-", args, seconds,
        compile_seconds=compile_seconds, macs=None, loss=loss,
    )


# --- report -----------------------------------------------------------------------------------


def _row(framework, model, height, width, precision, xla, args, seconds, *, compile_seconds,
         macs, loss) -> dict:
    return {
        "framework": framework,
        "model": model,
        "size": f"{height}x{width}",
        "precision": precision,
        "xla": xla,
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "seconds": seconds,
        "step_ms": 1000 * seconds / args.steps,
        "images_per_second": args.steps * args.batch / seconds,
        "warmup_seconds": compile_seconds,
        "fwd_macs_per_image": macs,
        "final_loss": loss,
    }



def format_table(rows, flops_per_image: dict[str, float], peak_gflops: float) -> str:
    baseline = {
        r["size"]: r["images_per_second"]
        for r in rows if r["framework"] == "pytorch" and r["precision"] == "float32"
    }
    header = ["framework", "size", "precision", "xla", "images/s", "step ms",
              "vs PyTorch fp32 channels_last", "GFLOP/s"]
    if peak_gflops:
        header.append(f"peak images/s @{peak_gflops:g}")
    lines = []
    for r in rows:
        base = baseline.get(r["size"])
        flops = flops_per_image.get(r["size"])
        line = [
            r["framework"], r["size"], r["precision"], r["xla"],
            f"{r['images_per_second']:.2f}", f"{r['step_ms']:.0f}",
            f"{r['images_per_second'] / base:.2f}x" if base else "n/a",
            f"{r['images_per_second'] * flops / 1e9:.0f}" if flops else "n/a",
        ]
        if peak_gflops:
            line.append(f"{peak_gflops * 1e9 / flops:.1f}" if flops else "n/a")
        lines.append(line)
    return render_table(header, lines, left=(0, 1, 2, 3))


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
            f"rule of thumb 4.1 GMACs x pixels/224^2 = {thumb:.2f} GMACs (last stride 2); "
            f"train step {3 * 2 * gmacs:.2f} GFLOPs/image"
        )
    return "\n".join(lines), per_image



def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.sizes = args.sizes or "128x64"
        args.batch = args.batch or 8
        args.steps = args.steps or 2
        args.warmup = args.warmup if args.warmup is not None else 1
    args.sizes = args.sizes or "256x128,128x64"
    args.batch = args.batch or 64
    args.steps = args.steps or 10
    args.warmup = args.warmup if args.warmup is not None else 5
    if args.batch % K:
        raise SystemExit(f"--batch must be a multiple of {K} (P x K batches)")
    if args.warmup < 1:
        raise SystemExit("--warmup must be at least 1 (the first step compiles)")
    sizes = parse_sizes(args.sizes)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    xlas = {"off": [False], "on": [True], "both": [False, True]}[args.xla]
    print(f"batch {args.batch}, {args.warmup} warm-up + {args.steps} timed steps, "
          f"sizes {args.sizes}, last stride {args.last_stride}", flush=True)

    rows: list[dict] = []
    notes: list[str] = []
    versions: dict[str, str] = {}
    if not args.no_torch:
        try:
            torch, torchvision = import_torch()
            versions.update(torch=torch.__version__, torchvision=torchvision.__version__)
            print(f"torch {torch.__version__}: {torch.get_num_threads()} threads, CPU capability "
                  f"{torch.backends.cpu.get_cpu_capability()}", flush=True)
        except (ImportError, RuntimeError, OSError) as exc:
            notes.append(TORCH_HINT.format(error=f"{type(exc).__name__}: {exc}"))
            print(notes[-1])
        else:
            for height, width in sizes:
                for precision in precisions:
                    if precision == "mixed_float16":
                        continue  # no fp16 autocast comparison on CPU
                    rows.append(bench_torch(height, width, precision != "float32", args))
                    print(f"  pytorch {height}x{width} {rows[-1]['precision']}: "
                          f"{rows[-1]['images_per_second']:.2f} images/s", flush=True)

    macs_by_size: dict[str, int] = {}
    if not args.no_tf:
        import tensorflow as tf

        from tfmarket.config import load_config

        versions["tensorflow"] = tf.__version__
        config = load_config(args.config)
        threads = (tf.config.threading.get_intra_op_parallelism_threads(),
                   tf.config.threading.get_inter_op_parallelism_threads())
        print(f"tensorflow {tf.__version__}: intra/inter-op threads {threads} (0 = default); "
              f"loss/optimizer from {args.config} (optimizer {config.train.optimizer})",
              flush=True)
        for height, width in sizes:
            for precision in precisions:
                for xla in xlas:
                    rows.append(bench_tf(height, width, precision, xla, args, config))
                    r = rows[-1]
                    macs_by_size.setdefault(r["size"], r["fwd_macs_per_image"])
                    print(f"  tfmarket {r['size']} {precision} xla={r['xla']}: "
                          f"{r['images_per_second']:.2f} images/s "
                          f"(warm-up incl. compile {r['warmup_seconds']:.1f} s)", flush=True)

    flops_text, flops_per_image = flops_report(sizes, macs_by_size, args.last_stride)
    order = {f"{h}x{w}": i for i, (h, w) in enumerate(sizes)}
    rows.sort(key=lambda r: (order[r["size"]], r["framework"] != "tfmarket"))
    print()
    print(format_table(rows, flops_per_image, args.peak_gflops))
    print()
    print(flops_text)
    if args.json:
        result = {
            "benchmark": "train_step",
            "quick": args.quick,
            "batch": args.batch,
            "last_stride": args.last_stride,
            "peak_gflops": args.peak_gflops or None,
            "train_flops_per_image": flops_per_image,
            "machine": machine_info(),
            "versions": versions,
            "rows": rows,
            "notes": notes,
        }
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    main()
