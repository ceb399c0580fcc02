"""Peak memory of ``python -m tfmarket.export``, the whole command and each of its phases.

    python benchmarks/export_memory.py --workdir runs/mem/r128x64 --workdir runs/mem/r256x128 \
        [--flags "--onnx --int8"] [--json benchmarks/results/export_memory.json]

For every run directory, two fresh processes:

* ``command``: the real command under ``/usr/bin/time -v`` (maximum resident set, wall time,
  user and system CPU), exporting into a temporary folder;
* ``phases``: the same export in-process (``export_run`` with its ``on_phase`` hook) while a
  thread samples the resident set every 10 ms, so each phase ("load", "keras", "saved_model",
  "onnx", "int8") gets the highest resident set seen while it ran and how much it added over
  the phase's start. Memory a phase frees is reused by later phases, so the phases' peaks are
  the thing to read, not their sum.

The table says which phase sets the command's peak. The target (issue 26): ``--onnx --int8`` of
ResNet50 at 128x64 and 256x128 within 2.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import machine_info, render_table, write_json  # noqa: E402

PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PhaseSampler:
    """Highest resident set per phase, sampled every ``interval`` seconds by a thread."""

    def __init__(self, interval: float = 0.01):
        self.interval, self.phase, self.peaks, self.starts = interval, "start", {}, {}
        self.order: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.enter("start")
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    def enter(self, phase: str) -> None:
        self._sample()  # what the previous phase ended with is still its own
        self.phase = phase
        self.order.append(phase)
        self.starts[phase] = _rss_bytes()
        self._sample()

    def _sample(self) -> None:
        rss = _rss_bytes()
        if rss > self.peaks.get(self.phase, 0):
            self.peaks[self.phase] = rss

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()


def _phases_child(workdir: str, out: str, flags: list[str]) -> None:
    """In a fresh process: the export with the sampler; prints one JSON line."""
    from tfmarket.console import import_tensorflow_quietly

    import_tensorflow_quietly(False)
    from tfmarket.serving.export import export_run

    with PhaseSampler() as sampler:
        export_run(Path(workdir), Path(out), onnx="--onnx" in flags, int8="--int8" in flags,
                   litert="--litert" in flags, on_phase=sampler.enter)
    print(json.dumps({"phases": [{"phase": p, "start": sampler.starts[p],
                                  "peak": sampler.peaks.get(p, 0)} for p in sampler.order]}))


def _time_v(cmd: list[str]) -> dict:
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"failed: {shlex.join(cmd)}")

    def field(name):
        return re.search(rf"{re.escape(name)}: (.+)", proc.stderr).group(1).strip()

    wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":")
    return {"peak_rss": int(field("Maximum resident set size (kbytes)")) * 1024,
            "wall_s": sum(float(v) * 60 ** i for i, v in enumerate(reversed(wall))),
            "user_s": float(field("User time (seconds)")),
            "system_s": float(field("System time (seconds)")), "stdout": proc.stdout}


def measure(workdir: str, flags: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="export-memory-") as tmp:
        command = _time_v([sys.executable, "-m", "tfmarket.export", "--workdir", workdir,
                           "--out", f"{tmp}/command", *flags])
        phases = _time_v([sys.executable, __file__, "--phases-child", workdir, f"{tmp}/phases",
                          "--flags", " ".join(flags)])
    out = json.loads(phases["stdout"].strip().splitlines()[-1])
    config_line = Path(workdir, "config.yaml").read_text()
    size = re.search(r"height: (\d+)", config_line).group(1) + "x" + re.search(
        r"width: (\d+)", config_line).group(1)
    return {"workdir": workdir, "size": size, "flags": flags,
            "command": {k: v for k, v in command.items() if k != "stdout"},
            "phases_process_peak_rss": phases["peak_rss"], "phases": out["phases"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", action="append", default=[],
                        help="a run directory to export (repeat for several sizes)")
    parser.add_argument("--flags", default="--onnx --int8", help="the export command's flags")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--phases-child", nargs=2, metavar=("WORKDIR", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    flags = args.flags.split()
    if args.phases_child:
        _phases_child(*args.phases_child, flags)
        return 0
    if not args.workdir:
        parser.error("give at least one --workdir")
    machine = machine_info()
    results = [measure(w, flags) for w in args.workdir]
    gb = 1e9
    print(f"\nexport {' '.join(flags)}; CPU: {machine['cpu']}")
    lines = []
    for r in results:
        c = r["command"]
        lines.append([r["size"], "command (/usr/bin/time)", f"{c['peak_rss'] / gb:.2f}", "",
                      f"{c['wall_s']:.0f}", f"{c['system_s'] / max(c['user_s'], 1e-9):.2f}"])
        for p in r["phases"]:
            lines.append(["", f"  phase {p['phase']}", f"{p['peak'] / gb:.2f}",
                          f"{(p['peak'] - p['start']) / gb:+.2f}", "", ""])
    print(render_table(["size", "what", "peak RSS GB", "added GB", "wall s", "sys/user"],
                       lines, left=(0, 1)))
    if args.json:
        write_json(args.json, {"machine": machine, "results": results,
                               "time": time.strftime("%Y-%m-%d %H:%M")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
