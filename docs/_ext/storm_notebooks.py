"""Tutorial and figure pages: the notebooks executed in quick mode, with their figures, copied into the docs.

At ``config-inited`` every notebook of ``tutorials/`` and ``notebooks/`` is made available executed
(``tools/quick_notebooks.py``: the copy the test run left in ``$STORM_EXECUTED_NOTEBOOKS`` when it is fresh, else a
papermill run now) and copied to ``docs/tutorials/`` or ``docs/figures/`` for myst-nb, which renders it without
executing it again. On the way each page gets a box under its title (figures: what data, what differs from the
paper, from ``docs/figure_notes.toml``; tutorials: that the page ran in quick mode), and the stderr of each cell is
reduced to storm's warnings: progress bars and third-party warnings stay in the notebook, out of the page.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

import nbformat
from sphinx.errors import ExtensionError
from sphinx.util import logging

DOCS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(DOCS.parent / "tools"))
import quick_notebooks  # noqa: E402

logger = logging.getLogger(__name__)

#: Source folder → docs folder.
PAGES = {"tutorials": "tutorials", "notebooks": "figures"}
NOTES = DOCS / "figure_notes.toml"
# storm's own log lines at WARNING and above, and warnings raised from storm's code; everything else on stderr goes
_KEEP_STDERR = re.compile(r"^(WARNING|ERROR|CRITICAL) storm: |(^|/)storm/[^:]*\.py:\d+: \w*Warning: ")


def figure_box(note: dict[str, str]) -> str:
    """Return the MyST admonition of a figure page.

    Parameters
    ----------
    note
        The notebook's table of ``figure_notes.toml``: ``data``, ``differs`` and ``quick``.

    Returns
    -------
    Markdown source of the box.
    """
    return (
        ":::{admonition} What data, and what differs from the paper\n:class: important\n\n"
        f"**Data.** {note['data']}\n\n**Differs from the paper.** {note['differs']}\n\n"
        f"**This page** ran in quick mode (`quick=True`, as in CI): {note['quick']} "
        "`make figures` runs the full figure.\n:::"
    )


TUTORIAL_BOX = (
    ":::{note}\nThis page ran in quick mode (`quick=True`, as in CI: smaller inputs, fewer steps); run the notebook "
    "itself for the full analysis. Progress bars and third-party warnings are left out of the page.\n:::"
)


def keep_stderr(text: str) -> str:
    """Return the lines of a stderr stream worth showing: storm's warnings and errors (with a warning's source line).

    Parameters
    ----------
    text
        The stream's text.

    Returns
    -------
    The kept lines (empty when nothing is kept).
    """
    # A warning's location is written relative to the repository: the machine that ran the notebook is no concern
    kept, lines = [], text.replace("\r", "\n").replace(f"{DOCS.parent}/", "").splitlines()
    for i, line in enumerate(lines):
        if _KEEP_STDERR.search(line):
            kept.append(line)
            if "Warning: " in line and i + 1 < len(lines) and lines[i + 1].startswith("  "):
                kept.append(lines[i + 1])  # the source line Python prints under a warning
    return "\n".join(kept) + "\n" if kept else ""


def prepare_page(executed: Path, target: Path, box: str) -> None:
    """Copy an executed notebook to a docs page: the box, no injected parameters, stderr by :func:`keep_stderr`.

    A stderr message repeated within a cell is kept once.

    Parameters
    ----------
    executed
        The executed copy.
    target
        The page (``docs/<tutorials|figures>/<name>.ipynb``); rewritten only when it changes.
    box
        Markdown of the box inserted after the first cell.
    """
    nb = nbformat.read(executed, as_version=4)
    # papermill's cell of the run's own parameters (quick=True, a temporary results_dir): the box says how it ran
    nb.cells = [c for c in nb.cells if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    for cell in nb.cells:
        outputs, shown = [], set()
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream" and out.get("name") == "stderr":
                out["text"] = keep_stderr(out["text"])
                # a cell that loops over cohorts logs the same message once per pass: the page shows it once
                if not out["text"] or out["text"] in shown:
                    continue
                shown.add(out["text"])
            outputs.append(out)
        if cell.cell_type == "code":
            cell.outputs = outputs
    nb.cells.insert(1, nbformat.v4.new_markdown_cell(box))
    _, normalized = nbformat.validator.normalize(nb)  # adds the cell ids that nbformat now asks for
    text = nbformat.writes(nbformat.from_dict(normalized))
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists() or target.read_text() != text:
        target.write_text(text)


def _on_config_inited(app, config) -> None:
    notes = tomllib.loads(NOTES.read_text())
    figures = [nb for nb in quick_notebooks.NOTEBOOKS if PAGES[nb.parent.name] == "figures"]
    missing = [nb.stem for nb in figures if nb.stem not in notes]
    if missing:
        raise ExtensionError(f"{NOTES.name} has no box for {missing}: add data, differs and quick for each.")
    copies = quick_notebooks.ensure_executed(
        quick_notebooks.NOTEBOOKS, quick_notebooks.executed_dir(), log=lambda line: logger.info(line)
    )
    for notebook, executed in zip(quick_notebooks.NOTEBOOKS, copies, strict=True):
        folder = PAGES[notebook.parent.name]
        box = figure_box(notes[notebook.stem]) if folder == "figures" else TUTORIAL_BOX
        prepare_page(executed, Path(app.srcdir) / folder / notebook.name, box)


def setup(app):
    """Register the page preparation (before Sphinx looks for source files)."""
    app.connect("config-inited", _on_config_inited)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
