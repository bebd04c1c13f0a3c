"""STORM network: encoders + multiway spatial transformer + masked multimodal pretraining objective."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._alibi import attention_mask, spatial_alibi_bias
from ._batch import BatchKeys
from ._config import StormNetConfig
from ._decoders import TokenDecoder
from ._efficientnet import EfficientNetLiteEncoder
from ._ema import EMATeacher
from ._expression_encoder import ExpressionEncoder, RawExpressionEncoder, broadcast_gene_mask
from ._image_encoders import ConvImageEncoder, ImageEncoder
from ._llrd import layerwise_lr_groups
from ._losses import masked_expression_loss, token_regression_loss
from ._masking import sample_modality_drop, sample_position_mask
from ._spatial_encoder import SpatialEncoder, SpatialEncoderOutput
from ._stain_features import StainTextureFeaturizer
from ._timm_encoder import TimmImageEncoder

__all__ = ["PRETRAINING_ONLY_PREFIXES", "StormPretrainModel"]

#: State-dict prefixes needed only for pretraining (dropped from exported inference weights).
PRETRAINING_ONLY_PREFIXES: tuple[str, ...] = ("teacher.", "decoders.")


@dataclass
class _Inputs:
    """A validated batch, cut to the model's window."""

    offsets: torch.Tensor  # (B, W, 2), finite
    pos_mask: torch.Tensor  # (B, W) bool
    image: torch.Tensor | None  # (B, W, 3, H, H) patches or (B, W, D) features
    expr: torch.Tensor | None  # (B, W, G)
    gene_mask: torch.Tensor | None  # (B, W, G) bool
    present: dict[str, torch.Tensor]  # per modality (B, W) bool: valid and modality exists


def _build_image_encoder(config: StormNetConfig) -> ImageEncoder | None:
    kind = config.image_encoder
    if kind == "conv":
        return ConvImageEncoder(config.image_feature_dim, widths=config.conv_widths)
    if kind == "efficientnet_lite0":
        return EfficientNetLiteEncoder(kind, input_px=config.patch_px, freeze=config.freeze_image_encoder)
    if kind == "timm":
        return TimmImageEncoder(
            config.timm_name,
            pretrained=config.timm_pretrained,
            pool=config.timm_pool,
            freeze=config.freeze_image_encoder,
            model_kwargs=config.timm_kwargs,
        )
    if kind == "stain":
        return StainTextureFeaturizer()
    return None  # "precomputed" or "none"


def _build_expression_encoder(config: StormNetConfig) -> nn.Module | None:
    if config.expression_encoder == "gene_embedding":
        return ExpressionEncoder(
            config.n_genes,
            config.dim,
            gene_dim=config.gene_dim,
            n_context_layers=config.expr_context_layers,
            heads=config.heads,
            dropout=config.dropout,
            normalization=config.expr_normalization,
            alibi_scale_um=config.alibi_scale_um,
        )
    if config.expression_encoder == "raw":
        return RawExpressionEncoder(config.n_genes, config.dim)
    return None


