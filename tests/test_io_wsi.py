"""Whole slides: read_wsi (SVS, pyramidal TIFF / OME-TIFF written from real H&E), patches tile by tile, bad files."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import tifffile
from _data import TINY_NET, real

import storm
from storm._wsi_reader import WholeSlideImage, is_whole_slide


@pytest.fixture(scope="module")
def c6():
    return real("her2st", "C6")


@pytest.fixture(scope="module")
def c6_pixels(c6):
    return storm.io.LazyImage(c6.uns["spatial"]["C6"]["metadata"]["fullres_path"]).load()


@pytest.fixture(scope="module")
def mpp(c6):
    return c6.uns["spatial"]["C6"]["scalefactors"]["microns_per_pixel"]


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory, c6_pixels, mpp):
    """C6's 9,288 × 9,907 H&E as a generic pyramidal TIFF: 256-px JPEG tiles, 4 levels, µm/px in the resolution tags."""
    path = tmp_path_factory.mktemp("wsi") / "C6.tif"
    return storm.io.write_pyramid(path, c6_pixels, microns_per_pixel=mpp, levels=4)


def _tifffile_ome(path, image, mpp, n_levels=3):
    """An OME-TIFF written with tifffile's own idiom (sub-resolutions as SubIFDs), independently of storm's writer."""
    levels = [image]
    for _ in range(n_levels - 1):
        levels.append(levels[-1][::2, ::2])
    meta = {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp, "PhysicalSizeXUnit": "µm"}
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(levels[0], subifds=n_levels - 1, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=meta)
        for level in levels[1:]:
            tw.write(level, subfiletype=1, tile=(256, 256), compression="jpeg", photometric="rgb")
    return path


