"""Pretraining reconstruction losses (masked positions only; measured genes only)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_expression_loss", "token_regression_loss"]


def masked_expression_loss(
    pred: torch.Tensor, target: torch.Tensor, gene_mask: torch.Tensor, position_mask: torch.Tensor
) -> torch.Tensor:
    """MSE on normalised log expression at masked positions, over each spot's measured genes.

    Squared error is averaged over the measured genes of each target position first, then over positions, so a
    spot from a 300-gene panel weighs as much as one from a whole transcriptome. MSE on log-normalised values
    (rather than a Poisson/NB likelihood on counts) matches the targets the model sees and the paper's wording
    ("normalised expression"); counts are not available once panels are harmonised and normalised.

    Parameters
    ----------
    pred, target
        ``(B, W, G)``; ``target`` may hold NaN at unmeasured genes or non-target positions.
    gene_mask
        ``(B, W, G)`` bool measured genes.
    position_mask
        ``(B, W)`` bool positions to score (masked, valid, modality present).

    Returns
    -------
    torch.Tensor
        Scalar; 0 (attached to ``pred``) when nothing is scored.
    """
    m = gene_mask.bool() & position_mask.bool().unsqueeze(-1)
    zero = torch.zeros((), dtype=pred.dtype, device=pred.device)
    sq = torch.where(m, (pred - torch.where(m, target, zero)).pow(2), zero)
    n_genes = m.sum(-1)
    scored = n_genes > 0
    if not scored.any():
        return pred.sum() * 0.0
    per_position = sq.sum(-1)[scored] / n_genes[scored]
    return per_position.mean()


def token_regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "smooth_l1") -> torch.Tensor:
    """Loss between predicted and teacher image tokens, rows = tokens.

    The teacher's features are standardised per token (LayerNorm without affine, as data2vec does for its
    targets; Baevski et al. 2022) so the loss does not depend on the teacher's feature scale.

    Parameters
    ----------
    pred, target
        ``(N, D)``; ``target`` carries no gradient.
    kind
        ``"smooth_l1"`` (Huber, β = 1, on standardised targets) or ``"cosine"`` (1 - cosine similarity).

    Returns
    -------
    torch.Tensor
        Scalar; 0 (attached to ``pred``) when ``N == 0``.
    """
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    target = F.layer_norm(target.detach().float(), target.shape[-1:]).to(pred.dtype)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=1.0)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(pred, target, dim=-1)).mean()
    raise ValueError(f"Unknown image loss {kind!r}; use 'smooth_l1' or 'cosine'.")
