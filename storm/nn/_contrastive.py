"""A structure-aware self-supervised objective: contrast niche embeddings of two views of one niche.

Masked reconstruction moves a spot's tokens towards what predicts its neighbours' expression, which at storm-mini's
scale lowers domain quality (``benchmarks/pretraining_steps.py``). Here the niche embedding (the mean of a window's
output tokens, what :func:`storm.tl.domains` clusters) is trained to be the same for two views of one niche and
different from the other windows of the batch (InfoNCE; Oord et al. 2018, SimCLR's NT-Xent; Chen et al. 2020):

- ``"neighbour"``: the second view is the window centred on a random nearest neighbour of the first window's centre
  (two overlapping windows of one niche, the positive pair of Novae's and GraphST's contrastive terms);
- ``"window"``: the second view is the same window.

Both views are augmented: each spot loses a random share of its genes (they count as unmeasured) and each window a
random share of its non-centre spots. Tensors in, a loss out; the training loop lives above :mod:`storm.nn`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._batch import BatchKeys

__all__ = [
    "NicheContrastiveLoss",
    "batch_window_views",
    "drop_genes",
    "drop_positions",
    "info_nce_loss",
    "sample_neighbours",
]


def info_nce_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Symmetric InfoNCE of paired rows: row ``i`` of ``a`` against every row of ``b``, its positive ``b[i]``.

    Parameters
    ----------
    a, b
        ``(B, D)`` embeddings of the two views (compared by cosine similarity).
    temperature
        Softmax temperature of the similarities.

    Returns
    -------
    torch.Tensor
        Scalar: the mean of the two directions' cross-entropies (``log B`` for unrelated views).
    """
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"a and b must be (B, D) of one shape, got {tuple(a.shape)} and {tuple(b.shape)}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).T / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def sample_neighbours(
    index: torch.Tensor, offsets_um: torch.Tensor, generator: torch.Generator | None = None, *, ring: float = 1.5
) -> torch.Tensor:
    """Pick, per window, a random spot among the nearest neighbours of its centre.

    The nearest neighbours are the valid non-centre positions within ``ring`` times the window's smallest
    centre distance: with the default, the six of a Visium hexagon, the eight of a square ST grid (diagonals at
    √2 times the pitch).

    Parameters
    ----------
    index
        Long ``(B, W)`` spot rows of each window, position 0 = centre, ``-1`` = padding.
    offsets_um
        ``(B, W, 2)`` µm offsets from the centre.
    generator
        Random generator (on ``index``'s device).
    ring
        Neighbour radius as a multiple of the nearest distance.

    Returns
    -------
    torch.Tensor
        Long ``(B,)`` spot rows; the centre itself for a window without neighbours.
    """
    dist = offsets_um.float().norm(dim=-1)
    candidate = index >= 0
    candidate[:, 0] = False
    nearest = torch.where(candidate, dist, torch.full_like(dist, float("inf"))).min(1, keepdim=True).values
    candidate &= dist <= ring * nearest
    scores = torch.rand(index.shape, generator=generator, device=index.device).masked_fill(~candidate, -1.0)
    pick = scores.argmax(1)
    rows = index.gather(1, pick.unsqueeze(1)).squeeze(1)
    return torch.where(candidate.any(1), rows, index[:, 0])


