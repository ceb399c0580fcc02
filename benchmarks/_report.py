"""Shared helpers of the benchmark scripts: a plain-text table, machine facts, JSON, the median
time of a call and a PyTorch worker process."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path


def render_table(header, lines, left=(0,)) -> str:
    """Plain-text table; columns whose index is in ``left`` are left-aligned, others right."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *lines, strict=True)]
    left = set(left)

    def fmt(cells):
        return "  ".join(
            str(c).ljust(w) if i in left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [fmt(header), "  ".join("-" * w for w in widths)]
    return "\n".join(out + [fmt(line) for line in lines])


def machine_info() -> dict:
    """Python, platform, core counts and the CPU's model with its bf16 / AMX / VNNI flags."""
    from tfmarket.hardware import describe_cpu

    return {
        "cpu": describe_cpu(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
    }


def write_json(path: str, result: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
    print(f"\nwrote {path}")


def median_ms(fn, iters: int, warmup: int = 2) -> float:
    """Median milliseconds of ``fn()`` over ``iters`` timed calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run_torch_worker(script: str, job: dict) -> list[float] | None:
    """Runs ``script --torch-child JSON(job)`` (PyTorch and TensorFlow in one process crash
    here) and returns the list its ``TORCH [...]`` line prints; None, saying why, if it fails."""
    proc = subprocess.run([sys.executable, script, "--torch-child", json.dumps(job)],
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("TORCH "):
            return json.loads(line[6:])
    print(f"PyTorch worker failed (rc {proc.returncode}): "
          + " | ".join(proc.stderr.strip().splitlines()[-3:]), flush=True)
    return None
