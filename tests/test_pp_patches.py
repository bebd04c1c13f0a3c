import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _data import real
from PIL import Image
from scipy import sparse

import storm.pp as pp
from storm.io._image import LazyImage

RED = (255, 0, 0)


def slide(
    xy,
    *,
    lib="A",
    platform="visium",
    scalefactors=None,
    images=None,
    fullres_path=None,
    array_rc=None,
) -> ad.AnnData:
    xy = np.asarray(xy, dtype=np.float64)
    n = len(xy)
    obs = pd.DataFrame({"library_id": pd.Categorical([lib] * n)}, index=[f"{lib}-{i}" for i in range(n)])
    if array_rc is not None:
        obs["array_row"], obs["array_col"] = np.asarray(array_rc).T
    adata = ad.AnnData(X=sparse.csr_matrix((n, 2), dtype=np.float32), obs=obs, var=pd.DataFrame(index=["G1", "G2"]))
    adata.obsm["spatial"] = xy
    meta = {"platform": platform}
    if fullres_path is not None:
        meta["fullres_path"] = str(fullres_path)
    adata.uns["spatial"] = {lib: {"images": images or {}, "scalefactors": scalefactors or {}, "metadata": meta}}
    return adata


def concat(*adatas):
    out = ad.concat(adatas, join="outer", merge="same", uns_merge="unique")
    out.obs["library_id"] = out.obs["library_id"].astype("category")
    return out


def redness(patch):
    p = patch.astype(float)
    return np.clip(p[..., 0] - p[..., 1], 0, None)


def centroid(weights):
    ys, xs = np.indices(weights.shape)
    total = weights.sum()
    assert total > 0, "marker not found in the patch"
    return (xs * weights).sum() / total, (ys * weights).sum() / total


def all_patches(adata, **kwargs):
    return np.concatenate(list(pp.extract_patches(adata, **kwargs)))


def disc(img, x, y, r, colour=RED):
    """Paint a disc centred on pixel (x, y) (so on continuous position x + 0.5, y + 0.5)."""
    yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
    img[(xx - x) ** 2 + (yy - y) ** 2 <= r * r] = colour


# --- DLPFC-like: Visium, only a low-resolution image --------------------------------------------------------------


def lowres_visium(markers=()):
    """Visium slide: 0.5 µm per full-res px, a 600-px lowres image at scalef 0.05 (5.5 lowres px per 55 µm)."""
    scalef = 0.05
    img = np.full((600, 600, 3), 230, dtype=np.uint8)
    for x, y in markers:
        img[y, x] = RED
    # spot centres on full-res pixels that land on whole lowres pixels (20 full-res px = 1 lowres px)
    xy = np.array([[300, 300], [200, 410], [450, 120]]) * 20.0
    sf = {"spot_diameter_fullres": 130.0, "tissue_lowres_scalef": scalef}  # 65 µm / 130 px = 0.5 µm/px
    return slide(xy, scalefactors=sf, images={"lowres": img})


def test_lowres_patch_is_centred_on_its_spot():
    adata = lowres_visium(markers=[(200, 410)])  # a red pixel at spot 1
    scale = pp.patch_scale(adata)
    assert scale.loc["A", "image"] == "lowres"
    assert scale.loc["A", "microns_per_pixel"] == pytest.approx(0.5)
    assert scale.loc["A", "mpp_source"] == "spot_diameter_fullres"
    assert scale.loc["A", "crop_px"] == pytest.approx(5.5)
    patches = all_patches(adata)
    assert patches.shape == (3, 224, 224, 3)
    assert patches.dtype == np.uint8
    cx, cy = centroid(redness(patches[1]))
    assert cx == pytest.approx(111.5, abs=1.0)
    assert cy == pytest.approx(111.5, abs=1.0)
    assert redness(patches[0]).sum() == 0  # other spots do not see it


