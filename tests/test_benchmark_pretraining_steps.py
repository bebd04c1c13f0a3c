"""benchmarks/pretraining_steps.py's harness logic: run parsing, the training command, records and tables."""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    """Import benchmarks/pretraining_steps.py as a module (benchmarks/ is not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_pretraining_steps", ROOT / "benchmarks" / "pretraining_steps.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_pretraining_steps", None)
        sys.path.remove(str(ROOT / "benchmarks"))


def test_runs_are_steps_colon_seed(bench):
    assert bench.parse_run("600:1") == (600, 1)
    assert bench.parse_run("0:2") == (0, 2)
    for bad in ("600", "600:x", "-5:0"):
        with pytest.raises(argparse.ArgumentTypeError):
            bench.parse_run(bad)


@pytest.mark.parametrize(("steps", "expected", "absent"), [(600, ["--max-steps", "600"], "--no-pretraining"),
                                                           (0, ["--no-pretraining"], "--max-steps")])  # fmt: skip
def test_training_command_follows_the_budget(bench, tmp_path, monkeypatch, steps, expected, absent):
    monkeypatch.setattr(bench, "RUNS", tmp_path)
    calls = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: calls.append((cmd, kw)))
    folder = bench.pretrain(steps, 3, 1, io.StringIO())
    assert folder == tmp_path / f"{steps}_seed3" / "model"
    ((cmd, kwargs),) = calls
    assert cmd[cmd.index(expected[0]) : cmd.index(expected[0]) + len(expected)] == expected
    assert absent not in cmd
    assert cmd[cmd.index("--seed") + 1] == "3"
    assert kwargs["env"]["OMP_NUM_THREADS"] == "1"


def test_an_existing_run_is_reused(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RUNS", tmp_path)
    (tmp_path / "600_seed0" / "model").mkdir(parents=True)
    (tmp_path / "600_seed0" / "model" / "config.json").write_text("{}")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("a finished run was retrained"))
    out = io.StringIO()
    assert bench.pretrain(600, 0, 2, out) == tmp_path / "600_seed0" / "model"
    assert "[reuse]" in out.getvalue()


def test_training_record_reads_the_saved_provenance(bench, tmp_path):
    training = {"steps": 600, "seconds": 240.5, "final_metrics": {"val/loss": 0.45}}
    (tmp_path / "config.json").write_text(json.dumps({"training": training}))
    assert bench.training_record(tmp_path) == {"steps": 600, "train_s": 240.5, "val_loss": 0.45}
    (tmp_path / "config.json").write_text(json.dumps({"training": {"steps": 0, "no_pretraining": True}}))
    assert bench.training_record(tmp_path) == {"steps": 0, "train_s": None, "val_loss": None}


def test_budget_table_averages_seeds_and_gives_their_range(bench):
    rows = [
        {"steps": 600, "mean": 0.2, "DLPFC": 0.4},
        {"steps": 600, "mean": 0.3, "DLPFC": 0.2},
        {"steps": 0, "mean": 0.1, "DLPFC": 0.5},
    ]
    table = bench.by_budget(rows)
    assert [r["steps"] for r in table] == ["0", "600"]
    assert table[1] == {"steps": "600", "seeds": "2", "mean": "0.250 [0.200, 0.300]", "DLPFC": "0.300 [0.200, 0.400]"}


def test_cells_leave_missing_values_blank(bench):
    assert bench.cell("val_loss", None) == ""
    assert bench.cell("val_loss", float("nan")) == ""
    assert bench.cell("train_s", 239.8) == "240"
    assert bench.cell("mean", 0.24321) == "0.243"
    assert bench.cell("run", "600 steps, seed 0") == "600 steps, seed 0"
