"""The real training command, timed as a user runs it: ``python -m tfmarket.train`` under
``/usr/bin/time``, one variant after another, repeated.

    .venv/bin/python benchmarks/train_command.py                      # demo config, 2 epochs
    .venv/bin/python benchmarks/train_command.py --variants tuned,default --repeats 3 \
        --env ONEDNN_MAX_CPU_ISA=AVX2 --set train.precision=float32   # an AVX2-only CPU's path
    .venv/bin/python benchmarks/train_command.py --quick              # 1 round, 1 epoch of 4 steps

Each run is a fresh process running the whole command (TensorFlow start-up, data loading,
model build, ``fit`` with the real input pipeline and callbacks, saving), with validation off
(``train.eval_every=0``) so every run does the same work. A variant is an environment:

* ``tuned``: the command as shipped (glibc malloc tuned by :mod:`tfmarket.allocator`);
* ``default``: ``TFMARKET_MALLOC=default``, glibc's own malloc settings (before issue 25);
* ``tcmalloc``: tcmalloc preloaded (``LD_PRELOAD``), where installed: a cross-check;
* ``onednn`` / ``eigen``: ``TF_ENABLE_ONEDNN_OPTS=1`` / ``0``, TensorFlow's oneDNN kernels on or
  off (TensorFlow turns them on by itself only on CPUs with AVX512_VNNI, AVX512_BF16, AVX_VNNI or
  AMX; ``eigen`` with ``--env ONEDNN_MAX_CPU_ISA=AVX2`` is what an AVX2-only CPU ran before
  issue 25).

Parts combine with "+": ``default+eigen`` is glibc's malloc and no oneDNN.

Rounds alternate the variants' order, so drift in the shared machine's speed hits every
variant alike. Per run: wall, user and system CPU seconds, minor page faults and peak resident
memory (``/usr/bin/time``), and the last epoch's images/s
(``tfmarket.training.callbacks.Throughput``, from the run's ``metrics.json``). The table gives
each variant's median and (min-max) and the per-round ratio of its last-epoch images/s to the
first variant's. Every run's weights digest is printed: variants that differ only in the
allocator must train the same weights.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _report import machine_info, render_table, write_json  # benchmarks/_report.py

REPO = Path(__file__).resolve().parents[1]
TCMALLOC = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
            "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4")
# A variant is one or more of these joined by "+", e.g. "default+eigen".
VARIANTS = {
    "tuned": {},
    "default": {"TFMARKET_MALLOC": "default"},
    "tcmalloc": {"LD_PRELOAD": next((p for p in TCMALLOC if os.path.exists(p)), "")},
    "onednn": {"TF_ENABLE_ONEDNN_OPTS": "1"},
    "eigen": {"TF_ENABLE_ONEDNN_OPTS": "0"},
}


def variant_env(variant: str) -> dict[str, str]:
    """The environment of a variant such as "default+eigen"."""
    env: dict[str, str] = {}
    for part in variant.split("+"):
        env.update(VARIANTS[part])
    return env
TIME_FORMAT = "%e %U %S %R %M"  # wall s, user s, system s, minor faults, peak RSS KB


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="extra config override for every run")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--variants", default="tuned,default",
                        help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="environment for every run, e.g. ONEDNN_MAX_CPU_ISA=AVX2")
    parser.add_argument("--data", help="dataset root (default: the config's; the demo's "
                        "synthetic data is generated once and shared by the runs)")
    parser.add_argument("--keep", help="keep the run directories under this folder")
    parser.add_argument("--json", help="write every run to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 round, 1 epoch of 4 steps")
    return parser


def run_once(args, variant: str, workdir: Path, data_root: str | None) -> dict:
    """One ``tfmarket.train`` process under ``/usr/bin/time``: its measurements."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TFMARKET_MALLOC", "LD_PRELOAD", "TF_ENABLE_ONEDNN_OPTS")}
    env.update(dict(item.split("=", 1) for item in args.env))
    env.update(variant_env(variant))
    sets = [f"train.epochs={args.epochs}", "train.eval_every=0", *args.overrides]
    if data_root:
        sets.append(f"data.root={data_root}")
    if args.quick:
        sets.append("train.steps_per_epoch=4")
    timing = workdir.parent / f"{workdir.name}.time"
    command = ["/usr/bin/time", "-f", TIME_FORMAT, "-o", str(timing), sys.executable, "-m",
               "tfmarket.train", "--config", args.config, "--workdir", str(workdir)]
    for item in sets:
        command += ["--set", item]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{variant}: the command failed:\n{done.stdout}\n{done.stderr}")
    wall, user, system, faults, rss_kb = timing.read_text().split()[-5:]
    metrics = json.loads((workdir / "metrics.json").read_text())
    return {"variant": variant, "wall_s": float(wall), "user_s": float(user),
            "system_s": float(system), "minor_faults": int(faults),
            "peak_rss_mb": int(rss_kb) / 1024, "epoch_images_per_s": metrics["images_per_second"],
            "last_epoch_images_per_s": metrics["images_per_second"][-1],
            "precision": metrics["precision"], "weights_sha256": metrics["weights_sha256"]}


