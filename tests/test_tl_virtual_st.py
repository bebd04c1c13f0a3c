"""Virtual ST: expression heads (training split by slide, save/load checks), spot prediction, whole-slide tiling."""

from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
from _data import TINY_NET, real
from PIL import Image

import storm
from storm._files import write_manifest
from storm.models import StormModel
from storm.nn import ExpressionHead
from storm.tl._expression_head import split_by_group

LIB = "V1_Adult_Mouse_Brain"


def _two_slides(adata):
    """The fixture's spots as two slides (top and bottom half of the crop), each with its own uns entry."""
    adata = adata.copy()
    top = adata.obsm["spatial"][:, 1] < np.median(adata.obsm["spatial"][:, 1])
    adata.obs["library_id"] = np.where(top, "top", "bottom")
    adata.obs["library_id"] = adata.obs["library_id"].astype("category")
    entry = adata.uns["spatial"].pop(LIB)
    adata.uns["spatial"] = {"top": entry, "bottom": dict(entry)}
    return adata


@pytest.fixture(scope="module")
def adata():
    return _two_slides(real("visium_fixture"))


@pytest.fixture(scope="module")
def model(adata):
    return StormModel.setup(adata, n_top_genes=60, net=TINY_NET, random_state=0)


@pytest.fixture(scope="module")
def head(adata, model):
    return storm.tl.train_expression_head(
        adata, n_top_genes=20, model=model, epochs=2, val_groups=["bottom"], progress=False
    )


def test_split_by_group_is_by_group_and_reproducible():
    groups = [f"s{i}" for i in range(10)]
    train, val = split_by_group(groups, val_fraction=0.2, random_state=3)
    assert len(val) == 2
    assert not set(train) & set(val)
    assert sorted(train + val) == sorted(groups)
    assert split_by_group(groups, val_fraction=0.2, random_state=3) == (train, val)
    assert split_by_group(["a", "b"], val_groups=()) == (["a", "b"], [])
    with pytest.raises(ValueError, match="at least two"):
        split_by_group(["only"])
    with pytest.raises(ValueError, match="not among"):
        split_by_group(["a", "b"], val_groups=["c"])


def test_training_sees_only_training_slides(adata, model, monkeypatch):
    """No spot-level leakage: the head trains on the training slide's spots only, genes chosen there too."""
    import storm.nn as snn
    from storm.models._prepare import lognorm_on_panel, select_genes

    seen = {}
    original = snn.fit_expression_head

    def spy(head, x, y, **kwargs):
        seen["y"], seen["x_val"] = y.numpy().copy(), kwargs["x_val"]
        return original(head, x, y, **kwargs)

    monkeypatch.setattr(snn, "fit_expression_head", spy)
    head = storm.tl.train_expression_head(
        adata, n_top_genes=20, model=model, epochs=1, val_groups=["bottom"], progress=False
    )
    top = adata[adata.obs["library_id"] == "top"]
    assert head.training_info["train_groups"] == ["top"]
    assert head.training_info["val_groups"] == ["bottom"]
    assert head.training_info["n_train"] == top.n_obs
    assert head.training_info["n_val"] == adata.n_obs - top.n_obs
    assert head.genes == select_genes([[top]], n_top_genes=20)
    y_top, _ = lognorm_on_panel(top, head.genes)
    np.testing.assert_allclose(seen["y"], y_top.toarray(), rtol=1e-6)
    assert seen["x_val"].shape[0] == adata.n_obs - top.n_obs
    assert len(head.val_pearson) == len(head.genes)


def test_train_errors(adata, model):
    one = adata[adata.obs["library_id"] == "top"].copy()
    with pytest.raises(ValueError, match="at least two"):
        storm.tl.train_expression_head(one, n_top_genes=10, model=model, epochs=1, progress=False)
    with pytest.raises(ValueError, match="obs\\['patient'\\]"):
        storm.tl.train_expression_head(adata, n_top_genes=10, model=model, val_key="patient", progress=False)
    with pytest.raises(ValueError, match="features"):
        storm.tl.train_expression_head(adata, n_top_genes=10, model=model, features=["h0"], progress=False)
    with pytest.raises(ValueError, match="None of the"):
        storm.tl.train_expression_head(adata, ["NOT_A_GENE"], model=model, val_groups=(), progress=False)


