"""The documentation's contracts that hold without building it: an API page per public name, numpydoc docstrings.

The build itself (``make docs``, warnings as errors) and the browser check (``make docs-check``) run in ``.ci/run``.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
import storm_api  # noqa: E402

MODULES = list(storm_api.SECTIONS)


def _public_functions() -> list[tuple[str, object]]:
    found = []
    for module in MODULES:
        mod = importlib.import_module(f"storm.{module}")
        found += [(f"storm.{module}.{n}", getattr(mod, n)) for n in mod.__all__ if inspect.isfunction(getattr(mod, n))]
    return found


FUNCTIONS = _public_functions()


def test_every_public_module_has_an_api_page():
    import storm

    assert sorted(MODULES) == sorted(storm._SUBMODULES)


@pytest.mark.parametrize("module", MODULES)
def test_api_pages_are_the_public_names(module: str, tmp_path: Path):
    # The entries autosummary writes one page for, read from the generated module page as Sphinx reads it.
    from sphinx.ext.autosummary.generate import find_autosummary_in_files

    pages = storm_api.write_api_pages(tmp_path)
    entries = find_autosummary_in_files([str(p) for p in pages if p.stem == module])
    names = [e.name for e in entries]
    public = [f"storm.{module}.{n}" for n in importlib.import_module(f"storm.{module}").__all__]
    assert sorted(names) == sorted(public)
    assert all(e.path == str(tmp_path / "generated") for e in entries)


@pytest.mark.parametrize(("name", "func"), FUNCTIONS, ids=[n for n, _ in FUNCTIONS])
def test_public_function_has_numpydoc_docstring(name: str, func):
    from numpydoc.docscrape import FunctionDoc

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpydoc warns (and goes on) on a section it cannot parse
        doc = FunctionDoc(func)
    assert doc["Summary"], f"{name}: no one-line summary"
    signature = inspect.signature(func)
    documented = {part.strip().lstrip("*") for p in doc["Parameters"] for part in p.name.split(",")}
    undocumented = [p for p in signature.parameters if p not in documented]
    assert not undocumented, f"{name}: parameters {undocumented} are not under Parameters"
    assert signature.return_annotation is not inspect.Signature.empty, f"{name}: no return annotation"
    if signature.return_annotation not in (None, "None"):
        assert doc["Returns"] or doc["Yields"], f"{name} returns {signature.return_annotation}: no Returns section"
