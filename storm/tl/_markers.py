"""``storm.tl.domain_markers``: genes up in each domain (Wilcoxon rank-sum, Benjamini–Hochberg), as a tidy table."""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from storm._logging import logger
from storm.pp._validate import check_counts, check_unique_names
from storm.tl._utils import elapsed, save_data, start_timer

_Method = Literal["wilcoxon", "t-test", "t-test_overestim_var"]
_METHODS = ("wilcoxon", "t-test", "t-test_overestim_var")
COLUMNS = ["domain", "gene", "score", "logfoldchange", "pval", "pval_adj", "pct_in", "pct_out", "rank"]


def lognorm_matrix(adata: AnnData, layer: str | None) -> tuple[np.ndarray | sparse.spmatrix, str]:
    """Return the log-normalised expression to test or plot, and where it came from.

    ``layer`` present: that layer. ``layer="lognorm"`` absent: log1p of counts scaled to 10⁴ per spot (as
    :func:`storm.pp.normalize` writes it), computed here and *not* stored, so ``adata`` is not modified.
    ``layer=None``: ``.X`` as it is (the user says it is already log-normalised).
    """
    if layer is None:
        if adata.X is None:
            raise ValueError("`adata.X` is empty (None); pass `layer=` naming the log-normalised expression.")
        return adata.X, "adata.X"
    if layer in adata.layers:
        return adata.layers[layer], f"adata.layers[{layer!r}]"
    if layer != "lognorm":
        raise ValueError(
            f"No layer {layer!r} in `adata.layers` (there are: {list(adata.layers) or 'none'}). Pass `layer=None` "
            "to use `.X`, or `layer='lognorm'` to normalise the counts of `.X` on the fly."
        )
    import scanpy as sc

    check_counts(adata)
    counts = AnnData(X=adata.X, obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=adata.var_names))
    with warnings.catch_warnings():
        # spots without counts stay at 0 after log1p: harmless for a rank test, so scanpy's warning is not relayed
        warnings.filterwarnings("ignore", message="Some cells have zero counts", category=UserWarning)
        scaled = sc.pp.normalize_total(counts, target_sum=1e4, inplace=False)["X"]
    if sparse.issparse(scaled):
        scaled = sparse.csr_matrix(scaled, dtype=np.float32)
        np.log1p(scaled.data, out=scaled.data)
    else:
        scaled = np.log1p(np.asarray(scaled, dtype=np.float32))
    logger.info("domain_markers: no layers['lognorm']; normalised the counts of .X on the fly (not stored).")
    return scaled, "log1p(counts of .X scaled to 1e4), computed on the fly"


def _looks_like_counts(X) -> bool:
    values = X.data if sparse.issparse(X) else np.asarray(X)
    return values.size > 0 and float(np.max(values)) > 50  # log1p of 10⁴-scaled counts stays below ~9.3


def marker_input(adata: AnnData, groupby: str, layer: str | None) -> tuple[AnnData, list[str]]:
    """Build a light AnnData (log-normalised values, labelled spots, ``obs[groupby]``) and list the groups to test.

    Spots with no label (NaN) are left out; groups with fewer than 2 spots are not tested (a rank test needs 2).
    """
    if groupby not in adata.obs:
        cats = [c for c in adata.obs if isinstance(adata.obs[c].dtype, pd.CategoricalDtype)]
        raise ValueError(
            f"No `adata.obs[{groupby!r}]` (categorical columns: {cats or 'none'}). Run `storm.tl.domains(adata)` "
            "first, or pass `groupby=` naming a column of labels."
        )
    check_unique_names(adata, obs=False)
    labels = adata.obs[groupby]
    labelled = labels.notna().to_numpy()
    labels = labels[labelled].astype(str).astype("category")
    if isinstance(adata.obs[groupby].dtype, pd.CategoricalDtype):  # keep the user's order (L1…L6, WM), else sorted
        present = set(labels.cat.categories)
        labels = labels.cat.reorder_categories([str(c) for c in adata.obs[groupby].cat.categories if str(c) in present])
    sizes = labels.value_counts()
    groups = [g for g in labels.cat.categories if sizes[g] >= 2]
    small = [g for g in labels.cat.categories if sizes[g] < 2]
    if small:
        logger.warning(f"domain_markers: groups {small} have fewer than 2 spots and are not tested.")
    if len(groups) < 2:
        raise ValueError(f"`adata.obs[{groupby!r}]` has {len(groups)} group(s) with ≥ 2 spots; at least 2 are needed.")
    X, source = lognorm_matrix(adata, layer)
    if _looks_like_counts(X):
        logger.warning(
            f"domain_markers: {source} holds values above 50: it looks like raw counts, not log-normalised values. "
            "Run `storm.pp.normalize(adata)` and pass `layer='lognorm'`."
        )
    if not labelled.all():
        logger.info(f"domain_markers: {int((~labelled).sum())} spots without a {groupby!r} label are left out.")
        X = X[labelled]
    work = AnnData(X=X, obs=pd.DataFrame({groupby: labels.array}, index=adata.obs_names[labelled]))
    work.var_names = adata.var_names
    work.uns["source"] = source
    return work, groups


