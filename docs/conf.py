"""Sphinx configuration of storm's documentation (``make docs``; built with ``-W --keep-going``)."""

from __future__ import annotations

import sys
import warnings
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import storm  # noqa: E402

# sphinx-autodoc-typehints 3.6 calls an API Sphinx 10 removes, once per docstring: hundreds of identical lines that
# bury the build's own warnings (it still works with this Sphinx; -W covers Sphinx's warnings, not Python's)
warnings.filterwarnings("ignore", message=r".*_RstSnippetParser\.set_application.* is deprecated")

# -- Project ------------------------------------------------------------------------------------------------------
project = "storm"
author = "storm developers"
copyright = f"{date.today():%Y}, {author}"
release = version = storm.__version__

# -- Extensions ---------------------------------------------------------------------------------------------------
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",  # scanpy's docstrings: numpydoc sections, types from the annotations
    "sphinx_autodoc_typehints",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_copybutton",
    "sphinx_design",
    # storm's own (docs/_ext): pages generated from the package and the repository at build time
    "storm_api",
    "storm_notebooks",
    "storm_tables",
    "storm_intersphinx",
]

root_doc = "index"
templates_path = ["_templates"]
exclude_patterns = ["_build", "_templates", "**.ipynb_checkpoints", "Thumbs.db", ".DS_Store"]
nitpicky = True  # every cross-reference must resolve (warnings are errors)
default_role = "literal"
# Private classes that appear in signatures (a private module's or a private name) have no page by design.
nitpick_ignore_regex = [("py:class", r"storm(\.\w+)*\._\w+(\.\w+)*")]

# -- API reference (autodoc + autosummary + napoleon + sphinx-autodoc-typehints) ----------------------------------
autosummary_generate = True
autosummary_imported_members = True
autodoc_member_order = "bysource"
autodoc_typehints = "description"  # types shown once, in the parameter list, from the annotations
autodoc_default_options = {"show-inheritance": False}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
# A Returns section is prose here (scanpy's style): its first line is not a type to link; the return type shown
# is the annotation's, which sphinx-autodoc-typehints writes.
napoleon_use_rtype = False
napoleon_use_param = True
napoleon_use_ivar = True  # Attributes of dataclasses as fields, not a second description of each attribute
# The short names the docstrings use for types, as the projects' inventories name them.
napoleon_type_aliases = {
    "AnnData": "anndata.AnnData",
    "np.ndarray": "numpy.ndarray",
    "ndarray": "numpy.ndarray",
    "pd.DataFrame": "pandas.DataFrame",
    "DataFrame": "pandas.DataFrame",
    "pd.Series": "pandas.Series",
    "Series": "pandas.Series",
    "torch.Tensor": "torch.Tensor",
    "Tensor": "torch.Tensor",
    "Figure": "matplotlib.figure.Figure",
    "Axes": "matplotlib.axes.Axes",
    "nn.Module": "torch.nn.Module",
}
typehints_defaults = "comma"
typehints_use_signature = False
always_use_bars_union = True
python_use_unqualified_type_names = True

# -- Notebooks (myst-nb renders the executed copies prepared by storm_notebooks) ----------------------------------
nb_execution_mode = "off"  # executed once, with papermill in quick mode, and reused from the test run when fresh
# storm_notebooks has already reduced stderr to storm's own warnings, which the reader should see
nb_output_stderr = "show"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# -- HTML ---------------------------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"storm {release}"
html_static_path = ["_static"]
html_css_files = ["storm.css"]
html_logo = html_favicon = "_static/storm-logo.svg"  # also spares the browser its request for /favicon.ico
# pydata-sphinx-theme's script reads the colour mode from here; left empty it logs a console error on each page
html_context = {"default_mode": "light"}
html_theme_options = {
    "show_toc_level": 2,
    "navigation_with_keys": False,
    "use_download_button": True,
    "home_page_in_toc": True,
}
html_show_sourcelink = False
