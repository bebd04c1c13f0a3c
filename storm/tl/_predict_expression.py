"""``storm.tl.predict_expression``: predicted normalised expression of every spot from its H&E, as a new AnnData."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData

from storm._logging import logger
from storm.tl._expression_features import (
    check_features,
    encoder_identity,
    head_stain_target,
    resolve_model,
    spot_features,
)
from storm.tl._utils import elapsed, start_timer


def is_spatial_head(head: Any) -> bool:
    """Whether ``head`` is a :class:`storm.nn.SpatialExpressionHead` (it carries its own image tower)."""
    from storm.nn import SpatialExpressionHead

    return isinstance(head, SpatialExpressionHead)


def check_record(head: Any) -> None:
    """Refuse what is not a trained head (no gene list, encoder identity or feature description, renamed genes)."""
    from storm.nn import SavedHead

    if not isinstance(head, SavedHead):
        raise ValueError(
            f"`head` must be a storm.nn.SpatialExpressionHead or ExpressionHead, got {type(head).__name__}."
        )
    if head.genes is None or not head.encoder or not head.features:
        raise ValueError(
            f"This {type(head).__name__} has no gene list, encoder identity or feature description: train it with "
            "storm.tl.train_expression_head, or load a saved one with ExpressionHead.load."
        )
    n_genes, n_val = len(head.genes), None if head.val_pearson is None else len(head.val_pearson)
    if n_genes != head.n_genes or n_val not in (None, head.n_genes):
        raise ValueError(
            f"This {type(head).__name__} has {head.n_genes:,} outputs but {n_genes:,} names in `head.genes`"
            f"{'' if n_val is None else f' and {n_val:,} values in `head.val_pearson`'}: each prediction would go "
            "under another gene's name. Keep `head.genes` as trained (or load the head again with "
            "ExpressionHead.load)."
        )


def predict_spatial(
    adata: AnnData, head: Any, *, stain_target: Any, library_key: str = "library_id", progress: bool = False
) -> np.ndarray:
    """Predictions of a spatial head for every spot of ``adata`` (its patches as scanned, its windows)."""
    from storm.tl._spatial_head_inputs import slide_inputs

    setup = head.setup
    inputs = slide_inputs(
        adata,
        head,
        scales_um=setup["scales_um"],
        patch_px=int(setup["patch_px"]),
        window=int(setup["window"]),
        stain_target=stain_target,
        library_key=library_key,
        progress=progress,
    )
    pred = np.zeros((adata.n_obs, head.n_genes), dtype=np.float32)
    for inp in inputs:
        pred[inp.rows] = head.predict(inp.bottoms[0], inp.index, inp.offsets_um).numpy()
    return pred


def check_head(head: Any, model: Any) -> None:
    """Refuse a head that is not trained, or a frozen head trained on another encoder's features."""
    check_record(head)
    if is_spatial_head(head):
        return  # it computes with its own tower and transformer: no model's features to match
    ours = encoder_identity(model)
    if ours["fingerprint"] != head.encoder.get("fingerprint"):
        raise ValueError(
            f"The head was trained on features of encoder {head.encoder.get('name')!r} (fingerprint "
            f"{str(head.encoder.get('fingerprint'))[:12]}…), but `model` is {ours['name']!r} "
            f"({ours['fingerprint'][:12]}…). Pass the model the head was trained with, or train a new head."
        )
    check_features([f["name"] for f in head.features])


def var_frame(head: Any) -> pd.DataFrame:
    """``var`` of a prediction: the head's genes with ``val_pearson`` (NaN where unknown)."""
    r = head.val_pearson if head.val_pearson is not None else [np.nan] * len(head.genes)
    return pd.DataFrame({"val_pearson": np.asarray(r, dtype=np.float64)}, index=pd.Index(head.genes, name=None))