def domain_markers(
    adata: AnnData,
    *,
    groupby: str = "storm_domains",
    layer: str | None = "lognorm",
    method: _Method = "wilcoxon",
    n_genes: int | None = 100,
    pval_cutoff: float = 0.05,
    logfc_min: float = 0.25,
    key_added: str | None = None,
) -> pd.DataFrame:
    """Find the genes up in each domain against all other spots (paper: Wilcoxon rank-sum, Benjamini–Hochberg).

    :func:`scanpy.tl.rank_genes_groups` on log-normalised expression, returned as a tidy table of the significant,
    up-regulated genes of every domain.

    Parameters
    ----------
    adata
        Spots × genes with domain labels in ``obs[groupby]``.
    groupby
        Column of ``obs`` with the labels (``storm.tl.domains``' output, or any annotation such as DLPFC's ``layer``).
        Spots with no label are left out; groups of fewer than 2 spots are not tested.
    layer
        Log-normalised expression to test: a layer, ``None`` for ``.X``. The default ``"lognorm"``
        (:func:`storm.pp.normalize`'s layer), when absent, is computed from the counts of ``.X`` on the fly and not
        stored.
    method
        ``"wilcoxon"`` (the paper's), ``"t-test"`` or ``"t-test_overestim_var"``.
    n_genes
        Genes kept per domain after filtering, best first; ``None`` keeps all that pass.
    pval_cutoff
        Keep genes with Benjamini–Hochberg adjusted p-value below this.
    logfc_min
        Keep genes with log2 fold change (domain vs rest) at least this.
    key_added
        If given, scanpy's full, unfiltered result is stored in ``uns[key_added]`` (so that
        :func:`scanpy.pl.rank_genes_groups_dotplot` and friends can use it); nothing is written otherwise.

    Returns
    -------
    DataFrame, one row per (domain, gene), sorted by domain then rank, with columns:

    - ``domain`` (categorical, in the order of ``obs[groupby]``'s categories), ``gene``;
    - ``score`` (the test statistic: Wilcoxon z-score), ``logfoldchange`` (log2, domain vs rest),
      ``pval``, ``pval_adj`` (Benjamini–Hochberg over the genes of that domain);
    - ``pct_in``, ``pct_out``: fraction of spots expressing the gene in the domain and outside it;
    - ``rank``: 1 for the best marker of the domain.

    ``DataFrame.attrs`` holds ``groupby``, ``method``, ``layer`` and ``background`` (the tuple of genes tested, the
    default background of :func:`storm.tl.enrichment`). Written to ``adata`` only with ``key_added``:
    ``uns[key_added]`` (scanpy's ``rank_genes_groups`` record, with ``params``).

    Raises
    ------
    ValueError
        No ``obs[groupby]``, fewer than 2 testable groups, a missing layer, negative or non-finite counts when
        normalising on the fly, a bad argument. ``adata`` is then left unchanged.
    """
    import scanpy as sc

    start = start_timer()
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}.")
    if n_genes is not None and (isinstance(n_genes, bool) or not isinstance(n_genes, int | np.integer) or n_genes < 1):
        raise ValueError(f"`n_genes` must be a positive integer or None, got {n_genes!r}.")
    if not 0 < pval_cutoff <= 1:
        raise ValueError(f"`pval_cutoff` must be in (0, 1], got {pval_cutoff!r}.")
    if not np.isfinite(logfc_min):
        raise ValueError(f"`logfc_min` must be a finite number, got {logfc_min!r}.")

    work, groups = marker_input(adata, groupby, layer)
    sc.tl.rank_genes_groups(
        work,
        groupby,
        groups=groups,
        reference="rest",
        method=method,
        corr_method="benjamini-hochberg",
        pts=True,
        use_raw=False,
        key_added="rgg",
    )
    table = sc.get.rank_genes_groups_df(work, group=groups, key="rgg")
    table = table.rename(
        columns={
            "group": "domain",
            "names": "gene",
            "scores": "score",
            "logfoldchanges": "logfoldchange",
            "pvals": "pval",
            "pvals_adj": "pval_adj",
            "pct_nz_group": "pct_in",
            "pct_nz_reference": "pct_out",
        }
    )
    keep = (table["pval_adj"] < pval_cutoff) & (table["logfoldchange"] >= logfc_min)
    table = table[keep].sort_values(["domain", "score"], ascending=[True, False], kind="stable")
    table["rank"] = table.groupby("domain", observed=True).cumcount() + 1
    if n_genes is not None:
        table = table[table["rank"] <= n_genes]
    table["domain"] = pd.Categorical(table["domain"].astype(str), categories=groups)
    table = table.sort_values(["domain", "rank"], kind="stable")[COLUMNS].reset_index(drop=True)
    table.attrs = {"groupby": groupby, "method": method, "layer": layer, "background": tuple(map(str, work.var_names))}

    if key_added is not None:
        record = work.uns["rgg"]
        # plots that read this record take the expression from the user's object: name a layer only if it exists
        record["params"]["layer"] = layer if layer is not None and layer in adata.layers else None
        save_data(adata, attr="uns", key=key_added, data=record)
    counts = table.groupby("domain", observed=False).size()
    logger.info(
        f"domain_markers: finished ({elapsed(start)}): {len(table)} markers over {len(groups)} groups of {groupby!r} "
        f"(per group: {', '.join(f'{g}={n}' for g, n in counts.items())})"
    )
    return table
