"""tfmarket.allocator: glibc malloc keeps freed memory, unless the user chose otherwise."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tfmarket.allocator import MALLOC_ENV, _glibc

pytestmark = pytest.mark.skipif(_glibc() is None, reason="glibc malloc only")

# In a fresh process: tune (or not), then allocate, touch and free a 64 MB block twice and
# count the minor page faults of the second round. Freed memory that glibc keeps is reused
# without a fault; memory handed back to the kernel (munmap, heap trim) faults in again, once
# per 4 KB page (16,384 for 64 MB).
PROBE = textwrap.dedent("""
    import ctypes, resource, sys
    from tfmarket.allocator import tune_malloc
    print(tune_malloc(), file=sys.stderr)
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    size = 64 << 20

    def round_trip():
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)

    round_trip()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    round_trip()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")
PAGES = (64 << 20) // 4096


def probe(**env_extra: str) -> tuple[int, str]:
    """(minor faults of the second 64 MB round trip, tune_malloc's line)."""
    env = {k: v for k, v in os.environ.items()
           if k not in (MALLOC_ENV, "GLIBC_TUNABLES", "LD_PRELOAD")}
    env.update(env_extra)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, check=True)
    return int(done.stdout.strip()), done.stderr.strip()


def test_tuned_malloc_reuses_freed_memory_without_faults():
    faults, line = probe()
    assert line.startswith("malloc: glibc mmap_max=0, trim_threshold=never"), line
    assert faults < PAGES // 10, faults


def test_off_switch_keeps_glibc_defaults_which_refault():
    faults, line = probe(**{MALLOC_ENV: "default"})
    assert "defaults kept" in line, line
    assert faults > PAGES // 2, faults  # the block was unmapped and faulted in again


def test_users_own_glibc_tunables_win():
    # Only one of the two settings: the user's choice is kept as is (and refaults here,
    # as the heap top is still trimmed).
    faults, line = probe(GLIBC_TUNABLES="glibc.malloc.mmap_max=0")
    assert "GLIBC_TUNABLES sets it" in line, line
    assert faults > PAGES // 2, faults


def _preloadable_allocator() -> str | None:
    for folder in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"):
        for name in ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libjemalloc.so.2",
                     "libmimalloc.so.2"):
            if os.path.exists(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return None


@pytest.mark.skipif(_preloadable_allocator() is None,
                    reason="no tcmalloc/jemalloc/mimalloc installed to preload")
def test_preloaded_allocator_is_left_alone():
    _, line = probe(LD_PRELOAD=_preloadable_allocator())
    assert "another allocator is loaded" in line, line


def test_verbose_prints_the_allocator_line_once():
    code = ("from tfmarket.console import quiet_tensorflow; "
            "quiet_tensorflow(True); quiet_tensorflow(True)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={k: v for k, v in os.environ.items()
                                           if k not in (MALLOC_ENV, "GLIBC_TUNABLES")})
    lines = [ln for ln in done.stderr.splitlines() if "malloc:" in ln]
    assert lines == ["tfmarket: malloc: glibc mmap_max=0, trim_threshold=never (freed memory "
                     f"is reused, not re-faulted; {MALLOC_ENV}=default turns this off)"]


def test_quiet_commands_print_no_allocator_line():
    code = "from tfmarket.console import quiet_tensorflow; quiet_tensorflow(False)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True, env={k: v for k, v in os.environ.items()
                                           if k != "TFMARKET_VERBOSE"})
    assert done.stderr == ""
