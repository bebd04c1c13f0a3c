"""storm.tl.embed with a duck-typed fake model: mode resolution, keys written, lists, errors leave adata as is."""

from __future__ import annotations

import sys
import types

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import storm


class FakeModel:
    """Stands in for storm.models.StormModel: records its calls, returns a deterministic embedding."""

    name = "fake-storm"
    version = "0.0.1"

    def __init__(self, dims=6, output=None):
        self.dims = dims
        self.output = output
        self.calls = []

    def embed(self, adata, *, mode, batch_size, accelerator, library_key):
        self.calls.append({"n_obs": adata.n_obs, "mode": mode, "batch_size": batch_size, "accelerator": accelerator})
        if self.output is not None:
            return self.output(adata)
        rng = np.random.default_rng(adata.n_obs)
        return rng.normal(size=(adata.n_obs, self.dims))


def spots(n=30, libraries=("A", "B"), images=True, genes=5):
    rng = np.random.default_rng(0)
    lib = pd.Categorical(np.resize(np.asarray(libraries), n), categories=list(libraries))
    obs = pd.DataFrame({"library_id": lib}, index=[f"s{i}" for i in range(n)])
    X = sparse.csr_matrix(rng.poisson(2.0, size=(n, genes)).astype(np.float32)) if genes else None
    var = pd.DataFrame(index=[f"G{i}" for i in range(genes)])
    adata = ad.AnnData(X=X, obs=obs, var=var, obsm={"spatial": rng.uniform(0, 100, size=(n, 2))})
    adata.uns["spatial"] = {
        lib_id: {
            "images": {"lowres": np.zeros((8, 8, 3), np.uint8)} if images else {},
            "scalefactors": {"tissue_lowres_scalef": 0.08, "spot_diameter_fullres": 10.0},
        }
        for lib_id in libraries
    }
    return adata


def test_embed_writes_obsm_and_params():
    adata = spots()
    model = FakeModel(dims=6)
    assert storm.tl.embed(adata, model, batch_size=16, accelerator="cpu") is None
    emb = adata.obsm["X_storm"]
    assert emb.shape == (30, 6)
    assert emb.dtype == np.float32
    params = adata.uns["X_storm"]["params"]
    assert params == {
        "mode": "joint",
        "model": "fake-storm",
        "version": "0.0.1",
        "batch_size": 16,
        "library_key": "library_id",
        "context": True,
        "panel": "model",
        "n_genes_appended": 0,
    }
    assert model.calls == [{"n_obs": 30, "mode": "joint", "batch_size": 16, "accelerator": "cpu"}]


@pytest.mark.parametrize(
    ("images", "genes", "expected"),
    [(True, 5, "joint"), (True, 0, "image"), (False, 5, "expression")],
)
def test_auto_mode_follows_what_the_data_holds(images, genes, expected):
    adata = spots(images=images, genes=genes)
    model = FakeModel()
    storm.tl.embed(adata, model, key_added="emb")
    assert adata.uns["emb"]["params"]["mode"] == expected
    assert model.calls[0]["mode"] == expected


def test_one_slide_without_image_falls_back_to_expression():
    adata = spots()
    adata.uns["spatial"]["B"]["images"] = {}
    storm.tl.embed(adata, FakeModel())
    assert adata.uns["X_storm"]["params"]["mode"] == "expression"


def test_a_fullres_path_counts_as_an_image():
    adata = spots(images=False)
    for lib in ("A", "B"):
        adata.uns["spatial"][lib]["metadata"] = {"fullres_path": "/somewhere/slide.tif"}
    storm.tl.embed(adata, FakeModel())
    assert adata.uns["X_storm"]["params"]["mode"] == "joint"


def test_a_list_is_embedded_one_by_one_with_one_model():
    one, two = spots(n=20), spots(n=12)
    model = FakeModel(dims=4)
    out = storm.tl.embed([one, two], model, copy=True)
    assert [a.obsm["X_storm"].shape for a in out] == [(20, 4), (12, 4)]
    assert [c["n_obs"] for c in model.calls] == [20, 12]
    assert "X_storm" not in one.obsm
    assert "X_storm" not in two.obsm


def test_copy_returns_a_new_object():
    adata = spots()
    out = storm.tl.embed(adata, FakeModel(), copy=True)
    assert out is not adata
    assert "X_storm" in out.obsm
    assert "X_storm" not in adata.obsm


