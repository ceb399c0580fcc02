"""Shared output helpers of the benchmark scripts: a plain-text table, machine facts, JSON."""

from __future__ import annotations

import json
import os
import platform
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
