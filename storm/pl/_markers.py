"""``storm.pl.domain_markers``: the top marker genes of each domain as a scanpy dot plot or matrix plot."""

from __future__ import annotations

from os import PathLike
from typing import Any, Literal

import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure

from storm.pl._domains import finish_figure

_KINDS = ("dotplot", "matrixplot", "heatmap")


def domain_markers(
    adata: AnnData,
    markers: pd.DataFrame | None = None,
    *,
    groupby: str = "storm_domains",
    n_genes: int = 5,
    kind: Literal["dotplot", "matrixplot", "heatmap"] = "dotplot",
    layer: str | None = "lognorm",
    show: bool | None = None,
    save: str | PathLike | None = None,
    dpi: float | None = None,
    **kwargs: Any,
) -> Figure | None:
    """Plot the top ``n_genes`` markers of each domain: expression per domain as a dot plot or a heat map.

    Parameters
    ----------
    adata
        Spots × genes with ``obs[groupby]``; the expression shown is log-normalised (``layer``, computed on the fly
        from the counts of ``.X`` if ``"lognorm"`` is absent, never stored).
    markers
        A table of :func:`storm.tl.domain_markers`; computed with default thresholds when ``None``.
    groupby
        Column of ``obs`` with the domains.
    n_genes
        Markers per domain (by rank).
    kind
        ``"dotplot"`` (:func:`scanpy.pl.dotplot`: colour = mean expression, size = fraction expressing) or
        ``"matrixplot"`` / ``"heatmap"`` (:func:`scanpy.pl.matrixplot` of the mean expression, each gene scaled to
        [0, 1] across domains).
    layer
        Log-normalised expression to show (``None``: ``.X``).
    show
        Show the figure (``None``: scanpy's ``settings.autoshow``); ``False`` returns it instead.
    save
        Path to save the figure to.
    dpi
        Resolution of the saved figure.
    **kwargs
        Passed to the scanpy plotting function.

    Returns
    -------
    The :class:`~matplotlib.figure.Figure` when ``show=False``, else ``None``. Writes nothing to ``adata``.

    Raises
    ------
    ValueError
        Unknown ``kind``, a markers table without ``domain``/``gene``/``rank``, no marker left to plot.
    """
    import scanpy as sc

    from storm.tl._markers import domain_markers as find_markers
    from storm.tl._markers import marker_input

    if kind not in _KINDS:
        raise ValueError(f"`kind` must be one of {_KINDS}, got {kind!r}.")
    if isinstance(n_genes, bool) or not isinstance(n_genes, int) or n_genes < 1:
        raise ValueError(f"`n_genes` must be a positive integer, got {n_genes!r}.")
    if markers is None:
        markers = find_markers(adata, groupby=groupby, layer=layer, n_genes=n_genes)
    missing = {"domain", "gene", "rank"} - set(markers.columns)
    if missing:
        raise ValueError(f"`markers` lacks column(s) {sorted(missing)}: pass a table of storm.tl.domain_markers.")

    work, _ = marker_input(adata, groupby, layer)
    top = markers[(markers["rank"] <= n_genes) & markers["gene"].isin(work.var_names)]
    order = [str(c) for c in work.obs[groupby].cat.categories]
    var_names = {
        domain: top.loc[top["domain"].astype(str) == domain, "gene"].tolist()
        for domain in order
        if (top["domain"].astype(str) == domain).any()
    }
    if not var_names:
        raise ValueError("No marker gene to plot: the table is empty for these domains (relax the thresholds).")

    if kind == "dotplot":
        plot = sc.pl.dotplot(work, var_names, groupby=groupby, show=False, return_fig=True, **kwargs)
    else:
        kwargs.setdefault("standard_scale", "var")  # genes differ in level; compare each gene across domains
        plot = sc.pl.matrixplot(work, var_names, groupby=groupby, show=False, return_fig=True, **kwargs)
    plot.make_figure()
    return finish_figure(plot.fig, show=show, save=save, dpi=dpi)
