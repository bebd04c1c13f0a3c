"""Panel-agnostic expression encoders: gene-embedding pooling + neighbourhood attention, and the raw-gene ablation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._alibi import alibi_slopes, attention_mask, spatial_alibi_bias
from ._attention import TransformerBlock

__all__ = ["ExpressionEncoder", "RawExpressionEncoder", "broadcast_gene_mask"]


def broadcast_gene_mask(gene_mask: torch.Tensor | None, expr: torch.Tensor) -> torch.Tensor:
    """Return a bool gene mask of ``expr``'s shape.

    Parameters
    ----------
    gene_mask
        ``None`` (every gene measured), ``(B, G)`` (one panel per sample) or ``(B, W, G)``.
    expr
        ``(B, W, G)`` expression.

    Returns
    -------
    torch.Tensor
        Bool ``(B, W, G)``.
    """
    if gene_mask is None:
        return torch.ones_like(expr, dtype=torch.bool)
    if gene_mask.ndim == expr.ndim - 1:
        gene_mask = gene_mask.unsqueeze(-2)
    if gene_mask.shape[-1] != expr.shape[-1]:
        raise ValueError(f"gene_mask has {gene_mask.shape[-1]} genes but expr has {expr.shape[-1]}.")
    return gene_mask.bool().expand_as(expr)


class ExpressionEncoder(nn.Module):
    """Panel-agnostic spot encoder followed by attention over the spatial window (Novae-like; Blampey et al. 2025).

    1. Each gene ``g`` of the model's union gene list has an embedding ``e_g`` (``gene_dim``), L2-normalised per
       gene, initialised at random or from PCA loadings (:meth:`init_from_pca`).
    2. A spot is ``z = Σ_{g measured} x_g ê_g / n``: only genes of the sample's panel (``gene_mask``) contribute,
       so any panel maps into one space and unmeasured genes have no influence whatever their value. With
       ``normalization="total"`` (default) ``n = Σ_g |x_g|``, making ``z`` an expression-weighted mean of gene
       directions, insensitive to panel size and sequencing depth (a 300-gene panel and a whole transcriptome of
       the same cell land close when shared genes dominate); ``"n_genes"`` divides by the number of measured
       genes instead, which keeps total-expression information but scales with the panel.
    3. LayerNorm + MLP to ``dim``.
    4. ``n_context_layers`` pre-LN transformer blocks over the window's positions, biased by 2-D ALiBi on their µm
       offsets and restricted to valid positions, make each spot's token aware of its neighbourhood (the role of
       Novae's graph-attention encoder; attention over the window is a complete graph weighted by distance).

    Parameters
    ----------
    n_genes
        Size ``G`` of the union gene list.
    dim
        Output width.
    gene_dim
        Width of the gene embeddings (number of PCA components when initialised from PCA).
    hidden_dim
        Hidden width of the MLP (default ``dim``).
    n_context_layers
        Neighbourhood attention blocks (0 disables context).
    heads
        Heads of the context attention.
    dropout
        Dropout in MLP and context blocks.
    normalization
        ``"total"`` or ``"n_genes"`` (see above).
    alibi_scale_um
        ALiBi length scale of the context attention.
    """

    def __init__(
        self,
        n_genes: int,
        dim: int,
        *,
        gene_dim: int = 64,
        hidden_dim: int | None = None,
        n_context_layers: int = 1,
        heads: int = 4,
        dropout: float = 0.0,
        normalization: str = "total",
        alibi_scale_um: float = 50.0,
    ) -> None:
        super().__init__()
        if normalization not in ("total", "n_genes"):
            raise ValueError(f"normalization must be 'total' or 'n_genes', got {normalization!r}.")
        self.n_genes = n_genes
        self.dim = dim
        self.out_dim = dim
        self.gene_dim = gene_dim
        self.normalization = normalization
        self.alibi_scale_um = float(alibi_scale_um)
        self.gene_embedding = nn.Parameter(torch.randn(n_genes, gene_dim) / gene_dim**0.5)
        hidden = hidden_dim or dim
        self.mlp = nn.Sequential(
            nn.LayerNorm(gene_dim), nn.Linear(gene_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, dim)
        )
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)
        self.context = nn.ModuleList(TransformerBlock(dim, heads, 2.0, dropout) for _ in range(n_context_layers))
        self.norm = nn.LayerNorm(dim) if n_context_layers else nn.Identity()

    @torch.no_grad()
    def init_from_pca(self, loadings: torch.Tensor) -> None:
        """Initialise the gene embeddings from PCA loadings of the training data.

        Parameters
        ----------
        loadings
            ``(G, k)``: gene ``g``'s loadings on the first ``k`` principal components (``pca.components_.T``), in
            the order of the union gene list. ``k < gene_dim`` fills the remaining columns with small noise;
            ``k > gene_dim`` keeps the first ``gene_dim``. Rows that are all zero (genes absent from the PCA
            data) keep their random initialisation, so every gene has a direction to learn from.
        """
        loadings = torch.as_tensor(loadings, dtype=self.gene_embedding.dtype, device=self.gene_embedding.device)
        if loadings.ndim != 2 or loadings.shape[0] != self.n_genes:
            raise ValueError(f"loadings must have shape ({self.n_genes}, k), got {tuple(loadings.shape)}.")
        k = min(loadings.shape[1], self.gene_dim)
        known = loadings.abs().sum(1) > 0
        new = self.gene_embedding.data.clone()
        # Row scale does not matter (rows are L2-normalised in forward); the noise only breaks ties for k < d.
        new[known] = 0.01 * new[known]
        new[known, :k] = loadings[known, :k]
        self.gene_embedding.data.copy_(new)

    def normalized_gene_embedding(self) -> torch.Tensor:
        """Return the ``(G, gene_dim)`` gene embeddings, each row of unit L2 norm."""
        return F.normalize(self.gene_embedding, dim=1)

    def encode_spots(self, expr: torch.Tensor, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Encode spots without spatial context.

        Parameters
        ----------
        expr
            ``(..., G)`` normalised (log) expression over the union gene list.
        gene_mask
            Bool, broadcastable to ``expr``: genes measured in each spot's panel. Values of other genes are
            ignored (they may be NaN).

        Returns
        -------
        torch.Tensor
            ``(..., dim)``.
        """
        mask = torch.ones_like(expr, dtype=torch.bool) if gene_mask is None else gene_mask.bool().expand_as(expr)
        x = torch.where(mask, expr, torch.zeros((), dtype=expr.dtype, device=expr.device))
        z = x @ self.normalized_gene_embedding().to(x.dtype)
        if self.normalization == "total":
            denom = x.abs().sum(-1, keepdim=True)
        else:
            denom = mask.sum(-1, keepdim=True).to(x.dtype)
        return self.mlp(z / denom.clamp_min(1e-6))

    def forward(
        self,
        expr: torch.Tensor,
        gene_mask: torch.Tensor | None,
        offsets_um: torch.Tensor,
        pos_mask: torch.Tensor,
    ) -> torch.Tensor:
        """Encode the spots of a window, each aware of the other valid spots.

        Parameters
        ----------
        expr
            ``(B, W, G)``.
        gene_mask
            ``(B, G)`` or ``(B, W, G)`` bool, or ``None`` (all measured).
        offsets_um
            ``(B, W, 2)`` µm offsets from the centre.
        pos_mask
            ``(B, W)`` bool: positions whose expression may be used (valid and, during masked pretraining,
            visible: a masked spot must not leak into its neighbours' tokens).

        Returns
        -------
        torch.Tensor
            ``(B, W, dim)``; rows at ``~pos_mask`` are defined but meaningless.
        """
        mask = broadcast_gene_mask(gene_mask, expr) & pos_mask.bool().unsqueeze(-1)
        return self.contextualize(self.encode_spots(expr, mask), offsets_um, pos_mask)

    def contextualize(
        self,
        tokens: torch.Tensor,
        offsets_um: torch.Tensor,
        pos_mask: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Second half of :meth:`forward`: neighbourhood attention over spot tokens already encoded.

        ``forward(expr, gene_mask, offsets, pos_mask)`` equals ``contextualize(encode_spots(expr, mask), offsets,
        pos_mask)``; at inference a spot's :meth:`encode_spots` token can thus be computed once and shared by the
        windows it appears in.

        Parameters
        ----------
        tokens
            ``(B, W, dim)`` outputs of :meth:`encode_spots` (values at ``~pos_mask`` are ignored).
        offsets_um
            ``(B, W, 2)`` µm offsets from the centre.
        pos_mask
            ``(B, W)`` bool: valid positions.
        attn_mask
            The ``(B, heads, W, W)`` mask this method would build from ``offsets_um`` and ``pos_mask`` (ALiBi with
            ``slopes`` and ``alibi_scale_um``, padding), when the caller has it already.

        Returns
        -------
        torch.Tensor
            ``(B, W, dim)``; rows at ``~pos_mask`` are defined but meaningless.
        """
        if not self.context:
            return tokens
        attn = attn_mask
        if attn is None:
            zero = torch.zeros((), dtype=offsets_um.dtype, device=offsets_um.device)
            offsets = torch.where(pos_mask.unsqueeze(-1), offsets_um, zero)
            bias = spatial_alibi_bias(offsets.float(), self.slopes, self.alibi_scale_um)
            attn = attention_mask(bias, pos_mask.bool())
        h = tokens
        for block in self.context:
            h = block(h, attn)
        return self.norm(h)


class RawExpressionEncoder(nn.Module):
    """Ablation: a linear projection of the raw gene vector (unmeasured genes set to 0), no spatial context.

    Parameters
    ----------
    n_genes
        Size of the union gene list.
    dim
        Output width.
    """

    def __init__(self, n_genes: int, dim: int) -> None:
        super().__init__()
        self.n_genes = n_genes
        self.out_dim = dim
        self.proj = nn.Linear(n_genes, dim)

    def forward(
        self,
        expr: torch.Tensor,
        gene_mask: torch.Tensor | None,
        offsets_um: torch.Tensor | None = None,
        pos_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Project ``(B, W, G)`` expression to ``(B, W, dim)``; signature as :meth:`ExpressionEncoder.forward`."""
        mask = broadcast_gene_mask(gene_mask, expr)
        if pos_mask is not None:
            mask = mask & pos_mask.bool().unsqueeze(-1)
        return self.encode_spots(expr, mask)

    def encode_spots(self, expr: torch.Tensor, gene_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Project ``(..., G)`` expression to ``(..., dim)``, genes outside ``gene_mask`` set to 0."""
        mask = torch.ones_like(expr, dtype=torch.bool) if gene_mask is None else gene_mask.bool().expand_as(expr)
        return self.proj(torch.where(mask, expr, torch.zeros((), dtype=expr.dtype, device=expr.device)))

    def contextualize(
        self,
        tokens: torch.Tensor,
        offsets_um: torch.Tensor,
        pos_mask: torch.Tensor,
        *,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """No spatial context in this ablation: return ``tokens`` (see :meth:`ExpressionEncoder.contextualize`)."""
        return tokens
