import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _data import real
from scipy import sparse

import storm.pp as pp


def counts_adata(dense=False) -> ad.AnnData:
    # 5 spots × 4 genes; gene 'MT-CO1' is mitochondrial; spot 4 is empty
    X = np.array(
        [
            [10, 0, 5, 5],
            [1, 1, 0, 0],
            [0, 2, 2, 16],
            [3, 3, 3, 1],
            [0, 0, 0, 0],
        ],
        dtype=np.float32,
    )
    adata = ad.AnnData(
        X=X if dense else sparse.csr_matrix(X),
        obs=pd.DataFrame({"library_id": pd.Categorical(["A", "A", "B", "B", "B"])}, index=[f"s{i}" for i in range(5)]),
        var=pd.DataFrame(index=["GAPDH", "ACTB", "CD3E", "MT-CO1"]),
    )
    adata.obsm["spatial"] = np.arange(10, dtype=np.float64).reshape(5, 2)
    return adata


@pytest.mark.parametrize("dense", [False, True])
def test_qc_metrics_keys_and_values(dense):
    adata = counts_adata(dense)
    assert pp.qc_metrics(adata) is None
    for key in ("total_counts", "n_genes_by_counts", "pct_counts_mt", "total_counts_mt"):
        assert key in adata.obs
    for key in ("mt", "n_cells_by_counts", "mean_counts", "pct_dropout_by_counts", "total_counts"):
        assert key in adata.var
    np.testing.assert_array_equal(adata.obs["total_counts"], [20, 2, 20, 10, 0])
    np.testing.assert_array_equal(adata.obs["n_genes_by_counts"], [3, 2, 3, 4, 0])
    np.testing.assert_allclose(adata.obs["pct_counts_mt"].iloc[:4], [25, 0, 80, 10])
    assert adata.var["mt"].tolist() == [False, False, False, True]


def test_qc_metrics_copy_and_mouse_prefix():
    adata = counts_adata()
    adata.var_names = ["Gapdh", "Actb", "Cd3e", "mt-Co1"]
    out = pp.qc_metrics(adata, copy=True)
    assert "total_counts" not in adata.obs
    assert out.var["mt"].tolist() == [False, False, False, True]


def test_qc_metrics_without_mito_genes():
    adata = counts_adata()
    adata.var_names = ["A", "B", "C", "D"]
    pp.qc_metrics(adata)
    assert (adata.obs["pct_counts_mt"].iloc[:4] == 0).all()
    assert np.isnan(adata.obs["pct_counts_mt"].iloc[4])  # an empty spot has no percentage (scanpy's 0 / 0)


def test_qc_metrics_from_layer():
    adata = counts_adata()
    adata.layers["counts"] = adata.X.copy()
    adata.X = adata.X * 2
    pp.qc_metrics(adata, layer="counts")
    np.testing.assert_array_equal(adata.obs["total_counts"], [20, 2, 20, 10, 0])


def test_filter_spots_defaults_remove_empty_spots(caplog):
    adata = counts_adata()
    with caplog.at_level("INFO", logger="storm"):
        assert pp.filter_spots(adata) is None
    assert adata.obs_names.tolist() == ["s0", "s1", "s2", "s3"]
    assert adata.obsm["spatial"].shape == (4, 2)
    assert "removed 1 of 5 spots" in caplog.text
    assert "per slide: B 1" in caplog.text


def test_filter_spots_thresholds():
    adata = counts_adata()
    out = pp.filter_spots(adata, min_counts=5, min_genes=3, max_pct_mt=50, copy=True)
    assert out.obs_names.tolist() == ["s0", "s3"]  # s1: 2 counts; s2: 80 % MT; s4: empty
    assert adata.n_obs == 5  # copy=True leaves the input alone
    out = pp.filter_spots(adata, min_counts=None, min_genes=None, copy=True)
    assert out.n_obs == 5


def test_filter_spots_refuses_to_remove_everything():
    adata = counts_adata()
    with pytest.raises(ValueError, match="remove all 5 spots"):
        pp.filter_spots(adata, min_counts=1000)
    assert adata.n_obs == 5


@pytest.mark.parametrize("dense", [False, True])
def test_normalize_writes_a_layer_and_keeps_counts(dense):
    adata = counts_adata(dense)
    raw = adata.X.copy()
    pp.normalize(adata)
    lognorm = adata.layers["lognorm"]
    assert sparse.issparse(lognorm) == (not dense)
    lognorm = lognorm.toarray() if sparse.issparse(lognorm) else lognorm
    assert lognorm.dtype == np.float32
    X = raw.toarray() if sparse.issparse(raw) else raw
    expected = np.log1p(X[0] / 20 * 1e4)
    np.testing.assert_allclose(lognorm[0], expected, rtol=1e-6)
    np.testing.assert_array_equal(lognorm[4], 0)  # empty spot stays 0
    np.testing.assert_allclose(np.expm1(lognorm[:4]).sum(axis=1), 1e4, rtol=1e-5)
    now = adata.X.toarray() if sparse.issparse(adata.X) else adata.X
    np.testing.assert_array_equal(now, X)  # .X keeps the raw counts
    assert adata.uns["lognorm"]["params"]["target_sum"] == 1e4


def test_normalize_copy_and_key():
    adata = counts_adata()
    out = pp.normalize(adata, target_sum=None, layer_added="norm", copy=True)
    assert "norm" in out.layers
    assert "norm" not in adata.layers
    assert "norm" not in adata.uns


def test_normalize_rejects_log_data():
    adata = counts_adata()
    adata.X = adata.X.toarray()
    adata.X[0, 0] = -1.0
    with pytest.raises(ValueError, match="negative values; expected raw counts"):
        pp.normalize(adata)
    assert "lognorm" not in adata.layers


def test_qc_filter_normalize_on_her2st():
    adata = real("her2st", "C2")
    pp.qc_metrics(adata)
    assert adata.var["mt"].sum() == 0  # the published HER2ST counts hold no MT- genes
    assert (adata.obs["total_counts"] > 0).all()
    assert (adata.obs["pct_counts_mt"] == 0).all()
    n = adata.n_obs
    pp.filter_spots(adata, min_counts=500, min_genes=200)
    assert 0 < adata.n_obs <= n
    assert (adata.obs["total_counts"] >= 500).all()
    pp.normalize(adata)
    lognorm = adata.layers["lognorm"]
    np.testing.assert_allclose(np.expm1(lognorm.toarray()).sum(axis=1), 1e4, rtol=1e-3)
