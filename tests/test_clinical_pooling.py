"""Random-effects pooling: DerSimonian–Laird against a computation written out by hand and against statsmodels."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _data import real
from scipy import stats

from storm import clinical


def test_dersimonian_laird_by_hand():
    # Three studies: estimates y_i and variances v_i (SE 0.2, 0.3, 0.25).
    y = [0.2, 0.5, -0.1]
    se = [0.2, 0.3, 0.25]
    # Fixed-effect weights w_i = 1/v_i = 1/0.04, 1/0.09, 1/0.0625.
    w = [25.0, 100 / 9, 16.0]  # sum 469/9
    # Fixed-effect mean: (25·0.2 + (100/9)·0.5 + 16·(-0.1)) / (469/9) = (403/45) / (469/9) = 403/2345.
    mu_fe = 403 / 2345
    assert mu_fe == pytest.approx(np.dot(w, y) / sum(w))
    # Cochran's Q = Σ w_i (y_i - mu_fe)^2 = 1125/469 on k - 1 = 2 df.
    q = 1125 / 469
    assert q == pytest.approx(sum(wi * (yi - mu_fe) ** 2 for wi, yi in zip(w, y, strict=True)))
    # C = Σw - Σw²/Σw = 469/9 - (625 + 10000/81 + 256)/(469/9) = 2200/67; tau² = (Q - 2)/C = 17/1400.
    tau2 = 17 / 1400
    # Random-effects weights 1/(v_i + tau²) = 1400/73, 1400/143, 1400/104.5.
    w_star = [1400 / 73, 1400 / 143, 1400 / 104.5]
    assert w_star[0] == pytest.approx(1 / (0.04 + tau2))
    mu = np.dot(w_star, y) / sum(w_star)  # 0.174458...
    se_mu = (1 / sum(w_star)) ** 0.5  # 0.153636...
    i2 = (q - 2) / q  # 187/1125 = 0.16622...

    pooled = clinical.pool_random_effects(y, se, labels=["A", "B", "C"])
    assert pooled["q"] == pytest.approx(q, rel=1e-12)
    assert pooled["tau2"] == pytest.approx(tau2, rel=1e-12)
    assert pooled["i2"] == pytest.approx(187 / 1125, rel=1e-12) == pytest.approx(i2)
    assert pooled["estimate"] == pytest.approx(mu, rel=1e-12) == pytest.approx(0.1744585138)
    assert pooled["se"] == pytest.approx(se_mu, rel=1e-12) == pytest.approx(0.1536364402)
    assert pooled["ci_low"] == pytest.approx(mu - 1.959963985 * se_mu)
    assert pooled["ci_high"] == pytest.approx(mu + 1.959963985 * se_mu)
    assert pooled["p"] == pytest.approx(2 * stats.norm.sf(mu / se_mu))
    assert pooled["q_p"] == pytest.approx(stats.chi2.sf(q, 2)) == pytest.approx(0.30138693)
    np.testing.assert_allclose(pooled["weights"].to_numpy(), np.array(w_star) / sum(w_star))
    assert list(pooled["weights"].index) == ["A", "B", "C"]

    fixed = clinical.pool_random_effects(y, se, method="FE")
    assert fixed["estimate"] == pytest.approx(mu_fe)
    assert fixed["tau2"] == 0
    assert fixed["se"] == pytest.approx((9 / 469) ** 0.5)


def test_homogeneous_studies_have_zero_tau2():
    pooled = clinical.pool_random_effects([0.3, 0.31, 0.29], [0.1, 0.2, 0.15])
    assert pooled["tau2"] == 0
    assert pooled["i2"] == 0


def test_pool_hazard_ratios_from_cox_tables_and_intervals():
    table = pd.DataFrame({"coef": np.log([0.7, 0.8, 0.9]), "se": [0.2, 0.3, 0.25]}, index=["a", "b", "c"])
    pooled = clinical.pool_hazard_ratios(table)
    direct = clinical.pool_random_effects(table["coef"], table["se"])
    assert pooled["estimate"] == pytest.approx(np.exp(direct["estimate"]))
    assert pooled["ci_low"] == pytest.approx(np.exp(direct["ci_low"]))
    assert pooled["log_estimate"] == pytest.approx(direct["estimate"])
    assert pooled["scale"] == "hr"
    # The same cohorts given as HR with a 95% interval: the SE is read back from the interval.
    z = stats.norm.ppf(0.975)
    as_ci = pd.DataFrame(
        {
            "cohort": ["a", "b", "c"],
            "hr": np.exp(table["coef"]),
            "ci_low": np.exp(table["coef"] - z * table["se"]),
            "ci_high": np.exp(table["coef"] + z * table["se"]),
        }
    )
    again = clinical.pool_hazard_ratios(as_ci)
    assert again["estimate"] == pytest.approx(pooled["estimate"])
    assert list(again["weights"].index) == ["a", "b", "c"]


def test_pool_aucs_on_the_logit_scale():
    # Hanley & McNeil (1982) SE for AUC 0.8 with 50 and 50: Q1 = 0.8/1.2 = 0.6667, Q2 = 1.28/1.8 = 0.7111,
    # variance = (0.16 + 49 (0.6667 - 0.64) + 49 (0.7111 - 0.64)) / 2500 = 4.9511 / 2500, SE = 0.04450.
    assert clinical.hanley_mcneil_se(0.8, 50, 50) == pytest.approx((4.951111 / 2500) ** 0.5, rel=1e-6)
    table = pd.DataFrame({"auc": [0.6, 0.7, 0.65], "n_pos": [20, 40, 15], "n_neg": [30, 60, 25]})
    pooled = clinical.pool_aucs(table)
    se = clinical.hanley_mcneil_se(table["auc"], table["n_pos"], table["n_neg"])
    logit = np.log(table["auc"] / (1 - table["auc"]))
    direct = clinical.pool_random_effects(logit, se / (table["auc"] * (1 - table["auc"])))
    assert pooled["estimate"] == pytest.approx(1 / (1 + np.exp(-direct["estimate"])))
    assert pooled["ci_low"] < pooled["estimate"] < pooled["ci_high"]
    assert pooled["se_source"] == "hanley-mcneil"
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        clinical.pool_aucs(pd.DataFrame({"auc": [1.0, 0.7], "se": [0.1, 0.1]}))


def test_pooling_bad_input():
    with pytest.raises(ValueError, match="at least two studies"):
        clinical.pool_random_effects([0.1], [0.1])
    with pytest.raises(ValueError, match="positive and finite"):
        clinical.pool_random_effects([0.1, 0.2], [0.1, 0.0])
    with pytest.raises(ValueError, match="2 estimates but 3"):
        clinical.pool_random_effects([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="method"):
        clinical.pool_random_effects([0.1, 0.2], [0.1, 0.2], method="REML")
    with pytest.raises(ValueError, match="'coef'"):
        clinical.pool_hazard_ratios(pd.DataFrame({"x": [1, 2]}))


@pytest.fixture(scope="module")
def predictior_per_cohort():
    """CD274, CYT and GEP in each PredictioR ICB cohort: log HR with its Cox SE, logit AUC with Hanley–McNeil's."""
    import warnings

    from storm import datasets

    cohorts = {}
    for name in datasets.icb_cohorts().index:
        adata = real("icb_cohort", name)
        scores = clinical.biomarker_table(adata, biomarkers=("CD274", "CYT", "GEP"))
        cohorts[name] = pd.concat([adata.obs, scores], axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", clinical.ClinicalDataWarning)  # dropped patients, Miao's inverted events
        return clinical.cohort_table(cohorts, ["CD274", "CYT", "GEP"], n_boot=0, pool=None)


def _pools(table):
    for biomarker, part in table.groupby("biomarker"):
        hr = part[part["in_pooled_hr"] & part["log_hr_se"].notna()]
        yield f"{biomarker} HR", hr["log_hr"].to_numpy(), hr["log_hr_se"].to_numpy()
        auc = part[part["in_pooled_auc"] & part["auc"].notna()]
        a = auc["auc"].to_numpy()
        se = clinical.hanley_mcneil_se(a, auc["n_responders"], auc["n_nonresponders"]) / (a * (1 - a))
        yield f"{biomarker} AUC", np.log(a / (1 - a)), se


@pytest.mark.slow  # loads the eight cohorts (~20 s)
def test_dersimonian_laird_gives_statsmodels_numbers_on_the_predictior_cohorts(predictior_per_cohort):
    # storm keeps its own DerSimonian–Laird: statsmodels' combine_effects(method_re="dl") leaves τ² negative when
    # Cochran's Q < k - 1 (it does not truncate at 0), which shifts the pooled effect and narrows its interval.
    from statsmodels.stats.meta_analysis import combine_effects

    truncated = []
    for name, y, se in _pools(predictior_per_cohort):
        assert len(y) >= 7, name
        ours = clinical.pool_random_effects(y, se)
        theirs = combine_effects(y, se**2, method_re="dl")
        assert ours["q"] == pytest.approx(theirs.q, rel=1e-10), name
        if theirs.tau2 >= 0:
            assert ours["tau2"] == pytest.approx(theirs.tau2, rel=1e-10), name
            assert ours["estimate"] == pytest.approx(theirs.mean_effect_re, rel=1e-10), name
            assert ours["se"] == pytest.approx(theirs.sd_eff_w_re, rel=1e-10), name
            assert ours["i2"] == pytest.approx(theirs.i2, rel=1e-10), name
            np.testing.assert_allclose(ours["weights"], theirs.weights_rel_re, rtol=1e-10)
        else:  # τ² = max(0, ·): the random-effects pool is then the fixed-effect one
            truncated.append(name)
            assert ours["tau2"] == 0
            assert ours["i2"] == 0
            assert ours["estimate"] == pytest.approx(theirs.mean_effect_fe, rel=1e-10), name
            assert ours["se"] == pytest.approx(theirs.sd_eff_w_fe, rel=1e-10), name
    assert 0 < len(truncated) < 6  # both branches are exercised on these cohorts