def summarise(runs: list[dict], variants: list[str]) -> str:
    def spread(values, fmt):
        return f"{fmt.format(statistics.median(values))} " \
            f"({fmt.format(min(values))}-{fmt.format(max(values))})"

    header = ("variant", "last epoch images/s", "ratio", "wall s", "user s", "system s",
              "system/user", "minor faults (M)", "peak RSS (GB)")
    rows = []
    base = [r for r in runs if r["variant"] == variants[0]]
    for variant in variants:
        mine = [r for r in runs if r["variant"] == variant]
        ratios = [m["last_epoch_images_per_s"] / b["last_epoch_images_per_s"]
                  for m, b in zip(mine, base, strict=True)]
        rows.append((
            variant, spread([r["last_epoch_images_per_s"] for r in mine], "{:.1f}"),
            spread(ratios, "{:.2f}"), spread([r["wall_s"] for r in mine], "{:.0f}"),
            spread([r["user_s"] for r in mine], "{:.0f}"),
            spread([r["system_s"] for r in mine], "{:.0f}"),
            spread([r["system_s"] / r["user_s"] for r in mine], "{:.2f}"),
            spread([r["minor_faults"] / 1e6 for r in mine], "{:.2f}"),
            spread([r["peak_rss_mb"] / 1024 for r in mine], "{:.2f}"),
        ))
    return render_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [p for v in variants for p in v.split("+") if p not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant part(s) {unknown}; valid: {', '.join(VARIANTS)}, "
                 "joined by +")
    if any("tcmalloc" in v for v in variants) and not VARIANTS["tcmalloc"]["LD_PRELOAD"]:
        sys.exit("tcmalloc is not installed (apt install libtcmalloc-minimal4)")
    repeats = 1 if args.quick else args.repeats
    if args.quick:
        args.epochs = 1
    info = machine_info()
    print(f"machine: {info['cpu']}, {info['affinity_cpus']} CPUs")
    print(f"command: python -m tfmarket.train --config {args.config} (train.epochs="
          f"{args.epochs}, train.eval_every=0{''.join(', ' + s for s in args.overrides)})"
          f"{''.join('  ' + e for e in args.env)}", flush=True)
    scratch = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="tfm-traincmd-"))
    scratch.mkdir(parents=True, exist_ok=True)
    data_root = args.data
    if data_root is None:
        # The first run generates the config's synthetic data (if it uses any); the others
        # read it, so generating it is not part of their time.
        data_root = _shared_synthetic(args, scratch)
    runs = []
    for round_index in range(repeats):
        order = variants if round_index % 2 == 0 else variants[::-1]
        for variant in order:
            workdir = scratch / f"r{round_index}-{variant}"
            shutil.rmtree(workdir, ignore_errors=True)
            started = time.time()
            run = run_once(args, variant, workdir, data_root)
            run["round"] = round_index
            runs.append(run)
            print(f"round {round_index + 1}/{repeats} {variant}: "
                  f"{run['last_epoch_images_per_s']:.1f} images/s (last epoch), wall "
                  f"{run['wall_s']:.0f} s, user {run['user_s']:.0f} s, system "
                  f"{run['system_s']:.0f} s, {run['minor_faults'] / 1e6:.2f} M faults, peak "
                  f"{run['peak_rss_mb'] / 1024:.2f} GB, {run['precision']}, weights "
                  f"{run['weights_sha256'][:12]} ({time.time() - started:.0f} s)", flush=True)
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(summarise(runs, variants))
    print()
    for kernels, digests in weight_digests(runs).items():
        # The allocator must not change a single weight; oneDNN and Eigen kernels round
        # differently, so runs are compared within one kernel choice.
        print(f"weights ({kernels}): "
              f"{'identical in every run' if len(digests) == 1 else 'DIFFER'} "
              f"({len(digests)} digest(s))")
    if args.json:
        write_json(args.json, {"machine": info, "config": args.config, "env": args.env,
                               "overrides": args.overrides, "epochs": args.epochs,
                               "runs": runs})
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def weight_digests(runs: list[dict]) -> dict[str, set[str]]:
    """{kernel choice: the weights digests of its runs}: variants that differ only in the
    allocator (or in nothing) must have one digest."""
    groups: dict[str, set[str]] = {}
    for run in runs:
        env = variant_env(run["variant"])
        kernels = {"1": "oneDNN on", "0": "oneDNN off"}.get(
            env.get("TF_ENABLE_ONEDNN_OPTS", ""), "TensorFlow's / tfmarket's kernel choice")
        groups.setdefault(kernels, set()).add(run["weights_sha256"])
    return groups


def _shared_synthetic(args, scratch: Path) -> str | None:
    """The config's data root when it has one; else the synthetic data its first run writes
    (generated here once, with the config's settings, so every timed run reads the same
    files)."""
    sys.path.insert(0, str(REPO))
    from tfmarket.config import load_config
    from tfmarket.data.synthetic import write_synthetic

    data_cfg = load_config(args.config, args.overrides).data
    if data_cfg.root:
        return None
    root = scratch / "synthetic"
    if not root.is_dir():
        write_synthetic(root, layout="course", num_train_ids=data_cfg.synth_train_ids,
                        num_test_ids=data_cfg.synth_test_ids,
                        images_per_id=data_cfg.synth_images_per_id, seed=data_cfg.seed)
    return str(root)


if __name__ == "__main__":
    sys.exit(main())