def test_head_save_load_and_refusals(head, model, adata, tmp_path):
    folder = head.save(tmp_path / "head")
    loaded = ExpressionHead.load(folder, encoder=storm.tl.encoder_identity(model), genes=head.genes)
    assert loaded.genes == head.genes
    assert loaded.features == head.features
    np.testing.assert_allclose(np.array(loaded.val_pearson), np.array(head.val_pearson), equal_nan=True)
    p1 = storm.tl.predict_expression(adata, head, model=model, progress=False)
    p2 = storm.tl.predict_expression(adata, loaded, model=model, progress=False)
    np.testing.assert_array_equal(p1.X, p2.X)

    other = StormModel.setup(adata, n_top_genes=60, net=TINY_NET, random_state=1)
    with pytest.raises(ValueError, match="trained on features of encoder"):
        ExpressionHead.load(folder, encoder=storm.tl.encoder_identity(other))
    with pytest.raises(ValueError, match="trained on features of encoder"):
        storm.tl.predict_expression(adata, loaded, model=other, progress=False)
    with pytest.raises(ValueError, match="genes"):
        ExpressionHead.load(folder, genes=head.genes[::-1])
    with pytest.raises(ValueError, match="genes"):
        ExpressionHead.load(folder, genes=head.genes[:-1])
    with pytest.raises(FileExistsError):
        head.save(folder)
    weights = folder / "head.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\x00\x00\x00\x00")
    with pytest.raises(ValueError, match="sha256"):
        ExpressionHead.load(folder)
    with pytest.raises(FileNotFoundError, match=r"head\.json"):
        ExpressionHead.load(tmp_path / "nothing")
    cfg = json.loads((folder / "head.json").read_text())
    cfg["surprise"] = 1
    (folder / "head.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"head.json is refused: its sha256"):
        ExpressionHead.load(folder)
    write_manifest(folder, ["head.json", "head.safetensors"])  # checksums that match: the contents are judged
    with pytest.raises(ValueError, match="unknown keys"):
        ExpressionHead.load(folder)
    with pytest.raises(ValueError, match="no gene list"):
        storm.tl.predict_expression(adata, ExpressionHead(4, 2), model=model)


def test_head_json_with_reordered_genes_is_refused(head, tmp_path):
    """Same genes in another order would put each prediction under another gene's name."""
    folder = head.save(tmp_path / "head")
    cfg = json.loads((folder / "head.json").read_text())
    cfg["genes"] = cfg["genes"][::-1]
    (folder / "head.json").write_text(json.dumps(cfg, indent=1) + "\n")
    with pytest.raises(ValueError, match=r"head.json is refused: its sha256 .* SHA256SUMS"):
        ExpressionHead.load(folder)


def test_predict_expression_layout_and_bad_input(head, model, adata):
    before = adata.copy()
    pred = storm.tl.predict_expression(adata, head, model=model, progress=False)
    assert pred.shape == (adata.n_obs, len(head.genes))
    assert pred.X.dtype == np.float32
    assert list(pred.var_names) == head.genes
    assert "val_pearson" in pred.var
    assert (pred.obs_names == adata.obs_names).all()
    np.testing.assert_array_equal(pred.obsm["spatial"], adata.obsm["spatial"])
    assert set(pred.uns["spatial"]) == {"top", "bottom"}
    assert adata.obs.equals(before.obs)
    assert set(adata.uns) == set(before.uns)

    outside = adata.copy()
    outside.obsm["spatial"] = outside.obsm["spatial"] + 1e5  # same pitch, off the image
    with pytest.raises(ValueError, match="outside"):
        storm.tl.predict_expression(outside, head, model=model, progress=False)
    no_image = adata.copy()
    for entry in no_image.uns["spatial"].values():
        entry["images"] = {}
        entry["metadata"] = {k: v for k, v in entry["metadata"].items() if k != "fullres_path"}
    with pytest.raises(ValueError, match="image"):
        storm.tl.predict_expression(no_image, head, model=model, progress=False)


def _synthetic_slide(h=700, w=900, seed=0):
    """White glass with a textured purple/pink 'tissue' block in the middle."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 245, dtype=np.uint8)
    block = np.stack(
        [rng.integers(120, 200, (300, 400)), rng.integers(60, 120, (300, 400)), rng.integers(140, 210, (300, 400))],
        axis=-1,
    ).astype(np.uint8)
    img[200:500, 250:650] = block
    return img


def test_virtual_st_tiles_tissue_only_and_streams_identically(head, model, tmp_path):
    img = _synthetic_slide()
    tiles = storm.tl.virtual_st(img, head, model=model, microns_per_pixel=1.0, tile_um=50, progress=False)
    xy = tiles.obsm["spatial"]
    assert tiles.n_obs == 6 * 8  # the 300 × 400 px block at 1 µm/px, 50 µm tiles
    assert (xy[:, 0] > 250).all()
    assert (xy[:, 0] < 650).all()
    assert (xy[:, 1] > 200).all()
    assert (xy[:, 1] < 500).all()
    assert list(tiles.var_names) == head.genes
    assert "val_pearson" in tiles.var
    lib = tiles.obs["library_id"].iloc[0]
    entry = tiles.uns["spatial"][lib]
    assert entry["scalefactors"]["microns_per_pixel"] == 1.0
    assert entry["images"]["hires"].dtype == np.uint8
    assert {"array_row", "array_col", "tissue_fraction"} <= set(tiles.obs)
    # band by band from a .npy file, with one tile row per band: the same predictions
    np.save(tmp_path / "slide.npy", img)
    from_file = storm.tl.virtual_st(
        tmp_path / "slide.npy", head, model=model, microns_per_pixel=1.0, tile_um=50, band_tiles=1, progress=False
    )
    np.testing.assert_allclose(from_file.X, tiles.X, rtol=1e-5, atol=1e-5)
    Image.fromarray(img).save(tmp_path / "slide.png")
    from_png = storm.tl.virtual_st(
        tmp_path / "slide.png", head, model=model, microns_per_pixel=1.0, tile_um=50, progress=False
    )
    np.testing.assert_allclose(from_png.X, tiles.X, rtol=1e-5, atol=1e-5)


def test_virtual_st_bad_input(head, model, adata, tmp_path):
    blank = np.full((400, 400, 3), 240, dtype=np.uint8)
    with pytest.raises(ValueError, match="No tissue found"):
        storm.tl.virtual_st(blank, head, model=model, microns_per_pixel=1.0, progress=False)
    with pytest.raises(FileNotFoundError, match="No image file"):
        storm.tl.virtual_st(tmp_path / "missing.jpg", head, model=model, microns_per_pixel=1.0, progress=False)
    with pytest.raises(ValueError, match="microns_per_pixel"):
        storm.tl.virtual_st(_synthetic_slide(), head, model=model, progress=False)
    with pytest.raises(ValueError, match="uint8"):
        storm.tl.virtual_st(np.zeros((50, 50)), head, model=model, microns_per_pixel=1.0, progress=False)
    no_image = adata.copy()
    entry = no_image.uns["spatial"]["top"]
    entry["metadata"] = {k: v for k, v in entry["metadata"].items() if k != "fullres_path"}
    with pytest.raises(ValueError, match="fullres_path"):
        storm.tl.virtual_st(no_image, head, model=model, library_id="top", progress=False)
    with pytest.raises(ValueError, match="library_id"):
        storm.tl.virtual_st(adata, head, model=model, progress=False)


def test_virtual_st_of_an_anndata_slide(head, model, adata):
    tiles = storm.tl.virtual_st(adata, head, model=model, library_id="top", progress=False)
    assert tiles.n_obs > 0
    assert "top" in tiles.uns["spatial"]
    _h, w = adata.uns["spatial"]["top"]["metadata"]["fullres_shape"]
    assert (tiles.obsm["spatial"] >= 0).all()
    assert (tiles.obsm["spatial"][:, 0] < w).all()


def test_virtual_st_tiles_make_two_modality_bags(head, model, adata):
    """virtual_st → embed (image mode) → slide_features: bags with the image embedding and the predicted expression."""
    tiles = {
        lib: storm.tl.virtual_st(adata, head, model=model, library_id=lib, progress=False) for lib in ("top", "bottom")
    }
    for t in tiles.values():
        storm.tl.embed(t, model, mode="image", accelerator="cpu")
    assert not set(tiles["top"].obs_names) & set(tiles["bottom"].obs_names)  # tile names carry the slide
    bags = storm.tl.slide_features(tiles)  # defaults: obsm['X_storm'], and virtual_st's X for 'X_virtual_st'
    assert [b["slide_id"] for b in bags] == ["top", "bottom"]
    for bag, t in zip(bags, tiles.values(), strict=True):
        assert bag["image"].shape == (t.n_obs, model.dim)
        np.testing.assert_array_equal(bag["expression"], t.X)
        assert bag["expression"].shape == (t.n_obs, len(head.genes))
        np.testing.assert_array_equal(bag["obs_names"], t.obs_names)
    other = {"top": tiles["top"], "bottom": tiles["bottom"][:, ::-1]}  # the same genes in another order
    with pytest.raises(ValueError, match="other genes"):
        storm.tl.slide_features(other)


@pytest.mark.slow
def test_downscaled_image_gives_same_physical_patches_and_comparable_predictions(tmp_path):
    """A HER2ST section whose image is a 2× downscaled copy (scale factor given): same tissue, similar predictions."""
    section = real("her2st", "C3")
    genes = [str(g) for g in real("hist2st_genes")][:100]
    model = StormModel.from_pretrained()
    head = storm.tl.train_expression_head(section, genes, model=model, epochs=3, val_groups=(), progress=False)

    factor = 2.0
    small = section.copy()
    entry = small.uns["spatial"]["C3"]
    full = Image.fromarray(storm.io.LazyImage(entry["metadata"]["fullres_path"]).load())
    size = (round(full.width / factor), round(full.height / factor))
    full.resize(size, Image.Resampling.LANCZOS).save(tmp_path / "small.png")
    entry["metadata"] = {**entry["metadata"], "fullres_path": str(tmp_path / "small.png"), "fullres_shape": size[::-1]}
    sf = dict(entry["scalefactors"])
    sf["microns_per_pixel"] = sf["microns_per_pixel"] * factor
    for key in ("spot_pitch_fullres", "spot_diameter_fullres"):
        if key in sf:
            sf[key] = sf[key] / factor
    for key in ("tissue_hires_scalef", "tissue_lowres_scalef"):
        if key in sf:
            sf[key] = sf[key] * factor
    entry["scalefactors"] = sf
    small.obsm["spatial"] = (section.obsm["spatial"] + 0.5) / factor - 0.5

    big_p = np.concatenate(list(storm.pp.extract_patches(section, size_um=55, out_px=64)))
    small_p = np.concatenate(list(storm.pp.extract_patches(small, size_um=55, out_px=64)))
    assert big_p.shape == small_p.shape
    # the same tissue: patch-wise correlation of pixel values is high
    a = big_p.reshape(len(big_p), -1).astype(float)
    b = small_p.reshape(len(small_p), -1).astype(float)
    a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    r_pixels = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
    assert np.median(r_pixels) > 0.9

    p_big = storm.tl.predict_expression(section, head, model=model, progress=False).X
    p_small = storm.tl.predict_expression(small, head, model=model, progress=False).X
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        r = storm.metrics.gene_pearson(p_small, p_big).to_numpy()
    assert np.nanmedian(r) > 0.8, np.nanmedian(r)


def test_plots(head, model, adata, tmp_path):
    import matplotlib.pyplot as plt

    pred = storm.tl.predict_expression(adata, head, model=model, progress=False)
    genes = head.genes[:2]
    fig = storm.pl.expression_maps(pred, genes, measured=adata, library_id="top", show=False)
    assert len(fig.axes) >= 4  # 2 genes × (predicted, measured), plus colour bars
    assert "r " in fig.axes[1].get_title() or "measured" in fig.axes[1].get_title()
    plt.close(fig)
    with pytest.raises(ValueError, match="not predicted"):
        storm.pl.expression_maps(pred, ["NOPE"], show=False)
    rng = np.random.default_rng(0)
    fig = storm.pl.gene_correlations(
        {"storm": rng.uniform(-0.2, 0.6, 100), "ridge": rng.uniform(-0.2, 0.4, 100)},
        top_k=50,
        show=False,
        save=tmp_path / "r.png",
    )
    assert (tmp_path / "r.png").is_file()
    plt.close(fig)
    with pytest.raises(ValueError, match="empty"):
        storm.pl.gene_correlations({}, show=False)


def _restained(adata, lib, tmp_path):
    """A copy of slide ``lib`` whose full-resolution H&E is re-rendered with another lab's stains."""
    from storm.pp import StainProfile, fit_stain_profile, normalize_stain

    other = StainProfile(np.array([[0.70, 0.15], [0.62, 0.85], [0.36, 0.50]]), np.array([1.5, 1.4]))
    out = adata[adata.obs["library_id"] == lib].copy()
    entry = out.uns["spatial"][lib]
    image = storm.io.LazyImage(entry["metadata"]["fullres_path"]).load()
    Image.fromarray(normalize_stain(image, fit_stain_profile(image), other)).save(tmp_path / f"{lib}_restained.png")
    entry["metadata"] = {**entry["metadata"], "fullres_path": str(tmp_path / f"{lib}_restained.png")}
    out.uns["spatial"] = {lib: entry}
    return out


def test_stain_normalised_head_is_robust_to_another_labs_stains(adata, model, tmp_path):
    kwargs = dict(n_top_genes=20, model=model, epochs=2, val_groups=["bottom"], progress=False)
    plain = storm.tl.train_expression_head(adata, **kwargs)
    normed = storm.tl.train_expression_head(adata, stain_norm=True, **kwargs)
    assert plain.setup["stain_target"] is None
    target = storm.pp.StainProfile.from_dict(normed.setup["stain_target"])
    assert target.stain_matrix.shape == (3, 2)
    normed.save(tmp_path / "head")
    assert ExpressionHead.load(tmp_path / "head").setup["stain_target"] == normed.setup["stain_target"]

    original = adata[adata.obs["library_id"] == "bottom"].copy()
    original.uns["spatial"] = {"bottom": adata.uns["spatial"]["bottom"]}
    restained = _restained(adata, "bottom", tmp_path)
    shift = {}
    for name, head in {"plain": plain, "normed": normed}.items():
        before = storm.tl.predict_expression(original, head, model=model, progress=False)
        after = storm.tl.predict_expression(restained, head, model=model, progress=False)
        assert after.uns["predict_expression"]["params"]["stain_normalized"] is (name == "normed")
        shift[name] = float(np.abs(after.X - before.X).mean() / np.abs(before.X - before.X.mean(0)).mean())
    # normalised, the re-stained slide's predictions move far less than as scanned (measured: 0.41 vs 1.17 of the
    # spread across spots with this tiny network and 16-px patches)
    assert shift["normed"] < shift["plain"] / 2, shift
    tiles = storm.tl.virtual_st(restained, normed, model=model, library_id="bottom", progress=False)
    assert tiles.uns["virtual_st"]["params"]["stain_normalized"] is True


def test_val_groups_given_as_one_string_is_one_group():
    assert split_by_group(["C3", "C4", "C5"], val_groups="C3") == (["C4", "C5"], ["C3"])


def test_train_expression_head_warns_on_a_lowres_only_slide(adata, storm_log):
    """55 µm at the low-resolution image's 0.17 scale are 13 px for a 64-px patch: colour, not morphology."""
    model64 = StormModel.setup(adata, n_top_genes=60, net=TINY_NET | {"patch_px": 64}, random_state=0)
    lowres_only = adata.copy()
    for entry in lowres_only.uns["spatial"].values():
        entry["images"] = {"lowres": entry["images"]["lowres"]}
        entry["metadata"] = {k: v for k, v in entry["metadata"].items() if k != "fullres_path"}
    kwargs = {"n_top_genes": 5, "model": model64, "epochs": 1, "val_groups": "bottom", "progress": False}
    storm.tl.train_expression_head(adata, **kwargs)
    assert "too coarse" not in storm_log.text  # the hires image gives 44 px: fine
    storm.tl.train_expression_head(lowres_only, **kwargs)
    expected = r"train_expression_head: the image of slide\(s\) \['top', 'bottom'\] is too coarse"
    assert re.search(expected, storm_log.text)


def test_predict_expression_refuses_a_head_whose_genes_no_longer_match(head, model, adata):
    import copy

    broken = copy.deepcopy(head)
    broken.genes = broken.genes[:-1]
    with pytest.raises(ValueError, match=r"has 20 outputs but 19 names in `head.genes`.*another gene's name"):
        storm.tl.predict_expression(adata, broken, model=model, progress=False)
