"""How much of the model's gene list the data must cover to be embedded (issue 17, fault 6), with storm-mini."""

from __future__ import annotations

import numpy as np
import pytest
from _data import real

import storm
from storm.models import StormModel
from storm.models._coverage import MIN_GENE_COVERAGE, WARN_GENE_COVERAGE


@pytest.fixture(scope="module")
def model():
    return StormModel.from_pretrained()


def _on_model_genes(adata, model, n):
    """The first ``n`` genes of ``adata`` that the model reads (matched ignoring case: the fixture is mouse)."""
    wanted = {g.upper() for g in model.genes}
    return adata[:, [g for g in adata.var_names if g.upper() in wanted][:n]].copy()


def _assert_nothing_written(adata):
    assert "X_storm" not in adata.obsm
    assert "X_storm" not in adata.uns


@pytest.mark.parametrize("where", ["everywhere", "on_the_model_genes"])
def test_all_zero_counts_are_refused_not_embedded(model, where):
    adata = real("visium_fixture")
    if where == "everywhere":
        adata.X = adata.X * 0
        match = r"adata\.X is all zero: there is no expression to embed\. Pass the raw counts"
    else:
        read = np.isin(adata.var_names.str.upper(), [g.upper() for g in model.genes])
        adata.X = adata.X.multiply(~read[None, :]).tocsr()
        match = r"adata\.X has no count on any of the 328 genes the model reads"
    with pytest.raises(ValueError, match=match):
        storm.tl.embed(adata, model, mode="expression")
    _assert_nothing_written(adata)


def test_a_handful_of_the_model_genes_is_refused_unless_min_gene_coverage_allows_it(model, storm_log):
    adata = _on_model_genes(real("visium_fixture"), model, 3)
    match = r"3 of the model's 1,974 genes \(0\.15%\), below min_gene_coverage = 1\.00%.*storm\.train\.adapt"
    with pytest.raises(ValueError, match=match):
        storm.tl.embed(adata, model, mode="expression")
    _assert_nothing_written(adata)
    with pytest.raises(ValueError, match=r"min_gene_coverage` must lie in \[0, 1\]"):
        storm.tl.embed(adata, model, mode="expression", min_gene_coverage=5)
    storm.tl.embed(adata, model, mode="expression", min_gene_coverage=0)
    assert "3 of the model's 1,974 genes (0.2%, below 10%)" in storm_log.text
    params = adata.uns["X_storm"]["params"]
    assert params["min_gene_coverage"] == 0.0
    assert params["warn_gene_coverage"] == WARN_GENE_COVERAGE
    assert params["gene_coverage"]["n_used"] == 3
    assert params["gene_coverage"]["fraction_of_model"] == pytest.approx(3 / 1974)


def test_low_coverage_is_embedded_with_a_warning_and_the_threshold_recorded(model, storm_log):
    adata = _on_model_genes(real("visium_fixture"), model, 100)  # 5 % of the model's genes
    storm.tl.embed(adata, model, mode="expression")
    assert "100 of the model's 1,974 genes (5.1%, below 10%)" in storm_log.text
    params = adata.uns["X_storm"]["params"]
    assert params["min_gene_coverage"] == MIN_GENE_COVERAGE
    assert params["gene_coverage"]["fraction_of_model"] == pytest.approx(100 / 1974)


def test_the_fixture_is_embedded_without_a_coverage_warning(model, storm_log):
    adata = real("visium_fixture")  # 328 genes: 17 %
    storm.tl.embed(adata, model, mode="expression")
    assert "of the model's 1,974 genes" not in storm_log.text
    assert adata.uns["X_storm"]["params"]["gene_coverage"]["fraction_of_model"] > WARN_GENE_COVERAGE


@pytest.mark.parametrize("name", ["merfish_preoptic", "xenium_breast", "cosmx_nsclc"])
def test_the_cross_platform_data_sets_clear_the_refusal_threshold(model, name):
    # fig. 4 embeds these zero-shot with storm-mini before adapting it: the threshold must let them through
    coverage = model.gene_coverage(real(name))
    assert coverage["fraction_of_model"] >= 1.5 * MIN_GENE_COVERAGE


@pytest.mark.parametrize(("name", "args"), [("dlpfc", ("151673",)), ("her2st", ("C2",))])
def test_the_spot_sections_are_above_the_warning_threshold(model, name, args):
    assert model.gene_coverage(real(name, *args))["fraction_of_model"] > WARN_GENE_COVERAGE
