import math

import pytest
import torch

from storm.nn import (
    BatchKeys,
    NicheContrastiveLoss,
    StormNetConfig,
    StormPretrainModel,
    batch_window_views,
    drop_genes,
    drop_positions,
    info_nce_loss,
    sample_neighbours,
)

SIDE, G, PITCH = 6, 12, 100.0  # a 6 × 6 grid of spots, 3 × 3 windows


def _grid_windows() -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of every spot of the grid: the centre first, then its 8 grid neighbours (-1 off the grid)."""
    steps = [(0, 0)] + [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    index = torch.full((SIDE * SIDE, len(steps)), -1, dtype=torch.long)
    offsets = torch.zeros(SIDE * SIDE, len(steps), 2)
    for y in range(SIDE):
        for x in range(SIDE):
            for j, (dy, dx) in enumerate(steps):
                if 0 <= y + dy < SIDE and 0 <= x + dx < SIDE:
                    index[y * SIDE + x, j] = (y + dy) * SIDE + x + dx
                    offsets[y * SIDE + x, j] = torch.tensor([dx, dy]) * PITCH
    return index, offsets


def _expression(seed: int = 0) -> torch.Tensor:
    """Two domains (left and right half) with different gene programs, plus noise."""
    g = torch.Generator().manual_seed(seed)
    right = (torch.arange(SIDE * SIDE) % SIDE >= SIDE // 2).float().unsqueeze(1)
    program = torch.cat([torch.ones(G // 2), torch.zeros(G // 2)])
    # each spot also has its own random profile, so that windows tell apart by the spots they hold
    return 2 * (right * program + (1 - right) * program.flip(0)) + 3 * torch.rand(SIDE * SIDE, G, generator=g)


def _net() -> StormPretrainModel:
    torch.manual_seed(0)
    config = StormNetConfig(
        n_genes=G, dim=32, depth=2, heads=2, window_size=9, gene_dim=8,
        image_encoder="none", alibi_scale_um=50.0,
    )  # fmt: skip
    return StormPretrainModel(config)


def _loss(net, criterion, seed: int, *, neighbour: bool = True) -> torch.Tensor:
    """Each window against a neighbour's window (``neighbour``) or against itself, both views augmented."""
    index, offsets = _grid_windows()
    g = torch.Generator().manual_seed(seed)
    other = sample_neighbours(index, offsets, g) if neighbour else torch.arange(len(index))
    views = ((index, offsets), (index[other], offsets[other]))
    return criterion(net, _expression(), torch.ones(G, dtype=torch.bool), views, g)


def _train(net, criterion, steps: int = 40) -> None:
    """Adam on the network and the loss's own parameters, each window against itself, a new seed a step."""
    optimiser = torch.optim.Adam([*net.parameters(), *criterion.parameters()], lr=3e-3)
    for step in range(steps):
        loss = _loss(net, criterion, seed=step, neighbour=False)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()


def test_info_nce_is_log_b_for_identical_rows_and_low_for_matched_pairs():
    b = 8
    same = torch.ones(b, 4)
    assert info_nce_loss(same, same).item() == pytest.approx(math.log(b), rel=1e-5)
    eye = torch.eye(b)
    assert info_nce_loss(eye, eye, temperature=0.1).item() < 0.01
    with pytest.raises(ValueError, match="one shape"):
        info_nce_loss(eye, eye[:3])
    with pytest.raises(ValueError, match="temperature"):
        info_nce_loss(eye, eye, temperature=0.0)