def test_read_wsi_layout_from_a_pyramidal_tiff(pyramid, mpp, c6_pixels, tmp_path):
    slide = storm.io.read_wsi(pyramid)
    assert slide.n_obs == 0
    assert slide.obsm["spatial"].shape == (0, 2)
    entry = slide.uns["spatial"]["C6"]
    meta = entry["metadata"]
    assert meta["platform"] == "wsi"
    assert meta["fullres_shape"] == [9907, 9288]
    assert meta["mpp_source"] == "TIFF resolution tags"
    assert entry["scalefactors"]["microns_per_pixel"] == pytest.approx(mpp, rel=1e-9)
    assert meta["wsi"]["level_shapes"] == [[9907 // 2**k, 9288 // 2**k] for k in range(4)]
    assert meta["wsi"]["chunk_shapes"] == [[256, 256]] * 4
    thumb = entry["images"]["hires"]
    assert thumb.dtype == np.uint8
    assert max(thumb.shape[:2]) == 2000
    assert entry["scalefactors"]["tissue_hires_scalef"] == pytest.approx(2000 / 9907, rel=1e-3)
    # the thumbnail is the slide: compare with a downscaled copy of the JPEG
    from PIL import Image

    ref = np.asarray(Image.fromarray(c6_pixels).resize(thumb.shape[1::-1], Image.Resampling.BOX))
    assert np.abs(ref.astype(int) - thumb).mean() < 3
    slide.write_h5ad(tmp_path / "slide.h5ad")  # the layout is storable
    assert storm.io.read_wsi(pyramid, library_id="x", microns_per_pixel=0.5).uns["spatial"]["x"]["scalefactors"][
        "microns_per_pixel"
    ] == pytest.approx(0.5)


def test_read_wsi_ome_tiff_written_by_tifffile(tmp_path, c6_pixels, mpp):
    path = _tifffile_ome(tmp_path / "C6 crop.ome.tif", c6_pixels[2000:6000, 2000:6000], mpp)
    slide = storm.io.read_wsi(path)
    (lib,) = slide.uns["spatial"]
    assert lib == "C6 crop"
    entry = slide.uns["spatial"][lib]
    assert entry["metadata"]["mpp_source"] == "OME-XML PhysicalSizeX"
    assert entry["scalefactors"]["microns_per_pixel"] == pytest.approx(mpp)
    assert entry["metadata"]["wsi"]["level_shapes"] == [[4000, 4000], [2000, 2000], [1000, 1000]]
    with WholeSlideImage(path) as wsi:
        region = wsi.read(2, 100, 300, 200, 400)
        np.testing.assert_allclose(region.mean(), c6_pixels[2000:6000:4, 2000:6000:4][100:300, 200:400].mean(), atol=2)


def test_the_real_svs_through_both_backends():
    slide = real("cmu_small_region")
    entry = slide.uns["spatial"]["cmu_small_region"]
    assert entry["scalefactors"]["microns_per_pixel"] == pytest.approx(0.499)
    assert entry["metadata"]["mpp_source"] == "aperio metadata"
    assert entry["metadata"]["wsi"]["vendor"] == "aperio"
    assert entry["metadata"]["wsi"]["objective_power"] == 20
    assert entry["metadata"]["fullres_shape"] == [2967, 2220]
    assert entry["metadata"]["wsi"]["chunk_shapes"] == [[240, 240]]
    path = entry["metadata"]["fullres_path"]
    assert is_whole_slide(path)
    with WholeSlideImage(path, backend="tiffslide") as ts, WholeSlideImage(path, backend="openslide") as osl:
        assert osl.microns_per_pixel == pytest.approx(ts.microns_per_pixel)
        a, b = ts.read(0, 1000, 1300, 700, 1100), osl.read(0, 1000, 1300, 700, 1100)
        np.testing.assert_array_equal(a, b)  # the same decoded tiles, pixel for pixel
        assert a.std() > 10  # tissue, not padding


def test_patches_come_from_the_level_nearest_the_asked_resolution(c6, pyramid):
    wsi_c6 = c6.copy()
    entry = wsi_c6.uns["spatial"]["C6"]
    entry["metadata"] = {**entry["metadata"], "fullres_path": str(pyramid)}
    for out_px, level in ((224, 0), (64, 0), (32, 1), (16, 2)):
        scale = storm.pp.patch_scale(wsi_c6, out_px=out_px).loc["C6"]
        assert scale["level"] == level
        if level > 0:
            assert scale["zoom"] <= 1.05  # never enlarged from a coarser level
        ref = np.concatenate(list(storm.pp.extract_patches(c6, out_px=out_px))).astype(int)
        got = np.concatenate(list(storm.pp.extract_patches(wsi_c6, out_px=out_px))).astype(int)
        assert got.shape == ref.shape
        # level 0: the same pixels up to JPEG re-compression; coarser levels: area-averaged then resized
        assert np.abs(got - ref).mean() < (1.5 if level == 0 else 6), (out_px, np.abs(got - ref).mean())
    assert storm.pp.patch_scale(c6).loc["C6", "level"] == -1  # a JPEG is not a pyramid


def test_wsi_patch_source_reads_tiles_without_decoding_the_level(c6, pyramid):
    from _data import TINY_NET

    from storm._wsi_reader import LevelArray
    from storm.models import StormModel

    wsi_c6 = c6.copy()
    entry = wsi_c6.uns["spatial"]["C6"]
    entry["metadata"] = {**entry["metadata"], "fullres_path": str(pyramid)}
    model = StormModel.setup(c6, n_top_genes=50, net=TINY_NET, random_state=0)
    (slide,) = model.prepare(wsi_c6, mode="image")
    assert slide.patches.level == 2  # 55 µm in 16 px: 3.4 µm/px wanted, level 2 is 2.75 µm/px
    pixels = slide.patches.load()
    assert isinstance(pixels, LevelArray)
    tracemalloc.start()
    patches = slide.patches.cut(pixels, np.arange(slide.n_obs), 16)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert patches.shape == (slide.n_obs, 16, 16, 3)
    assert peak < 8 * 2**20, peak  # tiles, not the 17 MB level (nor the 276 MB full resolution)
    emb_wsi = storm.tl.embed(wsi_c6, model, mode="image", copy=True).obsm["X_storm"]
    emb_jpg = storm.tl.embed(c6, model, mode="image", copy=True).obsm["X_storm"]
    r = [np.corrcoef(a, b)[0, 1] for a, b in zip(emb_wsi, emb_jpg, strict=True)]
    assert np.median(r) > 0.95


def test_no_pixel_size_is_an_error_naming_the_argument(tmp_path, c6_pixels):
    crop = c6_pixels[3000:5000, 3000:5000]
    path = tmp_path / "no_mpp.tif"
    tifffile.imwrite(path, crop, tile=(256, 256), compression="jpeg", photometric="rgb", metadata=None)
    with pytest.raises(ValueError, match="microns_per_pixel"):
        storm.io.read_wsi(path)
    # a writer's default 72 dpi is no pixel size either
    dpi72 = tmp_path / "dpi72.tif"
    tifffile.imwrite(dpi72, crop, tile=(256, 256), photometric="rgb", resolution=(72, 72), resolutionunit="INCH")
    with pytest.raises(ValueError, match="microns_per_pixel"):
        storm.io.read_wsi(dpi72)
    slide = storm.io.read_wsi(path, microns_per_pixel=0.7)
    assert slide.uns["spatial"]["no_mpp"]["metadata"]["mpp_source"] == "argument"
    with pytest.raises(ValueError, match="positive"):
        storm.io.read_wsi(path, microns_per_pixel=-1)


def test_a_corrupt_tile_is_a_clear_error(tmp_path, pyramid, c6):
    import shutil

    bad = tmp_path / "corrupt.tif"
    shutil.copyfile(pyramid, bad)
    with tifffile.TiffFile(bad) as tf:
        page = tf.series[0].levels[0].keyframe
        n_cols = -(-page.imagewidth // 256)
        index = 18 * n_cols + 18  # a tile inside the tissue
        offset = page.dataoffsets[index]
    with open(bad, "r+b") as fh:  # overwrite the tile's JPEG header
        fh.seek(offset)
        fh.write(b"\x5a" * 64)
    slide = storm.io.read_wsi(bad)  # the header and the thumbnail (level 3) are fine
    with WholeSlideImage(bad) as wsi, pytest.raises(ValueError, match="corrupt"):
        wsi.read(0, 18 * 256, 19 * 256, 18 * 256, 19 * 256)
    adata = c6.copy()
    entry = adata.uns["spatial"]["C6"]
    entry["metadata"] = {**entry["metadata"], "fullres_path": str(bad)}
    assert slide.n_obs == 0
    with pytest.raises(ValueError, match="truncated or corrupt"):
        np.concatenate(list(storm.pp.extract_patches(adata, out_px=224)))


def _patch_header(path, **tags):
    with tifffile.TiffFile(path, mode="r+b") as tf:
        for name, value in tags.items():
            tf.pages[0].tags[name].overwrite(value)


def test_a_decompression_bomb_is_refused_before_decoding(tmp_path):
    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 200, np.uint8), photometric="rgb", compression="zlib", metadata=None)
    # a 300-byte file that declares 400,000 × 400,000 px in one strip: 447 GiB if decoded
    _patch_header(path, ImageWidth=400_000, ImageLength=400_000, RowsPerStrip=400_000)
    assert path.stat().st_size < 1000
    tracemalloc.start()
    with pytest.raises(ValueError, match="decompression bomb"):
        storm.io.read_wsi(path, microns_per_pixel=0.5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 32 * 2**20


def test_a_huge_plain_tiff_is_read_by_strips_or_refused_with_advice(tmp_path, c6_pixels, mpp):
    # stored in 64-row strips, no pyramid: read strip by strip, the region's strips only
    strips = tmp_path / "strips.tif"
    tifffile.imwrite(
        strips, c6_pixels, photometric="rgb", rowsperstrip=64, compression="zlib",
        resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER", metadata=None,
    )  # fmt: skip
    assert is_whole_slide(strips)  # 92 Mpx: over the size PIL decodes whole
    slide = storm.io.read_wsi(strips)
    assert slide.uns["spatial"]["strips"]["metadata"]["wsi"]["chunk_shapes"] == [[64, 9288]]
    with WholeSlideImage(strips) as wsi:
        tracemalloc.start()
        region = wsi.read(0, 5000, 5100, 4000, 4100)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    np.testing.assert_array_equal(region, c6_pixels[5000:5100, 4000:4100])
    assert peak < 16 * 2**20, peak  # three 1.8-MB strips, not the 276-MB image
    # one strip of 60,000 × 60,000 px (10 GB) must be decoded whole for any region: refused, with advice
    one = tmp_path / "one_strip.tif"
    tifffile.imwrite(one, np.full((64, 64, 3), 230, np.uint8), photometric="rgb", compression="zlib", metadata=None)
    _patch_header(one, ImageWidth=60_000, ImageLength=60_000, RowsPerStrip=60_000)
    with pytest.raises(ValueError, match=r"strips of 60,000 × 60,000 px.*tiled pyramidal TIFF.*vips"):
        storm.io.read_wsi(one, microns_per_pixel=0.5)


def test_non_rgb_and_unreadable_files(tmp_path):
    gray = tmp_path / "dapi.ome.tif"
    tifffile.imwrite(gray, np.zeros((512, 512), np.uint16), tile=(256, 256), metadata={"axes": "YX"})
    with pytest.raises(ValueError, match="not an 8-bit RGB"):
        storm.io.read_wsi(gray, microns_per_pixel=1.0)
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide" * 100)
    with pytest.raises(ValueError, match="not a whole-slide image"):
        storm.io.read_wsi(junk)
    with pytest.raises(FileNotFoundError):
        storm.io.read_wsi(tmp_path / "missing.svs")
    mrxs = tmp_path / "slide.mrxs"
    mrxs.write_bytes(b"[GENERAL]\n")
    with pytest.raises(ValueError, match="OpenSlide"):
        storm.io.read_wsi(mrxs)


@pytest.fixture(scope="module")
def tiny(c6):
    """A tiny model and head (16-px patches: tiles are read from level 2 of the pyramid)."""
    from storm.models import StormModel

    model = StormModel.setup(c6, n_top_genes=50, net=TINY_NET, random_state=0)
    head = storm.tl.train_expression_head(
        c6, n_top_genes=10, model=model, head_type="frozen", epochs=1, val_groups=(), progress=False
    )
    return model, head


def test_virtual_st_embed_and_bags_from_a_wsi_match_the_jpeg(c6, pyramid, tiny, tmp_path):
    import matplotlib.pyplot as plt

    model, head = tiny
    slide = storm.io.read_wsi(pyramid)
    tiles = storm.tl.virtual_st(slide, head, model=model, progress=False)
    ref = storm.tl.virtual_st(c6, head, model=model, progress=False)
    assert tiles.uns["virtual_st"]["params"]["level_downsample"] == pytest.approx(4.0, rel=1e-3)
    assert ref.uns["virtual_st"]["params"]["level_downsample"] == 1.0
    entry = tiles.uns["spatial"]["C6"]
    assert entry["metadata"]["fullres_shape"] == [9907, 9288]
    assert entry["scalefactors"]["microns_per_pixel"] == pytest.approx(
        c6.uns["spatial"]["C6"]["scalefactors"]["microns_per_pixel"]
    )
    # the same tile grid (tissue found on two different thumbnails: nearly the same tiles)
    common = tiles.obs_names.intersection(ref.obs_names)
    assert len(common) > 0.95 * max(tiles.n_obs, ref.n_obs)
    np.testing.assert_allclose(tiles[common].obsm["spatial"], ref[common].obsm["spatial"], atol=1.0)
    r = [np.corrcoef(a, b)[0, 1] for a, b in zip(tiles[common].X.T, ref[common].X.T, strict=True)]
    # not identical: 16-px patches from the area-averaged level 2 vs PIL's bilinear shrink of the full resolution
    # (mean |Δ| ≈ 7/255, test_patches_come_from_the_level_nearest_the_asked_resolution) through a one-epoch head
    assert np.median(r) > 0.6, np.median(r)
    # the tiles embed from the WSI (image mode reads its level-2 tiles), make bags, and plot over the thumbnail
    storm.tl.embed(tiles, model, mode="image", accelerator="cpu")
    (bag,) = storm.tl.slide_features({"C6": tiles})
    assert bag["image"].shape == (tiles.n_obs, model.dim)
    assert bag["expression"].shape == (tiles.n_obs, len(head.genes))
    storm.pl.expression_maps(tiles, head.genes[:1], show=False, save=tmp_path / "map.png")
    plt.close("all")
    assert (tmp_path / "map.png").stat().st_size > 0
