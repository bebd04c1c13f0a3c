"""Library-size normalisation and log1p into a layer, leaving the raw counts in ``.X``."""

from __future__ import annotations

import warnings

import numpy as np
from anndata import AnnData
from scipy import sparse

from storm._logging import logger

from ._validate import check_counts, check_positive, check_unique_names, get_matrix


def normalize(
    adata: AnnData,
    *,
    target_sum: float | None = 1e4,
    layer_added: str = "lognorm",
    layer: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Scale each spot to ``target_sum`` counts and take ``log1p``, into ``layers[layer_added]``.

    ``.X`` keeps the raw counts (the layout every storm function expects); the expression encoder and the
    reconstruction target read the layer.

    Parameters
    ----------
    adata
        Spots × genes with raw counts in ``.X`` (or ``layer``).
    target_sum
        Counts per spot after scaling; ``None`` uses the median over spots (scanpy's rule).
    layer_added
        Name of the layer written.
    layer
        Read counts from this layer instead of ``.X``.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the new AnnData if ``copy=True``. Written:

    - ``layers[layer_added]``: ``log1p(counts / total * target_sum)``, float32, sparse if the counts are; spots with
      no counts stay 0 (remove them first with :func:`storm.pp.filter_spots`)
    - ``uns[layer_added]['params']``: ``target_sum``, ``source_layer``, ``log1p = True``

    Raises
    ------
    ValueError
        Negative or non-finite counts, duplicated names, or a ``target_sum`` that is not a positive number. ``adata``
        is then left unchanged.
    """
    import scanpy as sc  # here, not at module level: data-loader workers import storm.pp without needing scanpy

    check_unique_names(adata)
    check_counts(adata, layer)
    if target_sum is not None:
        check_positive(target_sum, "target_sum")

    X = get_matrix(adata, layer)
    n_empty = int(np.count_nonzero(np.asarray(X.sum(axis=1)).ravel() == 0))
    with warnings.catch_warnings():
        # scanpy warns about spots with zero counts; they are logged below with advice instead
        warnings.filterwarnings("ignore", message="Some cells have zero counts", category=UserWarning)
        scaled = sc.pp.normalize_total(adata, target_sum=target_sum, layer=layer, inplace=False)["X"]
    scaled = scaled.astype(np.float32, copy=False)
    if sparse.issparse(scaled):
        scaled = sparse.csr_matrix(scaled)
        np.log1p(scaled.data, out=scaled.data)
    else:
        scaled = np.log1p(np.asarray(scaled))

    adata = adata.copy() if copy else adata
    adata.layers[layer_added] = scaled
    adata.uns[layer_added] = {"params": {"target_sum": target_sum, "source_layer": layer, "log1p": True}}
    if n_empty:
        logger.warning(f"normalize: {n_empty} spots have no counts and stay 0; remove them with storm.pp.filter_spots.")
    logger.info(
        f"normalize: added layers[{layer_added!r}] (log1p of counts scaled to {target_sum}) and uns[{layer_added!r}]"
    )
    return adata if copy else None
