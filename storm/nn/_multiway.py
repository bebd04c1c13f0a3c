"""Multiway transformer block: shared self-attention, one feed-forward expert per modality.

This is the mixture-of-modality-experts layer of VLMo/BEiT-3 (Wang et al., "Image as a Foreign Language: BEiT
Pretraining for Vision and Vision-Language Tasks", CVPR 2023) and MUSK (Xiang et al., "A vision–language
foundation model for precision oncology", Nature 2025): tokens of all modalities attend to each other through one
attention layer, then each token goes through the feed-forward network of its own modality. As in BEiT-3's
reference implementation (torchscale ``MultiwayWrapper``), the LayerNorms are per modality too, because the token
statistics of image and expression features differ.

Tokens are laid out as contiguous segments, one per modality (``[image × W ; expression × W]``), so routing is
a split along the token axis rather than a gather.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._attention import FeedForward, SelfAttention

__all__ = ["MultiwayBlock", "apply_per_segment"]


def apply_per_segment(modules: Sequence[nn.Module], x: torch.Tensor, segment_sizes: Sequence[int]) -> torch.Tensor:
    """Apply ``modules[m]`` to the ``m``-th contiguous token segment of ``x`` and concatenate the results.

    Parameters
    ----------
    modules
        One module per segment.
    x
        Tokens, shape ``(B, T, D)`` with ``T = sum(segment_sizes)``.
    segment_sizes
        Number of tokens of each segment, in order.

    Returns
    -------
    torch.Tensor
        Shape ``(B, T, D_out)``.
    """
    if len(modules) != len(segment_sizes):
        raise ValueError(f"{len(modules)} modules for {len(segment_sizes)} segments.")
    if sum(segment_sizes) != x.shape[1]:
        raise ValueError(f"Segments of sizes {tuple(segment_sizes)} do not add up to {x.shape[1]} tokens.")
    if len(modules) == 1:
        return modules[0](x)
    parts = torch.split(x, list(segment_sizes), dim=1)
    return torch.cat([module(part) for module, part in zip(modules, parts, strict=True)], dim=1)


class MultiwayBlock(nn.Module):
    """Pre-LayerNorm block with shared attention and per-modality LayerNorms and feed-forward experts.

    Parameters
    ----------
    dim
        Token width.
    heads
        Number of attention heads.
    n_modalities
        Number of experts (token segments).
    mlp_ratio
        Hidden width of each expert as a multiple of ``dim``.
    dropout
        Dropout in attention and feed-forward.
    """

    def __init__(self, dim: int, heads: int, n_modalities: int = 2, mlp_ratio: float = 4.0, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_modalities))
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.ModuleList(nn.LayerNorm(dim) for _ in range(n_modalities))
        self.experts = nn.ModuleList(FeedForward(dim, int(dim * mlp_ratio), dropout) for _ in range(n_modalities))

    def forward(
        self, x: torch.Tensor, segment_sizes: Sequence[int], attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Apply the block.

        Parameters
        ----------
        x
            Tokens, shape ``(B, T, dim)``, ordered by modality segment.
        segment_sizes
            Tokens per modality, in the order of the experts.
        attn_mask
            Additive float mask ``(B, heads, T, T)`` (ALiBi bias and padding).

        Returns
        -------
        torch.Tensor
            Shape ``(B, T, dim)``.
        """
        x = x + self.attn(apply_per_segment(self.norm1, x, segment_sizes), attn_mask)
        h = apply_per_segment(self.norm2, x, segment_sizes)
        return x + apply_per_segment(self.experts, h, segment_sizes)

    def forward_experts(
        self,
        x: torch.Tensor,
        segment_sizes: Sequence[int],
        experts: Sequence[int],
        attn_mask: torch.Tensor | None = None,
        *,
        first_only: bool = False,
    ) -> torch.Tensor:
        """Inference form of :meth:`forward` for a subset of the modalities, optionally at each segment's first token.

        Parameters
        ----------
        x
            Tokens ``(B, T, dim)`` of the segments present, in order.
        segment_sizes
            Tokens per segment present.
        experts
            Expert (modality) index of each segment present.
        attn_mask
            Additive float mask ``(B, heads, T, T)``.
        first_only
            Return only the first token of each segment (the centre spot's tokens): its attention query and
            feed-forward are computed, the other tokens serve as keys and values only.

        Returns
        -------
        torch.Tensor
            ``(B, T, dim)``, or ``(B, len(segment_sizes), dim)`` with ``first_only``; equal to the matching tokens of
            :meth:`forward` on all modalities when the absent ones are masked out as keys.
        """
        if len(experts) != len(segment_sizes):
            raise ValueError(f"{len(experts)} experts for {len(segment_sizes)} segments.")
        norm1 = [self.norm1[i] for i in experts]
        norm2 = [self.norm2[i] for i in experts]
        ffn = [self.experts[i] for i in experts]
        h = apply_per_segment(norm1, x, segment_sizes)
        if first_only:
            starts = [0]
            for size in segment_sizes[:-1]:
                starts.append(starts[-1] + size)
            queries = torch.tensor(starts, dtype=torch.long, device=x.device)
            x = x[:, queries] + self.attn.forward_queries(h, queries, attn_mask)
            segment_sizes = [1] * len(starts)
        else:
            x = x + self.attn(h, attn_mask)
        h = apply_per_segment(norm2, x, segment_sizes)
        return x + apply_per_segment(ffn, h, segment_sizes)
