"""Virtual-ST head v2: an EfficientNet-Lite tower (top fine-tuned) → STORM's spatial transformer (H&E only) → genes.

Each spot is seen at several scales (e.g. 110 and 220 µm of tissue around it): every scale's patch goes through the
same tower, and the pooled features of all scales, concatenated, are the spot's image token. The tokens of a spot's
window (the spot and its neighbours) go through the spatial transformer of a STORM model, image-only; the centre
token is mapped to the genes by a small MLP.

Training fine-tunes the top ``trainable_blocks`` blocks of the tower, the transformer and the MLP, with the paper's
L1 + L2 loss. The frozen bottom of the tower is computed once per patch and cached, for several stain-jittered and
rotated copies of each patch (:func:`storm.pp.hed_jitter`), which makes fine-tuning affordable on a CPU: a step
computes only the top blocks. Arrays in, arrays out; AnnData stays in :mod:`storm.tl`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._efficientnet import EfficientNetLiteEncoder
from ._heads import SavedHead, _pearson_columns, l1_l2_loss
from ._llrd import layerwise_lr_groups
from ._spatial_encoder import SpatialEncoder

__all__ = ["SlideTensors", "SpatialExpressionHead", "fit_spatial_head", "image_only_encoder"]


def image_only_encoder(encoder: SpatialEncoder, image_dim: int) -> SpatialEncoder:
    """Copy the image-only part of a STORM spatial transformer, for image tokens of width ``image_dim``.

    Attention, the image expert and its norms of every block, the image modality embedding, the centre embedding
    and the final norm are copied; the image input projection too when its width matches ``image_dim``, otherwise
    it starts afresh (a new image tower). The expression expert and projection are left out.

    Parameters
    ----------
    encoder
        A trained :class:`SpatialEncoder` with an ``"image"`` modality.
    image_dim
        Width of the new image features.

    Returns
    -------
    SpatialEncoder
        A new module (the input is not modified).
    """
    if "image" not in encoder.modalities:
        raise ValueError(f"The spatial transformer has no image modality ({encoder.modalities}).")
    m = encoder.modalities.index("image")
    first = encoder.blocks[0] if len(encoder.blocks) else None
    heads = int(encoder.slopes.numel())
    hidden = first.experts[m][0].out_features if first is not None else 4 * encoder.dim
    out = SpatialEncoder(
        encoder.dim,
        len(encoder.blocks),
        heads,
        input_dims={"image": int(image_dim)},
        mlp_ratio=hidden / encoder.dim,
        alibi_scale_um=encoder.alibi_scale_um,
        use_centre_embedding=encoder.centre_embedding is not None,
    )
    with torch.no_grad():
        proj = encoder.input_proj["image"]
        if proj[1].in_features == image_dim:
            out.input_proj["image"].load_state_dict(proj.state_dict())
        out.modality_embedding.copy_(encoder.modality_embedding[m : m + 1])
        if out.centre_embedding is not None:
            out.centre_embedding.copy_(encoder.centre_embedding)
        for new, old in zip(out.blocks, encoder.blocks, strict=True):
            new.attn.load_state_dict(old.attn.state_dict())
            new.norm1[0].load_state_dict(old.norm1[m].state_dict())
            new.norm2[0].load_state_dict(old.norm2[m].state_dict())
            new.experts[0].load_state_dict(old.experts[m].state_dict())
        out.norm.load_state_dict(encoder.norm.state_dict())
    return out


class SpatialExpressionHead(SavedHead):
    """H&E → expression from each spot's window: EfficientNet-Lite tower, spatial transformer, MLP (virtual ST v2).

    Parameters
    ----------
    n_genes
        Number of predicted genes.
    n_scales
        Patches per spot (tissue sizes are the caller's, e.g. 110 and 220 µm); each adds 1280 features to the token.
    variant
        EfficientNet-Lite variant of the tower.
    trainable_blocks
        Top blocks of the tower that are fine-tuned (0: the 1×1 head convolution only; the stem and the blocks
        below stay frozen, with their batch-norm statistics).
    dim, depth, heads, mlp_ratio, alibi_scale_um, use_centre_embedding
        The spatial transformer (those of the STORM model it is initialised from, see :meth:`init_from`).
    window_size
        Positions per window (1: the spot alone, the "no spatial context" ablation).
    hidden_dim
        Hidden width of the output MLP.
    dropout
        Dropout in the transformer and the MLP.
    """

    kind = "spatial"

    def __init__(
        self,
        n_genes: int,
        *,
        n_scales: int = 2,
        variant: str = "efficientnet_lite0",
        trainable_blocks: int = 2,
        dim: int = 128,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        alibi_scale_um: float = 50.0,
        use_centre_embedding: bool = True,
        window_size: int = 25,
        hidden_dim: int = 256,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.tower = EfficientNetLiteEncoder(variant)
        n_blocks = self.tower.backbone.n_blocks
        if not 0 <= trainable_blocks <= n_blocks:
            raise ValueError(f"trainable_blocks must be in [0, {n_blocks}], got {trainable_blocks}.")
        if n_scales < 1 or window_size < 1:
            raise ValueError(f"n_scales and window_size must be ≥ 1, got {n_scales} and {window_size}.")
        self.split = n_blocks - int(trainable_blocks)
        backbone = self.tower.backbone
        backbone.stem.requires_grad_(False)
        for block in backbone.blocks[: self.split]:
            block.requires_grad_(False)
        token_dim = n_scales * self.tower.out_dim
        # each spot's token is projected once, before it is gathered into the windows it belongs to (up to 25)
        self.proj = nn.Sequential(nn.LayerNorm(token_dim), nn.Linear(token_dim, dim))
        self.spatial = SpatialEncoder(
            dim,
            depth,
            heads,
            input_dims={"image": dim},
            mlp_ratio=mlp_ratio,
            dropout=dropout,
            alibi_scale_um=alibi_scale_um,
            use_centre_embedding=use_centre_embedding,
        )
        self.out = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, n_genes),
        )
        self.arch = {
            "n_genes": int(n_genes),
            "n_scales": int(n_scales),
            "variant": variant,
            "trainable_blocks": int(trainable_blocks),
            "dim": int(dim),
            "depth": int(depth),
            "heads": int(heads),
            "mlp_ratio": float(mlp_ratio),
            "alibi_scale_um": float(alibi_scale_um),
            "use_centre_embedding": bool(use_centre_embedding),
            "window_size": int(window_size),
            "hidden_dim": int(hidden_dim),
            "dropout": float(dropout),
        }
        self._init_record()
        self.tower.eval()  # from the start: the frozen bottom is cached with the ImageNet statistics, not a batch's

    @classmethod
    def from_arch(cls, arch: Mapping[str, Any]) -> SpatialExpressionHead:
        """Build a fresh head of the architecture ``arch``."""
        arch = dict(arch)
        return cls(int(arch.pop("n_genes")), **arch)

    def init_from(self, encoder: SpatialEncoder | None = None, tower: EfficientNetLiteEncoder | None = None) -> None:
        """Start from trained weights: a STORM model's spatial transformer and/or an EfficientNet-Lite tower.

        Parameters
        ----------
        encoder
            The model's :class:`SpatialEncoder`; its image-only part (:func:`image_only_encoder`) is copied in. Its
            width, depth and heads must be this head's.
        tower
            A tower of the same variant (e.g. a STORM model's image encoder, or one holding the ImageNet weights).
        """
        if encoder is not None:
            part = image_only_encoder(encoder, self.arch["dim"])
            try:
                self.spatial.load_state_dict(part.state_dict())
            except RuntimeError as err:
                raise ValueError(
                    f"The spatial transformer does not fit this head's (dim, depth, heads): {err}"
                ) from err
        if tower is not None:
            if tower.variant != self.tower.variant:
                raise ValueError(f"A {tower.variant} tower cannot start a {self.tower.variant} head.")
            self.tower.backbone.load_state_dict(tower.backbone.state_dict())

    def train(self, mode: bool = True) -> SpatialExpressionHead:
        """Train mode for the transformer and the MLP; the tower's batch norms keep their statistics (always eval)."""
        super().train(mode)
        self.tower.eval()
        return self

    # ------------------------------------------------------------------ the three stages
    @torch.no_grad()
    def bottom(self, patches: torch.Tensor) -> torch.Tensor:
        """Frozen part of the tower: ``(N, 3, H, W)`` RGB patches → ``(N, C, h, w)`` maps (cache them)."""
        x = self.tower.normalize(patches).contiguous(memory_format=torch.channels_last)
        return self.tower.backbone.bottom(x, self.split)

    def tokens(self, bottoms: torch.Tensor) -> torch.Tensor:
        """Trainable top of the tower: ``(N, n_scales, C, h, w)`` bottom maps → ``(N, n_scales · 1280)`` tokens."""
        n, s = bottoms.shape[:2]
        if s != self.arch["n_scales"]:
            raise ValueError(f"{s} scales given, the head was built for {self.arch['n_scales']}.")
        x = bottoms.flatten(0, 1).float().contiguous(memory_format=torch.channels_last)
        return self.tower.backbone.top(x, self.split).view(n, -1)

    def windows(self, tokens: torch.Tensor, index: torch.Tensor, offsets_um: torch.Tensor) -> torch.Tensor:
        """Predictions ``(B, n_genes)`` of windows over spot ``tokens``: ``index`` ``(B, W)`` rows (-1: padding)."""
        return self.windows_projected(self.proj(tokens), index, offsets_um)

    def windows_projected(self, projected: torch.Tensor, index: torch.Tensor, offsets_um: torch.Tensor) -> torch.Tensor:
        """:meth:`windows` over tokens already through ``proj`` (project a whole slide's once, then batch)."""
        return self.out(self.window_embedding(projected, index, offsets_um))

    def window_embedding(self, projected: torch.Tensor, index: torch.Tensor, offsets_um: torch.Tensor) -> torch.Tensor:
        """Return the spatial transformer's centre token ``(B, dim)`` of each window: what the gene readout reads."""
        w = min(index.shape[1], self.arch["window_size"])
        index, offsets_um = index[:, :w], offsets_um[:, :w]
        valid = index >= 0
        feats = projected[index.clamp_min(0)]
        zero = torch.zeros((), dtype=offsets_um.dtype, device=offsets_um.device)
        offsets = torch.where(valid.unsqueeze(-1), offsets_um, zero)
        return self.spatial.encode_centre({"image": feats}, offsets, {"image": valid})

    def forward(self, bottoms: torch.Tensor, index: torch.Tensor, offsets_um: torch.Tensor) -> torch.Tensor:
        """Predictions ``(B, n_genes)`` of windows whose spots' bottom maps are ``bottoms`` (see :meth:`windows`)."""
        return self.windows(self.tokens(bottoms), index, offsets_um)

    @torch.no_grad()
    def predict(
        self, bottoms: torch.Tensor, index: torch.Tensor, offsets_um: torch.Tensor, *, batch_size: int = 512
    ) -> torch.Tensor:
        """Eval-mode predictions for every window, tokens computed once per spot (in batches); on the CPU."""
        was = self.training
        self.eval()
        try:
            tokens = torch.cat([self.tokens(bottoms[i : i + batch_size]) for i in range(0, len(bottoms), batch_size)])
            projected = self.proj(tokens)
            return torch.cat(
                [
                    self.windows_projected(projected, index[i : i + batch_size], offsets_um[i : i + batch_size])
                    .float()
                    .cpu()
                    for i in range(0, len(index), batch_size)
                ]
            )
        finally:
            self.train(was)

    def __repr__(self) -> str:
        a = self.arch
        genes = "?" if self.genes is None else f"{len(self.genes):,}"
        scales = self.setup.get("scales_um", a["n_scales"])
        return (
            f"SpatialExpressionHead(genes={genes}, tower={a['variant']} (top {a['trainable_blocks']} blocks trained), "
            f"scales={scales}, window={a['window_size']}, transformer dim={a['dim']} depth={a['depth']})"
        )


@dataclass
class SlideTensors:
    """One slide's training inputs for :func:`fit_spatial_head` (arrays, no AnnData).

    Attributes
    ----------
    bottoms
        ``(n_copies, N, n_scales, C, h, w)`` cached bottom maps (any float dtype); copy 0 is the patch as scanned,
        the others augmented copies (training draws among those when there are any).
    index
        ``(N, W)`` long: window rows into the slide's spots (-1: padding), position 0 the spot itself.
    offsets_um
        ``(N, W, 2)`` µm offsets of each position from the centre.
    y
        ``(N, G)`` targets.
    mask
        ``(N, G)`` bool: measured entries.
    train
        ``(N,)`` bool: spots whose loss counts (others are context only, or validation).
    """

    bottoms: torch.Tensor
    index: torch.Tensor
    offsets_um: torch.Tensor
    y: torch.Tensor
    mask: torch.Tensor
    train: torch.Tensor


def _param_groups(head: SpatialExpressionHead, lr: float, layer_decay: float, weight_decay: float) -> list[dict]:
    groups = []
    if any(p.requires_grad for p in head.tower.parameters()):
        groups += layerwise_lr_groups(head.tower, lr * layer_decay, layer_decay, weight_decay)
    decay, no_decay = [], []
    for name, p in head.named_parameters():
        if name.startswith("tower.") or not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    groups += [
        {"params": decay, "lr": lr, "weight_decay": weight_decay},
        {"params": no_decay, "lr": lr, "weight_decay": 0},
    ]
    for g in groups:
        g["initial_lr"] = g["lr"]
    return [g for g in groups if g["params"]]


def fit_spatial_head(
    head: SpatialExpressionHead,
    slides: Sequence[SlideTensors],
    *,
    epochs: int = 30,
    lr: float = 5e-4,
    layer_decay: float = 0.7,
    weight_decay: float = 0.05,
    max_centres: int = 256,
    token_dropout: float = 0.1,
    l1: float = 1.0,
    l2: float = 1.0,
    val: Sequence[SlideTensors] = (),
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> list[dict[str, float]]:
    """Fine-tune ``head`` on cached bottom maps with AdamW, layer-wise LR decay, warm-up + cosine, ``l1·L1 + l2·L2``.

    A step takes up to ``max_centres`` training spots of one slide, computes the tokens of every spot in their
    windows (each from a random augmented copy), hides each neighbour with probability ``token_dropout``, and
    regresses the centres' expression. The MLP's last bias starts at the training mean.

    Parameters
    ----------
    head
        The head (modified in place).
    slides
        Training slides.
    epochs
        Passes over the training spots.
    lr
        Learning rate of the transformer and the MLP; the tower's top block gets ``lr · layer_decay``, each block
        below one more factor ``layer_decay``.
    layer_decay, weight_decay
        Layer-wise LR decay of the tower (the paper: 0.7) and AdamW's weight decay.
    max_centres
        Training spots per step.
    token_dropout
        Probability that a neighbour's token is hidden from a window in training.
    l1, l2
        Loss weights.
    val
        Validation slides (their ``train`` spots are scored): the loss and the mean gene-wise r per epoch.
    generator
        Random generator (batches, copies, dropout).
    progress
        Show a progress bar over epochs.

    Returns
    -------
    list of dict
        Per epoch: ``epoch``, ``train_loss`` and, with validation slides, ``val_loss`` and ``val_mean_r``.
    """
    from tqdm.auto import tqdm

    g = generator if generator is not None else torch.Generator().manual_seed(0)
    y_sum = sum((torch.where(s.mask, s.y, 0)[s.train]).sum(0) for s in slides)
    n_sum = sum(s.mask[s.train].sum(0) for s in slides)
    if int(sum(int(s.train.sum()) for s in slides)) < 2:
        raise ValueError("Training a spatial expression head needs at least 2 training spots.")
    with torch.no_grad():
        last = head.out[-1]
        last.bias.copy_(y_sum / n_sum.clamp_min(1))
        last.weight.mul_(0.1)
    batches = []  # (slide, centre rows) of one epoch; reshuffled every epoch
    for i, s in enumerate(slides):
        rows = torch.nonzero(s.train).flatten()
        n_chunks = max(1, math.ceil(len(rows) / max_centres))
        batches += [(i, n_chunks)]
    steps = epochs * sum(n for _, n in batches)
    opt = torch.optim.AdamW(_param_groups(head, lr, layer_decay, weight_decay))
    warmup = max(1, steps // 10)
    step = 0
    history = []
    for epoch in tqdm(range(epochs), desc="spatial expression head", unit="epoch", disable=not progress):
        head.train()
        total, seen = 0.0, 0
        plan = []
        for i, n_chunks in batches:
            rows = torch.nonzero(slides[i].train).flatten()
            rows = rows[torch.randperm(len(rows), generator=g)]
            plan += [(i, part) for part in rows.chunk(n_chunks)]
        for j in torch.randperm(len(plan), generator=g).tolist():
            i, centres = plan[j]
            s = slides[i]
            scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / max(1, steps))))
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * scale
            index = s.index[centres]
            members, local = torch.unique(index.clamp_min(0), return_inverse=True)
            n_copies = s.bottoms.shape[0]
            copy_of = (
                torch.randint(1, n_copies, (len(members),), generator=g)
                if n_copies > 1
                else torch.zeros(len(members), dtype=torch.long)
            )
            tokens = head.tokens(s.bottoms[copy_of, members])
            local = torch.where(index >= 0, local, -1)
            if token_dropout > 0 and local.shape[1] > 1:
                hide = torch.rand(local.shape, generator=g) < token_dropout
                hide[:, 0] = False
                local = torch.where(hide, -1, local)
            pred = head.windows(tokens, local, s.offsets_um[centres])
            loss = l1_l2_loss(pred, s.y[centres], l1=l1, l2=l2, mask=s.mask[centres])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], 1.0)
            opt.step()
            step += 1
            total += float(loss.detach()) * len(centres)
            seen += len(centres)
        row = {"epoch": epoch + 1, "train_loss": total / max(seen, 1)}
        if val:
            pred, true, mask = predict_slides(head, val)
            row["val_loss"] = float(l1_l2_loss(pred, true, l1=l1, l2=l2, mask=mask))
            r = _pearson_columns(pred, true)
            row["val_mean_r"] = float(r[torch.isfinite(r)].mean()) if torch.isfinite(r).any() else float("nan")
        history.append(row)
    head.eval()
    return history


def predict_slides(
    head: SpatialExpressionHead, slides: Sequence[SlideTensors]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Eval-mode predictions of the ``train`` spots of ``slides`` from their scanned copies: (pred, y, mask)."""
    preds, ys, masks = [], [], []
    for s in slides:
        p = head.predict(s.bottoms[0], s.index, s.offsets_um)
        preds.append(p[s.train])
        ys.append(s.y[s.train])
        masks.append(s.mask[s.train])
    return torch.cat(preds), torch.cat(ys), torch.cat(masks)