def test_lowres_patch_has_the_physical_size():
    # two red pixels 400 µm apart (40 lowres px) around spot 0; a 500 µm patch shows them 400/500 of its width apart
    adata = lowres_visium(markers=[(280, 300), (320, 300)])
    patch = all_patches(adata, size_um=500.0)[0]
    red = redness(patch)
    left, right = centroid(red[:, :112]), centroid(red[:, 112:])
    assert right[0] + 112 - left[0] == pytest.approx(400 / 500 * 224, abs=2.0)
    assert left[1] == pytest.approx(111.5, abs=1.0)


# --- HER2ST-like: legacy ST, a full-resolution file, scale fitted from the 200 µm pitch ---------------------------


MPP_ST = 0.8  # µm per full-res px → 250 px per 200 µm spot pitch


def st_fullres(tmp_path, markers=(), *, lib="C2", shape=(2400, 2600), fill=230, ext="png"):
    img = np.full((*shape, 3), fill, dtype=np.uint8)
    for x, y, r in markers:
        disc(img, x, y, r)
    path = tmp_path / f"{lib}.{ext}"
    Image.fromarray(img).save(path)
    rows, cols = np.meshgrid(np.arange(8), np.arange(9), indexing="ij")
    rc = np.column_stack([rows.ravel(), cols.ravel()])
    xy = np.column_stack([200 + rc[:, 1] * 250.0, 150 + rc[:, 0] * 250.0])
    adata = slide(xy, lib=lib, platform="st", fullres_path=path, array_rc=rc)
    return adata, xy


def test_fullres_patch_is_centred_and_sized(tmp_path):
    # spot (row 3, col 4) sits at (1200, 900): a marker on it; spot (row 2, col 4) at (1200, 650): two markers 20 µm
    # (25 px) left and right of it and 16 µm (20 px) below it
    adata, xy = st_fullres(tmp_path, markers=[(1200, 900, 3), (1175, 670, 3), (1225, 670, 3)])
    i = int(np.flatnonzero((xy[:, 0] == 1200) & (xy[:, 1] == 900))[0])
    j = int(np.flatnonzero((xy[:, 0] == 1200) & (xy[:, 1] == 650))[0])
    scale = pp.patch_scale(adata)
    assert scale.loc["C2", "image"] == "fullres"
    assert scale.loc["C2", "mpp_source"] == "st_pitch_fit"
    assert scale.loc["C2", "microns_per_pixel"] == pytest.approx(MPP_ST, rel=1e-9)
    patches = all_patches(adata)
    cx, cy = centroid(redness(patches[i]))
    assert (cx, cy) == (pytest.approx(111.5, abs=0.5), pytest.approx(111.5, abs=0.5))
    red = redness(patches[j])
    left, right = centroid(red[:, :112]), centroid(red[:, 112:])
    assert right[0] + 112 - left[0] == pytest.approx(40 / 55 * 224, abs=1.0)  # 40 µm apart in a 55 µm patch
    assert left[1] == pytest.approx(111.5 + 16 / 55 * 224, abs=1.0)
    assert right[1] == pytest.approx(left[1], abs=0.5)


def test_microns_per_pixel_overrides_the_fit(tmp_path):
    adata, _ = st_fullres(tmp_path)
    adata.uns["spatial"]["C2"]["scalefactors"]["microns_per_pixel"] = 0.9  # the grid fits 0.8: within tolerance
    scale = pp.patch_scale(adata, size_um=100.0)
    assert scale.loc["C2", "mpp_source"] == "microns_per_pixel"
    assert scale.loc["C2", "crop_px"] == pytest.approx(100 / 0.9)
    adata.uns["spatial"]["C2"]["scalefactors"]["microns_per_pixel"] = 0.4  # half the grid's: a contradiction
    with pytest.raises(ValueError, match=r"is 250\.0 px, but .* say 500\.0 px .*which no scale factor .* explains"):
        pp.patch_scale(adata, size_um=100.0)


