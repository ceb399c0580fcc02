"""Kernel gradient of ResNet50's 3x3 and 1x1 convolutions: TensorFlow's kernel vs matmuls.

    .venv/bin/python benchmarks/conv_grad.py [--kinds 3x3,1x1] [--batch 64] [--size 128x64]
        [--precisions bfloat16,float32] [--repeats 5] [--iters 7] [--no-torch] [--json out.json]

Why: ``tfmarket.model.conv`` computes the kernel gradient of some stride-1 convolutions with
matmuls because there they beat TensorFlow's ``Conv2DBackpropFilter``: 3x3 convolutions with >=
``TAP_GRADIENT_MIN_CHANNELS`` input channels in bfloat16 as nine matmuls
(``tap_kernel_gradient``), 1x1 convolutions with >= ``MATMUL_GRADIENT_MIN_WEIGHTS`` kernel
weights in float32 as one (``pointwise_kernel_gradient``). This measures TensorFlow's kernel
("native") and the matmul form, each a ``tf.function``, on ResNet50's stride-1 3x3 and 1x1
convolution shapes (last stride 1) at ``--size``: ``--repeats`` rounds of 2 warm-up +
``--iters`` timed calls (median), alternating which goes first. It prints medians over rounds
with min-max, the matmul form's speed-up (per-round native/matmul), max |matmul - native| /
max |native| and the saving per training step (ms x layers), in total and over the layers where
tfmarket uses it; unless ``--no-torch``, PyTorch's ``aten.convolution_backward`` weight gradient
(channels_last, its training step's oneDNN kernel), run in its own process after each round
(torch and TensorFlow in one process crash here). The CPU model and its bf16 / AMX / VNNI flags
head it.
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

# ResNet50's stride-1 convolutions (last stride 1), per kernel size:
# (downsampling of the input size, input channels, output channels, layers).
STAGES = {
    "3x3": ((4, 64, 64, 3), (8, 128, 128, 4), (16, 256, 256, 6), (16, 512, 512, 3)),
    # Block 1 of stages 3 and 4 strides its first 1x1 convolution and the shortcut: not here.
    "1x1": ((4, 64, 64, 1), (4, 64, 256, 4), (4, 256, 64, 2), (8, 128, 512, 4),
            (8, 512, 128, 3), (16, 256, 1024, 6), (16, 1024, 256, 5), (16, 1024, 512, 1),
            (16, 1024, 2048, 1), (16, 512, 2048, 3), (16, 2048, 512, 2)),
}
WARMUP = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kinds", default="3x3,1x1", help="kernel sizes: 3x3, 1x1 or both")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", default="128x64", help="input image HxW")
    parser.add_argument("--precisions", default="bfloat16,float32")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--iters", type=int, default=7, help="timed calls per variant per round")
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    parser.add_argument("--json", help="write the results to this JSON file")
    parser.add_argument("--torch-child", help=argparse.SUPPRESS)  # JSON job of the worker
    return parser


def shapes(size: str, kind: str) -> list[tuple[int, int, int, int, int]]:
    """(H, W, C_in, C_out, layers) of ResNet50's stride-1 ``kind`` convolutions, HxW input."""
    height, width = (int(v) for v in size.lower().split("x"))
    return [(height // d, width // d, c_in, c_out, n) for d, c_in, c_out, n in STAGES[kind]]


def torch_child(job: dict) -> None:
    """Worker process: prints the median ms of PyTorch's weight gradient for each job shape."""
    import torch

    out = []
    for precision, k, h, w, c_in, c_out in job["cases"]:
        dtype = getattr(torch, precision)
        x, dy = (torch.randn(job["batch"], c, h, w).to(dtype).contiguous(
            memory_format=torch.channels_last) for c in (c_in, c_out))
        kernel = torch.randn(c_out, c_in, k, k).to(dtype).contiguous(
            memory_format=torch.channels_last)

        def grad(x=x, dy=dy, kernel=kernel, pad=k // 2):
            return torch.ops.aten.convolution_backward(
                dy, x, kernel, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
                [False, True, False])

        with torch.no_grad():
            out.append(median_ms(grad, job["iters"], WARMUP))
    print("TORCH " + json.dumps(out))


def tf_cases(args) -> list[dict]:
    """One case per (kind, precision, shape): its two tf.functions and the matmul form's
    relative error."""
    from tfmarket.console import import_tensorflow_quietly

    tf = import_tensorflow_quietly()
    from tfmarket.model.conv import (
        matmul_kernel_gradient,
        pointwise_kernel_gradient,
        tap_kernel_gradient,
    )

    # Each function traces once per (shape, dtype), as intended: mute TF's retracing warning.
    tf.get_logger().setLevel("ERROR")
    cases = []
    for kind in args.kinds.split(","):
        k = int(kind.split("x")[0])
        native = tf.function(lambda x, dy, k=k: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=[k, k, x.shape[-1], dy.shape[-1]], out_backprop=dy,
            strides=[1, 1, 1, 1], padding="SAME"))
        matmul = tf.function(tap_kernel_gradient if k == 3 else pointwise_kernel_gradient)
        for precision in args.precisions.split(","):
            for h, w, c_in, c_out, layers in shapes(args.size, kind):
                x, dy = (tf.cast(tf.random.normal((args.batch, h, w, c)), precision)
                         for c in (c_in, c_out))
                ref, got = (tf.cast(f(x, dy), "float32") for f in (native, matmul))
                error = float(tf.reduce_max(tf.abs(got - ref)) / tf.reduce_max(tf.abs(ref)))
                cases.append({
                    "kind": kind, "precision": precision, "shape": (h, w, c_in, c_out),
                    "layers": layers, "rel_diff": error,
                    "used": matmul_kernel_gradient(
                        (k, k), "same", precision, c_in, c_out) is not None,
                    "fns": {"native": lambda x=x, dy=dy, f=native: f(x, dy),
                            "matmul": lambda x=x, dy=dy, f=matmul: f(x, dy)},
                    "native": [], "matmul": [], "pytorch": []})
    return cases


def measure(cases: list[dict], args, use_torch: bool) -> None:
    for number in range(args.repeats):
        order = ("native", "matmul") if number % 2 == 0 else ("matmul", "native")
        for case in cases:
            for name in order:
                case[name].append(median_ms(case["fns"][name], args.iters, WARMUP))
        torch_ms = run_torch_worker(__file__, {
            "cases": [[c["precision"], int(c["kind"][0]), *c["shape"]] for c in cases],
            "batch": args.batch, "iters": args.iters}) if use_torch else None
        use_torch = torch_ms is not None  # a failed worker is not run again
        for case, ms in zip(cases, torch_ms or [], strict=False):
            case["pytorch"].append(ms)
        print(f"  round {number + 1}/{args.repeats} done", flush=True)


def summarise(case: dict) -> dict:
    ratios = [n / t for n, t in zip(case["native"], case["matmul"], strict=True)]
    row = {k: v for k, v in case.items() if k != "fns"}
    row["ratios"] = ratios
    for key, values in (("native", case["native"]), ("matmul", case["matmul"]),
                        ("ratio", ratios)):
        row[f"{key}_median"] = statistics.median(values)
        row[f"{key}_min"], row[f"{key}_max"] = min(values), max(values)
    row["pytorch_median"] = statistics.median(case["pytorch"]) if case["pytorch"] else None
    row["saving_ms"] = (row["native_median"] - row["matmul_median"]) * case["layers"]
    return row


def format_table(rows: list[dict]) -> str:
    header = ["kernel", "precision", "H x W x C_in x C_out", "layers", "tfmarket uses",
              "native ms", "min-max", "matmul ms", "min-max", "matmul speed-up", "min-max",
              "pytorch ms", "max rel. diff", "per-step saving ms"]
    lines = [[
        r["kind"], r["precision"], " x ".join(map(str, r["shape"])), r["layers"],
        "matmul" if r["used"] else "native",
        f"{r['native_median']:.1f}", f"{r['native_min']:.1f}-{r['native_max']:.1f}",
        f"{r['matmul_median']:.1f}", f"{r['matmul_min']:.1f}-{r['matmul_max']:.1f}",
        f"{r['ratio_median']:.2f}x", f"{r['ratio_min']:.2f}-{r['ratio_max']:.2f}",
        "n/a" if r["pytorch_median"] is None else f"{r['pytorch_median']:.1f}",
        f"{r['rel_diff']:.1e}", f"{r['saving_ms']:.1f}"] for r in rows]
    return render_table(header, lines, left=(0, 1, 2, 4))


def totals(rows: list[dict]) -> list[str]:
    """One line per (kernel, precision): ms per step, native vs matmul, over all its layers and
    over those where tfmarket takes the matmul form."""
    def per_step(subset):
        return (sum(r["layers"] for r in subset),
                sum(r["native_median"] * r["layers"] for r in subset),
                sum(r["matmul_median"] * r["layers"] for r in subset))

    out = []
    for kind, precision in dict.fromkeys((r["kind"], r["precision"]) for r in rows):
        mine = [r for r in rows if (r["kind"], r["precision"]) == (kind, precision)]
        n, native, matmul = per_step(mine)
        n_used, native_used, matmul_used = per_step([r for r in mine if r["used"]])
        out.append(f"{kind} {precision}: per step, all {n} layers: native {native:.0f} ms vs "
                   f"matmul {matmul:.0f} ms; the {n_used} layers where tfmarket uses the matmul "
                   f"form: native {native_used:.0f} ms vs matmul {matmul_used:.0f} ms")
    return out


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
    print(f"batch {args.batch}, input {args.size}, {args.repeats} rounds of {WARMUP} warm-up + "
          f"{args.iters} timed calls per variant (median)"
          + ("; PyTorch in its own process after each round" if use_torch else ""), flush=True)
    cases = tf_cases(args)
    from tfmarket.model.conv import MATMUL_GRADIENT_MIN_WEIGHTS, TAP_GRADIENT_MIN_CHANNELS

    measure(cases, args, use_torch)
    rows = [summarise(c) for c in cases]
    print(f"\nCPU: {machine['cpu']}")
    print(format_table(rows))
    print()
    print("\n".join(totals(rows)))
    if args.json:
        write_json(args.json, {
            "benchmark": "conv_grad", "batch": args.batch, "size": args.size,
            "rounds": args.repeats, "iters": args.iters, "warmup": WARMUP,
            "min_channels_3x3": TAP_GRADIENT_MIN_CHANNELS,
            "min_weights_1x1": MATMUL_GRADIENT_MIN_WEIGHTS, "machine": machine, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
