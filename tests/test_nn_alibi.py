import math

import pytest
import torch

from storm.nn import alibi_slopes, attention_mask, spatial_alibi_bias


def test_slopes_follow_press_et_al():
    s8 = alibi_slopes(8)
    assert torch.allclose(s8, torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    s4 = alibi_slopes(4)
    assert torch.allclose(s4, torch.tensor([2.0 ** (-2 * (i + 1)) for i in range(4)]))
    s6 = alibi_slopes(6)  # not a power of two: 4 slopes of n=4, then every other slope of n=8
    assert torch.allclose(s6, torch.tensor([0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125]))
    with pytest.raises(ValueError, match="n_heads"):
        alibi_slopes(0)


def test_bias_decreases_with_distance_and_is_zero_at_same_position():
    # tokens 0 and 1 share a position (a spot's image and expression tokens); 2 and 3 are farther away
    pos = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [100.0, 0.0], [0.0, 300.0]]])
    slopes = alibi_slopes(4)
    bias = spatial_alibi_bias(pos, slopes, scale_um=100.0)
    assert bias.shape == (1, 4, 4, 4)
    assert torch.all(bias[:, :, 0, 1] == 0)
    assert torch.all(bias.diagonal(dim1=-2, dim2=-1) == 0)
    assert torch.all(bias[:, :, 0, 2] < bias[:, :, 0, 1])
    assert torch.all(bias[:, :, 0, 3] < bias[:, :, 0, 2])
    assert torch.allclose(bias[0, :, 0, 3], -slopes * 3.0)
    assert torch.allclose(bias, bias.transpose(-1, -2))  # symmetric
    # a diagonal offset uses the Euclidean distance
    diag = spatial_alibi_bias(torch.tensor([[[0.0, 0.0], [30.0, 40.0]]]), slopes, 50.0)
    assert torch.allclose(diag[0, :, 0, 1], -slopes * 1.0)
    with pytest.raises(ValueError, match="scale_um"):
        spatial_alibi_bias(pos, slopes, 0.0)


def test_attention_mask_blocks_invalid_keys_but_keeps_self():
    bias = torch.zeros(1, 2, 3, 3)
    mask = attention_mask(bias, torch.tensor([[True, False, True]]))
    assert math.isinf(mask[0, 0, 0, 1])
    assert mask[0, 0, 0, 1] < 0
    assert mask[0, 0, 1, 1] == 0  # a padded query still sees itself: no all -inf row, no NaN
    assert torch.isfinite(mask[0, :, :, 0]).all()
    q = torch.randn(1, 2, 3, 4)
    out = torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=mask)
    assert torch.isfinite(out).all()
