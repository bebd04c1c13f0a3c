"""2-D ALiBi: attention biases that decay linearly with the physical distance between tokens.

ALiBi (Press, Smith & Lewis, "Train Short, Test Long: Attention with Linear Biases Enables Input Length
Extrapolation", ICLR 2022) adds ``-slope_h × |i - j|`` to the attention logits of head ``h``. STORM replaces the
1-D token distance by the Euclidean distance between the tissue positions of two tokens, in µm divided by a
length scale, so that the same model works on any grid (Visium, legacy ST) or point cloud (cells, bins). A spot's
image and expression tokens share one position, hence their distance, and their bias, is exactly 0.
"""

from __future__ import annotations

import math

import torch

__all__ = ["alibi_slopes", "attention_mask", "spatial_alibi_bias"]


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """Return the per-head ALiBi slopes of Press et al. (2022).

    For ``n`` a power of two the slopes are the geometric sequence ``2^(-8/n), 2^(-16/n), …, 2^(-8)``. For other
    ``n`` the slopes of the closest smaller power of two are followed by every other slope of the next power, as
    in the reference implementation, so that steep (local) and shallow (global) heads are both present.

    Parameters
    ----------
    n_heads
        Number of attention heads (≥ 1).

    Returns
    -------
    torch.Tensor
        Float tensor of shape ``(n_heads,)``, decreasing.
    """
    if n_heads < 1:
        raise ValueError(f"n_heads must be ≥ 1, got {n_heads}.")

    def _power_of_two(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = _power_of_two(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = _power_of_two(closest) + _power_of_two(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def spatial_alibi_bias(positions_um: torch.Tensor, slopes: torch.Tensor, scale_um: float) -> torch.Tensor:
    """Return the 2-D ALiBi bias ``-slope_h × ‖p_i - p_j‖ / scale_um`` for every pair of tokens.

    Parameters
    ----------
    positions_um
        Token positions in µm, shape ``(B, T, 2)``. Non-finite values must have been replaced before (padded tokens
        are masked by :func:`attention_mask`, but a NaN here would still reach their rows).
    slopes
        Per-head slopes, shape ``(H,)`` (see :func:`alibi_slopes`).
    scale_um
        Length in µm that counts as one unit of distance. With ~4 heads, half the typical neighbour spacing
        (50 µm on Visium, ~10 µm for cells) gives the steepest head a damping of e^-0.5 per neighbour.

    Returns
    -------
    torch.Tensor
        Bias of shape ``(B, H, T, T)``; 0 on the diagonal and between tokens at the same position.
    """
    if scale_um <= 0:
        raise ValueError(f"scale_um must be positive, got {scale_um}.")
    # Explicit differences rather than torch.cdist: cdist may use a matrix-product formula whose rounding makes
    # the distance between two tokens at the same position slightly non-zero.
    diff = positions_um.unsqueeze(2) - positions_um.unsqueeze(1)
    dist = torch.linalg.vector_norm(diff, dim=-1) / scale_um
    return -slopes.to(dist).view(1, -1, 1, 1) * dist.unsqueeze(1)


def attention_mask(bias: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """Combine an additive bias with key padding into one float mask for ``scaled_dot_product_attention``.

    Keys that are not valid get ``-inf``. Every token may still attend to itself: a padded query then has one
    finite logit instead of none, which keeps softmax free of NaN; valid queries never see padded keys, so padded
    tokens cannot influence valid ones.

    Parameters
    ----------
    bias
        Additive bias, shape ``(B, H, T, T)``.
    key_valid
        Bool, shape ``(B, T)``: which tokens may be attended to.

    Returns
    -------
    torch.Tensor
        Float mask of shape ``(B, H, T, T)``.
    """
    n_tokens = key_valid.shape[-1]
    eye = torch.eye(n_tokens, dtype=torch.bool, device=key_valid.device)
    allowed = key_valid[:, None, None, :] | eye
    return bias.masked_fill(~allowed, float("-inf"))
