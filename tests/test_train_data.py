"""storm.train data path: patch cutting, per-slide arrays, WindowDataset, SlideBlockSampler."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from _data import TINY_NET, real

import storm.pp as pp
from storm.models import StormModel
from storm.nn import BatchKeys
from storm.train import (
    PatchCache,
    PatchSource,
    SlideArrays,
    SlideBlockSampler,
    StormDataModule,
    WindowDataset,
    crop_patches,
)

NET = TINY_NET


@pytest.fixture(scope="module")
def fixture_adata():
    return real("visium_fixture")


@pytest.fixture(scope="module")
def two_slides(fixture_adata):
    """The fixture twice as two slides of one AnnData (same coordinates), the second with its spots' counts shuffled."""
    import anndata as ad

    a = fixture_adata.copy()
    b = fixture_adata.copy()
    lib = "V1_Adult_Mouse_Brain"
    b.X = b.X[np.random.default_rng(0).permutation(b.n_obs)]
    b.obs["library_id"] = "copy"
    b.uns["spatial"] = {"copy": b.uns["spatial"][lib]}
    a.obs_names = [f"a-{n}" for n in a.obs_names]
    b.obs_names = [f"b-{n}" for n in b.obs_names]
    out = ad.concat([a, b], uns_merge="unique")
    out.obs["library_id"] = pd.Categorical(out.obs["library_id"].astype(str))
    return out


@pytest.fixture(scope="module")
def model(fixture_adata):
    genes = list(fixture_adata.var_names[:64])
    return StormModel.setup(fixture_adata, genes=genes, net=NET, init_pca=False)


# ---------------------------------------------------------------------------- patches
@pytest.mark.parametrize("image", ["fullres", "hires"])
def test_crop_patches_match_extract_patches(fixture_adata, image):
    """storm.train's cutter (no AnnData) gives the bytes storm.pp.extract_patches gives, border spots included."""
    adata = fixture_adata
    ref = np.concatenate(list(pp.extract_patches(adata, size_um=55, out_px=24, image=image)))
    scale = pp.patch_scale(adata, size_um=55, out_px=24, image=image).iloc[0]
    entry = adata.uns["spatial"]["V1_Adult_Mouse_Brain"]
    if image == "fullres":
        from storm.train import decode_image

        pixels = decode_image(entry["metadata"]["fullres_path"])
    else:
        pixels = entry["images"]["hires"]
    centres = adata.obsm["spatial"] * scale["scalef"] + 0.5
    ours = crop_patches(pixels, centres, scale["crop_px"], 24)
    np.testing.assert_array_equal(ours, ref)
    # a centre on the border is padded with white, as in storm.pp
    edge = crop_patches(pixels, np.array([[0.5, 0.5]]), scale["crop_px"], 24)
    assert (edge[0, 0, 0] == 255).all()


def test_prepared_patch_source_matches_extract_patches(fixture_adata, model):
    (slide,) = model.prepare(fixture_adata)
    assert slide.patches.name == "fullres"
    assert slide.patches.path
    cut = slide.patches.cut(slide.patches.load(), np.arange(slide.n_obs), model.config.patch_px)
    ref = np.concatenate(list(pp.extract_patches(fixture_adata, size_um=55, out_px=model.config.patch_px)))
    np.testing.assert_array_equal(cut, ref)


def test_patch_cache_decodes_once_and_evicts(tmp_path):
    from PIL import Image

    paths = []
    for i in range(3):
        img = np.full((40, 40, 3), 50 * i, dtype=np.uint8)
        paths.append(tmp_path / f"s{i}.png")
        Image.fromarray(img).save(paths[-1])
    centres = np.array([[10.5, 10.5], [20.5, 20.5], [30.5, 30.5]])
    sources = [PatchSource(centres, 8.0, path=str(p)) for p in paths]
    cache = PatchCache(max_images=1, max_bytes=1 << 20)
    a = cache.patches(0, sources[0], np.array([0, 1]), 8)
    assert a.shape == (2, 8, 8, 3)
    assert (a == 0).all()
    assert cache.n_decoded == 1
    cache.patches(0, sources[0], np.array([1, 0]), 8)  # remembered: no decode
    assert cache.n_decoded == 1
    cache.patches(1, sources[1], np.array([0]), 8)
    assert cache.n_decoded == 2
    assert cache.n_images == 1
    cache.patches(0, sources[0], np.array([2]), 8)  # a new spot of slide 0: decoded again
    assert cache.n_decoded == 3
    # once all patches of a slide are cut its image is dropped
    cache.patches(2, sources[2], np.arange(3), 8)
    assert cache.n_images == 0 or 2 not in cache._images
    # no memory: each use cuts from the (cached) image
    small = PatchCache(max_images=2, max_bytes=0)
    out = small.patches(1, sources[1], np.array([2, 2]), 8)
    assert (out == 50).all()
    assert small.n_decoded == 1


