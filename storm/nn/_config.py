"""Configuration of the STORM network (a plain, JSON-serialisable dataclass)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from storm._dataclasses import strict_from_dict

__all__ = ["StormNetConfig"]

ImageEncoderKind = Literal["conv", "timm", "stain", "precomputed", "none"]
ExpressionEncoderKind = Literal["gene_embedding", "raw", "none"]


@dataclass
class StormNetConfig:
    """Hyper-parameters of :class:`~storm.nn.StormPretrainModel`.

    The defaults are "storm-mini": small enough to pretrain on CPU and to ship as a safetensors file in the
    repository (see the package docs for its parameter count). Paper-scale settings: ``dim=768``, ``depth=12``,
    ``heads=12``, ``image_encoder="timm"`` with H0-mini on 224 px patches.

    Attributes
    ----------
    n_genes
        Size ``G`` of the union gene list (expression input and reconstruction target).
    dim
        Width of the spatial transformer (and of the embedding ``obsm['X_storm']``).
    depth
        Multiway transformer blocks.
    heads
        Attention heads (ALiBi slopes follow Press et al. 2022 for this count).
    mlp_ratio
        Feed-forward expert width as a multiple of ``dim``.
    dropout
        Dropout in attention and feed-forward layers.
    window_size
        Positions per window (25 = a 5×5 Visium neighbourhood or a cell and its 24 nearest neighbours; 1 = the
        "no spatial context" ablation). Longer inputs are cut to the first ``window_size`` positions.
    alibi_scale_um
        Distance in µm that counts as 1 in the ALiBi bias; ~half the neighbour spacing (Visium 50, cells ~10).
    use_centre_embedding
        Add a learned embedding to the centre spot's tokens.
    image_encoder
        ``"conv"`` (:class:`ConvImageEncoder`, from scratch; the offline default), ``"timm"``
        (:class:`TimmImageEncoder`), ``"stain"`` (:class:`StainTextureFeaturizer`, training-free),
        ``"precomputed"`` (batches carry ``(B, W, image_feature_dim)`` features) or ``"none"`` (expression-only
        model).
    patch_px
        Side of the H&E patches in pixels (a 55 µm spot resized; 64 keeps CPU pretraining fast, 224 = paper).
    conv_widths
        Stage widths of the CNN.
    image_feature_dim
        Output width of the CNN, or the width of precomputed features.
    timm_name, timm_pretrained, timm_pool, timm_kwargs
        Passed to :class:`TimmImageEncoder`.
    freeze_image_encoder
        Do not train the image encoder; the frozen encoder is then its own teacher (no EMA copy).
    image_layer_decay
        Layer-wise learning-rate decay of the image encoder in :meth:`StormPretrainModel.param_groups`; ``None``:
        0.7 for a pretrained timm backbone (the paper), 1.0 (off) otherwise.
    expression_encoder
        ``"gene_embedding"`` (:class:`ExpressionEncoder`), ``"raw"`` (linear projection of the raw gene vector:
        the "raw HVG" ablation) or ``"none"`` (image-only model).
    gene_dim
        Width of the gene embeddings (PCA components at initialisation).
    expr_normalization
        ``"total"`` or ``"n_genes"``: see :class:`ExpressionEncoder`.
    expr_context_layers
        Neighbourhood-attention blocks inside the expression encoder.
    n_visible
        Visible positions per modality during masked pretraining (the paper: about 5 of 25).
    p_drop_modality
        Per window, probability that each modality is hidden entirely (so H&E-only and expression-only
        embeddings are in-distribution); must be > 0 for the window-1 ablation with both modalities.
    decoder_dim, decoder_depth, decoder_heads, decoder_mlp_ratio
        Light per-modality decoders (the paper: MLP + 2 transformer blocks).
    ema_momentum
        Momentum of the EMA teacher of a trainable image encoder.
    image_loss
        ``"smooth_l1"`` or ``"cosine"`` between predicted and (standardised) teacher image features.
    expr_loss_weight, image_loss_weight
        Weights of the two reconstruction losses.
    expr_self_loss_weight
        Weight of a third term: each *visible* spot's own expression decoded from its output token by a linear
        read-out (MSE on its measured genes). 0 (the paper's objective, storm-mini's) leaves it out. Masked
        reconstruction alone rewards tokens for what predicts the neighbours, which can wash out a cell's own
        identity where cell types are intermixed; :func:`storm.train.adapt` turns it on so that a
        panel's new genes are read into the embedding.
    """

    n_genes: int
    dim: int = 128
    depth: int = 4
    heads: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    window_size: int = 25
    alibi_scale_um: float = 50.0
    use_centre_embedding: bool = True
    image_encoder: ImageEncoderKind = "conv"
    patch_px: int = 64
    conv_widths: tuple[int, ...] = (32, 64, 128, 192)
    image_feature_dim: int = 192
    timm_name: str = "hf-hub:bioptimus/H0-mini"
    timm_pretrained: bool = True
    timm_pool: str = "cls"
    timm_kwargs: dict[str, Any] = field(default_factory=dict)
    freeze_image_encoder: bool = False
    image_layer_decay: float | None = None
    expression_encoder: ExpressionEncoderKind = "gene_embedding"
    gene_dim: int = 64
    expr_normalization: str = "total"
    expr_context_layers: int = 1
    n_visible: int = 5
    p_drop_modality: float = 0.15
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    decoder_mlp_ratio: float = 2.0
    ema_momentum: float = 0.996
    image_loss: str = "smooth_l1"
    expr_loss_weight: float = 1.0
    image_loss_weight: float = 1.0
    expr_self_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        self.conv_widths = tuple(int(w) for w in self.conv_widths)
        problems = []
        if self.n_genes < 1 and self.expression_encoder != "none":
            problems.append(f"n_genes must be ≥ 1, got {self.n_genes}")
        if self.dim % self.heads:
            problems.append(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.decoder_dim % self.decoder_heads:
            problems.append(f"decoder_dim ({self.decoder_dim}) must be divisible by decoder_heads")
        if self.window_size < 1:
            problems.append(f"window_size must be ≥ 1, got {self.window_size}")
        if self.image_encoder not in ("conv", "timm", "stain", "precomputed", "none"):
            problems.append(f"unknown image_encoder {self.image_encoder!r}")
        if self.expression_encoder not in ("gene_embedding", "raw", "none"):
            problems.append(f"unknown expression_encoder {self.expression_encoder!r}")
        if self.image_encoder == "none" and self.expression_encoder == "none":
            problems.append("at least one of image_encoder and expression_encoder must not be 'none'")
        if not 0 <= self.p_drop_modality <= 0.5:
            problems.append(f"p_drop_modality must be in [0, 0.5], got {self.p_drop_modality}")
        if not 0 <= self.ema_momentum <= 1:
            problems.append(f"ema_momentum must be in [0, 1], got {self.ema_momentum}")
        if self.image_loss not in ("smooth_l1", "cosine"):
            problems.append(f"image_loss must be 'smooth_l1' or 'cosine', got {self.image_loss!r}")
        if self.expr_self_loss_weight < 0:
            problems.append(f"expr_self_loss_weight must be >= 0, got {self.expr_self_loss_weight}")
        if self.alibi_scale_um <= 0:
            problems.append(f"alibi_scale_um must be positive, got {self.alibi_scale_um}")
        both = self.image_encoder != "none" and self.expression_encoder != "none"
        if self.window_size == 1 and (not both or self.p_drop_modality == 0):
            problems.append(
                "window_size=1 leaves nothing to mask within a modality: pretraining then needs both modalities "
                "and p_drop_modality > 0 (one modality is reconstructed from the other)"
            )
        if problems:
            raise ValueError("Invalid StormNetConfig: " + "; ".join(problems) + ".")

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities the network has, in token order."""
        out = []
        if self.image_encoder != "none":
            out.append("image")
        if self.expression_encoder != "none":
            out.append("expression")
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["conv_widths"] = list(self.conv_widths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StormNetConfig:
        """Build a config from :meth:`to_dict` output; unknown keys are an error (a checkpoint of another version)."""
        return strict_from_dict(cls, d, label="StormNetConfig fields")
