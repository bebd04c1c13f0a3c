"""Downstream heads: the H&E → expression MLP ("virtual ST") and its L1 + L2 loss."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ExpressionHead", "l1_l2_loss"]


class ExpressionHead(nn.Module):
    """MLP from frozen embeddings to gene expression (the paper's virtual-ST head).

    Parameters
    ----------
    in_dim
        Embedding width (``StormNetConfig.dim``).
    n_genes
        Number of predicted genes (e.g. 500 HVGs).
    hidden_dim
        Hidden width.
    n_layers
        Number of hidden layers (0: a linear head).
    dropout
        Dropout after each hidden layer.
    """

    def __init__(
        self, in_dim: int, n_genes: int, *, hidden_dim: int = 256, n_layers: int = 1, dropout: float = 0.1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(n_layers):
            layers += [nn.Linear(width, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Dropout(dropout)]
            width = hidden_dim
        layers.append(nn.Linear(width, n_genes))
        self.net = nn.Sequential(*layers)
        self.n_genes = n_genes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(..., in_dim)`` embeddings to ``(..., n_genes)`` predicted normalised expression."""
        return self.net(x)


def l1_l2_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    l1: float = 1.0,
    l2: float = 1.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``l1 · mean|pred - target| + l2 · mean (pred - target)²``, optionally over ``mask`` only.

    Parameters
    ----------
    pred, target
        Same shape.
    l1, l2
        Weights λ1 and λ2 of the paper's virtual-ST loss.
    mask
        Bool broadcastable to ``pred``: entries that count (e.g. measured genes). ``None``: all.

    Returns
    -------
    torch.Tensor
        Scalar loss (0, still attached to ``pred``, when the mask selects nothing).
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape.")
    diff = pred - torch.nan_to_num(target)
    if mask is None:
        return l1 * diff.abs().mean() + l2 * diff.pow(2).mean()
    m = mask.bool().expand_as(diff)
    diff = torch.where(m, diff, torch.zeros((), dtype=diff.dtype, device=diff.device))
    n = m.sum().clamp_min(1)
    return (l1 * diff.abs().sum() + l2 * diff.pow(2).sum()) / n