def predict_expression(
    adata: AnnData,
    head: Any,
    *,
    model: Any = None,
    batch_size: int = 256,
    accelerator: str = "auto",
    library_key: str = "library_id",
    progress: bool = True,
) -> AnnData:
    """Predict each spot's normalised log expression from its H&E with a trained head (virtual ST).

    Parameters
    ----------
    adata
        Spots with ``obsm['spatial']`` and an H&E image per slide (see DEVELOPERS.md); counts are not needed. Not
        modified.
    head
        A head from :func:`storm.tl.train_expression_head` or :meth:`storm.nn.SavedHead.load`.
    model
        The :class:`storm.models.StormModel` the head was trained on; default the embedded storm-mini. A model with
        another fingerprint is refused.
    batch_size
        Windows per forward pass.
    accelerator
        ``"auto"``, ``"cpu"`` or ``"cuda"``.
    library_key
        Column of ``obs`` naming each spot's slide.
    progress
        Show a progress bar.

    Returns
    -------
    AnnData
        Same spots: ``X`` float32 predicted ``log1p`` expression (counts scaled to ``target_sum`` per spot, as
        :func:`storm.pp.normalize`); ``obs`` copied; ``var_names`` the head's genes with ``var['val_pearson']``
        (validation Pearson r of each gene: trust the high ones); ``obsm['spatial']`` and ``uns['spatial']`` copied,
        so :mod:`storm.pl` plots it like the input; ``uns['predict_expression']['params']`` (``encoder``,
        ``features``, ``stain_normalized``: whether the patches were Macenko-normalised to the head's stain target,
        as they were in training, ``batch_size``).

    Raises
    ------
    ValueError
        A head of another encoder, no image for a slide, spots outside their image.
    """
    from storm.models._model import resolve_device
    from storm.nn import predict_with_head

    start = start_timer()
    if not isinstance(adata, AnnData):
        raise ValueError(f"`adata` must be an AnnData, got {type(adata).__name__}.")
    stain_target = head_stain_target(head)
    if is_spatial_head(head):
        check_record(head)
        pred = predict_spatial(adata, head, stain_target=stain_target, library_key=library_key, progress=progress)
        return _prediction(adata, head, pred, start, stain_target=stain_target, batch_size=batch_size)
    model = resolve_model(model)
    check_head(head, model)
    names = [f["name"] for f in head.features]
    x = spot_features(
        adata,
        model,
        names,
        batch_size=batch_size,
        accelerator=accelerator,
        library_key=library_key,
        stain_target=stain_target,
        progress=progress,
    )
    if x.shape[1] != head.arch["in_dim"]:
        raise ValueError(f"Features have width {x.shape[1]} but the head expects {head.arch['in_dim']}.")
    pred = predict_with_head(head, torch.from_numpy(x), device=resolve_device(accelerator)).numpy().astype(np.float32)
    return _prediction(adata, head, pred, start, stain_target=stain_target, batch_size=batch_size)


def _prediction(adata: AnnData, head: Any, pred: np.ndarray, start: float, *, stain_target, batch_size: int) -> AnnData:
    """Build the AnnData that :func:`predict_expression` returns."""
    names = [f["name"] for f in head.features]
    out = AnnData(X=pred, obs=adata.obs.copy(), var=var_frame(head))
    if "spatial" in adata.obsm:
        out.obsm["spatial"] = np.asarray(adata.obsm["spatial"]).copy()
    if "spatial" in adata.uns:
        out.uns["spatial"] = copy.deepcopy(adata.uns["spatial"])
    out.uns["predict_expression"] = {
        "params": {
            "encoder": head.encoder.get("name"),
            "features": names,
            "stain_normalized": stain_target is not None,
            "batch_size": int(batch_size),
        }
    }
    logger.info(
        f"predict_expression: finished ({elapsed(start)}): {out.n_obs:,} spots × {out.n_vars:,} genes predicted; "
        "var['val_pearson'] says which genes to trust"
    )
    return out
