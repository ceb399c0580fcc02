"""What an interrupted run left in its run directory: the epoch to resume from and the best
validation mAP so far. Standard library only (no TensorFlow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def backup_epoch(backup_dir: Path) -> int:
    """Epochs finished according to the ``BackupAndRestore`` state (0 for a new run).

    The resumed run continues the input stream from this epoch, as Keras does the epochs.
    """
    # The ".bkp" file is the previous epoch's copy (double_checkpoint), read when a kill
    # while the current one was being written left it missing or unreadable.
    for name in ("training_metadata.json", "training_metadata.json.bkp"):
        try:
            return int(json.loads((backup_dir / name).read_text())["epoch"])
        except (OSError, ValueError, KeyError):
            continue
    return 0


def best_logged_map(history_csv: Path) -> float | None:
    """Best ``val_mAP`` logged by an interrupted run (None for a new one).

    Keeps a resumed run's ``best.keras`` from being overwritten by a worse model.
    """
    if not history_csv.is_file():
        return None
    with history_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    scores = []
    for row in rows:
        try:  # CSVLogger writes "NA" for epochs without validation
            value = float(row.get("val_mAP") or "nan")
        except ValueError:
            continue
        if value == value:  # not NaN: an epoch without validation
            scores.append(value)
    return max(scores) if scores else None
