"""A run directory: what training writes there, the attribute schema it records, and which
``.keras`` file a run's model is read from. Standard library only (no TensorFlow).

Run directory of ``python -m tfmarket.train``: ``config.yaml`` (resolved), ``schema.json`` (the
attribute schema the heads were built from: the dataset's, see ``tfmarket.attributes``),
``backup/`` (resume state), ``tensorboard/`` (train + validation events), ``best.keras`` (best
validation mAP), ``model.keras`` (final), ``history.csv``, ``metrics.json``.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tfmarket.attributes import MARKET, AttributeSchema
from tfmarket.errors import TfmarketError

DONE_MARKER = "metrics.json"  # written when training finished
SCHEMA_FILE = "schema.json"  # the run's attribute schema (AttributeSchema.to_dict())
# What training writes in the run directory; --restart removes it (the data stays).
TRAINING_STATE = ("backup", "tensorboard", "best.keras", "model.keras", "history.csv",
                  DONE_MARKER)


@dataclass(frozen=True)
class RunPaths:
    """Where one worker of a run reads and writes.

    Every worker reads the resume state (``backup/``, ``history.csv``) from the shared
    ``run_dir``, so all of them resume at the same step; only the chief writes there. The other
    workers write their (identical) checkpoints and logs to a temporary ``out_dir``.
    """

    run_dir: Path
    out_dir: Path  # run_dir on the chief
    chief: bool

    @property
    def backup_dir(self) -> Path:
        """The ``BackupAndRestore`` state: written by the chief, restored by every worker."""
        return self.run_dir / "backup"


def remove_training_state(workdir: Path) -> None:
    """``--restart``: deletes what training wrote (``config.yaml`` is rewritten, the data in
    ``synthetic/`` is kept)."""
    for name in TRAINING_STATE:
        target = workdir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()


def describe_schema(schema: AttributeSchema) -> str:
    """One line: the schema's name and heads, or that the run is re-ID only."""
    if not schema.heads:
        return f"none ({schema.name} schema: re-identification only, no attribute heads)"
    return (f"{schema.name} schema, {len(schema.heads)} heads over {len(schema.columns)} "
            f"columns")


def save_schema(schema: AttributeSchema, workdir: Path) -> None:
    """Writes the run's attribute schema to ``workdir/schema.json``."""
    (Path(workdir) / SCHEMA_FILE).write_text(json.dumps(schema.to_dict(), indent=2) + "\n")


def run_schema(workdir: Path) -> AttributeSchema:
    """The attribute schema a run directory's model was built with (``schema.json``);
    Market-1501's for runs written before schemas existed."""
    path = Path(workdir) / SCHEMA_FILE
    if not path.is_file():
        return MARKET
    try:
        return AttributeSchema.from_dict(json.loads(path.read_text()))
    except ValueError as exc:
        raise TfmarketError(f"{path}: {exc}") from None


def source_model(workdir: Path, checkpoint: str, validation: str) -> tuple[Path, str]:
    """(the .keras file to export or adapt from, one line saying which model it is and why).

    ``checkpoint``: "best" (``best.keras`` when the run kept one, else ``model.keras``) or
    "final" (``model.keras``); ``validation``: the run's ``data.validation``, for the line.
    """
    final = workdir / "model.keras"
    best = workdir / "best.keras"
    if checkpoint == "best" and best.is_file():
        return best, f"best validation mAP ({validation} validation set)"
    if not final.is_file():
        raise TfmarketError(f"{workdir}: no trained model (model.keras); has training finished?")
    if checkpoint == "final":
        return final, "final model (--checkpoint final)"
    if validation == "none":
        return final, "final model: the run had no validation (data.validation: none)"
    return final, "final model: the run kept no best.keras (no validation was scored)"
