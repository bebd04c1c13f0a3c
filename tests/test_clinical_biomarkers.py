"""Signature scores and established biomarkers, and the real-data check on IMvigor210 (Mariathasan et al. 2018)."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from _data import real
from anndata import AnnData
from scipy import sparse

from storm import clinical
from storm._logging import logger


@pytest.fixture
def storm_log(caplog):
    """The storm logger does not propagate to the root logger; attach pytest's handler to it directly."""
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture
def expression() -> pd.DataFrame:
    """6 samples × 5 genes of log-scale expression, small enough to score by hand."""
    return pd.DataFrame(
        [
            [1.0, 2.0, 3.0, 4.0, 5.0],
            [5.0, 4.0, 3.0, 2.0, 1.0],
            [2.0, 2.0, 2.0, 9.0, 0.0],
            [0.0, 1.0, 4.0, 4.0, 2.0],
            [3.0, 3.0, 1.0, 0.0, 8.0],
            [1.0, 6.0, 2.0, 3.0, 3.0],
        ],
        index=[f"s{i}" for i in range(6)],
        columns=["A", "B", "C", "D", "E"],
    )


def test_signature_score_methods_by_hand(expression):
    z = (expression - expression.mean()) / expression.std(ddof=0)
    zscore = clinical.signature_score(expression, ["A", "B"])
    np.testing.assert_allclose(zscore, z[["A", "B"]].mean(axis=1))
    mean = clinical.signature_score(expression, ["A", "B"], method="mean")
    np.testing.assert_allclose(mean, expression[["A", "B"]].mean(axis=1))
    rank = clinical.signature_score(expression, ["D", "E"], method="rank")
    # Sample s0 ranks D, E as 4, 5 of 5: the top, score 1. Sample s1 ranks them 2, 1: the bottom, score 0.
    # Sample s2 (2, 2, 2, 9, 0): D rank 5, E rank 1 -> mean 3; min (2+1)/2 = 1.5, max (10-2+1)/2 = 4.5 -> 0.5.
    assert rank["s0"] == pytest.approx(1.0)
    assert rank["s1"] == pytest.approx(0.0)
    assert rank["s2"] == pytest.approx(0.5)
    assert rank.between(0, 1).all()


def test_signature_score_missing_genes(expression, storm_log):
    score = clinical.signature_score(expression, ["A", "B", "ZZZ"], min_coverage=0.5)
    assert "2/3 genes found; missing: ZZZ" in storm_log.text
    assert score.attrs["coverage"]["genes_missing"] == ["ZZZ"]
    with pytest.raises(ValueError, match="1/3 genes found, below min_coverage=50%; missing: Y1, Y2"):
        clinical.signature_score(expression, ["A", "Y1", "Y2"])
    with pytest.raises(ValueError, match="none of the 2 genes"):
        clinical.signature_score(expression, ["Y1", "Y2"])
    with pytest.raises(ValueError, match="as a list"):
        clinical.signature_score(expression, "A")


def test_signature_score_writes_to_anndata(expression):
    adata = AnnData(sparse.csr_matrix(expression.to_numpy()), obs=pd.DataFrame(index=expression.index))
    adata.var_names = expression.columns
    score = clinical.signature_score(adata, ["A", "B", "C"], method="rank", key_added="immune")
    np.testing.assert_allclose(adata.obs["immune"], score)
    params = adata.uns["immune"]["params"]
    assert params["coverage"] == 1.0
    assert params["method"] == "rank"
    assert params["genes_used"] == ["A", "B", "C"]
    dense = clinical.signature_score(expression, ["A", "B", "C"], method="rank")
    np.testing.assert_allclose(score, dense)  # sparse AnnData and DataFrame agree
    with pytest.raises(ValueError, match="AnnData to write"):
        clinical.signature_score(expression, ["A"], key_added="x")


def _toy_cohort() -> AnnData:
    """Four patients of log2(TPM + 0.001), the PredictioR layout, with the CYT and GEP genes."""
    rng = np.random.default_rng(3)
    genes = [*clinical.GEP_GENES, "GZMA", "PRF1", "ACTB"]
    tpm = rng.gamma(2.0, 20.0, size=(12, len(genes)))
    tpm[0, genes.index("GZMA")] = 0.0  # an unexpressed gene: -9.97 as stored
    adata = AnnData(np.log2(tpm + 0.001), obs=pd.DataFrame(index=[f"P{i}" for i in range(12)]))
    adata.var_names = genes
    adata.uns["icb"] = {"assay": "log2(TPM + 0.001)", "cohort": "toy"}
    adata.obs["tmb"] = [np.nan, *rng.gamma(2, 3, size=11)]
    adata.layers["tpm"] = tpm
    return adata