def test_st_pitch_fit_is_rotation_invariant():
    rows, cols = np.meshgrid(np.arange(6), np.arange(7), indexing="ij")
    rc = np.column_stack([rows.ravel(), cols.ravel()])
    theta = np.deg2rad(3.0)
    rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    xy = (rc[:, ::-1] * 200.0 / 0.73) @ rot.T + 500
    sf = {"tissue_hires_scalef": 0.1}
    adata = slide(xy, platform="st", array_rc=rc, scalefactors=sf, images={"hires": np.zeros((800, 800, 3), np.uint8)})
    assert pp.patch_scale(adata).loc["A", "microns_per_pixel"] == pytest.approx(0.73, rel=1e-6)


def test_visium_pitch_fit_beats_spot_diameter():
    # Space Ranger's spot_diameter_fullres is not 55 µm: with array coordinates the 100 µm pitch decides
    rr, cc = np.meshgrid(np.arange(6), np.arange(12), indexing="ij")
    keep = ((rr + cc) % 2 == 0).ravel()
    rc = np.column_stack([rr.ravel()[keep], cc.ravel()[keep]])
    mpp = 0.7245
    xy = np.column_stack([rc[:, 1] * 50.0, rc[:, 0] * 50.0 * np.sqrt(3)]) / mpp + 300
    sf = {"spot_diameter_fullres": 96.4, "tissue_hires_scalef": 0.2}
    img = np.zeros((400, 400, 3), np.uint8)
    adata = slide(xy, array_rc=rc, scalefactors=sf, images={"hires": img})
    scale = pp.patch_scale(adata)
    assert scale.loc["A", "mpp_source"] == "visium_pitch_fit"
    assert scale.loc["A", "microns_per_pixel"] == pytest.approx(mpp, rel=1e-9)
    assert scale.loc["A", "crop_px"] == pytest.approx(55 / mpp * 0.2)


def test_border_patches_are_padded_white():
    img = np.full((400, 400, 3), 100, dtype=np.uint8)
    sf = {"microns_per_pixel": 1.0, "tissue_hires_scalef": 1.0}
    adata = slide([[0, 0], [399, 399], [200, 200]], scalefactors=sf, images={"hires": img})
    p = all_patches(adata, size_um=100.0)
    assert (p[0, :100, :100] == 255).all()  # above and left of the corner: padding
    assert (p[0, 120:, 120:] == 100).all()  # inside the image
    assert (p[0, :100, 120:] == 255).all()
    assert (p[1, 120:, 120:] == 255).all()
    assert (p[1, :100, :100] == 100).all()
    assert (p[2] == 100).all()  # interior: no padding


def test_spots_outside_the_image_raise(tmp_path):
    adata = lowres_visium()
    adata.uns["spatial"]["A"]["scalefactors"]["tissue_lowres_scalef"] = 0.5  # 10× too large: spots off the image
    before = adata.copy()
    with pytest.raises(ValueError, match=r"3 of 3 spots of slide 'A' lie outside its lowres image \(600 × 600"):
        pp.extract_patches(adata)  # raises on the call, before any iteration
    assert pp.patch_scale(adata).loc["A", "n_outside"] == 3  # the report shows it instead of raising
    assert adata.uns["spatial"]["A"]["scalefactors"] == before.uns["spatial"]["A"]["scalefactors"]
    np.testing.assert_array_equal(adata.obsm["spatial"], before.obsm["spatial"])


def test_batches_stream_in_obs_order():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(300, 300, 3), dtype=np.uint8)
    xy = rng.uniform(0, 299, size=(70, 2))  # 18 µm apart: no spot grid, so no grid platform
    sf = {"microns_per_pixel": 1.0, "tissue_hires_scalef": 1.0}
    adata = slide(xy, platform=None, scalefactors=sf, images={"hires": img})
    batches = list(pp.extract_patches(adata, size_um=20, out_px=16, batch_size=32))
    assert [len(b) for b in batches] == [32, 32, 6]
    one = all_patches(adata, size_um=20, out_px=16, batch_size=1000)
    np.testing.assert_array_equal(np.concatenate(batches), one)
    # each patch is that of its own spot: compare with a single-spot AnnData
    for i in (0, 33, 69):
        single = all_patches(adata[[i]].copy(), size_um=20, out_px=16)
        np.testing.assert_array_equal(single[0], one[i])


