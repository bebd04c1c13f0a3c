"""Light pretraining decoders that reconstruct one modality's masked tokens from the encoder's visible tokens."""

from __future__ import annotations

import torch
from torch import nn

from ._alibi import alibi_slopes, attention_mask, spatial_alibi_bias
from ._attention import TransformerBlock

__all__ = ["TokenDecoder"]


class TokenDecoder(nn.Module):
    """MAE-style decoder for one modality: visible encoder tokens + [MASK] tokens → reconstructed targets.

    Masked tokens are dropped from the encoder and re-inserted here as a learned [MASK] token at their positions
    (He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022): the encoder never sees mask
    tokens, so pretraining and inference inputs look alike (only fewer tokens), and the decoder, discarded after
    pretraining, carries the reconstruction-specific work. Its sequence is every visible encoder token (all
    modalities, projected to ``dim``, plus a learned segment embedding) and the [MASK] tokens of the target
    modality's positions to reconstruct; ``depth`` pre-LN blocks with the same 2-D ALiBi bias as the encoder
    (own slopes, same length scale) run over it, then LayerNorm + an MLP map the target tokens to ``out_dim``.

    Parameters
    ----------
    in_dim
        Width of the encoder tokens.
    dim
        Decoder width.
    out_dim
        Width of the reconstruction (genes, or the teacher's image feature width).
    n_segments
        Number of modality segments in the encoder output.
    target_segment
        Index of the segment this decoder reconstructs.
    depth
        Transformer blocks (the paper: 2).
    heads
        Attention heads.
    mlp_ratio
        Feed-forward width multiple.
    dropout
        Dropout.
    alibi_scale_um
        ALiBi length scale in µm.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        out_dim: int,
        *,
        n_segments: int,
        target_segment: int,
        depth: int = 2,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        alibi_scale_um: float = 50.0,
    ) -> None:
        super().__init__()
        if not 0 <= target_segment < n_segments:
            raise ValueError(f"target_segment {target_segment} outside [0, {n_segments}).")
        self.n_segments = n_segments
        self.target_segment = target_segment
        self.alibi_scale_um = float(alibi_scale_um)
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(dim))
        self.segment_embedding = nn.Parameter(torch.zeros(n_segments, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.segment_embedding, std=0.02)
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, out_dim))

    def forward(
        self,
        tokens: torch.Tensor,
        visible: torch.Tensor,
        targets: torch.Tensor,
        positions_um: torch.Tensor,
    ) -> torch.Tensor:
        """Reconstruct the target modality at every position of its segment.

        Parameters
        ----------
        tokens
            ``(B, S·W, in_dim)`` encoder output (segments of ``W`` tokens).
        visible
            ``(B, S·W)`` bool: tokens the encoder saw (their outputs are the decoder's context).
        targets
            ``(B, W)`` bool: positions of the target segment to reconstruct ([MASK] tokens go there).
        positions_um
            ``(B, S·W, 2)`` token positions in µm.

        Returns
        -------
        torch.Tensor
            ``(B, W, out_dim)``; only rows at ``targets`` are meaningful.
        """
        b, t, _ = tokens.shape
        w = t // self.n_segments
        seg = torch.arange(self.n_segments, device=tokens.device).repeat_interleave(w)
        x = self.embed(tokens) + self.segment_embedding[seg]
        is_target = torch.zeros(b, t, dtype=torch.bool, device=tokens.device)
        sl = slice(self.target_segment * w, (self.target_segment + 1) * w)
        is_target[:, sl] = targets.bool()
        # A target token is replaced by [MASK] even if it was visible: it never copies its own input.
        x = torch.where(is_target.unsqueeze(-1), self.mask_token + self.segment_embedding[seg], x)
        keys = (visible.bool() & ~is_target) | is_target
        zero = torch.zeros((), dtype=positions_um.dtype, device=positions_um.device)
        pos = torch.where(keys.unsqueeze(-1), positions_um, zero).float()
        mask = attention_mask(spatial_alibi_bias(pos, self.slopes, self.alibi_scale_um), keys)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x[:, sl]))
