"""The training path of :func:`storm.tl.train_expression_head` for the spatial head (virtual ST v2)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from storm._logging import logger


def spatial_head_from_model(model: Any, n_genes: int, *, n_scales: int, trainable_blocks: int, window: int, **kw: Any):
    """Build a :class:`storm.nn.SpatialExpressionHead` from ``model``: its transformer, its tower or ImageNet's.

    The transformer (image-only part) is the model's; the EfficientNet-Lite tower is the model's image encoder when
    it is one (``image_encoder: efficientnet_lite0``), otherwise the ImageNet weights (the extra
    ``storm-st[efficientnet]``).
    """
    from storm.nn import EfficientNetLiteEncoder, SpatialExpressionHead, load_imagenet_weights

    net = model.config.net
    head = SpatialExpressionHead(
        n_genes,
        n_scales=n_scales,
        trainable_blocks=trainable_blocks,
        dim=net.dim,
        depth=net.depth,
        heads=net.heads,
        mlp_ratio=net.mlp_ratio,
        alibi_scale_um=net.alibi_scale_um,
        use_centre_embedding=net.use_centre_embedding,
        window_size=1 if window == 1 else min(net.window_size, window * window),
        **kw,
    )
    tower = model.module.image_encoder
    if not isinstance(tower, EfficientNetLiteEncoder) or tower.variant != head.tower.variant:
        load_imagenet_weights(head.tower.backbone)
        tower = None
    head.init_from(model.module.encoder, tower)
    return head


def slide_tensors(inputs, ys: list[np.ndarray], masks: list[np.ndarray], train: list[np.ndarray]):
    """:class:`storm.nn.SlideTensors` of each slide from its inputs and its rows' targets, mask and training flag."""
    from storm.nn import SlideTensors

    out = []
    for inp, y, m, t in zip(inputs, ys, masks, train, strict=True):
        out.append(
            SlideTensors(
                bottoms=inp.bottoms,
                index=inp.index,
                offsets_um=inp.offsets_um,
                y=torch.from_numpy(np.ascontiguousarray(y[inp.rows], dtype=np.float32)),
                mask=torch.from_numpy(np.ascontiguousarray(m[inp.rows])),
                train=torch.from_numpy(np.ascontiguousarray(t[inp.rows])),
            )
        )
    return out


def train_spatial(
    adatas: list[AnnData],
    genes: list[str],
    model: Any,
    *,
    train_rows: list[np.ndarray],
    ys: list[np.ndarray],
    measured: list[np.ndarray],
    scales_um: Sequence[float],
    patch_px: int,
    trainable_blocks: int,
    window: int,
    n_augment: int,
    stain_target: Any,
    epochs: int,
    lr: float,
    layer_decay: float,
    weight_decay: float,
    hidden_dim: int,
    dropout: float,
    l1: float,
    l2: float,
    library_key: str,
    random_state: int,
    progress: bool,
):
    """Build, fine-tune and score a spatial head (see :func:`storm.tl.train_expression_head`); returns it and stats."""
    from storm.metrics import gene_pearson
    from storm.nn import fit_spatial_head
    from storm.nn._spatial_head import predict_slides
    from storm.tl._spatial_head_inputs import slide_inputs

    torch.manual_seed(random_state)
    gen = torch.Generator().manual_seed(random_state)
    head = spatial_head_from_model(
        model,
        len(genes),
        n_scales=len(scales_um),
        trainable_blocks=trainable_blocks,
        window=window,
        hidden_dim=hidden_dim,
        dropout=dropout,
    )
    t0 = time.perf_counter()
    train_slides, val_slides = [], []
    for a, is_train, y, m in zip(adatas, train_rows, ys, measured, strict=True):
        inputs = slide_inputs(
            a,
            head,
            scales_um=scales_um,
            patch_px=patch_px,
            window=window,
            stain_target=stain_target,
            n_augment=n_augment if is_train.any() else 0,
            library_key=library_key,
            generator=gen,
            progress=progress,
        )
        for inp in inputs:
            rows_train = is_train[inp.rows]
            (t,) = slide_tensors([inp], [y], [m], [is_train])
            if rows_train.all():
                train_slides.append(t)
            elif not rows_train.any():
                t.train = torch.ones_like(t.train)
                t.bottoms = t.bottoms[:1]  # validation reads the patches as scanned
                val_slides.append(t)
            else:  # a slide split by val_key (e.g. by patient column): its validation spots are context only
                train_slides.append(t)
    cache_s = time.perf_counter() - t0
    logger.info(
        f"train_expression_head: cached the frozen tower's maps of {sum(len(s.y) for s in train_slides + val_slides):,}"
        f" spots × {len(scales_um)} scales × {1 + n_augment} copies in {cache_s:.0f} s"
    )
    t1 = time.perf_counter()
    history = fit_spatial_head(
        head,
        train_slides,
        epochs=epochs,
        lr=lr,
        layer_decay=layer_decay,
        weight_decay=weight_decay,
        l1=l1,
        l2=l2,
        val=val_slides,
        generator=gen,
        progress=progress,
    )
    fit_s = time.perf_counter() - t1
    val_r = np.full(len(genes), np.nan)
    if val_slides and sum(len(s.y) for s in val_slides) > 1:
        pred, true, _ = predict_slides(head, val_slides)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # constant genes: NaN, counted in the log line
            val_r = gene_pearson(pred.numpy(), true.numpy(), genes=genes).to_numpy()
    return head, history, val_r, {"cache_seconds": round(cache_s, 2), "fit_seconds": round(fit_s, 2)}
