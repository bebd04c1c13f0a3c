"""The spatial-level transformer of STORM: image and expression tokens of a window, 2-D ALiBi, multiway FFN."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ._alibi import alibi_slopes, attention_mask, spatial_alibi_bias
from ._multiway import MultiwayBlock

__all__ = ["MODALITIES", "SpatialEncoder", "SpatialEncoderOutput", "centre_embedding"]

#: Modality names in token order: tokens are ``[image × W ; expression × W]``.
MODALITIES: tuple[str, ...] = ("image", "expression")


@dataclass
class SpatialEncoderOutput:
    """Per-token output of :class:`SpatialEncoder`.

    Attributes
    ----------
    tokens
        ``(B, M·W, dim)``: modality segments of ``W`` tokens each, in the order of ``modalities``.
    token_valid
        ``(B, M·W)`` bool: tokens that took part in attention (present, non-padded, visible).
    positions_um
        ``(B, M·W, 2)``: each token's offset from the centre spot in µm (0 where invalid).
    modalities
        Names of the segments.
    window
        ``W``, positions per modality.
    """

    tokens: torch.Tensor
    token_valid: torch.Tensor
    positions_um: torch.Tensor
    modalities: tuple[str, ...]
    window: int

    def segment(self, modality: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(tokens (B, W, dim), valid (B, W))`` of one modality."""
        m = self.modalities.index(modality)
        sl = slice(m * self.window, (m + 1) * self.window)
        return self.tokens[:, sl], self.token_valid[:, sl]

    def centre_embedding(self) -> torch.Tensor:
        """Return the centre spot's embedding ``(B, dim)``; see :func:`centre_embedding`."""
        return centre_embedding(self.tokens, self.token_valid, self.window)


def centre_embedding(tokens: torch.Tensor, token_valid: torch.Tensor, window: int) -> torch.Tensor:
    """Mean of the centre spot's (position 0) tokens over the modalities it has.

    The mean, not the concatenation, is used so that an H&E-only, an expression-only and a joint embedding live
    in one space of one width (``obsm['X_storm']`` can be compared and clustered across modes). A window whose
    centre has no valid token gets a zero vector.

    Parameters
    ----------
    tokens
        ``(B, M·W, dim)`` encoder output.
    token_valid
        ``(B, M·W)`` bool.
    window
        ``W``.

    Returns
    -------
    torch.Tensor
        ``(B, dim)``.
    """
    centre_tokens = tokens[:, ::window]  # position 0 of each modality segment: (B, M, dim)
    weights = token_valid[:, ::window].to(tokens.dtype).unsqueeze(-1)
    return (centre_tokens * weights).sum(1) / weights.sum(1).clamp_min(1.0)