@pytest.mark.parametrize(
    ("images", "mode", "expected", "resolved"),
    [
        (True, "auto", "fake-storm", "joint"),
        (False, "auto", "from_data", "expression"),
        (True, "expression", "from_data", "expression"),  # an image there, but not read
    ],
)
def test_model_none_is_storm_mini_with_an_image_and_from_data_without(monkeypatch, images, mode, expected, resolved):
    loaded, set_up = [], []

    class StormModel:
        @classmethod
        def from_pretrained(cls, name):
            loaded.append(name)
            return FakeModel()

    def from_data(adatas, *, n_top_genes, library_key):
        set_up.append(n_top_genes)
        ensemble = FakeModel()
        ensemble.name = "from_data"
        return ensemble

    fake = types.SimpleNamespace(StormModel=StormModel, from_data=from_data)
    monkeypatch.setitem(sys.modules, "storm.models", fake)
    adata = spots(images=images)
    storm.tl.embed(adata, mode=mode)
    assert loaded == [None]  # storm-mini decides the mode (is its image scale met?) in both cases
    assert set_up == ([] if expected == "fake-storm" else [3000])
    params = adata.uns["X_storm"]["params"]
    assert params["model"] == expected
    assert params["mode"] == resolved


def test_model_none_with_panel_data_stays_storm_mini(monkeypatch):
    monkeypatch.setattr("storm.tl._embed._reading_the_panel", lambda model, adatas, n: (model, ["G9"]))
    monkeypatch.setattr("storm.tl._embed._model_from_data", lambda *a: pytest.fail("from_data was built"))
    monkeypatch.setitem(
        sys.modules,
        "storm.models",
        types.SimpleNamespace(StormModel=types.SimpleNamespace(from_pretrained=lambda name: FakeModel())),
    )
    adata = spots(images=False)
    storm.tl.embed(adata, panel="data")
    assert adata.uns["X_storm"]["params"]["model"] == "fake-storm"


def _nan_output(adata):
    out = np.zeros((adata.n_obs, 3))
    out[2, 1] = np.nan
    return out


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "match"),
    [
        (lambda: spots(images=False), {"mode": "image"}, ValueError, "needs an H&E image.*'A'"),
        (lambda: spots(images=False), {"mode": "joint"}, ValueError, "needs an H&E image"),
        (lambda: spots(genes=0), {"mode": "expression"}, ValueError, "needs gene counts"),
        (lambda: spots(images=False, genes=0), {}, ValueError, "Nothing to embed"),
        (spots, {"mode": "rgb"}, ValueError, "`mode` must be one of"),
        (spots, {"batch_size": 0}, ValueError, "batch_size"),
        (spots, {"model": object()}, ValueError, "needs an `embed` method"),
        (spots, {"model": FakeModel(output=lambda a: np.zeros((a.n_obs - 1, 3)))}, RuntimeError, "shape"),
        (spots, {"model": FakeModel(output=_nan_output)}, RuntimeError, "NaN or infinite"),
    ],
)
def test_bad_input_raises_and_leaves_adata_unchanged(make, kwargs, error, match):
    adata = make()
    kwargs = {"model": FakeModel(), **kwargs}
    model = kwargs.pop("model")
    uns_before, obsm_before = sorted(adata.uns), sorted(adata.obsm)
    with pytest.raises(error, match=match):
        storm.tl.embed(adata, model, **kwargs)
    assert sorted(adata.uns) == uns_before
    assert sorted(adata.obsm) == obsm_before


def test_a_failing_element_of_a_list_leaves_the_others_unchanged():
    good, bad = spots(), spots(images=False)
    with pytest.raises(ValueError, match="H&E image"):
        storm.tl.embed([good, bad], FakeModel(), mode="joint")
    assert "X_storm" not in good.obsm


def test_not_an_anndata():
    with pytest.raises(ValueError, match="Expected an AnnData"):
        storm.tl.embed(np.zeros((3, 3)), FakeModel())


class NicheModel(FakeModel):
    """A fake with StormModel's ``niche`` option and ``config`` (patch size), for the niche and scale rules."""

    config = types.SimpleNamespace(size_um=55.0, patch_px=64, image="auto")

    def embed(self, adata, *, mode, batch_size, accelerator, library_key, niche=False):
        emb = super().embed(adata, mode=mode, batch_size=batch_size, accelerator=accelerator, library_key=library_key)
        return (emb, emb[::-1].copy()) if niche else emb


def test_the_niche_embedding_is_written_beside_the_centre_one():
    adata = spots(images=False)
    storm.tl.embed(adata, NicheModel(dims=4))
    assert adata.obsm["X_storm_niche"].shape == (30, 4)
    assert adata.obsm["X_storm_niche"].dtype == np.float32
    np.testing.assert_array_equal(adata.obsm["X_storm_niche"], adata.obsm["X_storm"][::-1])
    storm.tl.embed(adata, FakeModel(), key_added="plain")  # a model without the option: no niche written
    assert "plain_niche" not in adata.obsm


def test_auto_mode_skips_an_image_too_coarse_for_the_patches():
    # an 8-px image of a ~100-px-wide slide: a 55-µm patch would be a pixel or two, blown up to 64 px
    adata = spots()
    model = NicheModel()
    storm.tl.embed(adata, model)
    assert adata.uns["X_storm"]["params"]["mode"] == "expression"
    storm.tl.embed(adata, model, mode="joint")  # asked for explicitly: used anyway
    assert adata.uns["X_storm"]["params"]["mode"] == "joint"
