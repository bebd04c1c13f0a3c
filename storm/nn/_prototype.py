"""A structure-aware self-supervised objective: swapped prototype assignment of two views of one niche.

Novae's objective (Blampey et al. 2024), after SwAV (Caron et al. 2020). The niche embedding of a window (what
:func:`storm.tl.domains` clusters) is projected and compared, by cosine similarity, with a set of learnable unit
prototypes. The codes of a batch, its soft assignment to the prototypes, are made balanced by a few Sinkhorn-Knopp
iterations (every prototype gets an equal share of the batch, so the windows cannot all collapse onto one), without
gradient. Each view is then trained to predict the other view's codes from its own similarities (swapped
prediction). Unlike InfoNCE (:class:`~storm.nn.NicheContrastiveLoss`) no window of the batch is pushed away from
another: two windows of one tissue domain may share prototypes, which is what a domain clustering wants.

The two views are those of the contrastive objective: a window and the window of a nearest neighbour of its centre
(``"neighbour"``), or a window and itself (``"window"``), each with gene and spot dropout. Tensors in, a loss out;
the training loop lives above :mod:`storm.nn`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._contrastive import TwoViewNicheLoss

__all__ = ["NichePrototypeLoss", "sinkhorn_codes"]


@torch.no_grad()
def sinkhorn_codes(scores: torch.Tensor, *, epsilon: float = 0.05, n_iterations: int = 3) -> torch.Tensor:
    """Balanced soft assignment of a batch to prototypes (Sinkhorn-Knopp; Cuturi 2013, SwAV's codes).

    Alternately rescales ``exp(scores / epsilon)`` so that every prototype holds ``1 / K`` of the batch's mass and
    every row ``1 / B``, ending with the rows: each row of the result sums to 1 exactly, each prototype's column to
    about ``B / K`` (closer with more iterations). Computed without gradient.

    Parameters
    ----------
    scores
        ``(B, K)`` similarities of ``B`` embeddings to ``K`` prototypes.
    epsilon
        Entropic regularisation: smaller gives sharper codes.
    n_iterations
        Sinkhorn-Knopp iterations (one = a prototype pass and a row pass).

    Returns
    -------
    torch.Tensor
        ``(B, K)`` codes, rows summing to 1.
    """
    if scores.ndim != 2 or min(scores.shape) == 0:
        raise ValueError(f"scores must be a non-empty (B, K) matrix, got shape {tuple(scores.shape)}.")
    if epsilon <= 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}.")
    if n_iterations < 1:
        raise ValueError(f"n_iterations must be >= 1, got {n_iterations}.")
    n_rows, n_prototypes = scores.shape
    # subtracting the maximum leaves the result unchanged (every rescaling is relative) and keeps exp finite
    codes = torch.exp((scores.float() - scores.max()) / epsilon)
    codes /= codes.sum()
    for _ in range(n_iterations):
        codes /= codes.sum(0, keepdim=True) * n_prototypes
        codes /= codes.sum(1, keepdim=True) * n_rows
    return codes * n_rows


class NichePrototypeLoss(TwoViewNicheLoss):
    """Swapped prediction of balanced prototype codes between two views of each window (see the module docstring).

    Parameters
    ----------
    dim
        Width of the niche embedding (the network's ``dim``).
    n_prototypes
        Number of prototypes. The default, 256, is that of Novae's first releases; SwAV found the number matters
        little once it is well above the number of classes, and 256 is far above the 5 to 20 domains a section is
        cut into (the prototypes over-cluster; :func:`storm.tl.domains` clusters the embedding afterwards). With
        fewer windows a batch than prototypes, the balanced codes spread each window over several prototypes.
    proj_dim
        Width of the projection (and of the prototypes).
    temperature
        Softmax temperature of the predictions.
    epsilon
        Sinkhorn-Knopp's entropic regularisation of the codes.
    sinkhorn_iterations
        Sinkhorn-Knopp iterations.
    p_gene
        Share of each spot's genes dropped per view.
    p_spot
        Share of each window's non-centre spots dropped per view.
    """

    def __init__(
        self,
        dim: int,
        *,
        n_prototypes: int = 256,
        proj_dim: int = 64,
        temperature: float = 0.1,
        epsilon: float = 0.05,
        sinkhorn_iterations: int = 3,
        p_gene: float = 0.3,
        p_spot: float = 0.2,
    ) -> None:
        super().__init__(dim, proj_dim=proj_dim, p_gene=p_gene, p_spot=p_spot)
        if n_prototypes < 2:
            raise ValueError(f"`n_prototypes` must be >= 2, got {n_prototypes}.")
        for name, value in (("temperature", temperature), ("epsilon", epsilon)):
            if not value > 0:
                raise ValueError(f"`{name}` must be > 0, got {value}.")
        if sinkhorn_iterations < 1:
            raise ValueError(f"`sinkhorn_iterations` must be >= 1, got {sinkhorn_iterations}.")
        self.prototypes = nn.Parameter(F.normalize(torch.randn(n_prototypes, proj_dim), dim=-1))
        self.temperature = float(temperature)
        self.epsilon = float(epsilon)
        self.sinkhorn_iterations = int(sinkhorn_iterations)

    def scores(self, projection: torch.Tensor) -> torch.Tensor:
        """``(B, K)`` cosine similarities of projections to the prototypes (both L2-normalised here)."""
        return F.normalize(projection, dim=-1) @ F.normalize(self.prototypes, dim=-1).T

    def codes(self, scores: torch.Tensor) -> torch.Tensor:
        """Balanced ``(B, K)`` codes of a batch's scores (:func:`sinkhorn_codes` with this loss's settings)."""
        return sinkhorn_codes(scores, epsilon=self.epsilon, n_iterations=self.sinkhorn_iterations)

    def compare(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Score each view's predictions against the other view's codes (swapped; ``log K`` if uniform)."""
        scores_a, scores_b = self.scores(a), self.scores(b)
        codes_a, codes_b = self.codes(scores_a), self.codes(scores_b)
        log_p_a = F.log_softmax(scores_a / self.temperature, dim=-1)
        log_p_b = F.log_softmax(scores_b / self.temperature, dim=-1)
        return -0.5 * ((codes_b * log_p_a).sum(-1) + (codes_a * log_p_b).sum(-1)).mean()