def test_sample_neighbours_picks_a_nearest_grid_neighbour():
    index, offsets = _grid_windows()
    picked = sample_neighbours(index, offsets, torch.Generator().manual_seed(0))
    centre_yx = torch.stack([torch.arange(SIDE * SIDE) // SIDE, torch.arange(SIDE * SIDE) % SIDE], 1)
    step = (centre_yx[picked] - centre_yx).abs().max(1).values
    assert bool((step == 1).all())  # one of the eight around the centre (diagonals at √2 < 1.5), never itself
    far = sample_neighbours(index, offsets, torch.Generator().manual_seed(0), ring=1.2)
    assert bool(((centre_yx[far] - centre_yx).abs().sum(1) == 1).all())  # the four nearest only
    lonely = torch.tensor([[5, -1, -1]])
    assert sample_neighbours(lonely, torch.zeros(1, 3, 2)).tolist() == [5]


def test_drops_keep_the_centre_and_measured_genes_only():
    g = torch.Generator().manual_seed(0)
    index, _ = _grid_windows()
    dropped = drop_positions(index, 0.5, g)
    assert torch.equal(dropped[:, 0], index[:, 0])
    assert bool(((dropped == index) | (dropped == -1)).all())
    assert bool((dropped == -1).sum() > (index == -1).sum())
    mask = torch.ones(10, G, dtype=torch.bool)
    mask[:, 0] = False
    kept = drop_genes(mask, 0.3, g)
    assert not kept[:, 0].any()
    assert 0 < kept.float().mean() < 1


@pytest.mark.parametrize("neighbour", [True, False])
def test_niche_contrastive_loss_is_finite_and_deterministic(neighbour):
    net, criterion = _net(), NicheContrastiveLoss(32, proj_dim=16)
    loss = _loss(net, criterion, seed=7, neighbour=neighbour)
    assert torch.isfinite(loss)
    assert 0 < loss.item() < math.log(SIDE * SIDE) + 1
    assert _loss(net, criterion, seed=7, neighbour=neighbour).item() == loss.item()  # one seed, one loss
    assert _loss(net, criterion, seed=8, neighbour=neighbour).item() != loss.item()  # the augmentations are drawn


def test_niche_contrastive_loss_decreases_on_a_toy_slide():
    # two views of each window: 36 overlapping windows of a 6 × 6 grid are 36 classes to tell apart
    net, criterion = _net(), NicheContrastiveLoss(32, proj_dim=16)
    before = _loss(net, criterion, seed=7, neighbour=False).item()
    _train(net, criterion)
    assert _loss(net, criterion, seed=7, neighbour=False).item() < 0.85 * before


def test_niche_contrastive_loss_refuses_bad_input():
    with pytest.raises(ValueError, match="p_gene"):
        NicheContrastiveLoss(32, p_gene=1.0)
    index, offsets = _grid_windows()
    with pytest.raises(ValueError, match="pair them one to one"):
        NicheContrastiveLoss(32)(_net(), _expression(), torch.ones(G, dtype=torch.bool),
                                 ((index, offsets), (index[:3], offsets[:3])))  # fmt: skip


def test_batch_window_views_flattens_windows_and_drops_those_without_expression():
    expr = torch.arange(3 * 4 * 2, dtype=torch.float32).view(3, 4, 2)
    batch = {
        BatchKeys.EXPR: expr,
        BatchKeys.OFFSETS: torch.randn(3, 4, 2),
        BatchKeys.GENE_MASK: torch.tensor([[True, False], [True, True], [True, True]]),
        BatchKeys.POS_MASK: torch.tensor([[1, 1, 0, 1], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.bool),
        BatchKeys.HAS_EXPR: torch.tensor([True, False, True]),  # the second window: a slide without expression
    }
    rows, mask, ((index_a, offsets_a), (index_b, offsets_b)) = batch_window_views(batch)
    assert rows.shape == mask.shape == (8, 2)  # windows 0 and 2, four positions each
    torch.testing.assert_close(rows, torch.cat([expr[0], expr[2]]))
    assert not mask[:4, 1].any()
    assert mask[4:].all()
    assert index_a.tolist() == [[0, 1, -1, 3], [4, 5, 6, 7]]  # padding stays padding
    assert index_a is index_b
    assert offsets_a is offsets_b
    torch.testing.assert_close(offsets_a, batch[BatchKeys.OFFSETS][[0, 2]])
    with pytest.raises(ValueError, match="no expression"):
        batch_window_views({BatchKeys.OFFSETS: torch.zeros(1, 1, 2)})