class SpatialEncoder(nn.Module):
    """Multiway transformer over the image and expression tokens of a spatial window.

    Each token is ``Linear(LayerNorm(feature)) + modality embedding`` (+ a learned centre embedding at
    position 0). Attention is shared across modalities and biased by 2-D ALiBi on the tokens' physical positions
    (Press et al. 2022), so a spot's two tokens are at distance 0; padded positions, absent modalities and
    masked (invisible) tokens are removed as keys. The feed-forward layer has one expert per modality (BEiT-3,
    Wang et al. 2023; MUSK, Xiang et al. 2025). Works with any subset of modalities present.

    Parameters
    ----------
    dim
        Model width.
    depth
        Number of multiway blocks.
    heads
        Attention heads.
    input_dims
        Feature width of each modality, in token order, e.g. ``{"image": 256, "expression": 128}``.
    mlp_ratio
        Expert hidden width as a multiple of ``dim``.
    dropout
        Dropout in attention and experts.
    alibi_scale_um
        Distance in µm that counts as 1 in the ALiBi bias (see :func:`~storm.nn.spatial_alibi_bias`).
    use_centre_embedding
        Add a learned embedding to the centre spot's tokens, so the model knows which spot it describes.
    """

    def __init__(
        self,
        dim: int,
        depth: int = 4,
        heads: int = 4,
        *,
        input_dims: Mapping[str, int],
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        alibi_scale_um: float = 50.0,
        use_centre_embedding: bool = True,
    ) -> None:
        super().__init__()
        if not input_dims:
            raise ValueError("input_dims must name at least one modality.")
        self.modalities = tuple(input_dims)
        self.dim = dim
        self.alibi_scale_um = float(alibi_scale_um)
        self.input_proj = nn.ModuleDict(
            {m: nn.Sequential(nn.LayerNorm(d), nn.Linear(d, dim)) for m, d in input_dims.items()}
        )
        self.modality_embedding = nn.Parameter(torch.zeros(len(self.modalities), dim))
        self.centre_embedding = nn.Parameter(torch.zeros(dim)) if use_centre_embedding else None
        nn.init.trunc_normal_(self.modality_embedding, std=0.02)
        if self.centre_embedding is not None:
            nn.init.trunc_normal_(self.centre_embedding, std=0.02)
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)
        self.blocks = nn.ModuleList(
            MultiwayBlock(dim, heads, len(self.modalities), mlp_ratio, dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)

    def forward(
        self,
        features: Mapping[str, torch.Tensor | None],
        offsets_um: torch.Tensor,
        token_valid: Mapping[str, torch.Tensor | None],
    ) -> SpatialEncoderOutput:
        """Encode a batch of windows.

        Parameters
        ----------
        features
            Per modality ``(B, W, input_dims[m])`` features, or ``None`` / missing when absent from the batch.
            Values at invalid positions are ignored (they may be NaN).
        offsets_um
            ``(B, W, 2)`` position of each window slot relative to the centre, in µm.
        token_valid
            Per modality ``(B, W)`` bool: which tokens take part (present, non-padded and, during masked
            pretraining, visible). Missing means none.

        Returns
        -------
        SpatialEncoderOutput
        """
        b, w, _ = offsets_um.shape
        device = offsets_um.device
        tokens, valid = [], []
        for i, m in enumerate(self.modalities):
            f = features.get(m)
            v = token_valid.get(m)
            v = torch.zeros(b, w, dtype=torch.bool, device=device) if v is None or f is None else v.bool()
            if f is None:
                x = self.modality_embedding[i].expand(b, w, self.dim)
            else:
                if f.shape[:2] != (b, w):
                    raise ValueError(f"{m} features have shape {tuple(f.shape)}, expected ({b}, {w}, …).")
                # torch.where, not multiplication: 0 × NaN would still be NaN.
                f = torch.where(v.unsqueeze(-1), f, torch.zeros((), dtype=f.dtype, device=device))
                x = self.input_proj[m](f) + self.modality_embedding[i]
            if self.centre_embedding is not None:
                x = torch.cat([x[:, :1] + self.centre_embedding, x[:, 1:]], dim=1)
            tokens.append(x)
            valid.append(v)
        x = torch.cat(tokens, dim=1)
        token_valid_all = torch.cat(valid, dim=1)
        used = torch.stack(valid, 0).any(0)  # positions with at least one token
        offsets = torch.where(used.unsqueeze(-1), offsets_um, torch.zeros((), dtype=offsets_um.dtype, device=device))
        positions = offsets.repeat(1, len(self.modalities), 1)
        bias = spatial_alibi_bias(positions.float(), self.slopes, self.alibi_scale_um)
        mask = attention_mask(bias, token_valid_all)
        sizes: Sequence[int] = [w] * len(self.modalities)
        for block in self.blocks:
            x = block(x, sizes, mask)
        return SpatialEncoderOutput(self.norm(x), token_valid_all, positions, self.modalities, w)

    def encode_centre(
        self,
        features: Mapping[str, torch.Tensor | None],
        offsets_um: torch.Tensor,
        token_valid: Mapping[str, torch.Tensor | None],
        *,
        attn_mask: torch.Tensor | None = None,
        niche: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Inference shortcut: the centre embedding ``forward(...).centre_embedding()`` at a fraction of the cost.

        Modalities without features or valid flags are left out of the token sequence (in :meth:`forward` they are
        masked keys that no valid token sees), and the last block computes the centre tokens only (the other tokens
        are its keys and values). Same arguments as :meth:`forward`.

        Parameters
        ----------
        features
            Per modality ``(B, W, input_dims[m])`` features, or ``None`` / missing when absent.
        offsets_um
            ``(B, W, 2)`` positions relative to the centre in µm.
        token_valid
            Per modality ``(B, W)`` bool.
        attn_mask
            The ``(B, heads, T, T)`` mask this method would build (ALiBi on the positions of the tokens of the
            modalities present, padding), when the caller has it already.
        niche
            Also return the niche embedding: the mean of all valid output tokens of the window (the last block then
            computes every token).

        Returns
        -------
        torch.Tensor or tuple
            ``(B, dim)``, equal (up to floating-point rounding) to ``forward(...).centre_embedding()``; with
            ``niche=True`` the pair ``(centre, niche)``.
        """
        b, w, _ = offsets_um.shape
        device = offsets_um.device
        tokens, valid, experts = [], [], []
        for i, m in enumerate(self.modalities):
            f, v = features.get(m), token_valid.get(m)
            if f is None or v is None:
                continue
            if f.shape[:2] != (b, w):
                raise ValueError(f"{m} features have shape {tuple(f.shape)}, expected ({b}, {w}, …).")
            v = v.bool()
            f = torch.where(v.unsqueeze(-1), f, torch.zeros((), dtype=f.dtype, device=device))
            x = self.input_proj[m](f) + self.modality_embedding[i]
            if self.centre_embedding is not None:
                x = torch.cat([x[:, :1] + self.centre_embedding, x[:, 1:]], dim=1)
            tokens.append(x)
            valid.append(v)
            experts.append(i)
        if not tokens:
            empty = torch.zeros(b, self.dim, device=device)
            return (empty, empty.clone()) if niche else empty
        x = torch.cat(tokens, dim=1) if len(tokens) > 1 else tokens[0]
        token_valid_all = torch.cat(valid, dim=1) if len(valid) > 1 else valid[0]
        mask = attn_mask
        if mask is None:
            used = torch.stack(valid, 0).any(0)
            zero = torch.zeros((), dtype=offsets_um.dtype, device=device)
            offsets = torch.where(used.unsqueeze(-1), offsets_um, zero)
            positions = offsets.repeat(1, len(tokens), 1) if len(tokens) > 1 else offsets
            bias = spatial_alibi_bias(positions.float(), self.slopes, self.alibi_scale_um)
            mask = attention_mask(bias, token_valid_all)
        sizes = [w] * len(tokens)
        if not self.blocks and not niche:
            x = x[:, ::w]
        for j, block in enumerate(self.blocks):
            x = block.forward_experts(x, sizes, experts, mask, first_only=not niche and j == len(self.blocks) - 1)
        x = self.norm(x)
        centre = x[:, ::w] if niche else x  # (B, M, dim): the centre token of each modality present
        weights = token_valid_all[:, ::w].to(centre.dtype).unsqueeze(-1)
        centre = (centre * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        if not niche:
            return centre
        weights = token_valid_all.to(x.dtype).unsqueeze(-1)
        return centre, (x * weights).sum(1) / weights.sum(1).clamp_min(1.0)
