"""storm.tl.domain_markers: planted markers are found, the table is tidy, adata is not modified; DLPFC white matter."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _data import real
from scipy import sparse

import storm
from storm.tl._markers import COLUMNS


def planted(n_per_group=40, n_genes=30, seed=0):
    """Counts where gene ``M<k>`` is 8× higher in group ``k`` (k = 0, 1, 2); the other genes are noise."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(["a", "b", "c"], n_per_group)
    rate = np.full((len(groups), n_genes), 2.0)
    for k, g in enumerate("abc"):
        rate[groups == g, k] = 16.0
    X = sparse.csr_matrix(rng.poisson(rate).astype(np.float32))
    obs = pd.DataFrame(
        {"dom": pd.Categorical(groups, categories=["c", "b", "a"])}, index=[f"s{i}" for i in range(len(groups))]
    )
    var = pd.DataFrame(index=[f"M{k}" for k in range(3)] + [f"N{i}" for i in range(n_genes - 3)])
    return ad.AnnData(X=X, obs=obs, var=var)


def test_planted_markers_come_first_in_a_tidy_table():
    adata = planted()
    table = storm.tl.domain_markers(adata, groupby="dom")
    assert list(table.columns) == COLUMNS
    assert list(table["domain"].cat.categories) == ["c", "b", "a"]  # the user's category order
    top = table[table["rank"] == 1].set_index("domain")["gene"]
    assert top.to_dict() == {"c": "M2", "b": "M1", "a": "M0"}
    assert (table["pval_adj"] < 0.05).all()
    assert (table["logfoldchange"] >= 0.25).all()
    row = table[(table["domain"] == "a") & (table["gene"] == "M0")].iloc[0]
    assert row["pct_in"] == pytest.approx(1.0)
    assert 0 < row["pct_out"] <= 1
    assert row["logfoldchange"] > 2  # 8× up: log2 fold change near 3
    assert table.attrs["background"] == tuple(adata.var_names)
    assert table.attrs["groupby"] == "dom"


def test_nothing_is_written_without_key_added():
    adata = planted()
    before = (sorted(adata.uns), sorted(adata.layers), adata.X.copy())
    storm.tl.domain_markers(adata, groupby="dom")
    assert (sorted(adata.uns), sorted(adata.layers)) == before[:2]
    assert (before[2] != adata.X).nnz == 0


def test_key_added_stores_the_scanpy_record():
    adata = planted()
    storm.tl.domain_markers(adata, groupby="dom", key_added="dom_markers")
    record = adata.uns["dom_markers"]
    assert record["params"]["groupby"] == "dom"
    assert record["params"]["method"] == "wilcoxon"
    assert record["params"]["corr_method"] == "benjamini-hochberg"
    assert record["params"]["layer"] is None  # the log-normalised values were computed on the fly, not stored


def test_an_existing_layer_is_used_and_n_genes_caps_each_domain():
    adata = planted()
    storm.pp.normalize(adata)
    table = storm.tl.domain_markers(adata, groupby="dom", n_genes=1, pval_cutoff=1.0, logfc_min=-10)
    assert table.groupby("domain", observed=True).size().tolist() == [1, 1, 1]


def test_unlabelled_spots_and_singleton_groups_are_left_out():
    adata = planted()
    dom = adata.obs["dom"].astype(str).to_numpy(dtype=object)
    dom[:5] = None
    dom[5] = "lonely"
    adata.obs["dom"] = pd.Categorical(dom)
    table = storm.tl.domain_markers(adata, groupby="dom")
    assert set(table["domain"].cat.categories) == {"a", "b", "c"}


def test_the_t_test_works_too():
    table = storm.tl.domain_markers(planted(), groupby="dom", method="t-test")
    assert table[table["rank"] == 1].set_index("domain")["gene"]["a"] == "M0"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"groupby": "nope"}, r"No `adata.obs\['nope'\]`.*storm.tl.domains"),
        ({"groupby": "dom", "layer": "scaled"}, "No layer 'scaled'"),
        ({"groupby": "dom", "method": "logreg"}, "`method` must be one of"),
        ({"groupby": "dom", "n_genes": 0}, "n_genes"),
        ({"groupby": "dom", "pval_cutoff": 0}, "pval_cutoff"),
        ({"groupby": "one"}, "at least 2"),
    ],
)
def test_bad_input_raises(kwargs, match):
    adata = planted()
    adata.obs["one"] = pd.Categorical(["x"] * adata.n_obs)
    with pytest.raises(ValueError, match=match):
        storm.tl.domain_markers(adata, **kwargs)


def test_negative_counts_are_refused_when_normalising_on_the_fly():
    adata = planted()
    adata.X = adata.X.toarray() - 5
    with pytest.raises(ValueError, match="negative"):
        storm.tl.domain_markers(adata, groupby="dom")


@pytest.fixture(scope="module")
def dlpfc_markers():
    adata = real("dlpfc", "151673")
    return adata, storm.tl.domain_markers(adata, groupby="layer")


@pytest.mark.slow  # loads a real section (~5 s) and tests 5,000 genes over 3,600 spots (~5 s)
def test_mobp_marks_dlpfc_white_matter(dlpfc_markers):
    adata, table = dlpfc_markers
    wm = table[table["domain"] == "WM"].set_index("gene")
    assert wm.loc["MOBP", "rank"] <= 10
    assert wm.loc["MOBP", "pct_in"] > 0.9
    assert wm.loc["MOBP", "pct_out"] < 0.5
    l5 = table[table["domain"] == "L5"].set_index("gene")
    assert l5.loc["PCP4", "rank"] <= 10  # Maynard et al. 2021's layer-5 marker
    assert "lognorm" not in adata.layers  # normalised on the fly, nothing stored


@pytest.mark.slow
def test_white_matter_markers_are_enriched_for_oligodendrocyte_genes(dlpfc_markers):
    _, table = dlpfc_markers
    enriched = storm.tl.enrichment(table, gene_sets="celltype")
    wm = enriched[enriched["domain"] == "WM"]
    assert wm.iloc[0]["gene_set"] == "Oligodendrocyte"
    assert wm.iloc[0]["fdr"] < 1e-6
    assert wm.iloc[0]["n_background"] == 5000
