"""docs/bad_inputs.md, the table of bad inputs storm refuses, is checked against the tests it names and the tests."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "bad_inputs.md"
#: A test whose name says that storm refuses something belongs in the table.
REFUSAL = re.compile(r"refuse|_is_an_error")


@cache
def _test_names(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text())
    return frozenset(n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name.startswith("test_"))


def table_rows() -> list[list[str]]:
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        for line in TABLE.read_text().splitlines()
        if line.startswith("| ")
    ]
    assert rows[0] == ["bad input", "what storm does", "test"], "the table's header changed"
    return rows[1:]


def named_tests() -> set[tuple[str, str]]:
    return {
        tuple(ref.split("::")) for *_, tests in table_rows() for ref in re.findall(r"`(tests/[\w/]+\.py::\w+)`", tests)
    }


def test_every_row_describes_the_input_and_names_a_test():
    rows = table_rows()
    assert len(rows) > 30
    for row in rows:
        assert len(row) == 3, row
        bad, does, tests = row
        assert bad, row
        assert does, row
        assert re.fullmatch(r"`tests/[\w/]+\.py::\w+`(, `tests/[\w/]+\.py::\w+`)*", tests), row


def test_every_test_the_table_names_exists():
    missing = [f"{p}::{name}" for p, name in sorted(named_tests()) if name not in _test_names(ROOT / p)]
    assert not missing, f"docs/bad_inputs.md names tests that do not exist: {missing}"


def test_every_refusal_test_is_in_the_table():
    named = named_tests()
    absent = [
        f"tests/{path.name}::{name}"
        for path in sorted((ROOT / "tests").glob("test_*.py"))
        for name in sorted(_test_names(path))
        if REFUSAL.search(name) and (f"tests/{path.name}", name) not in named
    ]
    assert not absent, f"add these refusal tests to docs/bad_inputs.md: {absent}"
