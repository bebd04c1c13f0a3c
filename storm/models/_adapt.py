"""Self-supervised adaptation of a pretrained model to the user's own slides (the role of Novae's ``fine_tune``).

A model pretrained on spot data reads only the genes of a new panel that are on its gene list (e.g. 31 of the 155
MERFISH genes for storm-mini). :func:`storm.train.adapt` appends the panel's other genes to the gene
list, gives them fresh gene embeddings and continues training on the user's slides with the pretraining objective
plus the reconstruction of each visible spot's own expression (``StormNetConfig.expr_self_loss_weight``), so that
the new genes are read into the embedding. No labels are used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from anndata import AnnData
from scipy import sparse

from storm.models._prepare import lognorm_on_panel, match_genes

if TYPE_CHECKING:
    from storm.models._model import StormModel

__all__ = ["extend_genes", "genes_to_add", "init_from_coexpression", "read_panel"]

_GENE_EMBEDDING = "expression_encoder.gene_embedding"


def genes_to_add(adatas: Sequence[AnnData], genes: Sequence[str]) -> list[str]:
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
    meaningless until :func:`storm.train.adapt` trains them). Decoders are new: the shipped models do
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


def most_variable_genes(adatas: Sequence[AnnData], genes: Sequence[str], n_top_genes: int | None, *, layer=None):
    """Pick the ``n_top_genes`` of ``genes`` most variable in the data (Seurat dispersion of log-normalised counts).

    ``None`` (or at least as many as there are): all of ``genes``, in their order.
    """
    genes = list(genes)
    if n_top_genes is None or n_top_genes >= len(genes) or not genes:
        return genes
    import scanpy as sc

    blocks = [lognorm_on_panel(a, genes, layer=layer, ignore_case=True)[0] for a in adatas]
    lognorm = AnnData(sparse.vstack(blocks, format="csr"))
    lognorm.var_names = genes
    table = sc.pp.highly_variable_genes(lognorm, n_top_genes=n_top_genes, flavor="seurat", inplace=False)
    order = np.argsort(-np.nan_to_num(table["dispersions_norm"].to_numpy(), nan=-np.inf), kind="stable")
    keep = set(order[:n_top_genes].tolist())
    return [g for i, g in enumerate(genes) if i in keep]


def read_panel(
    model: StormModel,
    adatas: Sequence[AnnData],
    *,
    n_top_genes: int | None = 3000,
    layer: str | None = None,
    random_state: int = 0,
) -> tuple[StormModel, list[str]]:
    """Return a copy of ``model`` that also reads the data's genes it does not know, zero-shot (no training).

    The data's genes missing from the model's list (at most the ``n_top_genes`` most variable of them) are
    appended (:func:`extend_genes`) and their embeddings set from their co-expression with the known genes
    (``init_from_coexpression`` of ``storm.models._adapt``): a new gene points where the genes it co-varies with
    point, so it adds its measurement to the directions the model already reads instead of being thrown away.
    :func:`storm.tl.embed` does this with ``panel="data"``.

    Parameters
    ----------
    model
        A model with the panel-agnostic expression encoder. Not modified.
    adatas
        The data (raw counts) whose genes are read. Not modified.
    n_top_genes
        At most this many genes appended, the most variable first; ``None``: every gene the model does not know.
    layer
        Read counts from this layer instead of ``.X``.
    random_state
        Seed of the spot sample for the correlations and of the embeddings of genes that co-vary with none.

    Returns
    -------
    tuple
        The new model (``model`` is not modified) and the genes appended, in order.
    """
    added = most_variable_genes(adatas, genes_to_add(adatas, model.genes), n_top_genes, layer=layer)
    if not added:
        return model, []
    torch.manual_seed(random_state)  # the fresh embeddings of genes whose co-expression gives no direction
    extended = extend_genes(model, added)
    init_from_coexpression(extended, adatas, added, layer=layer, random_state=random_state)
    return extended, added
