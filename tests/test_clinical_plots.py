"""Smoke tests of the clinical plots (conftest sets MPLBACKEND=agg)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from storm import clinical
from storm.pl._clinical import biomarker_comparison, forest, km, roc


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def data() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    n = 80
    x = rng.normal(size=n)
    event_time, censor_time = rng.exponential(np.exp(-0.7 * x)), rng.exponential(2.0, size=n)
    return pd.DataFrame(
        {
            "time": np.minimum(event_time, censor_time),
            "event": (event_time <= censor_time).astype(float),
            "x": x,
            "response": np.where(x + rng.normal(size=n) < 0, "R", "NR"),
        }
    )


def test_km_plot(data):
    groups = clinical.cox_split(data["time"], data["event"], data["x"])["groups"]
    ax = km(data["time"], data["event"], groups)
    assert "log-rank" in " ".join(text.get_text() for text in ax.texts)
    assert len(ax.get_lines()) >= 2
    _, own = plt.subplots()
    assert km(data["time"], data["event"], ax=own, at_risk=False, show_logrank=False) is own


def test_forest_plot_with_pooled_diamond():
    table = pd.DataFrame(
        {"coef": np.log([0.7, 0.8, 1.1]), "se": [0.2, 0.3, 0.25], "n": [195, 74, 42]}, index=["A", "B", "C"]
    )
    z = 1.959963985
    table["hr"], table["ci_low"], table["ci_high"] = (np.exp(table["coef"] + k * table["se"]) for k in (0, -z, z))
    pooled = clinical.pool_hazard_ratios(table)
    ax = forest(table, pooled=pooled)
    assert ax.get_xscale() == "log"
    labels = [tick.get_text() for tick in ax.get_yticklabels()]
    assert labels[0] == "A (n=195)"
    assert any("I² =" in label for label in labels)
    aucs = pd.DataFrame({"auc": [0.6, 0.7], "ci_low": [0.5, 0.55], "ci_high": [0.7, 0.85]}, index=["A", "B"])
    assert forest(aucs, pooled=clinical.pool_aucs(aucs)).get_xscale() == "linear"


def test_roc_plot(data):
    ax = roc(data["response"], {"x": -data["x"], "noise": np.arange(len(data))})
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend[0].startswith("x (AUC 0.")


def test_biomarker_comparison_long_and_wide():
    long = pd.DataFrame(
        {
            "cohort": ["A", "A", "B", "B"],
            "biomarker": ["CYT", "GEP", "CYT", "GEP"],
            "auc": [0.6, 0.65, 0.55, 0.7],
            "ci_low": [0.5, 0.55, 0.4, 0.6],
            "ci_high": [0.7, 0.75, 0.7, 0.8],
        }
    )
    ax = biomarker_comparison(long)
    assert [tick.get_text() for tick in ax.get_yticklabels()] == ["A", "B"]
    wide = pd.DataFrame({"CYT": [0.8, 0.9], "GEP": [0.75, 1.2]}, index=["A", "B"])
    biomarker_comparison(wide, metric="hr")
    with pytest.raises(ValueError, match="metric"):
        biomarker_comparison(wide, metric="c")
