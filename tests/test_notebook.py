"""notebooks/course_colab.ipynb runs top to bottom (nbclient) with its tiny CPU setting.

``TFMARKET_NOTEBOOK_SMOKE=1`` makes the notebook generate course-layout data and train the tiny
backbone for one short epoch; the Colab-only cells (Drive, pip install, TensorBoard) skip
themselves off Colab. The same code path then exports, calibrates and ranks, so a change to any
command-line interface the notebook uses fails here instead of on a student's GPU session.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs the dev extra: pip install -e '.[dev]'")
nbclient = pytest.importorskip("nbclient", reason="needs the dev extra: pip install -e '.[dev]'")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "course_colab.ipynb"

pytestmark = pytest.mark.notebook


def test_course_colab_notebook_runs_and_writes_the_submission(tmp_path, monkeypatch):
    monkeypatch.setenv("TFMARKET_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("TFMARKET_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # Started where Jupyter would start it: the notebook's folder.
    nbclient.NotebookClient(notebook, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()

    text = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.get("outputs", []))
    assert "Colab: False, smoke setting: True" in text
    assert "inline TensorBoard skipped" in text
    submission = tmp_path / "submission"
    data = tmp_path / "market1501-course"
    queries = sorted(p.name for p in (data / "queries").glob("*.jpg"))
    tests = sorted(p.name for p in (data / "test").glob("*.jpg"))
    reid = (submission / "reid_test.txt").read_text().splitlines()
    assert sorted(line.split(":")[0] for line in reid) == queries
    with open(submission / "classification_test.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert len(rows[0]) == 28 and sorted(row[0] for row in rows[1:]) == tests
    assert (tmp_path / "exports" / "course_smoke" / "attribute_rule.json").is_file()
