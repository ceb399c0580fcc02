"""Training-mode batch-norm forward on ResNet50's maps: TensorFlow's fused kernel vs tfmarket's.

    .venv/bin/python benchmarks/batchnorm.py [--batch 64] [--size 128x64] [--repeats 5]
        [--iters 10] [--no-torch] [--json out.json]

Why: ``tfmarket.model.layers.FusedBatchNormalization`` normalises float32 training batches on a
CPU with ``batch_norm_training_by_matmul`` (statistics as matmuls, the affine map as a 1x1
depthwise convolution) because TensorFlow's fused kernel (oneDNN's ``bnorm`` on channels-last
maps) is slow there. This times, per ResNet50 map shape at ``--size`` (last stride 1), the
forward pass of each in a ``tf.function`` (``kernel``: ``FusedBatchNormV3`` with
``is_training=True``; ``matmul``: tfmarket's): ``--repeats`` rounds of 2 warm-up + ``--iters``
timed calls (median), alternating which goes first. It prints medians over rounds with
min-max, the speed-up (per-round kernel/matmul), max |matmul - kernel| / max |kernel| and ms per
training step (ms x layers of that shape); unless ``--no-torch``, PyTorch's
``BatchNorm2d`` forward in training mode (channels_last, what its training step runs) in its
own process after each round. The CPU model and its bf16 / AMX / VNNI flags head it. float32
only: the bfloat16 path keeps the fused kernel.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
from pathlib import Path

from _report import (  # benchmarks/_report.py
    machine_info,
    median_ms,
    render_table,
    run_torch_worker,
    write_json,
)

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# ResNet50's BN layers (last stride 1) by map: (downsampling of the input size, channels,
# layers). Stem 1; per stage the two inner BNs of each block, then the block outputs' and the
# shortcut's.
MAPS = ((2, 64, 1), (4, 64, 6), (4, 256, 4), (8, 128, 8), (8, 512, 5), (16, 256, 12),
        (16, 1024, 7), (16, 512, 6), (16, 2048, 4))
WARMUP = 2
EPSILON = 1.001e-5  # Keras ResNet50's


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", default="128x64", help="input image HxW")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--iters", type=int, default=10, help="timed calls per variant per round")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--torch-child", help=argparse.SUPPRESS)  # JSON job of the worker
    return parser


def shapes(size: str) -> list[tuple[int, int, int, int]]:
    """(H, W, C, layers) of ResNet50's BN maps for an HxW input."""
    height, width = (int(v) for v in size.lower().split("x"))
    return [(height // d, width // d, c, n) for d, c, n in MAPS]


def torch_child(job: dict) -> None:
    """Worker process: prints the median ms of PyTorch's BN forward for each job shape."""
    import torch

    out = []
    for h, w, c in job["cases"]:
        x = torch.randn(job["batch"], c, h, w).contiguous(memory_format=torch.channels_last)
        layer = torch.nn.BatchNorm2d(c, eps=EPSILON).train()
        with torch.no_grad():
            out.append(median_ms(lambda x=x, layer=layer: layer(x), job["iters"], WARMUP))
    print("TORCH " + json.dumps(out))


def tf_cases(args) -> list[dict]:
    """One case per map shape: its two tf.functions (outputs y only, fetched to the host) and
    the matmul form's relative difference."""
    from tfmarket.console import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    from tfmarket.model.layers import batch_norm_training_by_matmul

    tf.get_logger().setLevel("ERROR")  # one trace per shape, as intended
    kernel = tf.function(lambda x, g, b: tf.compat.v1.nn.fused_batch_norm(
        x, g, b, epsilon=EPSILON, is_training=True, data_format="NHWC")[0])
    matmul = tf.function(lambda x, g, b: batch_norm_training_by_matmul(x, g, b, EPSILON)[0])
    cases = []
    for h, w, c, layers in shapes(args.size):
        x = tf.random.normal((args.batch, h, w, c), mean=0.5)
        gamma, beta = tf.random.uniform((c,), 0.5, 1.5), tf.random.normal((c,))
        ref, got = kernel(x, gamma, beta), matmul(x, gamma, beta)
        cases.append({
            "shape": (h, w, c), "layers": layers,
            "rel_diff": float(tf.reduce_max(tf.abs(got - ref)) / tf.reduce_max(tf.abs(ref))),
            "fns": {name: (lambda f=f, x=x, g=gamma, b=beta: f(x, g, b).numpy())
                    for name, f in (("kernel", kernel), ("matmul", matmul))},
            "kernel": [], "matmul": [], "pytorch": []})
    return cases


def measure(cases: list[dict], args, use_torch: bool) -> None:
    for number in range(args.repeats):
        order = ("kernel", "matmul") if number % 2 == 0 else ("matmul", "kernel")
        for case in cases:
            for name in order:
                case[name].append(median_ms(case["fns"][name], args.iters, WARMUP))
        torch_ms = run_torch_worker(__file__, {
            "cases": [list(c["shape"]) for c in cases], "batch": args.batch,
            "iters": args.iters}) if use_torch else None
        use_torch = torch_ms is not None  # a failed worker is not run again
        for case, ms in zip(cases, torch_ms or [], strict=False):
            case["pytorch"].append(ms)
        print(f"  round {number + 1}/{args.repeats} done", flush=True)


def summarise(case: dict) -> dict:
    ratios = [k / m for k, m in zip(case["kernel"], case["matmul"], strict=True)]
    row = {k: v for k, v in case.items() if k != "fns"}
    row["ratios"] = ratios
    for key, values in (("kernel", case["kernel"]), ("matmul", case["matmul"]),
                        ("ratio", ratios)):
        row[f"{key}_median"] = statistics.median(values)
        row[f"{key}_min"], row[f"{key}_max"] = min(values), max(values)
    row["pytorch_median"] = statistics.median(case["pytorch"]) if case["pytorch"] else None
    return row


def format_table(rows: list[dict]) -> str:
    header = ["H x W x C", "layers", "kernel ms", "min-max", "matmul ms", "min-max",
              "speed-up", "min-max", "pytorch ms", "max rel. diff"]
    lines = [[
        " x ".join(map(str, r["shape"])), r["layers"],
        f"{r['kernel_median']:.2f}", f"{r['kernel_min']:.2f}-{r['kernel_max']:.2f}",
        f"{r['matmul_median']:.2f}", f"{r['matmul_min']:.2f}-{r['matmul_max']:.2f}",
        f"{r['ratio_median']:.2f}x", f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}",
        "n/a" if r["pytorch_median"] is None else f"{r['pytorch_median']:.2f}",
        f"{r['rel_diff']:.1e}"] for r in rows]
    return render_table(header, lines)


def per_step(rows: list[dict]) -> str:
    """ms per training step over all 53 layers (median ms x layers of each shape)."""
    def total(key):
        return sum(r[key] * r["layers"] for r in rows if r[key] is not None)

    line = (f"per step, {sum(r['layers'] for r in rows)} layers: kernel "
            f"{total('kernel_median'):.0f} ms, matmul {total('matmul_median'):.0f} ms")
    if all(r["pytorch_median"] is not None for r in rows):
        line += f", PyTorch {total('pytorch_median'):.0f} ms"
    return line


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from tfmarket.console import quiet_tensorflow

    quiet_tensorflow()  # what the commands do before TF: glibc malloc tuned, oneDNN choice
    args = build_parser().parse_args(argv)
    if args.torch_child:
        torch_child(json.loads(args.torch_child))
        return 0
    machine = machine_info()
    print(f"CPU: {machine['cpu']}; {machine['affinity_cpus']} usable cores")
    use_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    if not args.no_torch and not use_torch:
        print("PyTorch column skipped: torch not importable")
    print(f"batch {args.batch}, input {args.size}, float32, {args.repeats} rounds of {WARMUP} "
          f"warm-up + {args.iters} timed calls per variant (median)"
          + ("; PyTorch in its own process after each round" if use_torch else ""), flush=True)
    cases = tf_cases(args)
    measure(cases, args, use_torch)
    rows = [summarise(c) for c in cases]
    print(f"\nCPU: {machine['cpu']}")
    print(format_table(rows))
    print()
    print(per_step(rows))
    if args.json:
        write_json(args.json, {
            "benchmark": "batchnorm", "batch": args.batch, "size": args.size,
            "rounds": args.repeats, "iters": args.iters, "warmup": WARMUP,
            "machine": machine, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
