"""storm.clinical survival and response statistics: equal to lifelines / scikit-survival / scikit-learn called
directly, deterministic bootstraps, and clear errors or warnings on bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _data import real
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.statistics import logrank_test, multivariate_logrank_test
from sklearn.metrics import roc_auc_score
from sksurv.metrics import concordance_index_censored, cumulative_dynamic_auc
from sksurv.util import Surv

from storm import clinical
from storm.clinical import ClinicalDataWarning


@pytest.fixture
def cohort() -> pd.DataFrame:
    """120 patients whose hazard rises with `x` (true log HR 0.7 per SD); `y` is noise; ~30% censored."""
    rng = np.random.default_rng(0)
    n = 120
    x, y = rng.normal(size=n), rng.normal(size=n)
    event_time = rng.exponential(np.exp(-0.7 * x))
    censor_time = rng.exponential(2.5, size=n)
    response = np.where(x + rng.normal(scale=1.0, size=n) < 0, "R", "NR")  # responders have low risk
    return pd.DataFrame(
        {
            "time": np.minimum(event_time, censor_time),
            "event": (event_time <= censor_time).astype(float),
            "x": x,
            "y": y,
            "stage": rng.choice(["I", "II", "III"], size=n),
            "response": response,
        },
        index=[f"P{i}" for i in range(n)],
    )


def _lifelines_summary(frame: pd.DataFrame, column: str) -> pd.Series:
    fitter = CoxPHFitter().fit(frame, duration_col="T", event_col="E")
    return fitter.summary.loc[column]


def test_cox_hr_equals_lifelines_per_sd_and_per_unit(cohort):
    table = clinical.cox_hr(cohort["time"], cohort["event"], cohort["x"])
    z = (cohort["x"] - cohort["x"].mean()) / cohort["x"].std(ddof=1)
    direct = _lifelines_summary(pd.DataFrame({"T": cohort["time"], "E": cohort["event"], "x": z}), "x")
    row = table.loc["x"]
    assert row["hr"] == pytest.approx(direct["exp(coef)"], rel=1e-9)
    assert row["p"] == pytest.approx(direct["p"], rel=1e-9)
    assert row["ci_low"] == pytest.approx(direct["exp(coef) lower 95%"], rel=1e-9)
    assert row["ci_high"] == pytest.approx(direct["exp(coef) upper 95%"], rel=1e-9)
    assert row["se"] == pytest.approx(direct["se(coef)"], rel=1e-9)
    assert row["n"] == 120
    assert row["n_events"] == int(cohort["event"].sum())
    assert 1.5 < row["hr"] < 3.0
    assert row["p"] < 1e-6

    raw = clinical.cox_hr(cohort["time"], cohort["event"], cohort["x"], per_sd=False).loc["x"]
    direct_raw = _lifelines_summary(pd.DataFrame({"T": cohort["time"], "E": cohort["event"], "x": cohort["x"]}), "x")
    assert raw["hr"] == pytest.approx(direct_raw["exp(coef)"], rel=1e-9)
    # The same model in other units: per-SD log HR = per-unit log HR × SD, identical p.
    assert row["coef"] == pytest.approx(raw["coef"] * row["sd"], rel=1e-6)
    assert row["p"] == pytest.approx(raw["p"], rel=1e-6)


def test_cox_hr_several_scores_and_covariates(cohort):
    scores = cohort[["x", "y"]]
    table = clinical.cox_hr(cohort["time"], cohort["event"], scores, covariates=cohort[["stage"]])
    assert list(table.index) == ["x", "y"]
    stage = pd.get_dummies(cohort["stage"], prefix="stage", drop_first=True, dtype=float)
    z = (cohort["y"] - cohort["y"].mean()) / cohort["y"].std(ddof=1)
    frame = pd.concat([pd.DataFrame({"T": cohort["time"], "E": cohort["event"], "y": z}), stage], axis=1)
    direct = _lifelines_summary(frame, "y")
    assert table.loc["y", "hr"] == pytest.approx(direct["exp(coef)"], rel=1e-9)
    assert table.loc["y", "p"] == pytest.approx(direct["p"], rel=1e-9)
    assert table.loc["y", "p"] > 0.01  # noise stays noise


def test_cox_split_cut_on_training_rows_only(cohort):
    train = np.arange(len(cohort)) < 60
    result = clinical.cox_split(cohort["time"], cohort["event"], cohort["x"], train_mask=train)
    assert result["cutpoint"] == pytest.approx(np.median(cohort["x"][train]))
    assert result["evaluated_on"] == "held-out"
    assert result["n"] == 60
    held = cohort[~train]
    high = (held["x"] > result["cutpoint"]).astype(float)
    direct = _lifelines_summary(pd.DataFrame({"T": held["time"], "E": held["event"], "high": high}), "high")
    assert result["hr"] == pytest.approx(direct["exp(coef)"], rel=1e-9)
    assert result["p"] == pytest.approx(direct["p"], rel=1e-9)
    is_high = high.to_numpy() == 1
    lr = logrank_test(held["time"][is_high], held["time"][~is_high], held["event"][is_high], held["event"][~is_high])
    assert result["logrank_p"] == pytest.approx(lr.p_value, rel=1e-9)
    groups = result["groups"]
    assert list(groups.index) == list(cohort.index)
    assert list(groups.cat.categories) == ["low", "high"]
    assert result["hr"] > 1


def test_cox_split_fixed_cutpoint_and_empty_group(cohort):
    result = clinical.cox_split(cohort["time"], cohort["event"], cohort["x"], cutpoint=0.0)
    assert result["method"] == "given"
    assert result["n_high"] == int((cohort["x"] > 0).sum())
    with pytest.raises(ValueError, match="puts all 120 patients in the 'low' group"):
        clinical.cox_split(cohort["time"], cohort["event"], cohort["x"], cutpoint=99.0)


def test_maxstat_scan_matches_lifelines_and_warns_without_held_out(cohort):
    from storm.clinical._cox import logrank_scan

    t, e, x = cohort["time"].to_numpy(), cohort["event"].to_numpy().astype(bool), cohort["x"].to_numpy()
    cuts = np.quantile(x, [0.2, 0.5, 0.8])
    scanned = logrank_scan(t, e, x, cuts)
    for cut, statistic in zip(cuts, scanned, strict=True):
        high = x > cut
        assert statistic == pytest.approx(logrank_test(t[high], t[~high], e[high], e[~high]).test_statistic, rel=1e-9)
    with pytest.warns(ClinicalDataWarning, match="too small"):
        result = clinical.cox_split(cohort["time"], cohort["event"], cohort["x"], cutpoint="maxstat")
    share = (x <= result["cutpoint"]).mean()
    assert 0.1 <= share <= 0.9
    assert result["logrank_stat"] >= scanned.max() - 1e-9  # the maximum over all cuts beats these three


def test_c_index_equals_sksurv_and_bootstrap_is_deterministic(cohort):
    event, time, risk = cohort["event"].astype(bool), cohort["time"], cohort["x"]
    direct = concordance_index_censored(event.to_numpy(), time.to_numpy(), risk.to_numpy())[0]
    c, low, high = clinical.c_index(time, event, risk, n_boot=100, random_state=1)
    assert c == pytest.approx(direct, rel=1e-12)
    assert low < c < high
    assert 0.6 < c < 0.85
    assert clinical.c_index(time, event, risk, n_boot=100, random_state=1) == (c, low, high)
    assert clinical.c_index(time, event, risk, n_boot=100, random_state=2) != (c, low, high)
    point = clinical.c_index(time, event, risk, n_boot=0)
    assert point.estimate == c
    assert np.isnan(point.ci_low)


def test_km_and_logrank_equal_lifelines(cohort):
    groups = np.where(cohort["x"] > 0, "high", "low")
    fitters = clinical.km(cohort["time"], cohort["event"], groups)
    assert list(fitters) == ["high", "low"]
    direct = KaplanMeierFitter().fit(cohort["time"][groups == "low"], cohort["event"][groups == "low"])
    assert fitters["low"].median_survival_time_ == pytest.approx(direct.median_survival_time_)
    np.testing.assert_allclose(fitters["low"].survival_function_.to_numpy(), direct.survival_function_.to_numpy())

    result = clinical.logrank(cohort["time"], cohort["event"], groups)
    high = groups == "high"
    t, e = cohort["time"], cohort["event"]
    direct = logrank_test(t[high], t[~high], e[high], e[~high])
    assert result["statistic"] == pytest.approx(direct.test_statistic, rel=1e-9)
    assert result["p"] == pytest.approx(direct.p_value, rel=1e-9)
    assert result["pairwise"] is None
    assert result["n"].sum() == 120

    three = clinical.logrank(t, e, pd.Categorical(cohort["stage"], categories=["III", "II", "I"]))
    direct3 = multivariate_logrank_test(t, cohort["stage"], e)
    assert three["p"] == pytest.approx(direct3.p_value, rel=1e-9)
    assert three["df"] == 2
    assert three["groups"] == ["III", "II", "I"]
    assert len(three["pairwise"]) == 3


def test_time_dependent_auc_equals_sksurv(cohort):
    times = np.quantile(cohort["time"], [0.25, 0.5, 0.75])
    result = clinical.time_dependent_auc(cohort["time"], cohort["event"], cohort["x"], times)
    surv = Surv.from_arrays(cohort["event"].astype(bool), cohort["time"])
    auc, mean_auc = cumulative_dynamic_auc(surv, surv, cohort["x"], times)
    np.testing.assert_allclose(result.auc.to_numpy(), auc)
    assert result.mean_auc == pytest.approx(mean_auc)
    with pytest.raises(ValueError, match="outside the follow-up"):
        clinical.time_dependent_auc(cohort["time"], cohort["event"], cohort["x"], [cohort["time"].max() + 1])
    with pytest.raises(ValueError, match="both train_time and train_event"):
        clinical.time_dependent_auc(cohort["time"], cohort["event"], cohort["x"], times, train_time=cohort["time"])


def test_response_auc_equals_sklearn_with_stratified_bootstrap(cohort):
    score = -cohort["x"]  # responders have low x
    direct = roc_auc_score(cohort["response"] == "R", score)
    auc, low, high = clinical.response_auc(cohort["response"], score, n_boot=200)
    assert auc == pytest.approx(direct)
    assert low < auc < high
    assert auc > 0.7
    assert clinical.response_auc(cohort["response"], score, n_boot=200) == (auc, low, high)
    assert clinical.response_auc(cohort["response"] == "R", score, positive=True, n_boot=0).estimate == auc


def test_compare_scores_paired_bootstrap(cohort):
    same = clinical.compare_scores(cohort["response"], -cohort["x"], -cohort["x"], n_boot=100)
    assert same["difference"] == 0
    assert same["p"] == 1.0
    better = clinical.compare_scores(cohort["response"], -cohort["x"], cohort["y"], n_boot=100)
    assert better["difference"] > 0.2
    assert better["ci_low"] > 0
    assert better["p"] < 0.05
    assert better["estimate_a"] == pytest.approx(clinical.response_auc(cohort["response"], -cohort["x"], n_boot=0)[0])

    surv = Surv.from_arrays(cohort["event"].astype(bool), cohort["time"])
    c = clinical.compare_scores(surv, cohort["x"], cohort["y"], metric="c_index", n_boot=100)
    same_c = clinical.compare_scores((cohort["time"], cohort["event"]), cohort["x"], cohort["y"], metric="c_index",
                                     n_boot=100)  # fmt: skip
    assert c == same_c
    assert c["difference"] > 0
    assert c["p"] < 0.05
    with pytest.raises(ValueError, match="metric"):
        clinical.compare_scores(cohort["response"], cohort["x"], cohort["y"], metric="brier")


# ---- bad input: a clear error, or a warning that says how many patients were dropped ----------------------------


def test_no_events_is_an_error(cohort):
    censored = np.zeros(len(cohort))
    for call in (
        lambda: clinical.cox_hr(cohort["time"], censored, cohort["x"]),
        lambda: clinical.c_index(cohort["time"], censored, cohort["x"]),
        lambda: clinical.logrank(cohort["time"], censored, cohort["stage"]),
        lambda: clinical.cox_split(cohort["time"], censored, cohort["x"]),
    ):
        with pytest.raises(ValueError, match="no events"):
            call()


def test_one_class_is_an_error(cohort):
    with pytest.raises(ValueError, match="one class"):
        clinical.response_auc(np.full(len(cohort), "R"), cohort["x"])
    with pytest.raises(ValueError, match="two labels"):
        clinical.response_auc(cohort["stage"], cohort["x"])
    with pytest.raises(ValueError, match="not among the response labels"):
        clinical.response_auc(cohort["response"] == "R", cohort["x"])  # positive="R" but labels are bool


def test_missing_values_are_dropped_with_a_count(cohort):
    time = cohort["time"].copy()
    time.iloc[:7] = np.nan
    event = cohort["event"].copy()
    event.iloc[10:13] = np.nan
    with pytest.warns(ClinicalDataWarning, match=r"dropped 10 of 120 patients .*7 missing time, 3 missing event"):
        table = clinical.cox_hr(time, event, cohort["x"])
    assert table.loc["x", "n"] == 110
    response = cohort["response"].astype(object).copy()
    response.iloc[:5] = None
    with pytest.warns(ClinicalDataWarning, match="dropped 5 of 120"):
        clinical.response_auc(response, cohort["x"], n_boot=0)
    with pytest.raises(ValueError, match="no patient has all"):
        clinical.c_index(np.full(len(cohort), np.nan), cohort["event"], cohort["x"])


def test_too_few_patients_for_a_bootstrap(cohort):
    small = cohort.iloc[:8]
    assert small["event"].sum() > 0
    assert small["response"].nunique() == 2
    with pytest.raises(ValueError, match="too few for a bootstrap"):
        clinical.c_index(small["time"], small["event"], small["x"], n_boot=100)
    with pytest.raises(ValueError, match="too few for a bootstrap"):
        clinical.response_auc(small["response"], small["x"], n_boot=100)
    clinical.response_auc(small["response"], small["x"], n_boot=0)  # the point estimate alone is allowed
    one_responder = cohort.copy()
    one_responder["response"] = "NR"
    one_responder.iloc[0, one_responder.columns.get_loc("response")] = "R"
    with pytest.raises(ValueError, match="1 responders are too few"):
        clinical.response_auc(one_responder["response"], one_responder["x"], n_boot=10)


def test_inputs_indexed_by_other_patients_are_refused(cohort):
    shuffled = cohort["x"].sample(frac=1.0, random_state=0)
    with pytest.raises(ValueError, match="different order"):
        clinical.cox_hr(cohort["time"], cohort["event"], shuffled)
    with pytest.raises(ValueError, match="different order"):
        clinical.response_auc(cohort["response"], shuffled, n_boot=0)
    with pytest.raises(ValueError, match="different order"):
        clinical.logrank(cohort["time"], cohort["event"], cohort["stage"].sample(frac=1.0, random_state=0))
    # Re-aligned, or as plain arrays, they are used by position.
    clinical.cox_hr(cohort["time"], cohort["event"], shuffled.loc[cohort.index])
    clinical.cox_hr(cohort["time"], cohort["event"], shuffled.to_numpy())


def test_malformed_survival_inputs(cohort):
    with pytest.raises(ValueError, match="aligned by position"):
        clinical.c_index(cohort["time"], cohort["event"][:-1], cohort["x"], n_boot=0)
    with pytest.raises(ValueError, match="negative"):
        clinical.c_index(-cohort["time"], cohort["event"], cohort["x"], n_boot=0)
    with pytest.raises(ValueError, match="0/1"):
        clinical.c_index(cohort["time"], cohort["event"] * 2, cohort["x"], n_boot=0)
    with pytest.raises(ValueError, match="numeric"):
        clinical.cox_hr(cohort["time"], cohort["event"], cohort["response"])
    with pytest.raises(ValueError, match="constant"):
        clinical.cox_hr(cohort["time"], cohort["event"], np.ones(len(cohort)))
    with pytest.raises(ValueError, match="at least two groups"):
        clinical.logrank(cohort["time"], cohort["event"], np.full(len(cohort), "a"))


def test_separation_is_reported_not_hidden(cohort):
    # A covariate that orders the survival times perfectly: lifelines' convergence warnings come back, named.
    with pytest.warns(ClinicalDataWarning, match=r"cox_hr\('x'\): .*converge") as record:
        clinical.cox_hr(cohort["time"], cohort["event"], cohort["x"], covariates={"leak": -cohort["time"]})
    assert all(issubclass(item.category, ClinicalDataWarning) for item in record)


def test_masked_values_are_missing(cohort):
    # R's NA arrives as a masked value: it must be dropped, never read as its fill value.
    time = np.ma.masked_array(cohort["time"].to_numpy(), mask=np.arange(len(cohort)) < 4)
    with pytest.warns(ClinicalDataWarning, match="dropped 4 of 120"):
        clinical.c_index(time, cohort["event"], cohort["x"], n_boot=0)


def test_check_events_warns_on_miao():
    miao = real("icb_cohort", "Miao")
    with pytest.warns(ClinicalDataWarning) as record:
        table = clinical.check_events(miao)
    messages = [str(item.message) for item in record]
    assert any("Miao: OS events look inverted (responders 8/10" in message for message in messages)
    assert any("Miao: PFS events look inverted" in message for message in messages)
    assert table["suspicious"].all()
    hugo = real("icb_cohort", "Hugo")
    assert not clinical.check_events(hugo)["suspicious"].any()  # no warning: filterwarnings=error would fail


def test_infinite_score_is_an_error_that_names_the_input(cohort):
    score = cohort["x"].copy()
    score.iloc[3] = np.inf
    with pytest.raises(ValueError, match=r"1 of 120 values of `score` are infinite .*NaN to drop"):
        clinical.response_auc(cohort["response"], score, n_boot=0)
    with pytest.raises(ValueError, match=r"1 of 120 values of `risk` are infinite"):
        clinical.c_index(cohort["time"], cohort["event"], score, n_boot=0)
    assert np.isinf(score.iloc[3])  # the input is left as it was


def test_all_follow_up_times_zero_is_an_error(cohort):
    with pytest.raises(ValueError, match=r"all 120 follow-up times are 0.*follow-up column"):
        clinical.c_index(np.zeros(len(cohort)), cohort["event"], cohort["x"], n_boot=10)
