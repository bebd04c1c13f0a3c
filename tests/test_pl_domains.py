"""storm.pl.domains / embedding / domain_markers: low-dpi smoke tests that return and save figures."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import sparse

import storm

DPI = 20


def slide(lib, seed, n_side=8, n_genes=12):
    """A square grid of spots over a small grey image: two bands (top/bottom) with a planted marker gene each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n_side, 0:n_side]
    xy = np.column_stack([xx.ravel(), yy.ravel()]).astype(np.float64) * 100 + 50
    band = np.where(yy.ravel() < n_side // 2, "top", "bottom")
    rate = np.full((len(band), n_genes), 3.0)
    rate[band == "top", 0] = 20.0
    rate[band == "bottom", 1] = 20.0
    counts = sparse.csr_matrix(rng.poisson(rate).astype(np.float32))
    emb = np.where(band[:, None] == "top", 5.0, -5.0) + rng.normal(size=(len(band), 4))
    obs = pd.DataFrame(
        {"band": pd.Categorical(band, categories=["top", "bottom"]), "library_id": lib},
        index=[f"{lib}-{i}" for i in range(len(band))],
    )
    adata = ad.AnnData(
        X=counts,
        obs=obs,
        var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]),
        obsm={"spatial": xy, "X_storm": emb, "X_storm_niche": emb},
    )
    adata.uns["spatial"] = {
        lib: {
            "images": {"lowres": np.full((80, 80, 3), 200, np.uint8)},
            "scalefactors": {"tissue_lowres_scalef": 0.1, "tissue_hires_scalef": 0.2, "spot_diameter_fullres": 60.0},
        }
    }
    return adata


@pytest.fixture
def two_slides():
    both = ad.concat([slide("A", 0), slide("B", 1)], uns_merge="unique")
    both.obs["library_id"] = pd.Categorical(both.obs["library_id"], categories=["A", "B"])
    storm.tl.domains(both, 2)
    return both


def test_domains_beside_the_ground_truth_on_two_slides(two_slides, tmp_path):
    path = tmp_path / "domains.png"
    fig = storm.pl.domains(two_slides, groundtruth="band", show=False, save=path, dpi=DPI)
    assert isinstance(fig, Figure)
    assert path.stat().st_size > 0
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["A: band", "A: storm_domains", "B: band", "B: storm_domains"]
    # the domains are drawn with the palette storm.tl.domains stored
    assert two_slides.uns["storm_domains_colors"] == storm.tl._domains.palette(2)


def test_domains_of_one_slide_without_image(two_slides):
    one = two_slides[two_slides.obs["library_id"] == "A"].copy()
    fig = storm.pl.domains(one, img=False, show=False, dpi=DPI)
    assert isinstance(fig, Figure)


def test_domains_needs_the_key(two_slides):
    with pytest.raises(ValueError, match=r"No `adata.obs\['clusters'\]`.*storm.tl.domains"):
        storm.pl.domains(two_slides, "clusters", show=False)
    with pytest.raises(ValueError, match=r"No `adata.obs\['truth'\]`"):
        storm.pl.domains(two_slides, groundtruth="truth", show=False)


@pytest.mark.parametrize("kind", ["dotplot", "heatmap"])
def test_domain_markers_plots(two_slides, kind, tmp_path):
    path = tmp_path / f"{kind}.png"
    layers_before = sorted(two_slides.layers)
    fig = storm.pl.domain_markers(two_slides, groupby="band", n_genes=2, kind=kind, show=False, save=path, dpi=DPI)
    assert isinstance(fig, Figure)
    assert path.stat().st_size > 0
    assert sorted(two_slides.layers) == layers_before


def test_domain_markers_plot_takes_a_precomputed_table(two_slides):
    table = storm.tl.domain_markers(two_slides, groupby="band")
    fig = storm.pl.domain_markers(two_slides, table, groupby="band", n_genes=1, show=False)
    assert isinstance(fig, Figure)
    with pytest.raises(ValueError, match="`kind` must be one of"):
        storm.pl.domain_markers(two_slides, table, groupby="band", kind="violin", show=False)


@pytest.mark.slow  # the first UMAP of a process compiles numba code (~15 s)
def test_embedding_umap_is_stored_under_its_own_key_and_reused(two_slides, tmp_path, monkeypatch):
    fig = storm.pl.embedding(two_slides, show=False, save=tmp_path / "umap.png", dpi=DPI)
    assert isinstance(fig, Figure)
    assert two_slides.obsm["X_umap_storm"].shape == (two_slides.n_obs, 2)
    assert two_slides.uns["umap_storm"]["params"] == {"use_rep": "X_storm", "n_neighbors": 15, "random_state": 0}
    assert "X_umap" not in two_slides.obsm
    assert sorted(two_slides.obsp) == []

    def fail(*args, **kwargs):
        raise AssertionError("the stored UMAP should have been reused")

    monkeypatch.setattr(storm.pl._embedding, "_umap", fail)
    fig = storm.pl.embedding(two_slides, color="band", show=False, dpi=DPI)
    assert isinstance(fig, Figure)


def test_embedding_errors(two_slides):
    with pytest.raises(ValueError, match=r"obsm\['X_other'\]"):
        storm.pl.embedding(two_slides, use_rep="X_other", show=False)
    with pytest.raises(ValueError, match="neither columns"):
        storm.pl.embedding(two_slides, color="nope", show=False)
