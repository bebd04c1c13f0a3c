import math

import pytest
import torch
from test_nn_contrastive import SIDE, G, _expression, _grid_windows, _loss, _net, _train

from storm.nn import NichePrototypeLoss, sinkhorn_codes

K = 16  # prototypes of the toy loss: more than the toy slide's two domains, fewer than its 36 windows


def _criterion() -> NichePrototypeLoss:
    torch.manual_seed(0)
    return NichePrototypeLoss(32, n_prototypes=K, proj_dim=16)


def test_sinkhorn_codes_are_balanced_where_the_softmax_is_not():
    # every row prefers prototype 0: a softmax gives it the whole batch, Sinkhorn-Knopp an equal share
    b, k = 32, 8
    scores = 0.1 * torch.randn(b, k, generator=torch.Generator().manual_seed(0))
    scores[:, 0] += 1.0
    assert torch.softmax(scores / 0.05, -1)[:, 0].sum() > 0.9 * b
    codes = sinkhorn_codes(scores, epsilon=0.05, n_iterations=3)
    assert torch.allclose(codes.sum(1), torch.ones(b), atol=1e-5)  # each window's codes are a distribution
    assert torch.allclose(codes.sum(0), torch.full((k,), b / k), rtol=0.2)  # each prototype ~ B / K windows
    tight = sinkhorn_codes(scores, epsilon=0.05, n_iterations=50)
    assert torch.allclose(tight.sum(0), torch.full((k,), b / k), rtol=1e-3)
    assert sinkhorn_codes(scores.requires_grad_()).grad_fn is None  # codes are targets, without gradient


def test_sinkhorn_codes_keep_the_preferred_prototype_of_a_balanced_batch():
    # four rows per prototype, each row nearest its own: the balanced codes are (nearly) one-hot on it
    owner = torch.arange(8).repeat_interleave(4)
    scores = torch.nn.functional.one_hot(owner, 8).float()
    codes = sinkhorn_codes(scores)
    assert torch.equal(codes.argmax(1), owner)
    assert codes.max(1).values.min() > 0.99


@pytest.mark.parametrize("neighbour", [True, False])
def test_niche_prototype_loss_is_finite_and_deterministic(neighbour):
    net, criterion = _net(), _criterion()
    loss = _loss(net, criterion, seed=7, neighbour=neighbour)
    assert torch.isfinite(loss)
    assert loss.item() > 0
    assert _loss(net, criterion, seed=7, neighbour=neighbour).item() == loss.item()  # one seed, one loss
    assert _loss(net, criterion, seed=8, neighbour=neighbour).item() != loss.item()  # the augmentations are drawn
    again = _loss(_net(), _criterion(), seed=7, neighbour=neighbour)  # one torch seed, one initialisation
    assert again.item() == loss.item()


def test_niche_prototype_loss_trains_the_network_and_the_prototypes():
    net, criterion = _net(), _criterion()
    _loss(net, criterion, seed=0).backward()
    assert criterion.prototypes.grad is not None
    assert criterion.prototypes.grad.abs().sum() > 0
    assert all(p.grad is not None for p in criterion.head.parameters())
    assert sum(p.grad.abs().sum() for p in net.encoder.parameters() if p.grad is not None) > 0


def test_niche_prototype_loss_decreases_on_a_toy_slide():
    # two re-dropped views of each of the 36 windows, whose codes must agree
    net, criterion = _net(), _criterion()
    before = _loss(net, criterion, seed=7, neighbour=False).item()
    _train(net, criterion)
    after = _loss(net, criterion, seed=7, neighbour=False).item()
    assert after < 0.7 * before
    assert after < math.log(K)  # below a uniform prediction: each view predicts the other's codes


def test_niche_prototype_loss_refuses_bad_input():
    for kwargs, match in [
        ({"n_prototypes": 1}, "n_prototypes"),
        ({"temperature": 0.0}, "temperature"),
        ({"epsilon": -1.0}, "epsilon"),
        ({"sinkhorn_iterations": 0}, "sinkhorn_iterations"),
        ({"p_spot": 1.0}, "p_spot"),
    ]:
        with pytest.raises(ValueError, match=match):
            NichePrototypeLoss(32, **kwargs)
    index, offsets = _grid_windows()
    with pytest.raises(ValueError, match="pair them one to one"):
        _criterion()(_net(), _expression(), torch.ones(G, dtype=torch.bool),
                     ((index, offsets), (index[:3], offsets[:3])))  # fmt: skip
    for scores, match in [(torch.ones(SIDE), "matrix"), (torch.ones(0, 4), "matrix")]:
        with pytest.raises(ValueError, match=match):
            sinkhorn_codes(scores)
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_codes(torch.ones(4, 4), epsilon=0)
    with pytest.raises(ValueError, match="n_iterations"):
        sinkhorn_codes(torch.ones(4, 4), n_iterations=0)