def test_several_slides_decode_each_image_once(tmp_path, monkeypatch):
    a, _ = st_fullres(tmp_path, lib="C2", fill=50)
    b, _ = st_fullres(tmp_path, lib="C3", fill=200)
    adata = concat(a, b)
    order = np.ravel(np.column_stack([np.arange(a.n_obs), a.n_obs + np.arange(b.n_obs)]))  # interleave the slides
    adata = adata[order].copy()
    loads = []
    original = LazyImage.load

    def counting_load(self):
        if not self.decoded:
            loads.append(self.path.name)
        return original(self)

    monkeypatch.setattr(LazyImage, "load", counting_load)
    patches = all_patches(adata, out_px=8, batch_size=5)
    assert sorted(loads) == ["C2.png", "C3.png"]
    lib = adata.obs["library_id"].to_numpy()
    assert (patches[lib == "C2"] == 50).all()
    assert (patches[lib == "C3"] == 200).all()
    only = all_patches(adata, out_px=8, library_id="C3")
    assert len(only) == b.n_obs
    assert (only == 200).all()
    table = pp.patch_scale(adata)
    assert list(table.index) == ["C2", "C3"]
    assert (table["n_spots"] == 72).all()


def test_image_choice():
    hires = np.full((1000, 1000, 3), 10, dtype=np.uint8)
    lowres = np.full((300, 300, 3), 20, dtype=np.uint8)
    sf = {"microns_per_pixel": 1.0, "tissue_hires_scalef": 0.5, "tissue_lowres_scalef": 0.15}
    adata = slide([[1000, 1000]], scalefactors=sf, images={"hires": hires, "lowres": lowres})
    assert (all_patches(adata, out_px=8) == 10).all()  # auto: hires before lowres
    assert (all_patches(adata, out_px=8, image="lowres") == 20).all()
    assert pp.patch_scale(adata, image="lowres").loc["A", "crop_px"] == pytest.approx(55 * 0.15)
    with pytest.raises(ValueError, match="no full-resolution image"):
        pp.extract_patches(adata, image="fullres")
    with pytest.raises(ValueError, match="`image` must be one of"):
        pp.extract_patches(adata, image="thumbnail")


def test_float_images_are_read_as_0_to_1():
    img = np.full((200, 200, 3), 0.5, dtype=np.float32)  # scanpy.read_visium stores PNGs as floats in [0, 1]
    sf = {"microns_per_pixel": 1.0, "tissue_hires_scalef": 1.0}
    adata = slide([[100, 100]], scalefactors=sf, images={"hires": img})
    assert (all_patches(adata, out_px=8) == 128).all()


def test_missing_fullres_file_raises(tmp_path):
    adata, _ = st_fullres(tmp_path)
    adata.uns["spatial"]["C2"]["metadata"]["fullres_path"] = str(tmp_path / "gone.jpg")
    with pytest.raises(FileNotFoundError, match="image='hires'"):
        pp.extract_patches(adata)


def test_no_scale_raises():
    img = np.zeros((100, 100, 3), np.uint8)
    adata = slide([[10, 10]], platform="xenium", scalefactors={"tissue_hires_scalef": 1.0}, images={"hires": img})
    with pytest.raises(ValueError, match="No physical scale for slide 'A'"):
        pp.extract_patches(adata)


def test_unknown_library_id_raises():
    with pytest.raises(ValueError, match="library_id 'B' is not in"):
        pp.extract_patches(lowres_visium(), library_id="B")


