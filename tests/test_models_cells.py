"""storm-mini on single-cell platforms: k-NN windows in µm, gene panels mapped into the model's gene list."""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _data import real

import storm
from storm._logging import logger
from storm.models import StormModel, match_genes, panel_coverage

SIDE_UM = 500.0  # a corner of each section: a few hundred cells, enough for k = 24 windows


@pytest.fixture(scope="module")
def model():
    return StormModel.from_pretrained()


def _crop(adata, side_um=SIDE_UM):
    xy = adata.obsm["spatial"]
    lo = xy.min(axis=0)
    keep = ((xy - lo) < side_um).all(axis=1)
    return adata[keep].copy()


@pytest.fixture(scope="module")
def merfish():
    return _crop(real("merfish_preoptic"))


@pytest.fixture(scope="module")
def xenium():
    return _crop(real("xenium_breast"))


@pytest.fixture
def storm_log(caplog):
    logger.addHandler(caplog.handler)
    caplog.handler.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)


def test_match_genes_exact_first_then_ignoring_case():
    genes = ["GAD1", "ACTA2", "Foo", "FOO", "CD4"]
    renamed = match_genes(["Gad1", "ACTA2", "acta2", "foo", "Cd4", "cd4", "Unknown"], genes)
    # exact match kept; Gad1 → GAD1; 'acta2' cannot take ACTA2 (matched exactly); 'foo' is ambiguous (Foo/FOO);
    # 'Cd4' and 'cd4' both claim CD4: neither is renamed
    assert list(renamed) == ["GAD1", "ACTA2", "acta2", "foo", "Cd4", "cd4", "Unknown"]
    assert list(match_genes(["Gad1"], genes, ignore_case=False)) == ["Gad1"]
    cov = panel_coverage(["Gad1", "ACTA2", "Unknown", "x"], genes)
    assert cov == {
        "n_genes": 4,
        "n_model_genes": 5,
        "n_used": 2,
        "n_matched_ignoring_case": 1,
        "fraction_used": 0.5,
        "fraction_of_model": 0.4,
    }


def test_merfish_mouse_panel_runs_on_knn_windows_and_reports_coverage(model, merfish, storm_log):
    merfish = merfish.copy()
    storm.tl.embed(merfish, model)  # no H&E: auto is expression
    params = merfish.uns["X_storm"]["params"]
    assert params["mode"] == "expression"
    cov = params["gene_coverage"]
    assert cov["n_genes"] == merfish.n_vars
    assert 0 < cov["n_used"] < cov["n_genes"]  # a partial overlap: the rest is ignored
    assert cov["n_matched_ignoring_case"] == cov["n_used"]  # mouse symbols onto the human gene list
    assert f"{cov['n_used']} of the data's {cov['n_genes']} genes" in storm_log.text
    assert "matched ignoring letter case" in storm_log.text
    emb = merfish.obsm["X_storm"]
    assert emb.shape == (merfish.n_obs, model.dim)
    assert np.isfinite(emb).all()
    (slide,) = model.prepare(merfish, mode="expression")
    assert slide.window_size == model.config.k + 1  # k-NN windows of the centre and its 24 nearest cells
    assert slide.mask.all()


def test_partial_overlap_of_the_xenium_panel(model, xenium):
    cov = model.gene_coverage(xenium)
    assert cov["n_genes"] == xenium.n_vars
    assert 0 < cov["n_used"] < xenium.n_vars
    assert cov["n_matched_ignoring_case"] == 0
    # the crop carries a DAPI image: not an H&E, so auto embeds expression only
    out = storm.tl.embed(xenium, model, copy=True)
    assert out.uns["X_storm"]["params"]["mode"] == "expression"
    assert out.uns["X_storm"]["params"]["gene_coverage"]["n_used"] == cov["n_used"]
    with pytest.raises(ValueError, match="needs an H&E image"):
        model.embed(xenium, mode="joint", progress=False)


def test_a_panel_with_no_gene_of_the_model_is_refused(model, merfish):
    other = merfish.copy()
    other.var_names = [f"probe{i}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match=r"No gene overlaps.*even ignoring letter case.*gene symbols.*pretrain"):
        model.embed(other, mode="expression", progress=False)
    with pytest.raises(ValueError, match="No gene overlaps"):
        storm.tl.embed(other, model)
    assert "X_storm" not in other.obsm


def test_offsets_are_microns_whatever_the_pixel_size(model, merfish):
    """Coordinates in pixels of 0.5 µm with microns_per_pixel = 0.5 give the embedding of µm coordinates."""
    lib = merfish.obs["library_id"].iloc[0]
    pixels = merfish.copy()
    pixels.obsm["spatial"] = merfish.obsm["spatial"] * 2
    pixels.uns["spatial"][lib]["scalefactors"]["microns_per_pixel"] = 0.5
    ref = model.embed(merfish, progress=False)
    np.testing.assert_allclose(model.embed(pixels, progress=False), ref, rtol=1e-4, atol=1e-5)
    (slide,) = model.prepare(merfish, mode="expression")
    xy = merfish.obsm["spatial"]
    np.testing.assert_allclose(slide.offsets_um[:, 1], xy[slide.index[:, 1]] - xy, rtol=1e-5, atol=1e-4)
    no_scale = merfish.copy()
    del no_scale.uns["spatial"][lib]["scalefactors"]["microns_per_pixel"]
    with pytest.raises(ValueError, match=r"No physical scale.*microns_per_pixel.*1\.0"):
        model.embed(no_scale, progress=False)


def test_knn_windows_never_cross_slides(model, merfish):
    """Two slides at the same coordinates: each cell's window stays on its slide, so each embeds as if alone."""
    lib = merfish.obs["library_id"].iloc[0]
    a = merfish.copy()
    b = merfish[::-1].copy()  # another order, same positions
    b.obs_names = [f"{n}-b" for n in b.obs_names]
    b.obs["library_id"] = pd.Categorical(["copy"] * b.n_obs)
    b.uns["spatial"] = {"copy": b.uns["spatial"][lib]}
    both = ad.concat([a, b], uns_merge="unique")
    both.obs["library_id"] = both.obs["library_id"].astype("category")
    emb = model.embed(both, progress=False)
    alone = model.embed(merfish, progress=False)
    np.testing.assert_allclose(emb[: a.n_obs], alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(emb[a.n_obs :], alone[::-1], rtol=1e-4, atol=1e-5)
    for slide in model.prepare(both, mode="expression"):
        rows = slide.obs_rows[slide.index[slide.mask]]
        assert (both.obs["library_id"].to_numpy()[rows] == slide.library_id).all()


def test_no_context_embeds_each_cell_alone(model, merfish):
    emb = model.embed(merfish, context=False, progress=False)
    alone = model.embed(merfish[:50].copy(), context=False, progress=False)
    np.testing.assert_allclose(emb[:50], alone, rtol=1e-4, atol=1e-5)  # no neighbour matters
    out = storm.tl.embed(merfish, model, context=False, copy=True)
    assert out.uns["X_storm"]["params"]["context"] is False
    np.testing.assert_allclose(out.obsm["X_storm"], emb, rtol=1e-5, atol=1e-6)
