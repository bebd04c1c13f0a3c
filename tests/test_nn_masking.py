import pytest
import torch

from storm.nn import sample_modality_drop, sample_position_mask


def test_keeps_exactly_n_visible_valid_positions():
    pos_mask = torch.ones(50, 25, dtype=torch.bool)
    pos_mask[10:20, 8:] = False  # 8 valid
    pos_mask[20:30, 3:] = False  # 3 valid: fewer than n_visible → all visible
    pos_mask[30:35] = False  # none valid
    vis = sample_position_mask(pos_mask, n_visible=5, generator=torch.Generator().manual_seed(0))
    assert vis.dtype == torch.bool
    assert vis.shape == pos_mask.shape
    assert not (vis & ~pos_mask).any()  # never an invalid position
    expected = pos_mask.sum(1).clamp(max=5)
    assert torch.equal(vis.sum(1), expected)
    assert torch.equal(vis[20:30], pos_mask[20:30])


def test_masks_are_random_and_reproducible():
    pos_mask = torch.ones(200, 25, dtype=torch.bool)
    a = sample_position_mask(pos_mask, 5, generator=torch.Generator().manual_seed(1))
    b = sample_position_mask(pos_mask, 5, generator=torch.Generator().manual_seed(1))
    c = sample_position_mask(pos_mask, 5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    freq = a.float().mean(0)  # every position, centre included, visible about 5/25 of the time
    assert freq.min() > 0.08
    assert freq.max() < 0.35
    with pytest.raises(ValueError, match="n_visible"):
        sample_position_mask(pos_mask, -1)


def test_modality_drop_only_in_complete_windows_and_one_at_a_time():
    b = 400
    present = {"image": torch.ones(b, 4, dtype=torch.bool), "expression": torch.ones(b, 4, dtype=torch.bool)}
    present["expression"][:100] = False  # windows without expression: nothing may be dropped
    drop = sample_modality_drop(present, 0.25, torch.Generator().manual_seed(0))
    assert not drop["image"][:100].any()
    assert not drop["expression"][:100].any()
    assert not (drop["image"] & drop["expression"]).any()
    assert 0.15 < drop["image"][100:].float().mean() < 0.35
    none = sample_modality_drop(present, 0.0)
    assert not any(v.any() for v in none.values())
    with pytest.raises(ValueError, match="p_drop"):
        sample_modality_drop(present, 0.6)
