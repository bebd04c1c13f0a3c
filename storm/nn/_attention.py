"""Pre-LayerNorm transformer pieces that take an additive float attention mask (ALiBi bias + padding)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FeedForward", "SelfAttention", "TransformerBlock"]


class SelfAttention(nn.Module):
    """Multi-head self-attention through :func:`torch.nn.functional.scaled_dot_product_attention`.

    Parameters
    ----------
    dim
        Token width; must be divisible by ``heads``.
    heads
        Number of heads.
    dropout
        Dropout on the attention weights (training only).
    """

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads}).")
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Attend.

        Parameters
        ----------
        x
            Tokens, shape ``(B, T, dim)``.
        attn_mask
            Additive float mask broadcastable to ``(B, heads, T, T)``.

        Returns
        -------
        torch.Tensor
            Shape ``(B, T, dim)``.
        """
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None:
            # Under autocast q is bf16/fp16 while the mask was built in fp32; SDPA wants them to agree.
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj(out.transpose(1, 2).reshape(b, t, d))

    def forward_queries(
        self, x: torch.Tensor, queries: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Return the outputs of :meth:`forward` at the tokens ``queries`` only (keys and values: all tokens).

        Parameters
        ----------
        x
            Tokens, shape ``(B, T, dim)``.
        queries
            Long ``(Q,)``: token indices whose outputs are wanted.
        attn_mask
            Additive float mask broadcastable to ``(B, heads, T, T)`` (the full mask; its rows are selected here).

        Returns
        -------
        torch.Tensor
            Shape ``(B, Q, dim)``, equal to ``forward(x, attn_mask)[:, queries]``.
        """
        b, t, d = x.shape
        hd = d // self.heads
        weight, bias = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, queries], weight[:d], bias[:d]).view(b, -1, self.heads, hd).transpose(1, 2)
        k, v = F.linear(x, weight[d:], bias[d:]).view(b, t, 2, self.heads, hd).permute(2, 0, 3, 1, 4)
        if attn_mask is not None:
            attn_mask = attn_mask[..., queries, :].to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(b, -1, d))


class FeedForward(nn.Sequential):
    """Two-layer MLP with GELU: ``dim → hidden → dim``.

    Parameters
    ----------
    dim
        Input and output width.
    hidden
        Hidden width.
    dropout
        Dropout after the activation and at the output.
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(
            nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim), nn.Dropout(dropout)
        )


class TransformerBlock(nn.Module):
    """Pre-LayerNorm transformer block (attention and one shared feed-forward network).

    Parameters
    ----------
    dim
        Token width.
    heads
        Number of attention heads.
    mlp_ratio
        Hidden width of the feed-forward network as a multiple of ``dim``.
    dropout
        Dropout in attention and feed-forward.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio), dropout)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the block to ``x`` of shape ``(B, T, dim)`` with an additive mask ``(B, heads, T, T)``."""
        x = x + self.attn(self.norm1(x), attn_mask)
        return x + self.ffn(self.norm2(x))
