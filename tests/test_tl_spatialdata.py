"""SpatialData as input of storm.tl.embed, domains and virtual_st: same results as the AnnData path, written back."""

from __future__ import annotations

import numpy as np
import pytest
from _data import TINY_NET, real

import storm

sd = pytest.importorskip("spatialdata")
from spatialdata.models import Image2DModel, ShapesModel, TableModel  # noqa: E402
from spatialdata.transformations import Identity, Scale, Sequence, Translation  # noqa: E402


@pytest.fixture(scope="module")
def c6():
    return real("her2st", "C6")


@pytest.fixture(scope="module")
def pixels(c6):
    return storm.io.LazyImage(c6.uns["spatial"]["C6"]["metadata"]["fullres_path"]).load()


@pytest.fixture(scope="module")
def tiny(c6):
    from storm.models import StormModel

    model = StormModel.setup(c6, n_top_genes=50, net=TINY_NET, random_state=0)
    head = storm.tl.train_expression_head(c6, n_top_genes=10, model=model, epochs=1, val_groups=(), progress=False)
    return model, head


def _sdata(adata, image, *, image_transform, spots_transform, with_table=True):
    """C6 as spatialdata-io lays a Visium/ST section out: circles + a table annotating them + the H&E image."""
    import geopandas as gpd
    from shapely import points

    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    circles = gpd.GeoDataFrame({"radius": np.full(len(xy), 50.0)}, geometry=points(xy), index=np.arange(len(xy)))
    elements = {
        "images": {
            "he": Image2DModel.parse(
                image.transpose(2, 0, 1), dims=("c", "y", "x"), transformations={"global": image_transform}
            )
        },
        "shapes": {"spots": ShapesModel.parse(circles, transformations={"global": spots_transform})},
    }
    if with_table:
        table = adata.copy()
        table.obs["region"] = "spots"
        table.obs["region"] = table.obs["region"].astype("category")
        table.obs["spot_id"] = np.arange(table.n_obs)
        elements["tables"] = {
            "table": TableModel.parse(table, region="spots", region_key="region", instance_key="spot_id")
        }
    return sd.SpatialData(**elements)


def test_embed_and_domains_on_a_spatialdata_match_the_anndata_bit_for_bit(c6, pixels, tiny):
    model, _ = tiny
    # both elements shifted and scaled alike in 'global': the image's pixels are the table's coordinates
    move = Sequence([Scale([0.5, 0.5], axes=("x", "y")), Translation([100.0, 40.0], axes=("x", "y"))])
    sdata = _sdata(c6, pixels, image_transform=move, spots_transform=move)
    ref = c6.copy()
    storm.tl.embed(ref, model, accelerator="cpu")
    storm.tl.embed(sdata, model, accelerator="cpu")
    table = sdata.tables["table"]
    assert ref.uns["X_storm"]["params"]["mode"] == table.uns["X_storm"]["params"]["mode"] == "joint"
    np.testing.assert_array_equal(table.obsm["X_storm"], ref.obsm["X_storm"])
    np.testing.assert_array_equal(table.obsm["X_storm_niche"], ref.obsm["X_storm_niche"])
    # the table's own slide record is untouched (the image element is not copied into it)
    assert table.uns["spatial"]["C6"]["images"]["hires"].shape == c6.uns["spatial"]["C6"]["images"]["hires"].shape

    storm.tl.domains(ref, n_domains=3)
    storm.tl.domains(sdata, n_domains=3)
    assert (table.obs["storm_domains"] == ref.obs["storm_domains"]).all()
    assert table.uns["storm_domains_colors"] == ref.uns["storm_domains_colors"]
    # copy=True leaves the SpatialData alone and returns the table with the results
    out = storm.tl.embed(sdata, model, accelerator="cpu", key_added="X_copy", copy=True)
    assert "X_copy" in out.obsm
    assert "X_copy" not in table.obsm


def test_the_transformation_places_the_image(c6, pixels):
    from storm.tl._spatialdata import table_view

    # the image at half resolution: 2 coordinate units per image pixel, shifted by 10 px
    half = pixels[::2, ::2]
    image_t = Sequence([Scale([2.0, 2.0], axes=("x", "y")), Translation([20.0, 0.0], axes=("x", "y"))])
    sdata = _sdata(c6, half, image_transform=image_t, spots_transform=Identity())
    work, key, info = table_view(sdata)
    assert key == "table"
    assert info["scalef"] == pytest.approx(0.5)
    np.testing.assert_allclose(work.obsm["spatial"], np.asarray(c6.obsm["spatial"]) - [20.0, 0.0])
    assert work.uns["spatial"]["C6"]["images"]["hires"].shape == half.shape
    assert "fullres_path" not in work.uns["spatial"]["C6"]["metadata"]
    # a rotation is refused with advice
    from spatialdata.transformations import Affine

    turn = Affine(np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), ("x", "y"), ("x", "y"))
    with pytest.raises(ValueError, match="uniform scale and a shift"):
        table_view(_sdata(c6, half, image_transform=turn, spots_transform=Identity()))


def test_virtual_st_on_a_spatialdata_adds_its_tiles(c6, pixels, tiny):
    model, head = tiny
    mpp = c6.uns["spatial"]["C6"]["scalefactors"]["microns_per_pixel"]
    sdata = _sdata(c6, pixels, image_transform=Identity(), spots_transform=Identity())
    tiles = storm.tl.virtual_st(sdata, head, model=model, accelerator="cpu", progress=False)
    ref = storm.tl.virtual_st(pixels, head, model=model, microns_per_pixel=mpp, library_id="C6", progress=False)
    np.testing.assert_array_equal(tiles.X, ref.X)
    assert list(tiles.obs_names) == list(ref.obs_names)
    assert sdata.tables["virtual_st"].n_obs == tiles.n_obs
    centres = sd.get_centroids(sdata.shapes["virtual_st_tiles"]).compute().to_numpy()
    np.testing.assert_allclose(centres, tiles.obsm["spatial"])
    with pytest.raises(ValueError, match="already has an element 'virtual_st'"):
        storm.tl.virtual_st(sdata, head, model=model, progress=False)


def test_bad_spatialdata(c6, pixels, tiny):
    model, _ = tiny
    no_table = _sdata(c6, pixels[:500, :500], image_transform=Identity(), spots_transform=Identity(), with_table=False)
    with pytest.raises(ValueError, match="no table"):
        storm.tl.embed(no_table, model)
    no_image = sd.SpatialData(tables={"table": c6.copy()})
    with pytest.raises(ValueError, match="no image element"):
        storm.tl.embed(no_image, model, mode="image")
    plain = c6.copy()
    del plain.uns["spatial"]
    with pytest.raises(ValueError, match=r"storm.pp.set_slide\(sdata.tables\['table'\]"):
        storm.tl.embed(sd.SpatialData(tables={"table": plain}), model)
