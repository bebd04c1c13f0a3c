"""Every notebook in tutorials/ and notebooks/ runs end to end in quick mode (papermill, ``quick=True``).

Where ``$STORM_EXECUTED_NOTEBOOKS`` is set (the Makefile sets it), the executed copies are kept there, figures
inline, for ``make docs`` to render without executing the notebooks a second time (``tools/quick_notebooks.py``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import quick_notebooks  # noqa: E402

NOTEBOOKS = quick_notebooks.NOTEBOOKS


def _parameters(path: Path) -> set[str]:
    nb = nbformat.read(path, as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
    return {
        line.split("=")[0].strip() for line in cells[0].source.splitlines() if "=" in line and not line.startswith("#")
    }


def test_notebooks_exist():
    assert any(p.parent.name == "tutorials" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_has_quick_and_results_parameters(path: Path):
    params = _parameters(path)
    assert {"quick", "results_dir"} <= params, f"{path.name}: parameters cell must define quick and results_dir"


@pytest.mark.notebook
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_quick(path: Path, tmp_path: Path):
    results = tmp_path / "results"
    keep = os.environ.get(quick_notebooks.EXECUTED_ENV)
    output = quick_notebooks.copy_path(path, Path(keep)) if keep else tmp_path / path.name
    quick_notebooks.execute_quick(path, output, results)
    figures = list(results.glob("*.png")) + list(results.glob("*.pdf"))
    assert figures, f"{path.name} wrote no figure to results_dir"
    outputs = [o for c in nbformat.read(output, as_version=4).cells for o in c.get("outputs", [])]
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{path.name} shows no figure inline"
