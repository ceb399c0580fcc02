"""What the machine offers for training: CPU model and flags, and the precision to train in.

Plain Python (reads ``/proc/cpuinfo``): no TensorFlow import, so ``--help`` and the benchmarks'
machine lines stay cheap.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# CPU flags (as Linux names them) with native bfloat16 arithmetic: oneDNN runs bf16
# convolutions and matmuls on them at several times the float32 rate.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# TensorFlow turns its oneDNN kernels on by itself only on x86 CPUs with one of these flags
# (tensorflow/core/util/util.cc, IsMKLEnabled); elsewhere, e.g. on AVX2-only CPUs, it runs its
# Eigen kernels, which trained the demo's ResNet50 at half oneDNN's speed with the tuned
# allocator and a quarter without (benchmarks/README.md, train_command.py).
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile", "amx_int8",
                        "amx_bf16")
ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"
# Flags worth printing beside a CPU speed: bf16, AMX tiles and int8 dot products.
REPORTED_FLAGS = ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx512_vnni", "avx_vnni")


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _cpuinfo(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first processor's ``key: value`` lines ({} where there is no such file)."""
    try:
        text = Path(path).read_text()
    except OSError:
        return {}
    info: dict[str, str] = {}
    for line in text.split("\n\n", 1)[0].splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    return info


def cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, as ``lscpu`` prints it ("AMD EPYC ...", "Intel(R) Xeon(R) ...")."""
    return _cpuinfo(cpuinfo).get("model name") or platform.processor() or platform.machine()


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (empty where they cannot be read, e.g. not Linux)."""
    return frozenset(_cpuinfo(cpuinfo).get("flags", "").split())


def describe_cpu(cpuinfo: str = "/proc/cpuinfo") -> str:
    """One line for benchmark tables: model name and its bf16 / AMX / VNNI flags."""
    flags = cpu_flags(cpuinfo)
    shown = [f for f in REPORTED_FLAGS if f in flags]
    return f"{cpu_model(cpuinfo)} ({', '.join(shown) if shown else 'no bf16/AMX/VNNI flags'})"


def choose_precision(requested: str, gpu_capabilities: list[tuple[int, int]],
                     flags: frozenset[str]) -> tuple[str, str]:
    """The Keras mixed-precision policy to train in, and why.

    Args:
        requested: str. One of :data:`PRECISIONS`; anything but "auto" is kept as asked.
        gpu_capabilities: list[tuple[int, int]]. CUDA compute capability of each visible GPU.
        flags: frozenset[str]. The CPU's flags (:func:`cpu_flags`).

    "auto": mixed_float16 when every GPU has tensor cores (compute capability >= 7.0); on a CPU
    with native bfloat16 (:data:`BF16_FLAGS`) mixed_bfloat16 (ResNet50 at 128x64 trained 1.6x
    as fast as float32 on an AMD EPYC with avx512_bf16, ``benchmarks/README.md``); float32
    otherwise, as such CPUs have no bfloat16 arithmetic units (not measured here).
    """
    if requested not in PRECISIONS:
        raise ValueError(f"unknown precision {requested!r}; valid: {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested, "set in the config"
    if gpu_capabilities:
        if all(c >= (7, 0) for c in gpu_capabilities):
            return "mixed_float16", "auto: GPUs with tensor cores (compute capability " \
                f"{min(gpu_capabilities)[0]}.{min(gpu_capabilities)[1]} or newer)"
        return "float32", "auto: a GPU without tensor cores (compute capability < 7.0)"
    native = [f for f in BF16_FLAGS if f in flags]
    if native:
        return "mixed_bfloat16", f"auto: CPU with native bfloat16 ({', '.join(native)})"
    return "float32", "auto: CPU without native bfloat16 (no avx512_bf16 or amx_bf16 flag)"


def choose_onednn(flags: frozenset[str], environ: dict[str, str]) -> tuple[str | None, str]:
    """Whether to turn TensorFlow's oneDNN kernels on, and why.

    Args:
        flags: frozenset[str]. The CPU's flags (:func:`cpu_flags`).
        environ: dict[str, str]. The process environment (``os.environ``).

    Returns ("1", why) where ``TF_ENABLE_ONEDNN_OPTS=1`` should be set before TensorFlow is
    imported: an x86 CPU with AVX2 on which TensorFlow would leave oneDNN off. Otherwise
    (None, why): the user set the variable (kept), TensorFlow turns oneDNN on by itself
    (:data:`ONEDNN_DEFAULT_FLAGS`), or the CPU is not an x86 with AVX2 (oneDNN's x86 kernels
    need it; Arm and older CPUs keep TensorFlow's choice).
    """
    if ONEDNN_ENV in environ:
        return None, f"oneDNN: {ONEDNN_ENV}={environ[ONEDNN_ENV]} as set"
    on_by_default = [f for f in ONEDNN_DEFAULT_FLAGS if f in flags]
    if on_by_default:
        return None, f"oneDNN: on (TensorFlow's default with {', '.join(on_by_default)})"
    if "avx2" not in flags:
        return None, "oneDNN: TensorFlow's default (no AVX2 flag)"
    return "1", (f"oneDNN: turned on ({ONEDNN_ENV}=1; TensorFlow leaves it off on a CPU "
                 f"without VNNI/bf16/AMX; {ONEDNN_ENV}=0 keeps Eigen's kernels)")
