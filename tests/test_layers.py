"""Layers import downwards only (``nn`` → ``models`` → ``train`` → ``tl`` → ``pl``); ``storm/`` has no import cycle."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "import_graph.py"


def _import_graph():
    spec = importlib.util.spec_from_file_location("import_graph", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_layers_import_downwards_only():
    tool = _import_graph()
    edges = tool.graph()
    assert "storm.nn" in edges["storm.models._model"]  # the walk sees imports
    assert tool.upward_imports(edges) == []


def test_import_graph_has_no_cycle():
    tool = _import_graph()
    assert tool.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]  # the detector finds one
    assert tool.cycles(tool.graph()) == []


@pytest.mark.parametrize("layer", ["nn", "models", "train", "tl"])
def test_layer_imports_with_higher_layers_blocked(layer):
    """Import ``storm.<layer>`` in a fresh interpreter where every higher layer raises ImportError."""
    tool = _import_graph()
    higher = [name for name, rank in tool.LAYERS.items() if rank > tool.LAYERS[layer]]
    code = (
        "import importlib.abc, sys\n"
        f"BLOCKED = {tuple(f'storm.{h}' for h in higher)!r}\n"
        "class Block(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.startswith(BLOCKED):\n"
        "            raise ImportError(f'{name} is a higher layer')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"import storm.{layer}\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
