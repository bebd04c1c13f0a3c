"""storm.clinical.cohort_table: per-cohort rows equal lifelines / scikit-survival / scikit-learn called directly,
pooled rows equal DerSimonian–Laird of those rows, and what a cohort cannot give is NaN with a note, never a number."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from lifelines import CoxPHFitter
from sklearn.metrics import roc_auc_score
from sksurv.metrics import concordance_index_censored

from storm import clinical
from storm.clinical import ClinicalDataWarning


def _cohort(n: int, seed: int, effect: float = 0.6) -> pd.DataFrame:
    """Patients whose hazard falls with `immune` (protective) and whose response rises with it; `noise` is noise."""
    rng = np.random.default_rng(seed)
    immune, noise = rng.normal(size=n), rng.normal(size=n)
    event_time = rng.exponential(np.exp(effect * immune))
    censor_time = rng.exponential(2.0, size=n)
    response = np.where(immune + rng.normal(size=n) > 0.3, "R", "NR")
    return pd.DataFrame(
        {
            "os_time": np.minimum(event_time, censor_time),
            "os_event": (event_time <= censor_time).astype(float),
            "response": pd.Categorical(response, categories=["R", "NR"]),
            "immune": immune,
            "noise": noise,
        },
        index=[f"s{seed}_p{i}" for i in range(n)],
    )


@pytest.fixture
def cohorts() -> dict[str, pd.DataFrame]:
    return {"A": _cohort(80, 0), "B": _cohort(60, 1), "C": _cohort(50, 2, effect=0.3)}


def _quiet(call):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ClinicalDataWarning)
        return call()


def test_cohort_rows_equal_direct_lifelines_sksurv_sklearn(cohorts):
    table = clinical.cohort_table(cohorts, ["immune", "noise"], n_boot=50)
    assert list(table.columns) == list(clinical.COHORT_TABLE_COLUMNS)
    assert len(table) == 3 * 2 + 2
    for name, frame in cohorts.items():
        row = table[(table["cohort"] == name) & (table["biomarker"] == "immune")].iloc[0]
        z = (frame["immune"] - frame["immune"].mean()) / frame["immune"].std(ddof=1)
        fit = CoxPHFitter().fit(pd.DataFrame({"T": frame["os_time"], "E": frame["os_event"], "x": z}), "T", "E")
        summary = fit.summary.loc["x"]
        assert row["hr"] == pytest.approx(summary["exp(coef)"], rel=1e-9)
        assert row["hr_ci_low"] == pytest.approx(summary["exp(coef) lower 95%"], rel=1e-9)
        assert row["hr_ci_high"] == pytest.approx(summary["exp(coef) upper 95%"], rel=1e-9)
        assert row["hr_p"] == pytest.approx(summary["p"], rel=1e-9)
        assert row["log_hr_se"] == pytest.approx(summary["se(coef)"], rel=1e-9)
        assert row["n"] == len(frame)
        assert row["n_events"] == int(frame["os_event"].sum())
        c = concordance_index_censored(frame["os_event"].astype(bool), frame["os_time"], frame["immune"])[0]
        assert row["c_index"] == pytest.approx(c, rel=1e-12)
        assert row["c_ci_low"] <= row["c_index"] <= row["c_ci_high"]
        assert row["auc"] == pytest.approx(roc_auc_score(frame["response"] == "R", frame["immune"]), rel=1e-12)
        assert row["auc_ci_low"] <= row["auc"] <= row["auc_ci_high"]
        assert row["n_responders"] == (frame["response"] == "R").sum()
        assert row["n_responders"] + row["n_nonresponders"] == row["n_response"] == len(frame)
        # the same seed gives the same intervals as the functions called one by one
        direct = clinical.c_index(frame["os_time"], frame["os_event"], frame["immune"], n_boot=50)
        assert (row["c_ci_low"], row["c_ci_high"]) == (direct.ci_low, direct.ci_high)
    protective = table[(table["biomarker"] == "immune") & ~table["pooled"]]
    assert (protective["hr"] < 1).all()
    assert (protective["c_index"] < 0.5).all()  # the score is taken as a risk: protective means C < 0.5
    assert (protective["auc"] > 0.5).all()


def test_pooled_rows_are_dersimonian_laird_of_the_cohort_rows(cohorts):
    table = clinical.cohort_table(cohorts, ["immune"], n_boot=0)
    rows = table[~table["pooled"]]
    pooled = table[table["pooled"]].iloc[0]
    assert pooled["cohort"] == "pooled (DL)"
    # DerSimonian–Laird written out on the per-cohort log HRs and SEs
    y, v = rows["log_hr"].to_numpy(float), rows["log_hr_se"].to_numpy(float) ** 2
    w = 1 / v
    q = np.sum(w * (y - np.sum(w * y) / np.sum(w)) ** 2)
    tau2 = max(0.0, (q - 2) / (w.sum() - (w**2).sum() / w.sum()))
    w_star = 1 / (v + tau2)
    mu, se = np.sum(w_star * y) / w_star.sum(), w_star.sum() ** -0.5
    assert pooled["hr"] == pytest.approx(np.exp(mu), rel=1e-12)
    assert pooled["hr_ci_low"] == pytest.approx(np.exp(mu - 1.959963984540054 * se), rel=1e-9)
    assert pooled["tau2"] == pytest.approx(tau2, abs=1e-15)
    assert pooled["i2"] == pytest.approx(max(0.0, (q - 2) / q), abs=1e-15)
    assert pooled["k"] == 3
    assert pooled["n"] == sum(len(c) for c in cohorts.values())
    # AUCs pooled on the logit scale with Hanley–McNeil SEs: the same as pool_aucs
    direct = clinical.pool_aucs(
        rows.rename(columns={"n_responders": "n_pos", "n_nonresponders": "n_neg"})[["cohort", "auc", "n_pos", "n_neg"]]
    )
    assert pooled["auc"] == pytest.approx(direct["estimate"], rel=1e-12)
    assert pooled["auc_i2"] == pytest.approx(direct["i2"], abs=1e-15)
    assert pooled["auc_p"] == pytest.approx(direct["p"], rel=1e-12)
    fixed = clinical.cohort_table(cohorts, ["immune"], n_boot=0, pool="FE")
    assert fixed["cohort"].iloc[-1] == "pooled (FE)"
    assert fixed["tau2"].iloc[-1] == 0
    assert not clinical.cohort_table(cohorts, ["immune"], n_boot=0, pool=None)["pooled"].any()


def test_anndata_cohorts_read_obs(cohorts):
    from anndata import AnnData

    adatas = {name: AnnData(obs=frame) for name, frame in cohorts.items()}
    from_obs = clinical.cohort_table(adatas, ["immune"], n_boot=0)
    from_frames = clinical.cohort_table(cohorts, ["immune"], n_boot=0)
    pd.testing.assert_frame_equal(from_obs, from_frames)


def test_inverted_events_are_flagged_and_not_pooled(cohorts):
    flipped = cohorts["C"].copy()
    responders = flipped["response"] == "R"
    flipped.loc[responders, "os_event"] = 1.0
    flipped.loc[~responders, "os_event"] = 0.0
    flipped.loc[flipped.index[~responders][:3], "os_event"] = 1.0
    data = {**cohorts, "C": flipped}
    with pytest.warns(ClinicalDataWarning, match=r"C: events look inverted: responders"):
        table = clinical.cohort_table(data, ["immune"], n_boot=0)
    row = table[table["cohort"] == "C"].iloc[0]
    assert np.isfinite(row["hr"])  # still reported, for the reader to see
    assert not row["in_pooled_hr"]
    assert "events look inverted" in row["notes"]
    assert table["k"].iloc[-1] == 2
    assert row["in_pooled_auc"]  # response itself is not in doubt
    assert table["auc_k"].iloc[-1] == 3
    excluded = _quiet(lambda: clinical.cohort_table(cohorts, ["immune"], n_boot=0, exclude_from_pooling=["A"]))
    assert excluded["k"].iloc[-1] == 2
    assert "exclude_from_pooling" in excluded.loc[0, "notes"]


def test_what_a_cohort_cannot_give_is_nan_with_a_note(cohorts):
    no_events = cohorts["A"].assign(os_event=0.0)
    one_class = cohorts["B"].assign(response=pd.Categorical(["NR"] * len(cohorts["B"]), categories=["R", "NR"]))
    small = cohorts["C"].iloc[:8]
    missing_score = cohorts["C"].drop(columns="noise")
    no_survival = cohorts["C"].drop(columns=["os_time", "os_event"])
    data = {"none": no_events, "one": one_class, "small": small, "absent": missing_score, "nosurv": no_survival}
    with pytest.warns(ClinicalDataWarning, match="note"):
        table = clinical.cohort_table(data, ["immune", "noise"], n_boot=20)
    get = table.set_index(["cohort", "biomarker"])
    assert np.isnan(get.loc[("none", "immune"), "hr"])
    assert np.isnan(get.loc[("none", "immune"), "c_index"])
    assert "no events" in get.loc[("none", "immune"), "notes"]
    assert np.isfinite(get.loc[("none", "immune"), "auc"])  # response is still there
    assert np.isnan(get.loc[("one", "immune"), "auc"])
    assert "one class" in get.loc[("one", "immune"), "notes"]
    # 8 patients: point estimates, no bootstrap interval, and the note says why
    assert np.isfinite(get.loc[("small", "immune"), "c_index"])
    assert np.isnan(get.loc[("small", "immune"), "c_ci_low"])
    assert "too few for a bootstrap" in get.loc[("small", "immune"), "notes"]
    assert get.loc[("absent", "noise"), "n"] == 0
    assert "noise not available" in get.loc[("absent", "noise"), "notes"]
    assert np.isnan(get.loc[("absent", "noise"), "auc"])
    assert "no survival columns" in get.loc[("nosurv", "immune"), "notes"]
    assert np.isfinite(get.loc[("nosurv", "immune"), "auc"])
    # missing outcome values are dropped per statistic, and the note counts them
    gaps = cohorts["A"].copy()
    gaps.iloc[:5, gaps.columns.get_loc("os_time")] = np.nan
    gapped = _quiet(lambda: clinical.cohort_table({"gaps": gaps, "B": cohorts["B"]}, ["immune"], n_boot=0))
    assert gapped.loc[0, "n_events"] == int(gaps["os_event"].iloc[5:].sum())
    assert "dropped 5 of 80 patients" in gapped.loc[0, "notes"]


def test_cohort_table_bad_input(cohorts):
    with pytest.raises(ValueError, match="non-empty dict"):
        clinical.cohort_table({}, ["immune"])
    with pytest.raises(ValueError, match="not one string"):
        clinical.cohort_table(cohorts, "immune")
    with pytest.raises(ValueError, match="pool must be"):
        clinical.cohort_table(cohorts, ["immune"], pool="REML")
    with pytest.raises(ValueError, match="unknown cohorts"):
        clinical.cohort_table(cohorts, ["immune"], exclude_from_pooling=["Z"])
    with pytest.raises(ValueError, match="both time_key and event_key"):
        clinical.cohort_table(cohorts, ["immune"], event_key=None)
    with pytest.raises(ValueError, match="nothing to evaluate"):
        clinical.cohort_table(cohorts, ["immune"], time_key="t", event_key="e", response_key="r")
    with pytest.raises(ValueError, match=r"DataFrame .* or an AnnData"):
        clinical.cohort_table({"A": np.zeros((3, 3))}, ["immune"])