def test_squidpy_style_adata_without_library_column():
    img = np.full((100, 100, 3), 0.25, dtype=np.float64)
    sf = {"spot_diameter_fullres": 50.0, "tissue_hires_scalef": 0.1}  # 65 µm / 50 px
    adata = slide(np.array([[500, 500], [300, 700]], dtype=np.int64), scalefactors=sf, images={"hires": img})
    del adata.obs["library_id"]
    adata.uns["spatial"]["A"]["metadata"] = {
        "chemistry_description": "Spatial 3' v1"
    }  # scanpy.read_visium: no platform
    scale = pp.patch_scale(adata)
    assert scale.loc["A", "microns_per_pixel"] == pytest.approx(1.3)
    assert all_patches(adata, out_px=4).shape == (2, 4, 4, 3)


# --- real data: the geometry (coordinates, scale factors, image sizes) of the loaders' sections --------------------


@pytest.fixture(scope="module")
def dlpfc():
    return real("dlpfc", "151673")


@pytest.fixture(scope="module")
def her2st():
    return real("her2st", "C2")


def expected_centre(marker_px, spot_px, crop_px, out_px=224):
    """Pixel-index centroid, in the patch, of a marker centred on image pixel marker_px, for a spot at spot_px."""
    return (out_px - 1) / 2 + (marker_px - spot_px) * out_px / crop_px


def test_dlpfc_patch_centre_and_size_on_the_lowres_image(dlpfc):
    adata = dlpfc.copy()
    lib = adata.obs["library_id"].cat.categories[0]
    scale = pp.patch_scale(adata)
    assert scale.loc[lib, "image"] == "lowres"  # DLPFC ships only the 600-px image
    assert scale.loc[lib, "microns_per_pixel"] == pytest.approx(0.72, abs=0.02)
    scalef = scale.loc[lib, "scalef"]
    i, j = 100, 2000
    pi, pj = adata.obsm["spatial"][i] * scalef, adata.obsm["spatial"][j] * scalef
    mi, mj = np.round(pi).astype(int), np.round(pj).astype(int)
    img = np.full_like(adata.uns["spatial"][lib]["images"]["lowres"], 230)
    img[mi[1], mi[0]] = RED  # one marker pixel on spot i
    img[mj[1], mj[0] - 5] = RED  # two, 10 lowres px apart, around spot j
    img[mj[1], mj[0] + 5] = RED
    adata.uns["spatial"][lib]["images"] = {"lowres": img}
    crop = scale.loc[lib, "crop_px"]
    patch_i = all_patches(adata[[i]].copy())[0]
    cx, cy = centroid(redness(patch_i))
    assert cx == pytest.approx(expected_centre(mi[0], pi[0], crop), abs=1.5)
    assert cy == pytest.approx(expected_centre(mi[1], pi[1], crop), abs=1.5)
    size_um = 300.0
    crop_j = crop * size_um / 55.0
    red = redness(all_patches(adata[[j]].copy(), size_um=size_um)[0])
    left, right = centroid(red[:, :112]), centroid(red[:, 112:])
    assert right[0] + 112 - left[0] == pytest.approx(10 * 224 / crop_j, abs=1.5)
    assert left[0] == pytest.approx(expected_centre(mj[0] - 5, pj[0], crop_j), abs=1.5)


