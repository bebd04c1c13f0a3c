import pytest
import torch

from storm.nn import RGB_FROM_HED, ConvImageEncoder, ImageEncoder, StainTextureFeaturizer, rgb_to_hed, to_unit_float


def _stained_patch(concentration: float, stain: int, seed: int, size: int = 24) -> torch.Tensor:
    """A uint8 patch of one pure stain (Beer–Lambert), with a little noise."""
    m = torch.tensor(RGB_FROM_HED)
    m = m / m.norm(dim=1, keepdim=True)
    rgb = 10 ** (-concentration * m[stain])
    g = torch.Generator().manual_seed(seed)
    x = rgb.view(1, 3, 1, 1) + 0.03 * torch.randn(1, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("px", [16, 40])
def test_conv_encoder_shapes_and_input_types(px):
    torch.manual_seed(0)
    enc = ConvImageEncoder(24, widths=(8, 16)).eval()
    assert isinstance(enc, ImageEncoder)
    assert enc.out_dim == 24
    x = torch.randint(0, 256, (5, 3, px, px), dtype=torch.uint8)
    out = enc(x)
    assert out.shape == (5, 24)
    assert torch.isfinite(out).all()
    assert torch.allclose(enc(x.float() / 255), out, atol=1e-5)  # uint8 and [0, 1] float agree
    # GroupNorm: a patch's features do not depend on its batch-mates
    assert torch.allclose(enc(x[:1]), out[:1], atol=1e-5)


def test_conv_encoder_default_size_and_gradients():
    enc = ConvImageEncoder()
    n = sum(p.numel() for p in enc.parameters())
    assert 1_000_000 < n < 3_000_000
    x = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    enc(x).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in enc.parameters())


def test_to_unit_float_validates():
    with pytest.raises(ValueError, match="RGB patches"):
        to_unit_float(torch.zeros(2, 4, 8, 8))
    with pytest.raises(TypeError, match="uint8 or float"):
        to_unit_float(torch.zeros(2, 3, 8, 8, dtype=torch.int32))


def test_rgb_to_hed_recovers_a_pure_stain():
    hed = rgb_to_hed(_stained_patch(0.8, 0, seed=0).float() / 255)
    assert hed[:, 0].mean() > 0.6  # haematoxylin
    assert hed[:, 1].abs().mean() < 0.1
    assert hed[:, 2].abs().mean() < 0.1
    white = rgb_to_hed(torch.ones(1, 3, 4, 4))
    assert white.abs().max() < 1e-2


def test_stain_featurizer_is_deterministic_and_separates_eosin_from_haematoxylin():
    feat = StainTextureFeaturizer()
    assert not list(feat.parameters())
    assert feat.trainable is False
    assert len(feat.feature_names) == feat.out_dim
    pink = torch.cat([_stained_patch(0.6, 1, seed=s) for s in range(3)])  # eosin
    purple = torch.cat([_stained_patch(0.8, 0, seed=s) for s in range(3)])  # haematoxylin
    x = torch.cat([pink, purple])
    out = feat(x)
    assert out.shape == (6, feat.out_dim)
    assert torch.isfinite(out).all()
    assert torch.equal(out, feat(x.clone()))  # deterministic
    # independent of the batch (up to rounding: multi-threaded convolutions block by batch size)
    assert torch.allclose(out[:1], feat(x[:1]), atol=1e-6)
    h = feat.feature_names.index("hed_h_mean")
    e = feat.feature_names.index("hed_e_mean")
    assert out[3:, h].min() > out[:3, h].max()
    assert out[:3, e].min() > out[3:, e].max()
    assert feat(x[:0]).shape == (0, feat.out_dim)


def test_stain_featurizer_texture_responds_to_structure():
    feat = StainTextureFeaturizer()
    flat = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)
    stripes = flat.clone()
    stripes[..., ::4, :] = 60
    out = feat(torch.cat([flat, stripes]))
    grad = feat.feature_names.index("grad_mean")
    gabor = [i for i, n in enumerate(feat.feature_names) if n.startswith("gabor")]
    assert out[1, grad] > out[0, grad] + 0.01
    assert out[1, gabor].sum() > out[0, gabor].sum()
    lbp = [i for i, n in enumerate(feat.feature_names) if n.startswith("lbp")]
    assert torch.allclose(out[:, lbp].sum(1), torch.ones(2))
