"""The import graph of ``storm/``, read from the source (``ast``): layer violations and cycles.

``python tools/import_graph.py`` prints each subpackage's imports of other parts of storm, then any import that
goes up the layers (``nn`` → ``models`` → ``train`` → ``tl`` → ``pl``) and any cycle between modules; it exits 1
if there is one. ``tests/test_layers.py`` runs the same checks. Imports inside functions and under
``TYPE_CHECKING`` count too: a lazy import upwards is still a dependency upwards.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "storm"
#: Rank of each layer; a module may import only layers of lower or equal rank. Everything else in storm (``io``,
#: ``pp``, ``datasets``, ``metrics``, ``clinical`` and the private top-level modules) is below ``nn`` (rank 0).
LAYERS = {"nn": 1, "models": 2, "train": 3, "tl": 4, "pl": 5}
#: Entry points that may import anything.
TOP = {"storm", "storm.__main__"}


def module_name(path: Path) -> str:
    """Dotted name of a file of ``storm/`` (a package's ``__init__`` is the package)."""
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    """Every module of ``storm/`` by dotted name."""
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """Modules of storm that ``path`` imports (``from storm import x`` counts as ``storm.x`` when that exists)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found.update(t for t in targets if t == "storm" or t.startswith("storm."))
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    """Map each module of storm to the modules of storm it imports."""
    mods = modules()
    known = set(mods)
    return {name: {t for t in imports(path, known) if t in known} for name, path in mods.items()}


def rank(module: str) -> int:
    """Layer rank of a module (0: below ``nn``)."""
    parts = module.split(".")
    return LAYERS.get(parts[1], 0) if len(parts) > 1 else 0


def upward_imports(edges: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Return the (importer, imported) pairs where a module imports a layer above its own."""
    return sorted((a, b) for a, targets in edges.items() if a not in TOP for b in targets if rank(b) > rank(a))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def main() -> int:
    """Print the package graph, the upward imports and the cycles; 1 if there is any."""
    edges = graph()
    by_package: dict[str, set[str]] = defaultdict(set)
    for a, targets in edges.items():
        for b in targets:
            pa, pb = (".".join(m.split(".")[:2]) for m in (a, b))
            if pa != pb:
                by_package[pa].add(pb)
    for package in sorted(by_package):
        print(f"{package} -> {', '.join(sorted(by_package[package]))}")
    bad = upward_imports(edges)
    loops = cycles(edges)
    for a, b in bad:
        print(f"UPWARD: {a} imports {b}")
    for loop in loops:
        print(f"CYCLE: {' <-> '.join(loop)}")
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} imports: {len(bad)} upward, {len(loops)} cycles")
    return 1 if bad or loops else 0


if __name__ == "__main__":
    sys.exit(main())