def test_biomarkers_restore_the_published_pseudocounts():
    adata = _toy_cohort()
    tpm = pd.DataFrame(adata.layers["tpm"], index=adata.obs_names, columns=adata.var_names)
    # Rooney et al.: geometric mean of TPM + 0.01; storm returns its log2 = mean of log2(TPM + 0.01).
    cyt = clinical.cytolytic_activity(adata)
    expected = np.log2(np.sqrt((tpm["GZMA"] + 0.01) * (tpm["PRF1"] + 0.01)))
    np.testing.assert_allclose(cyt, expected, rtol=1e-9)
    assert cyt["P0"] > np.log2(0.01)  # the zero is at log2(0.01 · …), not at log2(0.001)
    np.testing.assert_allclose(clinical.cd274(adata), np.log2(tpm["CD274"] + 1), rtol=1e-9)
    weighted = clinical.tcell_inflamed_gep(adata)
    logged = np.log2(tpm[list(clinical.GEP_GENES)] + 1)
    np.testing.assert_allclose(weighted, logged @ pd.Series(clinical.GEP_WEIGHTS)[list(clinical.GEP_GENES)])
    z = clinical.tcell_inflamed_gep(adata, method="zscore")
    np.testing.assert_allclose(z, ((logged - logged.mean()) / logged.std(ddof=0)).mean(axis=1))
    # A DataFrame without assay information is used as given.
    frame = pd.DataFrame(adata.X, index=adata.obs_names, columns=adata.var_names)
    np.testing.assert_allclose(clinical.cd274(frame), frame["CD274"])
    np.testing.assert_allclose(clinical.cd274(frame, offset=0.001), np.log2(tpm["CD274"] + 1), rtol=1e-9)


def test_biomarker_table_reports_coverage(storm_log):
    adata = _toy_cohort()[:, [g for g in _toy_cohort().var_names if g not in ("CD276", "PSMB10", "PRF1")]].copy()
    table = clinical.biomarker_table(adata)
    assert list(table.columns) == ["CD274", "GEP", "TMB"]  # CYT needs PRF1
    coverage = table.attrs["coverage"]
    assert coverage["GEP"] == "16/18 genes (missing CD276, PSMB10)"
    assert coverage["TMB"] == "11/12 patients"
    assert coverage["CYT"].startswith("not available")
    assert "CYT left out" in storm_log.text
    with pytest.raises(ValueError, match="Unknown biomarkers"):
        clinical.biomarker_table(adata, biomarkers=["PDL1"])
    with pytest.raises(ValueError, match="no obs"):
        clinical.tmb(AnnData(np.zeros((2, 1))))


def test_imvigor210_immune_signatures_predict_overall_survival():
    """IMvigor210 (atezolizumab, urothelial cancer): an inflamed tumour should mean longer overall survival."""
    adata = real("icb_cohort", "Mariathasan")
    assert not clinical.check_events(adata)["suspicious"].any()
    markers = clinical.biomarker_table(adata)
    obs = adata.obs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", clinical.ClinicalDataWarning)  # TMB is missing for 43 patients
        hr = clinical.cox_hr(obs["os_time"], obs["os_event"], markers)
        auc = {name: clinical.response_auc(obs["response"], markers[name], n_boot=200) for name in markers.columns}
    print("\nIMvigor210 overall survival, Cox HR per SD:")
    print(hr[["n", "n_events", "hr", "ci_low", "ci_high", "p"]].round(4).to_string())
    print("IMvigor210 response (R vs NR) AUC [95% bootstrap CI, 200 resamples]:")
    for name, (value, low, high) in auc.items():
        print(f"  {name}: {value:.3f} [{low:.3f}, {high:.3f}]")
    assert hr.loc["CYT", "n"] == 195
    assert hr.loc["CYT", "n_events"] == 128
    assert any(hr.loc[name, "hr"] < 1 and hr.loc[name, "p"] < 0.05 for name in ("CYT", "GEP"))
    assert auc["GEP"].estimate > 0.5
