"""Execute the tutorials and figure notebooks in quick mode, once, for the test suite and the documentation alike.

    python tools/quick_notebooks.py                       # every stale notebook → results/executed/
    python tools/quick_notebooks.py --out DIR 01_quickstart fig2_spatial_domains

``tests/test_notebooks.py`` executes every notebook in quick mode anyway; where ``$STORM_EXECUTED_NOTEBOOKS`` is set
(the Makefile sets it) it keeps each executed copy there, stamped with a digest of the notebook and of the package.
``make docs`` renders those copies and executes only the ones that are missing or stale, so CI runs each notebook
once. Figures are kept inline (matplotlib's inline backend, whatever ``MPLBACKEND`` says for the tests) and storm
logs at WARNING (``$STORM_LOG_LEVEL``), so its progress messages do not bury them.

``$STORM_DOCS_REUSE_STALE=1`` renders the copies there even when stale (for editing the pages' text without running
the notebooks again after each change to the package); only missing copies are then executed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted([*ROOT.glob("tutorials/*.ipynb"), *ROOT.glob("notebooks/*.ipynb")])
EXECUTED_ENV = "STORM_EXECUTED_NOTEBOOKS"
DEFAULT_EXECUTED = ROOT / "results" / "executed"
STAMP_KEY = "storm_quick_run"  # notebook metadata: {"digest": ..., "source": "tutorials/01_quickstart.ipynb"}
REUSE_STALE_ENV = "STORM_DOCS_REUSE_STALE"
#: Environment of the kernel: figures inline as display outputs, storm's messages at WARNING and above.
KERNEL_ENV = {"MPLBACKEND": "module://matplotlib_inline.backend_inline", "STORM_LOG_LEVEL": "WARNING"}


def executed_dir() -> Path:
    """Return the folder of the executed copies: ``$STORM_EXECUTED_NOTEBOOKS`` or ``results/executed``."""
    return Path(os.environ.get(EXECUTED_ENV) or DEFAULT_EXECUTED)


def copy_path(notebook: Path, folder: Path) -> Path:
    """Return the path of the executed copy of ``notebook`` in ``folder``: ``<folder>/<tutorials|notebooks>/<name>``."""
    return folder / notebook.parent.name / notebook.name


def digest(notebook: Path) -> str:
    """Return the sha256 of a notebook together with every file of the package (its outputs depend on both)."""
    h = hashlib.sha256(notebook.read_bytes())
    for path in sorted((ROOT / "storm").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def is_fresh(notebook: Path, executed: Path, expected: str | None = None) -> bool:
    """Return whether ``executed`` is a quick run of the current ``notebook`` and package."""
    import nbformat

    if not executed.is_file():
        return False
    stamp = nbformat.read(executed, as_version=4).metadata.get(STAMP_KEY, {})
    return stamp.get("digest") == (expected or digest(notebook))


def execute_quick(notebook: Path, output: Path, results_dir: Path) -> Path:
    """Execute ``notebook`` with papermill in quick mode, figures inline, and stamp the copy.

    Parameters
    ----------
    notebook
        A notebook of ``tutorials/`` or ``notebooks/``.
    output
        Path of the executed copy.
    results_dir
        Passed as the notebook's ``results_dir`` parameter (its figure files and tables).

    Returns
    -------
    ``output``.
    """
    import nbformat
    import papermill as pm

    before = digest(notebook)  # taken first: a file changed during the run makes the copy stale, not wrong
    output.parent.mkdir(parents=True, exist_ok=True)
    previous = {key: os.environ.get(key) for key in KERNEL_ENV}
    os.environ.update(KERNEL_ENV)  # the kernel inherits the environment of this process
    try:
        pm.execute_notebook(
            str(notebook),
            str(output),
            parameters={"quick": True, "results_dir": str(results_dir)},
            cwd=str(notebook.parent),
            kernel_name="python3",
            progress_bar=False,
        )
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    nb = nbformat.read(output, as_version=4)
    nb.metadata[STAMP_KEY] = {"digest": before, "source": str(notebook.relative_to(ROOT))}
    nbformat.write(nb, output)
    return output


def ensure_executed(notebooks: list[Path], folder: Path, *, log=print) -> list[Path]:
    """Execute the notebooks whose copy in ``folder`` is missing or stale; return every copy's path.

    Parameters
    ----------
    notebooks
        Notebooks to make available.
    folder
        Folder of the executed copies.
    log
        Called with one line per notebook: reused or executed, and how long it took.

    Returns
    -------
    The executed copies, in the order of ``notebooks``.
    """
    import time

    reuse_stale = os.environ.get(REUSE_STALE_ENV) == "1"
    copies = []
    for notebook in notebooks:
        target = copy_path(notebook, folder)
        if (reuse_stale and target.is_file()) or is_fresh(notebook, target):
            log(f"{notebook.relative_to(ROOT)}: reusing the executed copy {target}")
        else:
            start = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix=f"{notebook.stem}-") as results:
                execute_quick(notebook, target, Path(results))
            log(f"{notebook.relative_to(ROOT)}: executed in quick mode in {time.perf_counter() - start:.0f} s")
        copies.append(target)
    return copies


def main(argv: list[str] | None = None) -> int:
    """Command line: execute the stale notebooks (all, or those named) into ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names (stem); default: all")
    parser.add_argument("--out", type=Path, default=None, help=f"default: ${EXECUTED_ENV} or {DEFAULT_EXECUTED}")
    args = parser.parse_args(argv)
    chosen = [nb for nb in NOTEBOOKS if not args.names or nb.stem in args.names]
    if args.names and len(chosen) != len(set(args.names)):
        parser.error(f"unknown notebook among {args.names}; known: {[nb.stem for nb in NOTEBOOKS]}")
    ensure_executed(chosen, args.out or executed_dir())
    return 0


if __name__ == "__main__":
    sys.exit(main())