def test_patch_source_and_slide_arrays_validate():
    with pytest.raises(ValueError, match="exactly one"):
        PatchSource(np.zeros((2, 2)), 5.0)
    with pytest.raises(ValueError, match="side_px"):
        PatchSource(np.zeros((2, 2)), 0.0, array=np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="offsets_um"):
        SlideArrays("s", np.zeros((3, 2), int), np.zeros((3, 3, 2)))
    with pytest.raises(ValueError, match="rows"):
        SlideArrays("s", np.zeros((3, 2), int), np.zeros((3, 2, 2)), expr=np.zeros((2, 5)))
    s = SlideArrays("s", np.zeros((3, 2), int), np.zeros((3, 2, 2)))
    assert not s.has_expr
    assert not s.has_image
    assert s.n_genes == 0


# ---------------------------------------------------------------------------- data path
def test_prepare_gives_slide_local_windows(two_slides, model):
    slides = model.prepare(two_slides)
    assert [s.library_id for s in slides] == ["V1_Adult_Mouse_Brain", "copy"]
    for s in slides:
        assert s.n_obs == 49
        assert s.window_size == 25
        assert s.index.max() < s.n_obs
        assert (s.index[:, 0] == np.arange(s.n_obs)).all()
        assert s.expr.shape == (49, 64)
        assert s.gene_mask.all()
        assert s.patches is not None
    # obs_rows point back into the AnnData; the expression is log1p(normalize_total) on the model genes
    lognorm, _ = pp_lognorm(two_slides, model.genes)
    for s in slides:
        np.testing.assert_allclose(s.expr.toarray(), lognorm[s.obs_rows], rtol=1e-6)


def pp_lognorm(adata, genes):
    sub = adata.copy()
    pp.normalize(sub)
    x = sub[:, genes].layers["lognorm"]
    return x.toarray(), None


def test_prepare_modes_and_missing_genes(fixture_adata, model):
    (s,) = model.prepare(fixture_adata, mode="expression")
    assert s.has_expr
    assert not s.has_image
    (s,) = model.prepare(fixture_adata, mode="image")
    assert s.has_image
    assert not s.has_expr
    renamed = fixture_adata.copy()
    renamed.var_names = [f"X{i}" for i in range(renamed.n_vars)]
    with pytest.raises(ValueError, match=r"No gene overlaps.*1,999 genes.*'X0'"):
        model.prepare(renamed)


# ---------------------------------------------------------------------------- WindowDataset
def test_window_dataset_items(two_slides, model):
    slides = model.prepare(two_slides)
    ds = WindowDataset(slides, patch_px=16)
    assert len(ds) == 98
    item = ds[60]
    assert item[BatchKeys.IMAGE].shape == (25, 3, 16, 16)
    assert item[BatchKeys.IMAGE].dtype.is_floating_point is False
    assert item[BatchKeys.EXPR].shape == (25, 64)
    assert item[BatchKeys.GENE_MASK].shape == (64,)
    assert item[BatchKeys.OFFSETS].shape == (25, 2)
    assert item[BatchKeys.POS_MASK].shape == (25,)
    assert bool(item[BatchKeys.HAS_IMAGE])
    assert bool(item[BatchKeys.HAS_EXPR])
    # padded positions: no patch, no expression; the centre's offset is 0
    pad = ~item[BatchKeys.POS_MASK].numpy()
    assert pad.any()
    assert (item[BatchKeys.IMAGE].numpy()[pad] == 0).all()
    assert (item[BatchKeys.OFFSETS][0] == 0).all()


def test_window_dataset_never_mixes_slides(two_slides, model):
    slides = model.prepare(two_slides)
    ds = WindowDataset(slides, patch_px=16)
    for i in range(len(ds)):
        item = ds[i]
        s, c = int(item["slide"]), int(item["centre"])
        assert s == (0 if i < 49 else 1)
        assert c == i - 49 * s
        index = slides[s].index[c]
        valid = index >= 0
        np.testing.assert_array_equal(item[BatchKeys.POS_MASK].numpy(), valid)
        np.testing.assert_array_equal(item[BatchKeys.EXPR].numpy()[valid], slides[s].expression(index[valid]))
    # the two slides' windows differ where their expression differs (the second slide's counts are shuffled)
    assert not np.allclose(ds[0][BatchKeys.EXPR].numpy(), ds[49][BatchKeys.EXPR].numpy())