def test_her2st_patch_centre_and_size_on_the_fullres_image(her2st, monkeypatch):
    adata = her2st
    lib = "C2"
    scale = pp.patch_scale(adata)
    assert scale.loc[lib, "image"] == "fullres"
    assert scale.loc[lib, "microns_per_pixel"] == pytest.approx(0.69, abs=0.03)
    h, w = scale.loc[lib, ["image_height", "image_width"]]
    xy = adata.obsm["spatial"]
    i, j = 10, 150
    mi, mj = np.round(xy[i]).astype(int), np.round(xy[j]).astype(int)
    img = np.full((h, w, 3), 230, dtype=np.uint8)  # the real image's size; markers instead of tissue
    for x, y in (mi, (mj[0] - 15, mj[1]), (mj[0] + 15, mj[1])):
        img[y - 4 : y + 5, x - 4 : x + 5] = RED
    monkeypatch.setattr(LazyImage, "load", lambda self: img)
    patches = all_patches(adata[[i, j]].copy())
    crop = scale.loc[lib, "crop_px"]
    cx, cy = centroid(redness(patches[0]))
    assert cx == pytest.approx(expected_centre(mi[0], xy[i, 0], crop), abs=0.5)
    assert cy == pytest.approx(expected_centre(mi[1], xy[i, 1], crop), abs=0.5)
    red = redness(patches[1])
    left, right = centroid(red[:, :112]), centroid(red[:, 112:])
    assert right[0] + 112 - left[0] == pytest.approx(30 * 224 / crop, abs=0.5)  # 30 px = 20.6 µm apart


@pytest.mark.slow
def test_her2st_fullres_patches_match_the_thumbnail(her2st):
    # the same tissue, cut from the decoded 9,300-px JPEG and from the loader's 2,000-px thumbnail
    full = all_patches(her2st, size_um=300.0, out_px=32, image="fullres").astype(float)
    thumb = all_patches(her2st, size_um=300.0, out_px=32, image="hires").astype(float)
    assert full.shape == thumb.shape == (her2st.n_obs, 32, 32, 3)
    assert full.mean() < 235  # tissue, not padding
    matched = np.abs(full - thumb).mean(axis=(1, 2, 3))
    shuffled = np.abs(full - np.roll(thumb, 7, axis=0)).mean(axis=(1, 2, 3))
    assert np.median(matched) < 8
    assert np.median(matched) < 0.5 * np.median(shuffled)


def test_visium_fixture_patches_from_its_fullres_jpeg():
    adata = real("visium_fixture")
    scale = pp.patch_scale(adata)
    assert (scale["image"] == "fullres").all()
    assert (scale["n_outside"] == 0).all()
    full = all_patches(adata, size_um=150.0, out_px=32).astype(float)
    hires = all_patches(adata, size_um=150.0, out_px=32, image="hires").astype(float)
    assert full.shape == (adata.n_obs, 32, 32, 3)
    matched = np.abs(full - hires).mean(axis=(1, 2, 3))
    shuffled = np.abs(full - np.roll(hires, 5, axis=0)).mean(axis=(1, 2, 3))
    assert np.median(matched) < 0.5 * np.median(shuffled)


def test_her2st_section_without_image_raises():
    adata = real("her2st", "B1")
    with pytest.raises(ValueError, match="has no image at all"):
        pp.extract_patches(adata)


# --- coordinates in the wrong pixels, grid columns swapped (issue 17, faults 3 and 4) --------------------------------

FIXTURE_LIB = "V1_Adult_Mouse_Brain"


def _unchanged(adata, before):
    np.testing.assert_array_equal(adata.obsm["spatial"], before.obsm["spatial"])
    assert adata.uns["spatial"][FIXTURE_LIB]["scalefactors"] == before.uns["spatial"][FIXTURE_LIB]["scalefactors"]
    pd.testing.assert_frame_equal(adata.obs, before.obs)


