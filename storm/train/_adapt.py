"""Self-supervised adaptation of a pretrained model to the user's own slides (the role of Novae's ``fine_tune``).

A model pretrained on spot data reads only the genes of a new panel that are on its gene list (e.g. 31 of the 155
MERFISH genes for storm-mini). :func:`adapt` appends the panel's other genes to the gene list
(:func:`storm.models.extend_genes`), gives them gene embeddings from their co-expression and continues training
on the user's slides with the pretraining objective plus the reconstruction of each visible spot's own expression
(``StormNetConfig.expr_self_loss_weight``), so that the new genes are read into the embedding. No labels are used.
It runs the Lightning training loop, so it lives in :mod:`storm.train`, above :mod:`storm.models`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from storm._logging import logger
from storm.train._datamodule import StormDataModule
from storm.train._module import StormLightningModule
from storm.train._pretrain import _EXPECTED_WARNINGS

if TYPE_CHECKING:
    from anndata import AnnData

    from storm.models import StormModel

__all__ = ["adapt"]


def adapt(
    model: StormModel,
    adata: AnnData | Sequence[AnnData],
    *,
    steps: int = 800,
    lr: float = 1e-3,
    batch_size: int = 64,
    new_genes: bool = True,
    self_loss_weight: float = 1.0,
    library_key: str = "library_id",
    layer: str | None = None,
    accelerator: str = "auto",
    random_state: int = 0,
    progress: bool = True,
) -> StormModel:
    """Adapt the model to your own slides, self-supervised (no labels), and return the adapted copy.

    Zero-shot, a model reads only the genes of a panel that are on its gene list. Adaptation appends the
    panel's other genes (``new_genes``), then trains every part that sees expression on the slides given,
    with the masked pretraining objective plus the reconstruction of each visible spot's own expression from
    its token (``self_loss_weight``; see :class:`storm.nn.StormNetConfig`). The image encoder is not trained.
    Embed the same slides with the returned model afterwards. Measured on MERFISH and Xenium cells
    (``benchmarks/cross_platform.py``): cell-type k-NN accuracy rises from below a PCA of the full panel to above
    it. On spot data the model was pretrained on, adaptation can lower domain quality (DLPFC), so it is not the
    default of :func:`storm.tl.embed`.


    Parameters
    ----------
    model
        The pretrained model. Not modified.
    adata
        Cells or spots with raw counts and coordinates (one or several slides), or a list of such. Not modified.
    steps
        Optimiser steps (``batch_size`` windows each, cycling through the windows): a budget that does not grow
        with the data. 800 steps see 51,200 windows (~8 passes over 6,500 cells) and took 13 min on one CPU
        thread of a shared 2-core machine (``benchmarks/cross_platform.py``).
    lr
        Peak learning rate (AdamW, warm-up then cosine decay).
    batch_size
        Windows per step.
    new_genes
        Append the data's genes that are not on the model's list (otherwise only the known genes are read).
    self_loss_weight
        Weight of the own-expression reconstruction (0: the pretraining objective alone).
    library_key
        Column of ``obs`` naming each spot's slide.
    layer
        Read raw counts from this layer instead of ``.X``.
    accelerator
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...
    random_state
        Seed of the initialisation of new genes, the masks and the window order.
    progress
        Show Lightning's progress bar.

    Returns
    -------
    StormModel
        A new model whose gene list ends with the appended genes.

    Raises
    ------
    TypeError
        ``adata`` is not an AnnData or a list of them.
    ValueError
        No expression encoder, no counts, fewer spots than ``batch_size``, or a bad argument.

    Examples
    --------
    >>> adapted = storm.models.StormModel.from_pretrained().adapt(adata)  # doctest: +SKIP
    >>> storm.tl.embed(adata, adapted, mode="expression")  # doctest: +SKIP
    """
    from anndata import AnnData
    from lightning.pytorch import Trainer, seed_everything

    from storm.models._adapt import extend_genes, genes_to_add, init_from_coexpression
    from storm.models._model import resolve_device

    adatas = [adata] if isinstance(adata, AnnData) else list(adata)
    if not adatas or not all(isinstance(a, AnnData) for a in adatas):
        raise TypeError("`adata` must be an AnnData or a list of AnnData.")
    if steps < 1:
        raise ValueError(f"`steps` must be ≥ 1, got {steps}.")
    if self_loss_weight < 0:
        raise ValueError(f"`self_loss_weight` must be ≥ 0, got {self_loss_weight}.")
    if "expression" not in model.modalities:
        raise ValueError("adapt trains on expression, but this model has no expression encoder.")
    for a in adatas:
        if a.n_vars == 0 or (a.X is None and layer is None):
            raise ValueError("adapt needs gene counts in `.X` (or `layer`) of every AnnData.")

    added = genes_to_add(adatas, model.genes) if new_genes else []
    seed_everything(random_state, verbose=False)  # before the new genes and decoders are drawn
    adapted = extend_genes(model, added, self_loss_weight=self_loss_weight)
    if added:
        init_from_coexpression(adapted, adatas, added, layer=layer, random_state=random_state)
    slides = [s for a in adatas for s in adapted.prepare(a, mode="expression", library_key=library_key, layer=layer)]
    slides = [s for s in slides if s.has_expr]
    n_spots = sum(s.n_obs for s in slides)
    if n_spots < batch_size:
        raise ValueError(
            f"adapt needs at least `batch_size` = {batch_size} spots with counts; the data have {n_spots}."
        )
    reading = ", ".join(f"{c['n_used']} of {c['n_genes']}" for c in map(adapted.gene_coverage, adatas))
    logger.info(
        f"adapt: {n_spots:,} spots of {len(slides)} slide(s); {len(added)} new gene(s) appended to the model's "
        f"{len(model.genes):,}; it now reads {reading} genes"
    )

    datamodule = StormDataModule(
        slides,
        patch_px=adapted.config.patch_px,
        window_size=adapted.config.net.window_size,
        batch_size=batch_size,
        val_fraction=0.0,
        seed=random_state,
        persistent_workers=False,
        use_image=False,
    )
    module = StormLightningModule(
        adapted.module,
        lr=lr,
        weight_decay=0.05,
        warmup_steps=min(100, steps // 10),
        total_steps=steps,
        seed=random_state,
    )
    device = resolve_device(accelerator)
    trainer = Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_steps=steps,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        for pattern in (*_EXPECTED_WARNINGS, r".*does not have many workers.*"):
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, datamodule=datamodule)
    adapted.module.to("cpu").eval()
    metrics: dict[str, Any] = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    logger.info(
        f"adapt: {trainer.global_step} steps in {time.perf_counter() - start:.0f} s; final losses "
        f"{ {k: v for k, v in metrics.items() if k.endswith('_epoch')} }"
    )
    return adapted
