"""Slide-level risk model of STORM's clinical protocol: Perceiver compression, cross-modal fusion, attention pooling.

A slide is a bag of tiles; each tile carries an image feature (STORM's H&E embedding) and/or an expression feature
(virtual-ST prediction). Per modality, a Perceiver compresses the tiles into a few learned latents (cost
O(latents × tiles), so bags of thousands of tiles are cheap), the two sets of latents exchange information by
cross-attention, and a gated attention pool turns each modality's latents into one risk contribution; the slide
risk is their sum. Survival is trained with the Cox partial likelihood (:func:`cox_partial_likelihood_loss`),
response with the logistic loss on the same score. Pure torch: tensors in, tensors out (DESIGN.md §2, §3).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from storm._dataclasses import strict_from_dict
from storm.nn._attention import FeedForward, TransformerBlock

__all__ = [
    "SLIDE_MODALITIES",
    "AttentionPool",
    "CrossAttention",
    "CrossModalFusion",
    "IntegratedGradients",
    "PerceiverCompressor",
    "SlideModelConfig",
    "SlideRiskModel",
    "SlideRiskOutput",
    "cox_partial_likelihood_loss",
    "integrated_gradients",
]

#: The tile modalities a slide bag may carry, in the order the model visits them.
SLIDE_MODALITIES: tuple[str, ...] = ("image", "expression")


@dataclass
class SlideModelConfig:
    """Hyper-parameters of :class:`SlideRiskModel` (a plain, JSON-serialisable dataclass).

    The defaults are small: clinical cohorts have tens to hundreds of patients, and a larger head over-fits them
    (the paper does not give its sizes).

    Attributes
    ----------
    image_dim
        Width of the per-tile image features (e.g. 128 for storm-mini's ``obsm['X_storm']``); ``None``: the model
        has no image branch.
    expression_dim
        Width of the per-tile expression features (e.g. the number of virtual-ST genes); ``None``: no expression
        branch. :class:`SlideRiskModel` needs at least one of the two; :func:`storm.train.fit_slide_model_cv` fills
        the widths left ``None`` from the bags.
    dim
        Width of the latents and of every attention layer.
    n_latents
        Learned latents per modality (Perceiver queries); attention costs ``n_latents × n_tiles``.
    heads
        Attention heads; ``dim`` must be divisible by it.
    latent_depth
        Self-attention blocks over each modality's latents after the cross-attention to the tiles.
    fusion_depth
        Cross-modal fusion layers (each modality's latents attend to the other's); ignored with one modality.
    mlp_ratio
        Feed-forward width as a multiple of ``dim``.
    dropout
        Dropout in attention weights and feed-forward layers (training only).
    pool_hidden
        Hidden width of the gated attention pool.
    """

    image_dim: int | None = None
    expression_dim: int | None = None
    dim: int = 64
    n_latents: int = 16
    heads: int = 4
    latent_depth: int = 1
    fusion_depth: int = 1
    mlp_ratio: float = 2.0
    dropout: float = 0.1
    pool_hidden: int = 32

    def __post_init__(self) -> None:
        problems = []
        for name in ("image_dim", "expression_dim"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                problems.append(f"{name} must be a positive integer or None, got {value!r}")
        for name in ("dim", "n_latents", "heads", "pool_hidden"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("latent_depth", "fusion_depth"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.heads >= 1 and self.dim % self.heads:
            problems.append(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.mlp_ratio <= 0:
            problems.append(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        if problems:
            raise ValueError("Invalid SlideModelConfig: " + "; ".join(problems) + ".")

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities the model has a branch for, in :data:`SLIDE_MODALITIES` order."""
        return tuple(m for m in SLIDE_MODALITIES if self.input_dim(m) is not None)

    def input_dim(self, modality: str) -> int | None:
        """Feature width of ``modality`` (``None`` where the model has no such branch)."""
        if modality not in SLIDE_MODALITIES:
            raise ValueError(f"Unknown modality {modality!r}; expected one of {SLIDE_MODALITIES}.")
        return getattr(self, f"{modality}_dim")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SlideModelConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are an error (a checkpoint of another version)."""
        return strict_from_dict(cls, d, label="SlideModelConfig fields")


class CrossAttention(nn.Module):
    """Multi-head attention of ``queries`` to a separate ``context``, with a key-padding mask.

    Parameters
    ----------
    dim
        Width of queries, context and output; must be divisible by ``heads``.
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
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self,
        queries: torch.Tensor,
        context: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attend from ``queries`` ``(B, L, dim)`` to ``context`` ``(B, N, dim)``.

        Parameters
        ----------
        queries
            Shape ``(B, L, dim)``.
        context
            Shape ``(B, N, dim)``.
        mask
            Boolean ``(B, N)``, ``True`` for real context tokens; padded tokens get exactly zero weight.
        need_weights
            Also return the attention weights (computed explicitly instead of by the fused kernel).

        Returns
        -------
        tuple
            Output ``(B, L, dim)`` and the weights ``(B, heads, L, N)`` (or ``None``).
        """
        b, n_q, d = queries.shape
        n_k = context.shape[1]
        h = self.heads
        q = self.q(queries).view(b, n_q, h, d // h).transpose(1, 2)
        k, v = self.kv(context).view(b, n_k, 2, h, d // h).permute(2, 0, 3, 1, 4)
        keep = None if mask is None else mask[:, None, None, :]
        p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // h)
            if keep is not None:
                scores = scores.masked_fill(~keep, float("-inf"))
            weights = scores.softmax(dim=-1)
            out = F.dropout(weights, p=p, training=self.training) @ v
        else:
            # The fused kernel never materialises the (L, N) matrix on GPU; a boolean mask there means "attend".
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, dropout_p=p)
        return self.proj(out.transpose(1, 2).reshape(b, n_q, d)), weights


class PerceiverCompressor(nn.Module):
    """Compress a variable-size set of tokens into ``n_latents`` learned latents (Perceiver).

    The latents cross-attend to the tokens once (pre-LayerNorm, residual, feed-forward), then refine themselves
    with ``depth`` self-attention blocks. Cost and memory grow as ``n_latents × n_tokens`` instead of
    ``n_tokens²``, which is what makes whole-slide bags of thousands of tiles affordable.

    Parameters
    ----------
    dim
        Token and latent width.
    n_latents
        Number of learned latents.
    heads
        Attention heads.
    depth
        Latent self-attention blocks after the cross-attention.
    mlp_ratio
        Feed-forward width as a multiple of ``dim``.
    dropout
        Dropout in attention and feed-forward layers.

    References
    ----------
    Jaegle A, Gimeno F, Brock A, Zisserman A, Vinyals O, Carreira J. Perceiver: general perception with iterative
    attention. ICML (2021).
    """

    def __init__(
        self, dim: int, n_latents: int, heads: int, depth: int = 1, mlp_ratio: float = 2.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        # Perceiver's initialisation: a truncated normal of std 0.02 keeps the latents distinct but small.
        self.latents = nn.Parameter(nn.init.trunc_normal_(torch.empty(n_latents, dim), std=0.02, a=-0.04, b=0.04))
        self.norm_latents = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads, dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio), dropout)
        self.blocks = nn.ModuleList(TransformerBlock(dim, heads, mlp_ratio, dropout) for _ in range(depth))

    def forward(
        self, tokens: torch.Tensor, mask: torch.Tensor | None = None, *, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Compress ``tokens`` ``(B, N, dim)`` (``mask`` ``(B, N)``, ``True`` = real) to latents ``(B, L, dim)``.

        Returns
        -------
        tuple
            The latents and, with ``need_weights``, the cross-attention weights averaged over heads ``(B, L, N)``.
        """
        z = self.latents.expand(tokens.shape[0], -1, -1)
        attended, weights = self.cross(self.norm_latents(z), self.norm_context(tokens), mask, need_weights=need_weights)
        z = z + attended
        z = z + self.ffn(self.norm_ffn(z))
        for block in self.blocks:
            z = block(z)
        return z, (weights.mean(dim=1) if weights is not None else None)


class _FusionLayer(nn.Module):
    """One modality's half of a fusion layer: attend to the other modality's latents, then a feed-forward."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, heads, dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = FeedForward(dim, int(dim * mlp_ratio), dropout)

    def forward(self, z: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        z = z + self.cross(self.norm_q(z), self.norm_kv(other))[0]
        return z + self.ffn(self.norm_ffn(z))


class CrossModalFusion(nn.Module):
    """Fuse two modalities' latents by bidirectional cross-attention.

    In every layer each modality's latents attend to the other's (both read the previous layer's state, so the
    update is symmetric), followed by a feed-forward network; pre-LayerNorm and residual throughout. With a single
    modality present there is nothing to fuse and the latents pass unchanged, so one trained model serves
    image-only, expression-only and joint bags.

    Parameters
    ----------
    dim
        Latent width.
    heads
        Attention heads.
    depth
        Fusion layers.
    mlp_ratio
        Feed-forward width as a multiple of ``dim``.
    dropout
        Dropout in attention and feed-forward layers.
    modalities
        Names of the two modalities.
    """

    def __init__(
        self,
        dim: int,
        heads: int,
        depth: int = 1,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        modalities: tuple[str, str] = ("image", "expression"),
    ) -> None:
        super().__init__()
        if len(modalities) != 2:
            raise ValueError(f"CrossModalFusion fuses exactly two modalities, got {modalities}.")
        self.modalities = tuple(modalities)
        self.layers = nn.ModuleList(
            nn.ModuleDict({m: _FusionLayer(dim, heads, mlp_ratio, dropout) for m in modalities}) for _ in range(depth)
        )

    def forward(self, latents: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Return fused latents ``{modality: (B, L, dim)}``; unchanged when fewer than two modalities are given."""
        if not all(m in latents for m in self.modalities):
            return latents
        a, b = self.modalities
        za, zb = latents[a], latents[b]
        for layer in self.layers:
            za, zb = layer[a](za, zb), layer[b](zb, za)
        return {**latents, a: za, b: zb}


class AttentionPool(nn.Module):
    """Gated attention pooling of a set of vectors into one (attention-based multiple-instance learning).

    ``a_i = softmax_i(w^T (tanh(V h_i) ⊙ sigmoid(U h_i)))`` and the pooled vector is ``Σ_i a_i h_i``; padded
    elements get zero weight.

    Parameters
    ----------
    dim
        Width of the vectors.
    hidden
        Width of the attention network.

    References
    ----------
    Ilse M, Tomczak JM, Welling M. Attention-based deep multiple instance learning. ICML (2018).
    """

    def __init__(self, dim: int, hidden: int = 32) -> None:
        super().__init__()
        self.value = nn.Linear(dim, hidden)
        self.gate = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pool ``x`` ``(B, T, dim)`` (``mask`` ``(B, T)``, ``True`` = real) to ``(B, dim)``; also return ``(B, T)``."""
        logits = self.score(torch.tanh(self.value(x)) * torch.sigmoid(self.gate(x))).squeeze(-1)
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        weights = logits.softmax(dim=-1)
        return torch.einsum("bt,btd->bd", weights, x), weights


class SlideRiskOutput(NamedTuple):
    """What :class:`SlideRiskModel` returns.

    Attributes
    ----------
    risk
        Slide risk score ``(B,)``: the log relative hazard for survival, the log-odds for response.
    modality_risk
        Each modality's contribution ``{modality: (B,)}``; they sum to ``risk``.
    tile_attention
        With ``return_attention=True``: ``{modality: (B, N)}``, how much of each modality's pooled vector comes
        from each tile (the pooling weights over latents times the latents' cross-attention to the tiles, averaged
        over heads). Each row sums to 1 over the real tiles; padded tiles get 0. ``None`` otherwise.
    """

    risk: torch.Tensor
    modality_risk: dict[str, torch.Tensor]
    tile_attention: dict[str, torch.Tensor] | None


class SlideRiskModel(nn.Module):
    """Risk score of a slide from its bag of tile features (STORM's clinical model).

    Per modality: standardise the tile features (statistics of the training tiles, set by
    :meth:`set_feature_stats`), project to ``dim`` (linear + GELU), compress with a :class:`PerceiverCompressor`;
    then fuse the two modalities' latents with :class:`CrossModalFusion`, pool each modality's latents with an
    :class:`AttentionPool` and map the pooled vector to a scalar. The slide risk is the sum of the modalities'
    scalars (a modality missing from the input contributes nothing). Survival: train ``risk`` as the log relative
    hazard with :func:`cox_partial_likelihood_loss` (DeepSurv); response: as the log-odds with the logistic loss.

    Parameters
    ----------
    config
        A :class:`SlideModelConfig` (or its dict).

    References
    ----------
    Jaegle A et al. Perceiver: general perception with iterative attention. ICML (2021).
    Ilse M, Tomczak JM, Welling M. Attention-based deep multiple instance learning. ICML (2018).
    Katzman JL et al. DeepSurv: personalized treatment recommender system using a Cox proportional hazards deep
    neural network. BMC Med Res Methodol 18, 24 (2018).
    """

    def __init__(self, config: SlideModelConfig | dict[str, Any]) -> None:
        super().__init__()
        if isinstance(config, dict):
            config = SlideModelConfig.from_dict(config)
        self.config = config
        c = config
        if not c.modalities:
            raise ValueError("SlideModelConfig sets neither image_dim nor expression_dim: the model needs a modality.")
        self.modalities = c.modalities
        self.embed = nn.ModuleDict()
        self.compress = nn.ModuleDict()
        self.pool = nn.ModuleDict()
        self.head = nn.ModuleDict()
        for m in self.modalities:
            in_dim = c.input_dim(m)
            # Standardisation lives in buffers so that it travels with the state dict (and the fold's statistics
            # with the fold's weights); the identity until set_feature_stats is called.
            self.register_buffer(f"{m}_mean", torch.zeros(in_dim))
            self.register_buffer(f"{m}_scale", torch.ones(in_dim))
            self.embed[m] = nn.Sequential(nn.Linear(in_dim, c.dim), nn.GELU(), nn.Dropout(c.dropout))
            self.compress[m] = PerceiverCompressor(c.dim, c.n_latents, c.heads, c.latent_depth, c.mlp_ratio, c.dropout)
            self.pool[m] = AttentionPool(c.dim, c.pool_hidden)
            self.head[m] = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, 1))
        self.fusion = (
            CrossModalFusion(c.dim, c.heads, c.fusion_depth, c.mlp_ratio, c.dropout, modalities=self.modalities)
            if len(self.modalities) == 2 and c.fusion_depth > 0
            else None
        )

    @torch.no_grad()
    def set_feature_stats(self, modality: str, mean: torch.Tensor, scale: torch.Tensor) -> None:
        """Set the per-feature mean and scale that ``modality``'s tile features are standardised with.

        Scales below 1e-6 (constant features) are replaced by 1 so that they cannot blow up.
        """
        self._check_modality(modality)
        mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1)
        scale = torch.as_tensor(scale, dtype=torch.float32).reshape(-1)
        expected = self.config.input_dim(modality)
        if mean.numel() != expected or scale.numel() != expected:
            raise ValueError(f"{modality} statistics must have {expected} values, got {mean.numel()}/{scale.numel()}.")
        if not (torch.isfinite(mean).all() and torch.isfinite(scale).all()):
            raise ValueError(f"{modality} statistics must be finite.")
        scale = torch.where(scale.abs() < 1e-6, torch.ones_like(scale), scale.abs())
        getattr(self, f"{modality}_mean").copy_(mean)
        getattr(self, f"{modality}_scale").copy_(scale)

    def _check_modality(self, modality: str) -> None:
        if modality not in self.modalities:
            raise ValueError(f"This model has no {modality!r} branch (its modalities: {self.modalities}).")

    def _inputs(
        self, features: dict[str, torch.Tensor | None], masks: dict[str, torch.Tensor | None]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
        """Check and standardise the given modalities; return ``{modality: (x, mask)}``."""
        out = {}
        for m, x in features.items():
            if x is None:
                continue
            self._check_modality(m)
            if x.ndim != 3 or x.shape[-1] != self.config.input_dim(m):
                raise ValueError(
                    f"{m} features must have shape (batch, tiles, {self.config.input_dim(m)}), got {tuple(x.shape)}."
                )
            mask = masks.get(m)
            if mask is not None:
                if mask.shape != x.shape[:2]:
                    raise ValueError(f"{m}_mask must have shape {tuple(x.shape[:2])}, got {tuple(mask.shape)}.")
                mask = mask.to(torch.bool)
                if not mask.any(dim=1).all():
                    raise ValueError(f"Every bag needs at least one real {m} tile; a {m}_mask row is all False.")
            x = (x - getattr(self, f"{m}_mean")) / getattr(self, f"{m}_scale")
            if mask is not None:
                # Padded tiles get zero attention anyway; zeroing them also keeps NaN padding out of the sums.
                x = x.masked_fill(~mask[..., None], 0.0)
            out[m] = (x, mask)
        if not out:
            raise ValueError(f"Pass the features of at least one modality of {self.modalities}.")
        return out

    def forward(
        self,
        image: torch.Tensor | None = None,
        expression: torch.Tensor | None = None,
        image_mask: torch.Tensor | None = None,
        expression_mask: torch.Tensor | None = None,
        *,
        return_attention: bool = False,
    ) -> SlideRiskOutput:
        """Score a batch of bags.

        Parameters
        ----------
        image, expression
            Tile features ``(B, N, image_dim)`` and ``(B, N', expression_dim)``; either may be ``None``.
        image_mask, expression_mask
            Boolean ``(B, N)`` / ``(B, N')``, ``True`` for real tiles, ``False`` for padding; ``None``: all real.
        return_attention
            Also return per-tile attention maps (computed with explicit attention weights).

        Returns
        -------
        SlideRiskOutput
        """
        inputs = self._inputs(
            {"image": image, "expression": expression}, {"image": image_mask, "expression": expression_mask}
        )
        latents, cross = {}, {}
        for m, (x, mask) in inputs.items():
            latents[m], cross[m] = self.compress[m](self.embed[m](x), mask, need_weights=return_attention)
        if self.fusion is not None:
            latents = self.fusion(latents)
        modality_risk, attention = {}, {}
        for m, z in latents.items():
            pooled, pool_weights = self.pool[m](z)
            modality_risk[m] = self.head[m](pooled).squeeze(-1)
            if return_attention:
                # Attention rollout through the pooling: the share of the pooled vector each tile feeds. It ignores
                # the mixing among latents (self-attention, fusion), a first-order map as in attention-MIL papers.
                attention[m] = torch.einsum("bl,bln->bn", pool_weights, cross[m])
        risk = torch.stack(list(modality_risk.values()), dim=0).sum(dim=0)
        return SlideRiskOutput(risk, modality_risk, attention if return_attention else None)


def cox_partial_likelihood_loss(
    risk: torch.Tensor,
    time: torch.Tensor,
    event: torch.Tensor,
    *,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """Negative Cox log partial likelihood with Breslow's handling of tied times.

    ``-Σ_{i: event} [r_i - log Σ_{j: t_j ≥ t_i} exp(r_j)]``, divided by the number of events for
    ``reduction="mean"``. Patients sharing an event time all stay in each other's risk sets (Breslow). The
    log-sum-exp over risk sets is one ``logcumsumexp`` over the risks sorted by decreasing time, which is O(n log n)
    and never overflows; a batch without events returns a zero that still carries the graph.

    Parameters
    ----------
    risk
        Predicted log relative hazards ``(n,)`` (any shape with ``n`` elements).
    time
        Follow-up times ``(n,)``.
    event
        Event flags ``(n,)``: 1/True observed, 0/False censored.
    reduction
        ``"mean"`` over events (comparable across batch sizes) or ``"sum"``.

    Returns
    -------
    torch.Tensor
        A scalar.

    References
    ----------
    Cox DR. Regression models and life-tables. J R Stat Soc B 34, 187-220 (1972).
    Breslow N. Covariance analysis of censored survival data. Biometrics 30, 89-99 (1974).
    Katzman JL et al. DeepSurv. BMC Med Res Methodol 18, 24 (2018).
    """
    risk = risk.reshape(-1)
    time = torch.as_tensor(time, device=risk.device).reshape(-1)
    event = torch.as_tensor(event, device=risk.device).reshape(-1).to(torch.bool)
    if not (risk.numel() == time.numel() == event.numel()):
        raise ValueError(
            f"risk, time and event must have one value per patient, got {risk.numel()}, {time.numel()}, "
            f"{event.numel()}."
        )
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}.")
    if not bool(event.any()):
        return risk.sum() * 0.0
    order = torch.argsort(time, descending=True, stable=True)
    r, t, e = risk[order], time[order], event[order]
    log_cumulative = torch.logcumsumexp(r, dim=0)
    # Sorted by decreasing time, position k's cumulative sum covers everyone with t_j ≥ t_k except the patients tied
    # with k that come after it: take the value at the tie block's last position instead (Breslow's risk set).
    neg_t = (-t).contiguous()
    last = torch.searchsorted(neg_t, neg_t, right=True) - 1
    log_likelihood = (r - log_cumulative[last])[e]
    return -(log_likelihood.mean() if reduction == "mean" else log_likelihood.sum())


class IntegratedGradients(NamedTuple):
    """Result of :func:`integrated_gradients`.

    Attributes
    ----------
    attributions
        ``{modality: (N, d)}`` per tile and feature; their total ≈ ``risk - baseline_risk`` (completeness).
    risk
        The model's risk of the bag.
    baseline_risk
        The model's risk of the baseline bag.
    """

    attributions: dict[str, torch.Tensor]
    risk: float
    baseline_risk: float


def integrated_gradients(
    model: Callable[..., SlideRiskOutput],
    features: dict[str, torch.Tensor],
    *,
    baseline: Literal["zero", "mean"] | dict[str, torch.Tensor] = "zero",
    n_steps: int = 64,
    batch_size: int = 16,
) -> IntegratedGradients:
    """Integrated gradients of a slide's risk with respect to its tile features.

    ``IG(x) = (x - x') ⊙ ∫_0^1 ∂f(x' + α(x - x'))/∂x dα``, the integral taken as a midpoint Riemann sum over
    ``n_steps`` points of the straight path (the midpoint rule's error falls as ``1/n_steps²``, against
    ``1/n_steps`` for the right sum of the original paper). By completeness the attributions of all tiles and
    features add up to ``f(x) - f(x')``, which is the check that ``n_steps`` is large enough.

    Parameters
    ----------
    model
        A :class:`SlideRiskModel` (put in eval mode for the call, restored after).
    features
        One bag: ``{modality: (N, d)}`` tensors (no padding).
    baseline
        ``"zero"``: all-zero features; ``"mean"``: every tile replaced by the bag's mean tile (a bag without
        contrast between tiles); or ``{modality: tensor}`` broadcastable to the features.
    n_steps
        Points on the path.
    batch_size
        Path points scored per forward pass (memory: ``batch_size × N × d``).

    Returns
    -------
    IntegratedGradients

    References
    ----------
    Sundararajan M, Taly A, Yan Q. Axiomatic attribution for deep networks. ICML (2017).
    """
    if n_steps < 1 or batch_size < 1:
        raise ValueError(f"n_steps and batch_size must be ≥ 1, got {n_steps} and {batch_size}.")
    if not features:
        raise ValueError("Pass the features of at least one modality.")
    x = {m: torch.as_tensor(v).detach() for m, v in features.items()}
    for m, v in x.items():
        if v.ndim != 2:
            raise ValueError(f"{m} features of one bag must have shape (tiles, features), got {tuple(v.shape)}.")
    if isinstance(baseline, str):
        if baseline == "zero":
            base = {m: torch.zeros_like(v) for m, v in x.items()}
        elif baseline == "mean":
            base = {m: v.mean(dim=0, keepdim=True).expand_as(v) for m, v in x.items()}
        else:
            raise ValueError(f"baseline must be 'zero', 'mean' or a dict of tensors, got {baseline!r}.")
    else:
        base = {m: torch.as_tensor(baseline[m], dtype=x[m].dtype, device=x[m].device).expand_as(x[m]) for m in x}
    delta = {m: x[m] - base[m] for m in x}
    alphas = (torch.arange(n_steps, dtype=torch.float64) + 0.5) / n_steps
    grads = {m: torch.zeros_like(v) for m, v in x.items()}
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with torch.enable_grad():
            for chunk in alphas.split(batch_size):
                a = chunk.to(dtype=next(iter(x.values())).dtype, device=next(iter(x.values())).device)[:, None, None]
                path = {m: (base[m][None] + a * delta[m][None]).requires_grad_(True) for m in x}
                out = model(**path).risk
                step_grads = torch.autograd.grad(out.sum(), list(path.values()))
                for m, g in zip(path, step_grads, strict=True):
                    grads[m] += g.sum(dim=0)
            with torch.no_grad():
                risk = float(model(**{m: v[None] for m, v in x.items()}).risk[0])
                baseline_risk = float(model(**{m: v[None] for m, v in base.items()}).risk[0])
    finally:
        if was_training and hasattr(model, "train"):
            model.train()
    attributions = {m: delta[m] * grads[m] / n_steps for m in x}
    return IntegratedGradients(attributions, risk, baseline_risk)
