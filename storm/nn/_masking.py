"""Random position masks for masked multimodal spatial modelling."""

from __future__ import annotations

import torch

__all__ = ["sample_modality_drop", "sample_position_mask"]


def sample_position_mask(
    pos_mask: torch.Tensor, n_visible: int = 5, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Choose, per window, which valid positions stay visible.

    Exactly ``min(n_visible, n_valid)`` of each row's valid positions are visible, drawn uniformly without
    replacement (the centre is not special); invalid positions are never visible. The remaining valid positions
    are the reconstruction targets (``pos_mask & ~visible``).

    Parameters
    ----------
    pos_mask
        ``(B, W)`` bool: valid positions (of one modality).
    n_visible
        Visible positions per window (the paper keeps about 5 of 25).
    generator
        Random generator (on ``pos_mask``'s device) for reproducible masks.

    Returns
    -------
    torch.Tensor
        ``(B, W)`` bool visible mask.
    """
    if n_visible < 0:
        raise ValueError(f"n_visible must be ≥ 0, got {n_visible}.")
    pos_mask = pos_mask.bool()
    scores = torch.rand(pos_mask.shape, generator=generator, device=pos_mask.device)
    scores = scores.masked_fill(~pos_mask, 2.0)  # invalid positions sort after every valid one
    ranks = scores.argsort(dim=1).argsort(dim=1)
    k = pos_mask.sum(1, keepdim=True).clamp(max=n_visible)
    return (ranks < k) & pos_mask


def sample_modality_drop(
    present: dict[str, torch.Tensor], p_drop: float, generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Choose windows in which a whole modality is hidden, so the model learns to embed from one modality.

    Only windows with every modality present can lose one, and at most one is dropped per window: with
    probability ``p_drop`` each modality (so ``M·p_drop`` in all, which must be ≤ 1).

    Parameters
    ----------
    present
        Per modality ``(B, W)`` bool: valid positions where the modality exists.
    p_drop
        Probability of dropping each modality of a window.
    generator
        Random generator.

    Returns
    -------
    dict[str, torch.Tensor]
        Per modality ``(B,)`` bool: windows where it is dropped.
    """
    names = list(present)
    first = present[names[0]]
    b, device = first.shape[0], first.device
    if p_drop <= 0 or len(names) < 2:
        return {m: torch.zeros(b, dtype=torch.bool, device=device) for m in names}
    if p_drop * len(names) > 1:
        raise ValueError(f"p_drop ({p_drop}) × {len(names)} modalities must be ≤ 1.")
    complete = torch.stack([present[m].any(1) for m in names]).all(0)
    u = torch.rand(b, generator=generator, device=device)
    return {m: complete & (u >= i * p_drop) & (u < (i + 1) * p_drop) for i, m in enumerate(names)}
