"""storm.pp.set_slide: a plain AnnData (counts + coordinates, no uns['spatial']) declared in one call, then embedded."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _data import real
from anndata import AnnData

import storm


def _plain(adata: AnnData) -> AnnData:
    """What a colleague's h5ad often is: counts and obsm['spatial'], no slide record."""
    obs = adata.obs.drop(columns=["library_id"])
    return AnnData(X=adata.X.copy(), obs=obs, var=adata.var.copy(), obsm={"spatial": adata.obsm["spatial"].copy()})


@pytest.fixture(scope="module")
def merfish():
    return real("merfish_preoptic")[:1500].copy()


def test_the_refused_anndata_names_set_slide_and_then_embeds_identically(merfish):
    model = storm.models.StormModel.from_pretrained()
    plain = _plain(merfish)
    with pytest.raises(ValueError, match=r"storm\.pp\.set_slide\(adata, platform="):
        storm.tl.embed(plain, model, mode="expression")
    assert "X_storm" not in plain.obsm
    storm.pp.set_slide(plain, platform="merfish", microns_per_pixel=1.0, library_id="merfish_mousePOA")
    entry = plain.uns["spatial"]["merfish_mousePOA"]
    assert entry["scalefactors"] == {"microns_per_pixel": 1.0}
    assert entry["metadata"]["platform"] == "merfish"
    assert plain.obs["library_id"].cat.categories.tolist() == ["merfish_mousePOA"]
    storm.tl.embed(plain, model, mode="expression")
    reference = storm.tl.embed(merfish, model, mode="expression", copy=True)
    np.testing.assert_array_equal(plain.obsm["X_storm"], reference.obsm["X_storm"])


def test_set_slide_with_an_image_file_cuts_the_same_patches():
    c2 = real("her2st", "C2")
    entry = c2.uns["spatial"]["C2"]
    plain = _plain(c2)
    declared = storm.pp.set_slide(
        plain,
        platform="st",
        microns_per_pixel=entry["scalefactors"]["microns_per_pixel"],
        library_id="C2",
        image=entry["metadata"]["fullres_path"],
        copy=True,
    )
    assert "spatial" not in plain.uns  # copy=True leaves the input alone
    meta = declared.uns["spatial"]["C2"]["metadata"]
    assert meta["fullres_path"] == entry["metadata"]["fullres_path"]
    assert "hires" in declared.uns["spatial"]["C2"]["images"]
    a = np.concatenate(list(storm.pp.extract_patches(c2, out_px=32)))
    b = np.concatenate(list(storm.pp.extract_patches(declared, out_px=32)))
    np.testing.assert_array_equal(a, b)
    thumb = entry["images"]["hires"]
    arr = storm.pp.set_slide(
        plain, platform="st", microns_per_pixel=0.7, image=thumb, image_scalef=entry["scalefactors"][
            "tissue_hires_scalef"], copy=True,
    )  # fmt: skip
    assert arr.uns["spatial"]["slide"]["images"]["hires"] is not None


def test_set_slide_bad_input_leaves_the_anndata_untouched(merfish, tmp_path):
    plain = _plain(merfish)
    before = (list(plain.obs.columns), list(plain.obsm), dict(plain.uns))
    with pytest.raises(ValueError, match="microns_per_pixel"):
        storm.pp.set_slide(plain, platform="merfish", microns_per_pixel=-1)
    with pytest.raises(ValueError, match="platform"):
        storm.pp.set_slide(plain, platform="", microns_per_pixel=1)
    with pytest.raises(ValueError, match="spatial_key"):
        storm.pp.set_slide(plain, platform="merfish", microns_per_pixel=1, spatial_key="X_umap")
    with pytest.raises(FileNotFoundError):
        storm.pp.set_slide(plain, platform="merfish", microns_per_pixel=1, image=tmp_path / "none.png")
    with pytest.raises(ValueError, match="outside"):  # µm coordinates over a 10-px image
        storm.pp.set_slide(plain, platform="merfish", microns_per_pixel=1, image=np.zeros((10, 10, 3), np.uint8))
    two = plain.copy()
    two.obs["library_id"] = pd.Categorical(np.where(np.arange(two.n_obs) % 2, "a", "b"))
    with pytest.raises(ValueError, match="not in"):
        storm.pp.set_slide(two, platform="merfish", microns_per_pixel=1, library_id="c")
    assert (list(plain.obs.columns), list(plain.obsm), dict(plain.uns)) == before
    # one slide of several: declared one by one
    storm.pp.set_slide(two, platform="merfish", microns_per_pixel=1, library_id="a")
    storm.pp.set_slide(two, platform="merfish", microns_per_pixel=1, library_id="b")
    assert set(two.uns["spatial"]) == {"a", "b"}
    assert storm.pp.spatial_windows(two).index.shape[0] == two.n_obs
