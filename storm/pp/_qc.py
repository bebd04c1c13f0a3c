"""Per-spot and per-gene quality-control metrics (a thin layer over :func:`scanpy.pp.calculate_qc_metrics`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from anndata import AnnData

from storm._logging import logger

from ._validate import check_counts, check_unique_names


def mito_mask(var_names, mito_prefix: str | Sequence[str]) -> np.ndarray:
    """Bool mask of mitochondrial genes: names starting with any of ``mito_prefix``."""
    prefixes = (mito_prefix,) if isinstance(mito_prefix, str) else tuple(mito_prefix)
    return np.asarray(var_names.astype(str).str.startswith(prefixes), dtype=bool)


def qc_metrics(
    adata: AnnData,
    *,
    mito_prefix: str | Sequence[str] = ("MT-", "mt-"),
    layer: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Compute per-spot and per-gene QC metrics on raw counts.

    Parameters
    ----------
    adata
        Spots × genes with raw counts in ``.X`` (or ``layer``).
    mito_prefix
        Gene-name prefixes of mitochondrial genes (human ``MT-``, mouse ``mt-``).
    layer
        Read counts from this layer instead of ``.X``.
    copy
        Return a new AnnData instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the new AnnData if ``copy=True``. Written:

    - ``obs['total_counts']``: counts per spot
    - ``obs['n_genes_by_counts']``: genes with a count > 0
    - ``obs['total_counts_mt']``, ``obs['pct_counts_mt']``: mitochondrial counts and their percentage (0 where the
      panel has no mitochondrial gene, e.g. DLPFC's top-5,000 variable genes; NaN for spots without counts)
    - ``var['mt']``: whether the gene is mitochondrial
    - ``var['n_cells_by_counts']``, ``var['mean_counts']``, ``var['pct_dropout_by_counts']``, ``var['total_counts']``

    Raises
    ------
    ValueError
        Negative or non-finite counts, or duplicated obs/var names. ``adata`` is then left unchanged.
    """
    import scanpy as sc  # here, not at module level: data-loader workers import storm.pp without needing scanpy

    check_unique_names(adata)
    check_counts(adata, layer)
    is_mt = mito_mask(adata.var_names, mito_prefix)
    adata = adata.copy() if copy else adata

    adata.var["mt"] = is_mt
    sc.pp.calculate_qc_metrics(adata, qc_vars=["mt"], percent_top=None, log1p=False, layer=layer, inplace=True)
    if not is_mt.any():
        logger.info(f"qc_metrics: no gene starts with {mito_prefix}; pct_counts_mt is 0 everywhere.")
    logger.info(
        f"qc_metrics: {int(is_mt.sum())} mitochondrial genes; added obs 'total_counts', 'n_genes_by_counts', "
        "'total_counts_mt', 'pct_counts_mt' and var 'mt', 'n_cells_by_counts', 'mean_counts', 'pct_dropout_by_counts', "
        "'total_counts'"
    )
    return adata if copy else None