@pytest.mark.parametrize("image", ["hires", "lowres"])
@pytest.mark.parametrize(
    ("drop", "reference"),
    [
        ((), "spot_pitch_fullres"),  # microns_per_pixel given
        (("microns_per_pixel",), "spot_pitch_fullres"),  # fitted from the grid
        (("microns_per_pixel", "spot_pitch_fullres"), "spot_diameter_fullres"),  # a scanpy.read_visium slide
    ],
)
def test_spatial_in_hires_or_lowres_pixels_is_refused_naming_the_scale_factor(image, drop, reference):
    adata = real("visium_fixture")
    sf = adata.uns["spatial"][FIXTURE_LIB]["scalefactors"]
    for key in drop:
        del sf[key]
    factor = sf[f"tissue_{image}_scalef"]
    adata.obsm["spatial"] = adata.obsm["spatial"] * factor
    before = adata.copy()
    match = rf"spot pitch in obsm\['spatial'\].*\({reference}.*matches tissue_{image}_scalef = .*Divide it by"
    with pytest.raises(ValueError, match=match):
        pp.patch_scale(adata)
    with pytest.raises(ValueError, match=match):
        pp.spatial_windows(adata)
    _unchanged(adata, before)
    adata.obsm["spatial"] = adata.obsm["spatial"] / factor  # the advice works
    assert pp.patch_scale(adata).loc[FIXTURE_LIB, "microns_per_pixel"] == pytest.approx(0.725, abs=0.001)


def test_spatial_in_hires_pixels_without_array_coordinates_is_refused_from_nearest_neighbours():
    adata = real("visium_fixture")
    sf = adata.uns["spatial"][FIXTURE_LIB]["scalefactors"]
    del adata.obs["array_row"], adata.obs["array_col"]
    adata.obsm["spatial"] = adata.obsm["spatial"] * sf["tissue_hires_scalef"]
    with pytest.raises(ValueError, match=r"is 79\.7 px, but .* 137\.9 px \(spot_pitch_fullres\).*tissue_hires_scalef"):
        pp.patch_scale(adata)


@pytest.mark.parametrize("given", [True, False], ids=["microns_per_pixel_given", "fitted"])
def test_swapped_array_row_and_array_col_of_a_visium_slide_are_refused(given):
    adata = real("visium_fixture")
    if not given:
        del adata.uns["spatial"][FIXTURE_LIB]["scalefactors"]["microns_per_pixel"]
    adata.obs[["array_row", "array_col"]] = adata.obs[["array_col", "array_row"]].to_numpy()
    before = adata.copy()
    match = r"obs\['array_row'\] and obs\['array_col'\] of slide 'V1_Adult_Mouse_Brain' look swapped.*3\.0\d×.*Swap"
    for call in (pp.patch_scale, pp.spatial_windows):
        with pytest.raises(ValueError, match=match):
            call(adata)
    _unchanged(adata, before)
    adata.obs[["array_row", "array_col"]] = adata.obs[["array_col", "array_row"]].to_numpy()  # the advice works
    np.testing.assert_array_equal(pp.spatial_windows(adata).index, pp.spatial_windows(real("visium_fixture")).index)


def test_swapped_columns_are_refused_by_the_visium_reader(tmp_path):
    from storm.io._visium import visium_microns_per_pixel

    rr, cc = np.meshgrid(np.arange(6), np.arange(12), indexing="ij")
    keep = ((rr + cc) % 2 == 0).ravel()
    row, col = rr.ravel()[keep], cc.ravel()[keep]
    positions = pd.DataFrame({"pxl_col_in_fullres": col * 69.0 + 300, "pxl_row_in_fullres": row * 119.5 + 300})
    positions["array_row"], positions["array_col"] = row, col
    assert visium_microns_per_pixel(positions)[0] == pytest.approx(50 / 69, rel=0.01)
    positions["array_row"], positions["array_col"] = col, row
    with pytest.raises(ValueError, match="look swapped"):
        visium_microns_per_pixel(positions, library_id="A")


@pytest.mark.parametrize("swapped", [False, True])
def test_legacy_st_sections_pass_the_grid_checks_either_way_round(her2st, swapped):
    # a square grid: swapping its rows and columns is a reflection the fit absorbs, with nothing to refuse
    adata = her2st.copy()
    if swapped:
        adata.obs[["array_row", "array_col"]] = adata.obs[["array_col", "array_row"]].to_numpy()
    scale = pp.patch_scale(adata)
    assert scale.loc["C2", "microns_per_pixel"] == pytest.approx(0.688, abs=0.001)
    assert pp.spatial_windows(adata).n_valid.max() > 1
