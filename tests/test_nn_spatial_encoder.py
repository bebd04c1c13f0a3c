import pytest
import torch

from storm.nn import MultiwayBlock, SpatialEncoder, apply_per_segment, centre_embedding

B, W, D_IMG, D_EXPR, DIM = 3, 9, 12, 10, 16


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    feats = {"image": torch.randn(B, W, D_IMG, generator=g), "expression": torch.randn(B, W, D_EXPR, generator=g)}
    offsets = torch.randn(B, W, 2, generator=g) * 100
    offsets[:, 0] = 0
    valid = torch.ones(B, W, dtype=torch.bool)
    valid[:, -3:] = False  # padded positions
    return feats, offsets, valid


def _encoder(**kw) -> SpatialEncoder:
    torch.manual_seed(0)
    return SpatialEncoder(DIM, depth=2, heads=2, input_dims={"image": D_IMG, "expression": D_EXPR}, **kw).eval()


def test_shapes_and_centre_embedding():
    enc = _encoder()
    feats, offsets, valid = _inputs()
    out = enc(feats, offsets, {"image": valid, "expression": valid})
    assert out.tokens.shape == (B, 2 * W, DIM)
    assert out.token_valid.shape == (B, 2 * W)
    assert out.positions_um.shape == (B, 2 * W, 2)
    img, img_valid = out.segment("image")
    expr, _ = out.segment("expression")
    assert img.shape == (B, W, DIM)
    assert img_valid.dtype == torch.bool
    centre = out.centre_embedding()
    assert centre.shape == (B, DIM)
    assert torch.allclose(centre, (img[:, 0] + expr[:, 0]) / 2, atol=1e-6)


def test_centre_embedding_uses_available_modalities_only():
    tokens = torch.arange(2 * 4 * 3, dtype=torch.float32).view(2, 4, 3)  # B=2, 2 modalities × W=2
    valid = torch.tensor([[True, True, False, True], [False, False, False, False]])
    out = centre_embedding(tokens, valid, window=2)
    assert torch.equal(out[0], tokens[0, 0])  # expression centre token invalid: image only
    assert torch.equal(out[1], torch.zeros(3))  # nothing at the centre: zeros


def test_padded_positions_do_not_influence_valid_tokens():
    enc = _encoder()
    feats, offsets, valid = _inputs()
    masks = {"image": valid, "expression": valid}
    ref = enc(feats, offsets, masks)
    feats2 = {k: v.clone() for k, v in feats.items()}
    feats2["image"][:, -3:] = float("nan")
    feats2["expression"][:, -3:] = 1e6
    offsets2 = offsets.clone()
    offsets2[:, -3:] = float("nan")
    out = enc(feats2, offsets2, masks)
    keep = ref.token_valid
    assert torch.isfinite(out.tokens[keep]).all()
    assert torch.allclose(out.tokens[keep], ref.tokens[keep], atol=1e-5)
    assert torch.allclose(out.centre_embedding(), ref.centre_embedding(), atol=1e-5)


@pytest.mark.parametrize("present", [("image",), ("expression",), ("image", "expression")])
def test_works_with_any_subset_of_modalities(present):
    enc = _encoder()
    feats, offsets, valid = _inputs()
    feats = {m: (feats[m] if m in present else None) for m in feats}
    out = enc(feats, offsets, dict.fromkeys(present, valid))
    assert torch.isfinite(out.tokens).all()
    n_valid_centre = out.token_valid[:, ::W].sum(1)
    assert torch.all(n_valid_centre == len(present))
    assert torch.isfinite(out.centre_embedding()).all()


def test_each_modality_goes_through_its_own_expert():
    torch.manual_seed(0)
    block = MultiwayBlock(DIM, 2, n_modalities=2).eval()
    x = torch.randn(B, 2 * W, DIM)
    mask = torch.zeros(B, 2, 2 * W, 2 * W)
    ref = block(x, [W, W], mask)
    with torch.no_grad():
        for p in block.experts[0].parameters():  # image expert
            p.zero_()
    out = block(x, [W, W], mask)
    assert not torch.allclose(out[:, :W], ref[:, :W])  # image tokens changed
    assert torch.equal(out[:, W:], ref[:, W:])  # expression tokens untouched

    hits = []
    block.experts[1].register_forward_hook(lambda mod, inp, outp: hits.append(inp[0].shape))
    block(x, [W, W], mask)
    assert hits == [torch.Size([B, W, DIM])]  # the expression expert saw exactly the W expression tokens


def test_expert_routing_in_the_full_encoder():
    enc = SpatialEncoder(DIM, depth=1, heads=2, input_dims={"image": D_IMG, "expression": D_EXPR}).eval()
    feats, offsets, valid = _inputs()
    masks = {"image": valid, "expression": valid}
    ref = enc(feats, offsets, masks).tokens
    with torch.no_grad():
        for p in enc.blocks[0].experts[1].parameters():
            p.add_(0.5)
    out = enc(feats, offsets, masks).tokens
    assert torch.equal(out[:, :W], ref[:, :W])
    assert not torch.allclose(out[:, W:], ref[:, W:])


def test_apply_per_segment_validates_sizes():
    mods = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
    with pytest.raises(ValueError, match="add up"):
        apply_per_segment(mods, torch.zeros(1, 5, 2), [2, 2])


def test_feature_shape_mismatch_is_reported():
    enc = _encoder()
    feats, offsets, valid = _inputs()
    feats["image"] = feats["image"][:, :4]
    with pytest.raises(ValueError, match="image features"):
        enc(feats, offsets, {"image": valid, "expression": valid})
