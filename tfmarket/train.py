"""``python -m tfmarket.train``: joint attribute + re-ID training.

    python -m tfmarket.train --config configs/demo.yaml --workdir runs/demo [--set k=v ...]

Resume: rerunning the same command continues from the last finished epoch (Keras
``BackupAndRestore`` in ``WORKDIR/backup``, written at every epoch end, survives ``kill -9``).
A finished run is not retrained: the command says so and exits; ``--restart`` wipes the run
directory's training state and starts again.

Run directory: ``config.yaml`` (resolved), ``schema.json`` (the attribute schema the heads were
built from: the dataset's, see ``tfmarket.attributes``), ``backup/`` (resume state),
``tensorboard/`` (train + validation events), ``best.keras`` (best validation mAP),
``model.keras`` (final), ``history.csv``, ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tfmarket.errors import TfmarketError
from tfmarket.training.rundir import DONE_MARKER


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tfmarket.train", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", help="YAML config (see configs/)")
    parser.add_argument("--workdir", required=True, help="run directory")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="config override, e.g. train.epochs=2")
    parser.add_argument("--restart", action="store_true",
                        help="discard the run directory's previous training state")
    parser.add_argument("--cpu-replicas", type=int, default=0,
                        help="split the CPU into N logical devices (tests of multi-replica code)")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's log lines, every warning and Keras's full epoch "
                        "line (default: one progress line per epoch and one validation line)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from tfmarket.console import import_tensorflow_quietly, quiet_tensorflow

    quiet_tensorflow(args.verbose)  # before TensorFlow is imported
    try:
        from tfmarket.config import load_config
        from tfmarket.versions import check_runtime

        check_runtime()  # before TensorFlow is imported: one plain line, not a traceback
        import_tensorflow_quietly(args.verbose)

        from tfmarket.training.run import run

        config = load_config(args.config, args.overrides)
        result = run(config, Path(args.workdir), restart=args.restart,
                     cpu_replicas=args.cpu_replicas)
    except TfmarketError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result.get("status") == "already complete":
        print(f"{args.workdir}: training already complete (see {DONE_MARKER}); "
              "use --restart to train again")
        return 0
    keys = ("status", "epochs_run", "replicas", "global_batch", "weights_sha256", "best_val_mAP")
    print(json.dumps({"workdir": str(args.workdir), **{k: result.get(k) for k in keys}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