class StormPretrainModel(nn.Module):
    """The STORM network with its masked multimodal spatial pretraining objective.

    Spot level: an image encoder (CNN, timm backbone, stain/texture features or precomputed features) and a
    panel-agnostic expression encoder. Spatial level: :class:`SpatialEncoder` over the window's image and
    expression tokens. Pretraining (:meth:`forward`): per modality, ``n_visible`` valid positions stay visible
    (:func:`sample_position_mask`) and, with probability ``p_drop_modality``, a whole modality is hidden in a
    window; the encoder sees visible tokens only (MAE-style), the expression encoder's neighbourhood attention too
    (a hidden spot must not leak into its neighbours' tokens); one :class:`TokenDecoder` per modality reconstructs
    the hidden tokens: expression over the union panel (MSE on measured genes), image features against a
    teacher: an EMA copy of a trainable image encoder, the frozen encoder itself, or the precomputed features.

    Parameters
    ----------
    config
        Hyper-parameters.
    image_encoder
        Use this encoder instead of building one from ``config`` (must have ``out_dim``).
    expression_encoder
        Use this encoder instead (e.g. :class:`NovaeExpressionEncoder`); same ``forward`` signature as
        :class:`ExpressionEncoder` and an ``out_dim`` attribute.

    Notes
    -----
    Training loop duties: call :meth:`update_teacher` after every optimiser step; build the optimiser from
    :meth:`param_groups`. Inference: :meth:`embed` (centre embeddings) or :meth:`encode` (all tokens); cache
    spot features with :meth:`image_features` and pass them as precomputed ``(B, W, D)`` image features (each
    spot appears in up to ``W`` windows). Export with :meth:`inference_state_dict`.
    """

    def __init__(
        self,
        config: StormNetConfig,
        *,
        image_encoder: ImageEncoder | None = None,
        expression_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        modalities = config.modalities
        self.modalities = modalities

        self.image_encoder: ImageEncoder | None = None
        self.teacher: EMATeacher | None = None
        self.image_dim = config.image_feature_dim
        if "image" in modalities:
            self.image_encoder = image_encoder if image_encoder is not None else _build_image_encoder(config)
            if self.image_encoder is not None:
                if config.freeze_image_encoder:
                    self.image_encoder.requires_grad_(False)
                    self.image_encoder.trainable = False
                self.image_dim = int(self.image_encoder.out_dim)
                if self.image_encoder_trainable:
                    self.teacher = EMATeacher(self.image_encoder, config.ema_momentum)

        self.expression_encoder: nn.Module | None = None
        input_dims: dict[str, int] = {}
        if "image" in modalities:
            input_dims["image"] = self.image_dim
        if "expression" in modalities:
            self.expression_encoder = (
                expression_encoder if expression_encoder is not None else _build_expression_encoder(config)
            )
            input_dims["expression"] = int(self.expression_encoder.out_dim)

        self.encoder = SpatialEncoder(
            config.dim,
            config.depth,
            config.heads,
            input_dims=input_dims,
            mlp_ratio=config.mlp_ratio,
            dropout=config.dropout,
            alibi_scale_um=config.alibi_scale_um,
            use_centre_embedding=config.use_centre_embedding,
        )
        out_dims = {"image": self.image_dim, "expression": config.n_genes}
        self.decoders = nn.ModuleDict(
            {
                m: TokenDecoder(
                    config.dim,
                    config.decoder_dim,
                    out_dims[m],
                    n_segments=len(modalities),
                    target_segment=i,
                    depth=config.decoder_depth,
                    heads=config.decoder_heads,
                    mlp_ratio=config.decoder_mlp_ratio,
                    dropout=config.dropout,
                    alibi_scale_um=config.alibi_scale_um,
                )
                for i, m in enumerate(modalities)
            }
        )
        if config.expr_self_loss_weight > 0 and "expression" in modalities:
            # a linear read-out keeps the token itself, not a deep decoder, responsible for the spot's identity
            self.decoders["expression_self"] = nn.Sequential(
                nn.LayerNorm(config.dim), nn.Linear(config.dim, config.n_genes)
            )

    # ------------------------------------------------------------------ properties and helpers
    @property
    def image_encoder_trainable(self) -> bool:
        """Whether pretraining updates the image encoder (then an EMA teacher provides its targets)."""
        enc = self.image_encoder
        return enc is not None and getattr(enc, "trainable", True) and any(p.requires_grad for p in enc.parameters())

    def _inputs(self, batch: Mapping[str, Any], *, use_image: bool = True, use_expression: bool = True) -> _Inputs:
        if BatchKeys.OFFSETS not in batch:
            raise ValueError(f"The batch has no {BatchKeys.OFFSETS!r} (B, W, 2) tensor of µm offsets.")
        offsets = batch[BatchKeys.OFFSETS]
        if offsets.ndim != 3 or offsets.shape[-1] != 2:
            raise ValueError(f"{BatchKeys.OFFSETS!r} must have shape (B, W, 2), got {tuple(offsets.shape)}.")
        w = min(offsets.shape[1], self.config.window_size)
        b = offsets.shape[0]
        offsets = offsets[:, :w]
        device = offsets.device
        pos_mask = batch.get(BatchKeys.POS_MASK)
        pos_mask = torch.ones(b, w, dtype=torch.bool, device=device) if pos_mask is None else pos_mask[:, :w].bool()
        if pos_mask.shape != (b, w):
            raise ValueError(f"{BatchKeys.POS_MASK!r} must have shape (B, W), got {tuple(pos_mask.shape)}.")

        def flags(key: str) -> torch.Tensor:
            f = batch.get(key)
            if f is None:
                return torch.ones(b, w, dtype=torch.bool, device=device)
            f = f.bool()
            return f.view(b, 1).expand(b, w) if f.ndim == 1 else f[:, :w]

        present: dict[str, torch.Tensor] = {}
        image = batch.get(BatchKeys.IMAGE) if use_image and "image" in self.modalities else None
        if image is not None:
            if image.ndim == 5:
                if self.image_encoder is None:
                    raise ValueError(
                        "This model takes precomputed image features (B, W, D), but the batch holds patches."
                    )
                if image.shape[2] != 3:
                    raise ValueError(f"Image patches must be (B, W, 3, H, H), got {tuple(image.shape)}.")
            elif image.ndim == 3:
                if image.shape[-1] != self.image_dim:
                    raise ValueError(
                        f"Precomputed image features have width {image.shape[-1]}, the model expects {self.image_dim}."
                    )
            else:
                raise ValueError(f"{BatchKeys.IMAGE!r} must be (B, W, 3, H, H) or (B, W, D), got {tuple(image.shape)}.")
            image = image[:, :w]
            present["image"] = pos_mask & flags(BatchKeys.HAS_IMAGE)
        expr = batch.get(BatchKeys.EXPR) if use_expression and "expression" in self.modalities else None
        gene_mask = None
        if expr is not None:
            if expr.ndim != 3 or expr.shape[-1] != self.config.n_genes:
                raise ValueError(
                    f"{BatchKeys.EXPR!r} must be (B, W, {self.config.n_genes}) over the model's gene list, "
                    f"got {tuple(expr.shape)}."
                )
            expr = expr[:, :w]
            gm = batch.get(BatchKeys.GENE_MASK)
            if gm is not None and gm.ndim == 3:
                gm = gm[:, :w]
            gene_mask = broadcast_gene_mask(gm, expr)
            present["expression"] = pos_mask & flags(BatchKeys.HAS_EXPR)
        if not present:
            raise ValueError(
                f"The batch holds none of the model's modalities {self.modalities} "
                f"(keys {BatchKeys.IMAGE!r}, {BatchKeys.EXPR!r})."
            )
        used = torch.stack(list(present.values())).any(0)
        zero = torch.zeros((), dtype=offsets.dtype, device=device)
        offsets = torch.where(used.unsqueeze(-1), offsets, zero)
        return _Inputs(offsets, pos_mask, image, expr, gene_mask, present)

    def _encode_images(self, image: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        """``(B, W, D)`` student image features at ``select`` (zeros elsewhere); only selected patches are encoded."""
        b, w = select.shape
        if image.ndim == 3:  # precomputed
            return torch.where(select.unsqueeze(-1), image, torch.zeros((), dtype=image.dtype, device=image.device))
        enc = self.image_encoder
        assert enc is not None  # checked in _inputs
        ctx = contextlib.nullcontext() if self.image_encoder_trainable else torch.no_grad()
        with ctx:
            feats = enc(image[select]) if bool(select.any()) else None
        if feats is None:
            return torch.zeros(b, w, self.image_dim, device=image.device)
        out = feats.new_zeros(b, w, feats.shape[-1])
        out[select] = feats
        return out

    @torch.no_grad()
    def _image_targets(self, image: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
        """``(N, D)`` teacher features of the selected positions (row order of ``image[select]``)."""
        if image.ndim == 3:
            return image[select].float()
        patches = image[select]
        if patches.shape[0] == 0:
            return torch.zeros(0, self.image_dim, device=image.device)
        teacher = self.teacher if self.teacher is not None else self.image_encoder
        return teacher(patches).float()

    def _encode(self, inp: _Inputs, visible: Mapping[str, torch.Tensor]) -> SpatialEncoderOutput:
        feats: dict[str, torch.Tensor | None] = {}
        if inp.image is not None:
            feats["image"] = self._encode_images(inp.image, visible["image"])
        if inp.expr is not None:
            feats["expression"] = self.expression_encoder(inp.expr, inp.gene_mask, inp.offsets, visible["expression"])
        return self.encoder(feats, inp.offsets, visible)

    # ------------------------------------------------------------------ public API
    def forward(self, batch: Mapping[str, Any], *, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Masked multimodal pretraining loss of a batch.

        Parameters
        ----------
        batch
            Dict with the :class:`BatchKeys` tensors.
        generator
            Random generator for the masks (reproducible validation).

        Returns
        -------
        dict
            ``loss`` (weighted sum, differentiable), ``loss_expr``, ``loss_img`` (0 when the modality has no
            target), ``loss_expr_self`` (visible spots' own expression; 0 unless ``expr_self_loss_weight > 0``),
            ``n_masked_expr``, ``n_masked_img`` (reconstructed tokens) and ``teacher_std`` (mean per-feature
            standard deviation of the image targets across tokens: a collapse alarm when it falls towards 0; NaN
            without image targets).
        """
        cfg = self.config
        inp = self._inputs(batch)
        dropped = sample_modality_drop(inp.present, cfg.p_drop_modality, generator)
        visible = {
            m: sample_position_mask(p & ~dropped[m].unsqueeze(1), cfg.n_visible, generator)
            for m, p in inp.present.items()
        }
        targets = {m: inp.present[m] & ~visible[m] for m in inp.present}
        out = self._encode(inp, visible)
        positions = inp.offsets.repeat(1, len(self.modalities), 1)

        def decode(m: str) -> torch.Tensor:
            return self.decoders[m](out.tokens, out.token_valid, targets[m], positions)

        zero = out.tokens.sum() * 0.0
        loss_expr, loss_img, loss_self = zero, zero, zero
        n_expr = n_img = torch.zeros((), dtype=torch.long, device=inp.offsets.device)
        teacher_std = torch.full((), float("nan"), device=inp.offsets.device)
        if inp.expr is not None:
            tgt = targets["expression"]
            n_expr = tgt.sum()
            if bool(tgt.any()):
                loss_expr = masked_expression_loss(decode("expression"), inp.expr, inp.gene_mask, tgt)
            if "expression_self" in self.decoders:
                own, _ = out.segment("expression")
                seen = visible["expression"]
                loss_self = masked_expression_loss(self.decoders["expression_self"](own), inp.expr, inp.gene_mask, seen)
        if inp.image is not None:
            tgt = targets["image"]
            n_img = tgt.sum()
            if bool(tgt.any()):
                teacher = self._image_targets(inp.image, tgt)
                pred = decode("image")[tgt]
                loss_img = token_regression_loss(pred, teacher, cfg.image_loss)
                if teacher.shape[0] > 1:
                    teacher_std = teacher.std(0).mean().detach()
        loss = (
            cfg.expr_loss_weight * loss_expr + cfg.image_loss_weight * loss_img + cfg.expr_self_loss_weight * loss_self
        )
        return {
            "loss": loss,
            "loss_expr": loss_expr.detach(),
            "loss_img": loss_img.detach(),
            "loss_expr_self": loss_self.detach(),
            "n_masked_expr": n_expr,
            "n_masked_img": n_img,
            "teacher_std": teacher_std,
        }

    def encode(
        self, batch: Mapping[str, Any], *, use_image: bool = True, use_expression: bool = True
    ) -> SpatialEncoderOutput:
        """Encode whole windows (nothing masked).

        Parameters
        ----------
        batch
            Dict with the :class:`BatchKeys` tensors.
        use_image, use_expression
            Ignore a modality even if the batch has it (e.g. H&E-only embeddings of a slide with expression).

        Returns
        -------
        SpatialEncoderOutput
        """
        inp = self._inputs(batch, use_image=use_image, use_expression=use_expression)
        return self._encode(inp, inp.present)

    def embed(self, batch: Mapping[str, Any], *, use_image: bool = True, use_expression: bool = True) -> torch.Tensor:
        """Centre-spot embeddings ``(B, dim)`` in eval mode: the mean of the centre's modality tokens.

        The model is switched to eval mode for the call and restored afterwards; wrap the call in
        ``torch.inference_mode()`` when no gradients are needed.

        Parameters
        ----------
        batch
            Dict with the :class:`BatchKeys` tensors.
        use_image, use_expression
            See :meth:`encode`.

        Returns
        -------
        torch.Tensor
            ``(B, dim)``, the rows of ``obsm['X_storm']``.
        """
        was_training = self.training
        self.eval()
        try:
            return self.encode(batch, use_image=use_image, use_expression=use_expression).centre_embedding()
        finally:
            self.train(was_training)

    def spot_features(
        self,
        *,
        image: torch.Tensor | None = None,
        expr: torch.Tensor | None = None,
        gene_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Spot-level inputs of ``N`` spots, encoded once each, for :meth:`embed_windows` (inference).

        A spot appears in up to ``W`` windows; its image features and its expression token before neighbourhood
        attention (:meth:`ExpressionEncoder.encode_spots`) do not depend on the window, so they are computed here
        once and gathered into windows by :meth:`embed_windows`.

        Parameters
        ----------
        image
            ``(N, 3, H, W)`` patches or ``(N, D)`` precomputed image features; ``None`` leaves the modality out.
        expr
            ``(N, G)`` normalised expression over the model's gene list; ``None`` leaves the modality out.
        gene_mask
            ``(G,)`` or ``(N, G)`` bool: genes measured (``None``: all).

        Returns
        -------
        dict
            ``"image"``: ``(N, D)`` features; ``"expression"``: ``(N, dim)`` spot tokens, or, for an expression
            encoder without ``encode_spots``/``contextualize``, ``"expression_input"`` ``(N, G)`` and
            ``"gene_mask"`` ``(N, G)``. Only the modalities given and present in the model.
        """
        out: dict[str, torch.Tensor] = {}
        if image is not None and "image" in self.modalities:
            if image.ndim == 4:
                out["image"] = self.image_features(image).float()
            elif image.ndim == 2 and image.shape[-1] == self.image_dim:
                out["image"] = image
            else:
                raise ValueError(
                    f"image must be (N, 3, H, W) patches or (N, {self.image_dim}) features, got {tuple(image.shape)}."
                )
        if expr is not None and "expression" in self.modalities:
            if expr.ndim != 2 or expr.shape[-1] != self.config.n_genes:
                raise ValueError(f"expr must be (N, {self.config.n_genes}), got {tuple(expr.shape)}.")
            gm = torch.ones_like(expr, dtype=torch.bool) if gene_mask is None else gene_mask.bool().expand_as(expr)
            enc = self.expression_encoder
            if hasattr(enc, "encode_spots") and hasattr(enc, "contextualize"):
                out["expression"] = enc.encode_spots(expr, gm)
            else:
                out["expression_input"], out["gene_mask"] = expr, gm
        if not out:
            raise ValueError(f"No input of the model's modalities {self.modalities} was given.")
        return out

    def embed_windows(
        self,
        spots: Mapping[str, torch.Tensor],
        index: torch.Tensor,
        offsets_um: torch.Tensor,
        *,
        niche: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Centre embeddings ``(B, dim)`` of windows over spots encoded by :meth:`spot_features` (eval mode).

        Equal (up to floating-point rounding) to :meth:`embed` on the windows' raw inputs, at a fraction of the
        cost: spot-level encoders run once per spot, absent modalities take no tokens, and the last transformer
        block computes the centre tokens only. Wrap the call in ``torch.inference_mode()``.

        Parameters
        ----------
        spots
            Output of :meth:`spot_features` for ``N`` spots.
        index
            Long ``(B, W)``: row of ``spots`` at each window position, position 0 = centre, ``-1`` = padding.
        offsets_um
            ``(B, W, 2)`` µm offsets of each position from the centre.
        niche
            Also return the niche embeddings: the mean of the window's valid output tokens, over every position and
            modality (see :meth:`SpatialEncoder.encode_centre`).

        Returns
        -------
        torch.Tensor or tuple
            ``(B, dim)``; with ``niche=True`` the pair ``(centre, niche)``.
        """
        if index.ndim != 2 or offsets_um.shape != (*index.shape, 2):
            raise ValueError(
                f"index must be (B, W) and offsets_um (B, W, 2), got {tuple(index.shape)} and "
                f"{tuple(offsets_um.shape)}."
            )
        w = min(index.shape[1], self.config.window_size)
        index, offsets_um = index[:, :w], offsets_um[:, :w]
        valid = index >= 0
        rows = index.clamp_min(0)
        zero = torch.zeros((), dtype=offsets_um.dtype, device=offsets_um.device)
        offsets = torch.where(valid.unsqueeze(-1), offsets_um, zero)
        was_training = self.training
        self.eval()
        try:
            feats: dict[str, torch.Tensor] = {}
            shared = None  # expression only: the context attention and the spatial encoder share one ALiBi mask
            enc = self.expression_encoder
            if "image" not in spots and "expression" in spots and self._same_alibi(enc):
                bias = spatial_alibi_bias(offsets.float(), self.encoder.slopes, self.encoder.alibi_scale_um)
                shared = attention_mask(bias, valid)
            if "image" in spots:
                feats["image"] = spots["image"][rows]
            if "expression" in spots:
                feats["expression"] = enc.contextualize(spots["expression"][rows], offsets, valid, attn_mask=shared)
            elif "expression_input" in spots:
                feats["expression"] = self.expression_encoder(
                    spots["expression_input"][rows], spots["gene_mask"][rows], offsets, valid
                )
            if not feats:
                raise ValueError("`spots` holds no modality; build it with spot_features().")
            return self.encoder.encode_centre(feats, offsets, {m: valid for m in feats}, attn_mask=shared, niche=niche)
        finally:
            self.train(was_training)

    def _same_alibi(self, enc: nn.Module | None) -> bool:
        """Whether ``enc``'s context attention builds the spatial encoder's ALiBi mask (same slopes and scale)."""
        slopes = getattr(enc, "slopes", None)
        return (
            isinstance(slopes, torch.Tensor)
            and getattr(enc, "alibi_scale_um", None) == self.encoder.alibi_scale_um
            and slopes.shape == self.encoder.slopes.shape
            and bool(torch.equal(slopes, self.encoder.slopes))
        )

    def image_features(self, patches: torch.Tensor) -> torch.Tensor:
        """Spot-level features ``(N, D)`` of ``(N, 3, H, W)`` patches, to cache and feed back as ``(B, W, D)``."""
        if self.image_encoder is None:
            raise ValueError("This model has no image encoder (it takes precomputed features or no images).")
        return self.image_encoder(patches)

    @torch.no_grad()
    def update_teacher(self, momentum: float | None = None) -> None:
        """EMA step of the image teacher towards the image encoder (no-op without a teacher)."""
        if self.teacher is not None:
            self.teacher.update(self.image_encoder, momentum)

    def param_groups(
        self, lr: float, weight_decay: float = 0.05, *, layer_decay: float | None = None
    ) -> list[dict[str, Any]]:
        """AdamW parameter groups: layer-wise LR decay in the image encoder, no weight decay on 1-D parameters.

        Parameters
        ----------
        lr
            Learning rate of everything above the image encoder (the paper: 1e-4).
        weight_decay
            Weight decay of matrices (the paper: 0.05).
        layer_decay
            LLRD factor of the image encoder; default ``config.image_layer_decay`` (``None``: 0.7 for a pretrained
            timm backbone, else 1.0). Its top layer gets ``lr · layer_decay``.

        Returns
        -------
        list[dict]
            Groups for ``torch.optim.AdamW`` (teacher and frozen parameters excluded).
        """
        cfg = self.config
        if layer_decay is None:
            layer_decay = cfg.image_layer_decay
        if layer_decay is None:
            pretrained = cfg.image_encoder == "efficientnet_lite0" or (
                cfg.image_encoder == "timm" and cfg.timm_pretrained
            )
            layer_decay = 0.7 if pretrained else 1.0
        groups: list[dict[str, Any]] = []
        if self.image_encoder is not None and self.image_encoder_trainable:
            groups += layerwise_lr_groups(self.image_encoder, lr * layer_decay, layer_decay, weight_decay)
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad or name.startswith(("image_encoder.", "teacher.")):
                continue
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay})
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
        return [g for g in groups if g["params"]]

    def inference_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict without the pretraining-only parts (EMA teacher, decoders), for export."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(PRETRAINING_ONLY_PREFIXES)}

    def load_inference_state_dict(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Load weights written by :meth:`inference_state_dict`; any other missing or extra key is an error.

        The EMA teacher, if any, is reset to the loaded image encoder.
        """
        own = self.inference_state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        wrong = [
            f"{k} {tuple(state_dict[k].shape)} ≠ {tuple(v.shape)}"
            for k, v in own.items()
            if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
        ]
        if missing or unexpected or wrong:
            raise ValueError(
                "The weights do not fit this configuration (were they saved with another StormNetConfig?): "
                f"{len(missing)} missing {missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, "
                f"{len(wrong)} of another shape {wrong[:3]}."
            )
        self.load_state_dict(dict(state_dict), strict=False)
        if self.teacher is not None:
            self.teacher.update(self.image_encoder, momentum=0.0)

    def parameter_counts(self) -> dict[str, int]:
        """Count parameters per part, plus ``inference`` (exported) and ``total``."""
        counts = {name: sum(p.numel() for p in child.parameters()) for name, child in self.named_children()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        counts["inference"] = sum(v.numel() for v in self.inference_state_dict().values() if v.is_floating_point())
        return counts
