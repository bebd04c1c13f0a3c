"""Drop spots with too few counts or genes, or too large a mitochondrial fraction."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from anndata import AnnData
from scipy import sparse

from storm._logging import logger

from ._qc import mito_mask
from ._validate import check_counts, check_positive, check_unique_names, get_matrix


def filter_spots(
    adata: AnnData,
    *,
    min_counts: float | None = 1,
    min_genes: int | None = None,
    max_pct_mt: float | None = None,
    mito_prefix: str | Sequence[str] = ("MT-", "mt-"),
    layer: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Remove spots that fail count, gene or mitochondrial thresholds.

    The metrics are computed from the counts here (nothing needs to run before); each threshold that is ``None`` is not
    applied. What was removed, per criterion and per slide, is logged.

    Parameters
    ----------
    adata
        Spots × genes with raw counts in ``.X`` (or ``layer``).
    min_counts
        Keep spots with at least this many counts. The default 1 removes only empty spots, which carry no expression
        and would normalise to all zeros.
    min_genes
        Keep spots with at least this many genes detected (count > 0).
    max_pct_mt
        Keep spots whose mitochondrial counts are at most this percentage of their counts.
    mito_prefix
        Gene-name prefixes of mitochondrial genes, for ``max_pct_mt``.
    layer
        Read counts from this layer instead of ``.X``.
    copy
        Return a filtered copy instead of subsetting ``adata`` in place.

    Returns
    -------
    ``None``, or the filtered AnnData if ``copy=True``. In place, ``adata`` loses the failing spots (all of its
    obs/obsm/obsp/layers rows); nothing else is written.

    Raises
    ------
    ValueError
        Negative or non-finite counts, duplicated names, a threshold that is not a non-negative number, or thresholds
        that would remove every spot. ``adata`` is then left unchanged.
    """
    check_unique_names(adata)
    check_counts(adata, layer)
    for name, value in (("min_counts", min_counts), ("min_genes", min_genes), ("max_pct_mt", max_pct_mt)):
        if value is not None and value != 0:
            check_positive(value, name)

    X = get_matrix(adata, layer)
    total = np.asarray(X.sum(axis=1)).ravel()
    n_genes = np.asarray((X > 0).sum(axis=1)).ravel() if sparse.issparse(X) else np.count_nonzero(X > 0, axis=1)
    fails: dict[str, np.ndarray] = {}
    if min_counts is not None:
        fails[f"min_counts={min_counts:g}"] = total < min_counts
    if min_genes is not None:
        fails[f"min_genes={min_genes:g}"] = n_genes < min_genes
    if max_pct_mt is not None:
        is_mt = mito_mask(adata.var_names, mito_prefix)
        if not is_mt.any():
            logger.warning(f"filter_spots: no gene starts with {mito_prefix}, so max_pct_mt removes nothing.")
        mt = np.asarray(X[:, is_mt].sum(axis=1)).ravel()
        with np.errstate(invalid="ignore", divide="ignore"):
            pct = np.where(total > 0, 100 * mt / np.where(total > 0, total, 1), 0.0)
        fails[f"max_pct_mt={max_pct_mt:g}"] = pct > max_pct_mt
    drop = np.zeros(adata.n_obs, dtype=bool)
    for mask in fails.values():
        drop |= mask
    if drop.all() and adata.n_obs:
        raise ValueError(
            f"The thresholds remove all {adata.n_obs:,} spots ("
            + ", ".join(f"{k}: {int(v.sum()):,}" for k, v in fails.items())
            + "). Lower them; `storm.pp.qc_metrics` shows the distributions."
        )

    detail = ", ".join(f"{k}: {int(v.sum()):,}" for k, v in fails.items()) or "no threshold set"
    per_slide = ""
    if drop.any() and "library_id" in adata.obs:
        counts = adata.obs.loc[drop, "library_id"].astype(str).value_counts()
        per_slide = "; per slide: " + ", ".join(f"{lib} {n}" for lib, n in counts.items())
    logger.info(f"filter_spots: removed {int(drop.sum()):,} of {adata.n_obs:,} spots ({detail}){per_slide}")

    if copy:
        return adata[~drop].copy()
    if drop.any():
        adata._inplace_subset_obs(np.flatnonzero(~drop))
    return None
