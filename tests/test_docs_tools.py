"""The documentation's own machinery on small inputs: the crawl of tools/check_docs_browser.py, the notebook pages.

The real site is built and checked in a browser by ``make docs-check`` (``.ci/run``); these tests say that the checks
it relies on can fail.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import check_docs_browser  # noqa: E402
import quick_notebooks  # noqa: E402
import storm_notebooks  # noqa: E402


def _site(tmp_path: Path, pages: dict[str, str]) -> Path:
    for name, body in pages.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"<html><body>{body}</body></html>")
    return tmp_path


def test_broken_links_finds_a_missing_page_and_a_missing_anchor(tmp_path: Path):
    site = _site(
        tmp_path,
        {
            "index.html": '<a href="api/a.html#storm.tl.embed">ok</a> <a href="api/a.html#gone">anchor</a> '
            '<a href="b.html">page</a> <a href="https://scanpy.readthedocs.io/">external</a> <a href="#top">self</a>'
            '<img src="_images/fig.png"> <span id="top"></span>',
            "api/a.html": '<dt id="storm.tl.embed"></dt> <a href="../index.html">up</a> <a href="../api/">folder</a>',
            "api/index.html": "",
            "_images/fig.png": "",
            # a theme's Jinja macros, copied as they are: not a page of the site
            "_static/webpack-macros.html": "<link href=\"{{ pathto('_static/theme.css', 1) }}\">",
        },
    )
    assert check_docs_browser.broken_links(site) == [
        "index.html: api/a.html#gone (no such anchor)",
        "index.html: b.html (no such file)",
    ]


def test_notebook_figure_errors_names_pages_without_a_figure(tmp_path: Path):
    notebooks = quick_notebooks.NOTEBOOKS
    pages = [f"{storm_notebooks.PAGES[nb.parent.name]}/{nb.stem}.html" for nb in notebooks]
    bodies = dict.fromkeys(pages, '<img src="../_images/fig.png">')
    bodies[pages[0]] = '<img src="../_static/storm-logo.svg">'  # the logo is no figure of the notebook
    del bodies[pages[1]]
    assert check_docs_browser.notebook_figure_errors(_site(tmp_path, bodies)) == [
        f"{pages[0]}: no figure",
        f"{notebooks[1].parent.name}/{notebooks[1].name}: no page {pages[1]}",
    ]


def test_keep_stderr_keeps_storm_warnings_with_paths_in_the_repository():
    text = (
        "100%|██████████| 10/10 [00:01<00:00]\r\n"
        "WARNING storm: normalize: 4 spots have no counts\n"
        f"{ROOT}/storm/clinical/_cox.py:158: ClinicalDataWarning: dropped 2 of 198 patients\n"
        "  t, e, clean, _ = survival_data(time, event)\n"
        "/usr/lib/python3/site-packages/anndata/_core.py:12: FutureWarning: something\n"
    )
    assert storm_notebooks.keep_stderr(text) == (
        "WARNING storm: normalize: 4 spots have no counts\n"
        "storm/clinical/_cox.py:158: ClinicalDataWarning: dropped 2 of 198 patients\n"
        "  t, e, clean, _ = survival_data(time, event)\n"
    )


def test_prepare_page_adds_the_box_leaves_out_injected_parameters_and_repeated_warnings(tmp_path: Path):
    nb = nbformat.v4.new_notebook()
    injected = nbformat.v4.new_code_cell('quick = True\nresults_dir = "/tmp/x"')
    injected.metadata["tags"] = ["injected-parameters"]
    code = nbformat.v4.new_code_cell("storm.pp.normalize(adata)")
    code.outputs = [
        nbformat.v4.new_output("stream", name="stderr", text="100%|███| 3/3\n"),
        nbformat.v4.new_output("stream", name="stderr", text="WARNING storm: normalize: 4 spots have no counts\n"),
        nbformat.v4.new_output("stream", name="stdout", text="done\n"),
        nbformat.v4.new_output("stream", name="stderr", text="WARNING storm: normalize: 4 spots have no counts\n"),
    ]
    nb.cells = [nbformat.v4.new_markdown_cell("# Title"), injected, code]
    executed, page = tmp_path / "executed.ipynb", tmp_path / "docs" / "page.ipynb"
    nbformat.write(nb, executed)
    storm_notebooks.prepare_page(executed, page, ":::{note}\nquick\n:::")
    cells = nbformat.read(page, as_version=4).cells
    assert [c.source for c in cells[:2]] == ["# Title", ":::{note}\nquick\n:::"]
    assert [c.source for c in cells[2:]] == ["storm.pp.normalize(adata)"]
    assert [o["text"] for o in cells[2].outputs] == ["WARNING storm: normalize: 4 spots have no counts\n", "done\n"]
