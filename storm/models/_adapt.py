"""Self-supervised adaptation of a pretrained model to the user's own slides (the role of Novae's ``fine_tune``).

A model pretrained on spot data reads only the genes of a new panel that are on its gene list (e.g. 31 of the 155
MERFISH genes for storm-mini). :meth:`storm.models.StormModel.adapt` appends the panel's other genes to the gene
list, gives them fresh gene embeddings and continues training on the user's slides with the pretraining objective
plus the reconstruction of each visible spot's own expression (``StormNetConfig.expr_self_loss_weight``), so that
the new genes are read into the embedding. No labels are used.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from anndata import AnnData
from scipy import sparse

from storm._logging import logger
from storm.models._prepare import lognorm_on_panel, match_genes

if TYPE_CHECKING:
    from storm.models._model import StormModel

__all__ = ["adapt", "extend_genes", "init_from_coexpression"]

_GENE_EMBEDDING = "expression_encoder.gene_embedding"


def _new_genes(adatas: Sequence[AnnData], genes: Sequence[str]) -> list[str]:
    """Genes of the data not on ``genes`` (after :func:`match_genes`), in order of first appearance."""
    known = set(genes)
    new: dict[str, None] = {}
    for adata in adatas:
        for g in match_genes(adata.var_names, genes):
            if g not in known:
                new[g] = None
    return list(new)


def extend_genes(model: StormModel, genes: Sequence[str], *, self_loss_weight: float | None = None) -> StormModel:
    """Return a copy of ``model`` whose gene list has ``genes`` appended.

    Every inference weight is copied; the new genes get gene embeddings drawn like a fresh model's (they are
    meaningless until :meth:`storm.models.StormModel.adapt` trains them). Decoders are new: the shipped models do
    not carry them.

    Parameters
    ----------
    model
        A model with the panel-agnostic expression encoder (``net.expression_encoder="gene_embedding"``).
    genes
        Genes to append; none may already be on the model's list.
    self_loss_weight
        Set ``net.expr_self_loss_weight`` of the copy (default: keep the model's).

    Returns
    -------
    StormModel
        A new model; ``model`` is not modified.

    Raises
    ------
    ValueError
        The model has no gene-embedding expression encoder, or a gene is already on its list.
    """
    from storm.models._model import StormModel
    from storm.nn import StormPretrainModel

    if model.config.net.expression_encoder != "gene_embedding":
        raise ValueError(
            "Only a model with the panel-agnostic expression encoder (net.expression_encoder='gene_embedding') can "
            f"read new genes; this one has {model.config.net.expression_encoder!r}."
        )
    genes = [str(g) for g in genes]
    clash = sorted(set(genes) & set(model.genes))
    if clash:
        raise ValueError(f"{len(clash)} gene(s) are already on the model's list, e.g. {clash[:3]}.")
    net = dataclasses.replace(model.config.net, n_genes=len(model.genes) + len(genes), timm_pretrained=False)
    if self_loss_weight is not None:
        net = dataclasses.replace(net, expr_self_loss_weight=float(self_loss_weight))
    config = dataclasses.replace(model.config, net=net, genes=model.genes + genes)
    module = StormPretrainModel(net)
    state = module.inference_state_dict()
    for key, value in model.module.inference_state_dict().items():
        if key == _GENE_EMBEDDING:
            state[key] = torch.cat([value, state[key][len(value) :]])
        else:
            state[key] = value
    module.load_inference_state_dict(state)
    module.config = dataclasses.replace(net, timm_pretrained=model.config.net.timm_pretrained)
    config = dataclasses.replace(config, net=module.config)
    return StormModel(config, module.eval())


@torch.no_grad()
def init_from_coexpression(
    model: StormModel,
    adatas: Sequence[AnnData],
    genes: Sequence[str],
    *,
    layer: str | None = None,
    max_spots: int = 10_000,
    random_state: int = 0,
) -> None:
    """Point the embeddings of ``genes`` (on ``model``'s list) towards the known genes they co-vary with, in place.

    Gene ``g``'s embedding becomes ``Σ_h r(g, h) ê_h`` over the other genes ``h`` measured with it, ``r`` being
    Pearson's correlation of log-normalised expression in the data and ``ê_h`` the unit gene embeddings. A new gene
    thus starts where the known genes it co-varies with already point, instead of at random. Only genes whose
    embeddings were trained (not in ``genes``) serve as directions.

    Parameters
    ----------
    model
        Model whose gene list holds ``genes``.
    adatas
        Data measuring ``genes`` (raw counts).
    genes
        Genes to initialise.
    layer
        Read counts from this layer.
    max_spots
        Spots sampled for the correlations.
    random_state
        Seed of the sample.
    """
    encoder = model.module.expression_encoder
    index = {g: i for i, g in enumerate(model.genes)}
    new = np.array([index[g] for g in genes])
    blocks, measured = [], np.zeros(len(model.genes), dtype=bool)
    for a in adatas:
        X, has = lognorm_on_panel(a, model.genes, target_sum=model.config.target_sum, layer=layer, ignore_case=True)
        blocks.append(X)
        measured |= has
    X = sparse.vstack(blocks, format="csr")
    rng = np.random.default_rng(random_state)
    rows = rng.choice(X.shape[0], min(max_spots, X.shape[0]), replace=False)
    cols = np.flatnonzero(measured)
    Z = np.asarray(X[rows][:, cols].todense(), dtype=np.float64)
    Z = (Z - Z.mean(0)) / np.where(Z.std(0) > 0, Z.std(0), 1.0)
    corr = Z.T @ Z / len(Z)  # (measured, measured)
    corr[:, np.isin(cols, new)] = 0.0  # untrained directions (the new genes themselves) point nowhere yet
    unit = encoder.normalized_gene_embedding().detach().double().cpu().numpy()[cols]
    position = {c: i for i, c in enumerate(cols)}
    for g in new:
        if g in position:
            direction = corr[position[g]] @ unit
            if np.linalg.norm(direction) > 1e-8:
                encoder.gene_embedding[g] = torch.as_tensor(direction, dtype=encoder.gene_embedding.dtype)


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

    Called as the method :meth:`StormModel.adapt` (``model`` is then ``self``).

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
    from lightning.pytorch import Trainer, seed_everything

    from storm.models._model import resolve_device
    from storm.train._datamodule import StormDataModule
    from storm.train._module import StormLightningModule
    from storm.train._pretrain import _EXPECTED_WARNINGS

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

    added = _new_genes(adatas, model.genes) if new_genes else []
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