def test_window_dataset_mixed_modalities_and_width(fixture_adata, model):
    (with_image,) = model.prepare(fixture_adata)
    (expr_only,) = model.prepare(fixture_adata, mode="expression")
    ds = WindowDataset([with_image, expr_only], patch_px=16, window_size=7)
    a, b = ds[0], ds[49]
    assert a[BatchKeys.IMAGE].shape == (7, 3, 16, 16)
    assert bool(a[BatchKeys.HAS_IMAGE])
    assert not bool(b[BatchKeys.HAS_IMAGE])
    assert (b[BatchKeys.IMAGE] == 0).all()
    assert ds.window_size == 7
    assert a[BatchKeys.EXPR].shape == (7, 64)
    no_expr = WindowDataset([with_image], patch_px=16, use_expression=False)
    assert BatchKeys.EXPR not in no_expr[0]
    with pytest.raises(ValueError, match="No slide has a modality"):
        WindowDataset([expr_only], use_expression=False)


# ---------------------------------------------------------------------------- SlideBlockSampler
def test_slide_block_sampler_blocks_and_determinism():
    item_slides = np.repeat([0, 1, 2], [30, 7, 20])
    s = SlideBlockSampler(item_slides, block_size=8, seed=3)
    s.set_epoch(0)
    order = s.order()
    assert sorted(order.tolist()) == list(range(57))
    assert len(s) == 57
    # consecutive runs of one slide: at most one block each (≤ 8), never split a block
    runs = np.split(order, np.flatnonzero(np.diff(item_slides[order])) + 1)
    assert all(len(r) <= 8 for r in runs)
    assert len(runs) >= 57 // 8
    assert list(SlideBlockSampler(item_slides, block_size=8, seed=3)) == order.tolist()  # same seed, epoch
    s.set_epoch(1)
    assert s.order().tolist() != order.tolist()
    assert SlideBlockSampler(item_slides, block_size=8, seed=4).order().tolist() != order.tolist()
    # no shuffle: slides in order
    flat = SlideBlockSampler(item_slides, block_size=8, shuffle=False).order()
    np.testing.assert_array_equal(flat, np.arange(57))


def test_slide_block_sampler_replicas_and_skip():
    item_slides = np.repeat([0, 1], [25, 12])
    full = SlideBlockSampler(item_slides, block_size=4, seed=0, drop_last=True).order()
    parts = [
        SlideBlockSampler(item_slides, block_size=4, seed=0, num_replicas=2, rank=r, drop_last=True) for r in (0, 1)
    ]
    assert len(parts[0]) == len(parts[1]) == 18
    a, b = parts[0].order(), parts[1].order()
    assert not set(a) & set(b)
    assert sorted([*a, *b]) == sorted(full[:36].tolist())
    padded = SlideBlockSampler(item_slides, block_size=4, seed=0, num_replicas=2, rank=1)
    assert len(padded) == 19
    s = SlideBlockSampler(item_slides, block_size=4, seed=0)
    s.set_epoch(2)
    expected = s.order()
    s.skip(10)
    assert list(s) == expected[10:].tolist()
    assert list(s) == expected.tolist()  # the skip applies once
    s.skip(10, epoch=1)
    assert list(s) == expected.tolist()  # … and only to its epoch


def test_datamodule_split_and_loader(two_slides, model):
    slides = model.prepare(two_slides)
    dm = StormDataModule(slides, patch_px=16, batch_size=8, val_fraction=0.1, seed=0)
    assert len(dm.train_windows) + len(dm.val_windows) == 98
    assert len(dm.val_windows) == 10
    assert not set(dm.train_windows) & set(dm.val_windows)
    batch = next(iter(dm.train_dataloader()))
    assert batch[BatchKeys.IMAGE].shape == (8, 25, 3, 16, 16)
    assert batch[BatchKeys.GENE_MASK].shape == (8, 64)
    by_slide = StormDataModule(slides, val_slides=["copy"])
    assert by_slide.split == "slide"
    assert set(by_slide.val_windows) == set(range(49, 98))
    with pytest.raises(ValueError, match="not among the slides"):
        StormDataModule(slides, val_slides=["nope"])


@pytest.mark.slow
def test_train_imports_without_anndata():
    """storm.train imports with torch, lightning and numpy alone (a fresh interpreter: ~5 s of imports)."""
    code = (
        "import sys\n"
        "for m in ('anndata', 'scanpy', 'squidpy'):\n"
        "    sys.modules[m] = None\n"
        "import storm.train\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
