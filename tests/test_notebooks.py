"""Every notebook in tutorials/ and notebooks/ runs end to end in quick mode (papermill, ``quick=True``)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted([*ROOT.glob("tutorials/*.ipynb"), *ROOT.glob("notebooks/*.ipynb")])


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
    import papermill as pm

    results = tmp_path / "results"
    pm.execute_notebook(
        str(path),
        str(tmp_path / path.name),
        parameters={"quick": True, "results_dir": str(results)},
        cwd=str(path.parent),
        kernel_name="python3",
        progress_bar=False,
    )
    figures = list(results.glob("*.png")) + list(results.glob("*.pdf"))
    assert figures, f"{path.name} wrote no figure to results_dir"
