import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _data import real
from scipy import sparse

import storm.pp as pp


def panel_adata(genes=("GAPDH", "ACTB", "CD3E"), dense=False) -> ad.AnnData:
    X = np.arange(1, 3 * len(genes) + 1, dtype=np.float32).reshape(3, len(genes))
    adata = ad.AnnData(
        X=X if dense else sparse.csr_matrix(X),
        obs=pd.DataFrame({"library_id": pd.Categorical(["A"] * 3)}, index=["s0", "s1", "s2"]),
        var=pd.DataFrame({"gene_ids": [f"ENSG{i:05d}" for i in range(len(genes))]}, index=list(genes)),
    )
    adata.obsm["spatial"] = np.zeros((3, 2))
    adata.obsp["spatial_connectivities"] = sparse.identity(3, format="csr")
    adata.layers["lognorm"] = adata.X * 10
    adata.uns["spatial"] = {"A": {"scalefactors": {"microns_per_pixel": 1.0}, "images": {}}}
    return adata


@pytest.mark.parametrize("dense", [False, True])
def test_values_mask_and_order(dense):
    adata = panel_adata(dense=dense)
    genes = ["CD3E", "MS4A1", "GAPDH", "EPCAM"]
    out = pp.harmonize_genes(adata, genes)
    assert out.var_names.tolist() == genes
    assert out.var["measured"].tolist() == [True, False, True, False]
    X = out.X.toarray() if sparse.issparse(out.X) else out.X
    assert sparse.issparse(out.X) == (not dense)
    src = adata.X.toarray() if sparse.issparse(adata.X) else adata.X
    np.testing.assert_array_equal(X[:, 0], src[:, 2])
    np.testing.assert_array_equal(X[:, 2], src[:, 0])
    np.testing.assert_array_equal(X[:, [1, 3]], 0)
    assert X.dtype == np.float32
    assert out.var["gene_ids"].tolist() == ["ENSG00002", "", "ENSG00000", ""]
    lognorm = out.layers["lognorm"]
    lognorm = lognorm.toarray() if sparse.issparse(lognorm) else lognorm
    np.testing.assert_array_equal(lognorm[:, 0], src[:, 2] * 10)


def test_coverage_and_carry_over():
    adata = panel_adata()
    out = pp.harmonize_genes(adata, ["CD3E", "MS4A1", "GAPDH", "EPCAM"])
    panel = out.uns["storm_panel"]
    assert panel["n_genes"] == 4
    assert panel["n_measured"] == 2
    assert panel["coverage"] == pytest.approx(0.5)
    assert panel["n_source_genes"] == 3
    assert panel["source_used"] == pytest.approx(2 / 3)
    pd.testing.assert_frame_equal(out.obs, adata.obs)
    np.testing.assert_array_equal(out.obsm["spatial"], adata.obsm["spatial"])
    assert "spatial_connectivities" in out.obsp
    assert out.uns["spatial"] == adata.uns["spatial"]
    # a new object: editing it leaves the input alone
    out.uns["spatial"]["A"]["scalefactors"]["microns_per_pixel"] = 2.0
    out.obs["x"] = 1
    assert adata.uns["spatial"]["A"]["scalefactors"]["microns_per_pixel"] == 1.0
    assert "x" not in adata.obs
    assert "storm_panel" not in adata.uns


def test_union_of_two_panels():
    a = panel_adata(("GAPDH", "ACTB", "CD3E"))
    b = panel_adata(("CD3E", "EPCAM"))
    union = list(dict.fromkeys([*a.var_names, *b.var_names]))
    ha, hb = pp.harmonize_genes(a, union), pp.harmonize_genes(b, union)
    both = ad.concat([ha, hb], keys=["a", "b"], index_unique="-")
    assert both.var_names.tolist() == union
    assert ha.var["measured"].tolist() == [True, True, True, False]
    assert hb.var["measured"].tolist() == [False, False, True, True]


def test_from_layer():
    adata = panel_adata()
    out = pp.harmonize_genes(adata, ["ACTB"], layer="lognorm")
    assert out.uns["storm_panel"]["source_layer"] == "lognorm"
    np.testing.assert_array_equal(out.X.toarray()[:, 0], adata.layers["lognorm"].toarray()[:, 1])


def test_no_overlap_says_what_to_check():
    adata = panel_adata()
    with pytest.raises(ValueError, match=r"3 genes \(e.g. 'GAPDH'.*2 \(e.g. 'ENSG00000111640'.*Ensembl ids"):
        pp.harmonize_genes(adata, ["ENSG00000111640", "ENSG00000075624"])


@pytest.mark.parametrize(
    ("genes", "match"),
    [([], "empty"), (["CD3E", "CD3E"], "repeats"), ("CD3E", "not one string")],
)
def test_bad_gene_lists(genes, match):
    with pytest.raises(ValueError, match=match):
        pp.harmonize_genes(panel_adata(), genes)


def test_duplicated_var_names():
    adata = panel_adata(("GAPDH", "GAPDH", "CD3E"))
    with pytest.raises(ValueError, match="var names occur more than once"):
        pp.harmonize_genes(adata, ["GAPDH"])


def test_her2st_and_dlpfc_on_one_panel():
    her2st = real("her2st", "C2")
    genes = real("hist2st_genes")
    on_panel = pp.harmonize_genes(her2st, genes)
    assert on_panel.var_names.tolist() == list(genes)
    assert on_panel.uns["storm_panel"]["coverage"] > 0.95
    dlpfc = real("dlpfc", "151673")
    union = list(dict.fromkeys([*dlpfc.var_names, *genes]))
    d = pp.harmonize_genes(dlpfc, union)
    assert d.uns["storm_panel"]["n_measured"] == dlpfc.n_vars
    assert d.n_vars == len(union)
    measured = d.var["measured"].to_numpy()
    np.testing.assert_array_equal(d.X[:, measured].sum(axis=0).A1, dlpfc[:, d.var_names[measured]].X.sum(axis=0).A1)
