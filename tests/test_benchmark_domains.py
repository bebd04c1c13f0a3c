"""The domain benchmark's harness logic (benchmarks/domains.py) on tiny fake results: no data, no peer environments."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def domains():
    """Import benchmarks/domains.py as a module (benchmarks/ is not a package)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("bench_domains", ROOT / "benchmarks" / "domains.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("bench_domains", None)
        sys.path.remove(str(ROOT / "benchmarks"))


def _record(method: str, section: str, ari: float | None, **extra) -> dict:
    if ari is None:
        return {"method": method, "section": section, "status": "failed", "reason": "timeout after 10 s", **extra}
    return {
        "method": method,
        "section": section,
        "status": "ok",
        "ari": ari,
        "nmi": ari / 2,
        "chaos": 0.1,
        "seconds": 2.0,
        "peak_mb": 100.0,
        "k_asked": 3,
        "k_produced": 3,
        **extra,
    }


def test_her2st_rule_drops_undetermined_and_missing_from_scoring_and_k(domains):
    labels = pd.Categorical(
        ["invasive cancer", "undetermined", None, "adipose tissue", "invasive cancer", "undetermined"],
        categories=["invasive cancer", "adipose tissue", "immune infiltrate", "undetermined"],
    )
    truth = domains.scoring_labels(labels)
    assert list(truth) == ["invasive cancer", None, None, "adipose tissue", "invasive cancer", None]
    # K counts the classes present among the scored spots: an unused category does not count.
    assert domains.n_classes(truth) == 2


def test_dlpfc_labels_keep_every_layer_and_drop_unlabelled(domains):
    truth = domains.scoring_labels(pd.Categorical(["L1", "WM", np.nan, "L1"], categories=["L1", "L2", "WM"]))
    assert list(truth) == ["L1", "WM", None, "L1"]
    assert domains.n_classes(truth) == 2


def test_score_uses_scored_spots_for_ari_and_all_spots_for_chaos(domains):
    truth = np.array(["a", "a", None, "b", "b", None], dtype=object)
    pred = np.array([0, 0, 1, 1, 1, 0])
    xy = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [4, 0], [5, 0]], dtype=float)
    scores = domains.score(pred, truth, xy)
    assert scores["n_scored"] == 4
    assert scores["ari"] == pytest.approx(1.0)
    assert scores["nmi"] == pytest.approx(1.0)
    assert scores["chaos"] > 0


def test_ranking_puts_complete_methods_first_by_mean_ari(domains):
    sections = ["151673", "B1"]
    records = [
        _record("good", "151673", 0.6),
        _record("good", "B1", 0.2),
        _record("better_but_partial", "151673", 0.9),
        _record("better_but_partial", "B1", None),
        _record("middling", "151673", 0.3),
        _record("middling", "B1", 0.3),
        _record("other section", "151674", 0.99),
    ]
    rows = domains.ranking(records, sections)
    assert [r["method"] for r in rows] == ["good", "middling", "better_but_partial"]
    assert [r["rank"] for r in rows] == [1, 2, "(3)"]
    good = rows[0]
    assert good["mean_ARI"] == pytest.approx(0.4)
    assert good["DLPFC_ARI"] == pytest.approx(0.6)
    assert good["HER2ST_ARI"] == pytest.approx(0.2)
    assert good["sections"] == "2/2"
    assert rows[2]["sections"] == "1/2"
    assert rows[2]["mean_ARI"] == pytest.approx(0.9)


def test_section_table_sorts_by_ari_with_failures_and_gaps_last(domains):
    records = [
        _record("a", "B1", 0.1),
        _record("b", "B1", None),
        _record("c", "B1", 0.5),
        {"method": "d", "section": "B1", "status": "not run", "reason": ""},
    ]
    rows = domains.section_rows(records, "B1")
    assert [r["method"] for r in rows][:2] == ["c", "a"]
    assert rows[0]["ARI"] == "0.500"
    failed = next(r for r in rows if r["method"] == "b")
    assert failed["ARI"] == "-"
    assert failed["status"].startswith("failed: timeout")


def test_cache_round_trip_and_missing_pairs(domains, tmp_path, monkeypatch):
    monkeypatch.setattr(domains, "CACHE", tmp_path / "cache")
    record = _record("Novae (from scratch)", "B1", 0.25)
    domains.save_cached(record)
    assert domains.cache_path("Novae (from scratch)", "B1").name == "novae_from_scratch__b1.json"
    assert domains.load_cached("Novae (from scratch)", "B1") == record
    assert domains.load_cached("Novae (from scratch)", "C1") is None
    collected = domains.collect(["Novae (from scratch)"], ["B1", "C1"])
    assert collected[0] == record
    assert collected[1]["status"] == "not run"


def test_csv_has_one_row_per_result_without_labels(domains, tmp_path):
    records = [_record("a", "B1", 0.1, labels={"categories": ["0"], "codes": [0]}, notes=["x", "y"])]
    path = tmp_path / "out.csv"
    domains.write_csv(records, path)
    table = pd.read_csv(path)
    assert list(table["method"]) == ["a"]
    assert "labels" not in table.columns
    assert table.loc[0, "notes"] == "x | y"


def test_child_runner_reports_memory_and_kills_on_timeout(domains, tmp_path):
    ok = domains.run_child([sys.executable, "-c", "x = bytearray(50_000_000)"], 60, tmp_path / "ok.log", {})
    assert ok["returncode"] == 0
    assert not ok["timed_out"]
    assert ok["child_peak_mb"] > 45
    slow = domains.run_child([sys.executable, "-c", "import time; time.sleep(60)"], 1, tmp_path / "slow.log", {})
    assert slow["timed_out"]
    assert slow["wall_s"] < 30


def test_child_peak_is_its_own_not_the_parents(domains, tmp_path):
    """VmHWM starts afresh at exec: a small child of this (large) test process reports a small peak."""
    script = ROOT / "benchmarks" / "peers" / "_runner.py"
    code = (
        f"import importlib.util; s = importlib.util.spec_from_file_location('r', {str(script)!r}); "
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); print(m.peak_rss_mb())"
    )
    log = tmp_path / "peak.log"
    ballast = bytearray(300_000_000)  # the parent holds 300 MB while the child runs
    ballast[::4096] = b"\x01" * len(ballast[::4096])
    result = domains.run_child([sys.executable, "-c", code], 60, log, {})
    assert result["returncode"] == 0
    assert 0 < float(log.read_text().strip()) < 200
    del ballast
