"""glibc malloc settings for TensorFlow on a CPU: keep freed memory instead of re-faulting it.

With glibc's defaults every large block (over a few MB, as most activation and gradient
tensors are) is ``mmap``-ed and handed back to the kernel on ``free``, and the heap top is
trimmed back, so each training step maps and zero-fills its big tensors afresh. On the demo
config with TensorFlow's Eigen kernels (an AVX2-only CPU's path) that cost 147 s of system CPU
against 250 s of user CPU (63 M minor page faults); with the two settings below, 11 s and 1 M,
and the epoch ran 1.75x as fast (``benchmarks/README.md``, ``train_command.py``).

:func:`tune_malloc` sets them with ``mallopt`` in the running process (before TensorFlow
allocates its first tensor): no new dependency, no re-exec. It leaves the allocator alone when

- the process does not use glibc malloc (``LD_PRELOAD``-ed tcmalloc/jemalloc/mimalloc, musl,
  macOS, Windows): the allocator the user chose is theirs;
- ``GLIBC_TUNABLES`` already sets a ``glibc.malloc.*`` tunable: the user's settings win;
- ``TFMARKET_MALLOC=default`` (the off switch).

Plain Python (ctypes): importing this module loads nothing else.
"""

from __future__ import annotations

import ctypes
import os
import sys

MALLOC_ENV = "TFMARKET_MALLOC"  # "default": leave glibc's malloc settings as they are
# mallopt parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# -1 as M_TRIM_THRESHOLD is SIZE_MAX inside glibc: never trim the heap top (mallopt(3)).
NEVER_TRIM = -1
TUNED = "mmap_max=0, trim_threshold=never"

_state: dict[str, str] = {}


def _glibc():
    """The C library as a ctypes handle, or None where it is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it)
    except (OSError, AttributeError):
        return None
    return libc


def _malloc_is_glibcs(libc) -> bool:
    """Whether the process's ``malloc`` is glibc's own (not one preloaded over it)."""
    try:
        resolved = ctypes.cast(ctypes.CDLL(None).malloc, ctypes.c_void_p).value
        own = ctypes.cast(libc.malloc, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return False
    return resolved == own


def tune_malloc() -> str:
    """Sets glibc malloc to never serve allocations by ``mmap`` and never trim the heap.

    Idempotent and cheap; call it before TensorFlow is imported (every command does, through
    :func:`tfmarket.console.quiet_tensorflow`). Returns one line saying what was done or why
    not (``--verbose`` prints it).
    """
    if "line" in _state:
        return _state["line"]
    line = _tune()
    _state["line"] = line
    return line


def _tune() -> str:
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "default":
        return f"malloc: glibc defaults kept ({MALLOC_ENV}=default)"
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return "malloc: GLIBC_TUNABLES sets it; left as set"
    libc = _glibc()
    if libc is None:
        return "malloc: not glibc; left as it is"
    if not _malloc_is_glibcs(libc):
        return "malloc: another allocator is loaded (LD_PRELOAD); left as it is"
    libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    if not (libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, NEVER_TRIM)):
        return "malloc: mallopt refused the settings; glibc defaults kept"
    return f"malloc: glibc {TUNED} (freed memory is reused, not re-faulted; " \
        f"{MALLOC_ENV}=default turns this off)"