def drop_positions(index: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mark a random share of each window's non-centre positions as padding; the centre stays.

    Parameters
    ----------
    index
        Long ``(B, W)`` spot rows of each window, position 0 = centre, ``-1`` = padding.
    p
        Probability that a non-centre position is dropped.
    generator
        Random generator (on ``index``'s device).

    Returns
    -------
    torch.Tensor
        ``index`` with the dropped positions set to ``-1``.
    """
    drop = torch.rand(index.shape, generator=generator, device=index.device) < p
    drop[:, 0] = False
    return index.masked_fill(drop, -1)


def drop_genes(gene_mask: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mark a random share of each spot's measured genes as unmeasured.

    Parameters
    ----------
    gene_mask
        ``(N, G)`` bool measured genes per spot.
    p
        Probability that a gene of a spot is dropped.
    generator
        Random generator (on ``gene_mask``'s device).

    Returns
    -------
    torch.Tensor
        ``(N, G)`` bool: measured and kept.
    """
    keep = torch.rand(gene_mask.shape, generator=generator, device=gene_mask.device) >= p
    return gene_mask.bool() & keep


def batch_window_views(
    batch: Mapping[str, Any],
) -> tuple[torch.Tensor, torch.Tensor, tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]]:
    """Turn the windows of a pretraining batch into ``"window"`` views of themselves, a niche objective's input.

    A batch of windows (:class:`BatchKeys`) holds each window's spots, not the windows of their neighbours, so the
    two views of a window are the window itself twice (the augmentations of the niche objective tell them
    apart). Windows whose centre has no expression (a slide read from its image alone) are left out.

    Parameters
    ----------
    batch
        Dict with ``EXPR`` ``(B, W, G)``, ``OFFSETS`` ``(B, W, 2)`` and optionally ``GENE_MASK``, ``POS_MASK`` and
        ``HAS_EXPR``.

    Returns
    -------
    tuple
        ``(expr, gene_mask, views)`` as :class:`~storm.nn.NichePrototypeLoss` and
        :class:`~storm.nn.NicheContrastiveLoss` take them: ``(N, G)`` expression and gene mask of the kept windows'
        positions, and the same ``(index, offsets)`` view twice (``index`` ``-1`` at padded positions and positions
        without expression). ``N`` is 0 when no window has expression.
    """
    expr = batch.get(BatchKeys.EXPR)
    if expr is None:
        raise ValueError("The batch has no expression (`BatchKeys.EXPR`): a niche objective needs it.")
    n_windows, width, n_genes = expr.shape
    offsets = batch[BatchKeys.OFFSETS]
    valid = batch.get(BatchKeys.POS_MASK)
    valid = torch.ones(n_windows, width, dtype=torch.bool, device=expr.device) if valid is None else valid.bool()
    has_expr = batch.get(BatchKeys.HAS_EXPR)
    if has_expr is not None:
        has_expr = has_expr.bool()
        valid = valid & (has_expr.unsqueeze(1) if has_expr.ndim == 1 else has_expr)
    gene_mask = batch.get(BatchKeys.GENE_MASK)
    if gene_mask is None:
        gene_mask = torch.ones(n_windows, width, n_genes, dtype=torch.bool, device=expr.device)
    elif gene_mask.ndim == 2:
        gene_mask = gene_mask.bool().unsqueeze(1).expand(n_windows, width, n_genes)
    keep = valid[:, 0]
    valid, offsets = valid[keep], offsets[keep]
    rows = torch.arange(valid.numel(), device=expr.device).view(valid.shape)
    index = torch.where(valid, rows, torch.full_like(rows, -1))
    view = (index, offsets)
    return expr[keep].reshape(-1, n_genes), gene_mask[keep].reshape(-1, n_genes), (view, view)


class TwoViewNicheLoss(nn.Module):
    """Base of the objectives on two augmented views of each window: the augmentations and a projection head.

    A small projection head sits between the niche embedding and the loss (SimCLR's finding: the embedding before
    the head keeps more of the input). Train the head with the network. A subclass says how the two views'
    projections are compared (:meth:`compare`).

    Parameters
    ----------
    dim
        Width of the niche embedding (the network's ``dim``).
    proj_dim
        Width of the projection.
    p_gene
        Share of each spot's genes dropped per view.
    p_spot
        Share of each window's non-centre spots dropped per view.
    """

    def __init__(self, dim: int, *, proj_dim: int = 64, p_gene: float = 0.3, p_spot: float = 0.2) -> None:
        super().__init__()
        for name, value in (("p_gene", p_gene), ("p_spot", p_spot)):
            if not 0 <= value < 1:
                raise ValueError(f"`{name}` must be in [0, 1), got {value}.")
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, proj_dim))
        self.p_gene = float(p_gene)
        self.p_spot = float(p_spot)

    def niche(
        self,
        net: nn.Module,
        expr: torch.Tensor,
        gene_mask: torch.Tensor,
        index: torch.Tensor,
        offsets_um: torch.Tensor,
        generator: torch.Generator | None,
    ) -> torch.Tensor:
        """Niche embeddings ``(B, dim)`` of one augmented view, with gradients to ``net``."""
        mask = drop_genes(gene_mask.expand_as(expr), self.p_gene, generator)
        spots: Mapping[str, torch.Tensor] = net.spot_features(expr=expr, gene_mask=mask)
        index = drop_positions(index, self.p_spot, generator)
        return net.embed_windows(spots, index, offsets_um, niche=True)[1]

    def compare(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Scalar loss of the ``(B, proj_dim)`` projections of the two views (row ``i`` of each: one niche)."""
        raise NotImplementedError

    def forward(
        self,
        net: nn.Module,
        expr: torch.Tensor,
        gene_mask: torch.Tensor,
        views: tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Loss of a batch of window pairs.

        Parameters
        ----------
        net
            A :class:`~storm.nn.StormPretrainModel` with an expression encoder.
        expr
            ``(N, G)`` normalised expression of the spots the windows touch.
        gene_mask
            ``(G,)`` or ``(N, G)`` bool measured genes.
        views
            ``((index_a, offsets_a), (index_b, offsets_b))``: each a long ``(B, W)`` row of ``expr`` per window
            position (``-1`` padding) and its ``(B, W, 2)`` µm offsets; window ``i`` of ``a`` and of ``b`` are
            the two views of one niche.
        generator
            Random generator of the augmentations.

        Returns
        -------
        torch.Tensor
            Scalar loss (:meth:`compare` of the two views' projections).
        """
        (index_a, offsets_a), (index_b, offsets_b) = views
        if index_a.shape[0] != index_b.shape[0]:
            raise ValueError(f"The views hold {index_a.shape[0]} and {index_b.shape[0]} windows; pair them one to one.")
        za = self.niche(net, expr, gene_mask, index_a, offsets_a, generator)
        zb = self.niche(net, expr, gene_mask, index_b, offsets_b, generator)
        return self.compare(self.head(za), self.head(zb))


class NicheContrastiveLoss(TwoViewNicheLoss):
    """InfoNCE between the niche embeddings of two augmented views of each window (see the module docstring).

    Parameters
    ----------
    dim
        Width of the niche embedding (the network's ``dim``).
    proj_dim
        Width of the projection.
    temperature
        InfoNCE temperature.
    p_gene
        Share of each spot's genes dropped per view.
    p_spot
        Share of each window's non-centre spots dropped per view.
    """

    def __init__(
        self, dim: int, *, proj_dim: int = 64, temperature: float = 0.1, p_gene: float = 0.3, p_spot: float = 0.2
    ) -> None:
        super().__init__(dim, proj_dim=proj_dim, p_gene=p_gene, p_spot=p_spot)
        self.temperature = float(temperature)

    def compare(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE of the two views, the other windows of the batch as negatives."""
        return info_nce_loss(a, b, self.temperature)
