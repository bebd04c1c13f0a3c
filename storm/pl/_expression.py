"""Virtual-ST plots: predicted next to measured expression over the H&E, and the distribution of gene-wise r."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure

from storm.pl._domains import finish_figure


def _light(adata: AnnData, values: np.ndarray, genes: list[str]) -> AnnData:
    """Wrap ``values`` as X, with ``adata``'s obs, obsm['spatial'] and uns['spatial'] (no copies)."""
    out = AnnData(X=np.asarray(values, dtype=np.float32), obs=adata.obs.copy(), var=pd.DataFrame(index=genes))
    out.obsm["spatial"] = np.asarray(adata.obsm["spatial"])
    out.uns["spatial"] = adata.uns.get("spatial", {})
    return out


def _measured_values(measured: AnnData, genes: list[str], layer: str | None, normalize: bool) -> np.ndarray:
    missing = [g for g in genes if g not in measured.var_names]
    if missing:
        raise ValueError(f"Genes {missing[:5]} are not measured in `measured`; choose genes both AnnData hold.")
    if normalize:
        from storm.models._prepare import lognorm_on_panel

        values, _ = lognorm_on_panel(measured, genes, layer=layer)
        return values.toarray()
    X = measured[:, genes].X if layer is None else measured[:, genes].layers[layer]
    return X.toarray() if hasattr(X, "toarray") else np.asarray(X)


def expression_maps(
    pred: AnnData,
    genes: str | Sequence[str],
    *,
    measured: AnnData | None = None,
    layer: str | None = None,
    normalize: bool = True,
    library_id: str | None = None,
    img: bool = True,
    size: float | None = None,
    cmap: str = "viridis",
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    save: str | PathLike | None = None,
    **kwargs: Any,
) -> Figure | None:
    """Predicted expression of chosen genes over the H&E, next to the measured expression when given.

    Each row is a gene: the prediction (spots or whole-slide tiles from :func:`storm.tl.predict_expression` or
    :func:`storm.tl.virtual_st`), then the measurement. Each panel has its own colour scale: predictions are
    smoother than counts, and what matters is where a gene is high, not its level. Where prediction and measurement
    share their spots, the panel title gives the Pearson r across spots; the head's validation r
    (``var['val_pearson']``) is given for every prediction.

    Parameters
    ----------
    pred
        Predicted expression (genes in ``var_names``, ``obsm['spatial']``, ``uns['spatial']``).
    genes
        Genes to draw, one row each.
    measured
        Measured spots: raw counts (normalised here, as the head's targets) or, with ``normalize=False``, values
        on the prediction's scale.
    layer
        Read ``measured`` from this layer.
    normalize
        ``log1p`` of library-size-normalised counts (:func:`storm.pp.normalize`) on ``measured``.
    library_id
        Draw only this slide (of several in ``pred`` / ``measured``).
    img
        Draw the H&E underneath.
    size
        Spot size scale (squidpy's ``size``).
    cmap
        Colour map.
    figsize, show, save
        Figure size; show or return the figure; save it to this path.
    **kwargs
        Passed to :func:`squidpy.pl.spatial_scatter`.

    Returns
    -------
    The figure when ``show=False`` (see :func:`storm.pl.domains`), else ``None``.
    """
    import matplotlib.pyplot as plt
    import squidpy as sq

    from storm.pl._spatial import _image_key

    genes = [genes] if isinstance(genes, str) else [str(g) for g in genes]
    unknown = [g for g in genes if g not in pred.var_names]
    if unknown or not genes:
        raise ValueError(f"Genes {unknown[:5]} are not predicted (`pred.var_names`); pick among the head's genes.")
    if "spatial" not in pred.obsm:
        raise ValueError("`pred.obsm['spatial']` is missing: pass the output of predict_expression or virtual_st.")

    def one_slide(a: AnnData) -> AnnData:
        if library_id is None:
            return a
        if "library_id" not in a.obs or library_id not in set(a.obs["library_id"].astype(str)):
            raise ValueError(f"library_id {library_id!r} is not in `obs['library_id']`.")
        return a[a.obs["library_id"].astype(str) == library_id]

    pred = one_slide(pred)
    panels = [("predicted", _light(pred, pred[:, genes].X, genes))]
    if measured is not None:
        measured = one_slide(measured)
        panels.append(("measured", _light(measured, _measured_values(measured, genes, layer, normalize), genes)))
    same_spots = measured is not None and pred.n_obs == measured.n_obs and (pred.obs_names == measured.obs_names).all()
    val = pred.var.get("val_pearson")
    ncols = len(panels)
    fig, axes = plt.subplots(len(genes), ncols, figsize=figsize or (4.2 * ncols, 3.8 * len(genes)), squeeze=False)
    for i, gene in enumerate(genes):
        r_here = None
        if same_spots:
            x, y = panels[0][1][:, gene].X.ravel(), panels[1][1][:, gene].X.ravel()
            if x.std() > 0 and y.std() > 0:
                r_here = float(np.corrcoef(x, y)[0, 1])
        for j, (label, a) in enumerate(panels):
            lib = str(a.obs["library_id"].iloc[0]) if "library_id" in a.obs else next(iter(a.uns.get("spatial", {})))
            key = _image_key(a, lib) if img else None
            title = f"{gene}: {label}"
            if j == 0 and val is not None and np.isfinite(val.get(gene, np.nan)):
                title += f" (val r {val[gene]:.2f})"
            if j == 1 and r_here is not None:
                title += f" (r {r_here:.2f})"
            common = {"color": gene, "cmap": cmap, "size": size, "title": title, "ax": axes[i, j], "colorbar": True}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                if key is not None:
                    sq.pl.spatial_scatter(a, img_res_key=key, library_id=lib, **common, **kwargs)
                else:
                    sq.pl.spatial_scatter(a, shape=None, img=False, **common, **kwargs)
    fig.tight_layout()
    return finish_figure(fig, show=show, save=save)


def gene_correlations(
    results: Mapping[str, Sequence[float] | pd.Series] | pd.DataFrame,
    *,
    method_key: str = "method",
    value_key: str = "pearson_r",
    top_k: int | None = None,
    order: Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    save: str | PathLike | None = None,
) -> Figure | None:
    """Distribution of gene-wise Pearson r per method (violins with the mean marked), e.g. storm vs baselines.

    Parameters
    ----------
    results
        ``{method: gene-wise r}`` (arrays or Series, e.g. :func:`storm.metrics.gene_pearson` outputs), or a long
        DataFrame with columns ``method_key`` and ``value_key``.
    method_key, value_key
        Columns of a DataFrame ``results``.
    top_k
        Draw only each method's ``top_k`` best genes (e.g. 50, the top-50 comparison).
    order
        Methods, in the order to draw them (default: as given).
    figsize, show, save
        Figure size; show or return the figure; save it to this path.

    Returns
    -------
    The figure when ``show=False``, else ``None``.
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if isinstance(results, pd.DataFrame):
        missing = {method_key, value_key} - set(results.columns)
        if missing:
            raise ValueError(f"`results` lacks the columns {sorted(missing)}.")
        long = results[[method_key, value_key]].rename(columns={method_key: "method", value_key: "r"})
    else:
        if not results:
            raise ValueError("`results` is empty: give at least one method's gene-wise r.")
        long = pd.concat(
            [pd.DataFrame({"method": str(k), "r": np.asarray(v, dtype=float)}) for k, v in results.items()]
        )
    long = long[np.isfinite(long["r"].to_numpy(dtype=float))]
    if top_k is not None:
        long = long.sort_values("r", ascending=False).groupby("method", sort=False).head(int(top_k))
    order = list(order) if order is not None else list(dict.fromkeys(long["method"]))
    fig, ax = plt.subplots(figsize=figsize or (max(4.0, 1.1 * len(order) + 1.5), 4.0))
    sns.violinplot(data=long, x="method", y="r", order=order, ax=ax, inner="quartile", cut=0, color="0.85")
    means = long.groupby("method")["r"].mean().reindex(order)
    ax.scatter(range(len(order)), means.to_numpy(), color="crimson", zorder=3, label="mean")
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("")
    ax.set_ylabel("gene-wise Pearson r" + (f" (top {top_k} genes)" if top_k else ""))
    ax.tick_params(axis="x", rotation=30)
    for label in ax.get_xticklabels():
        label.set_horizontalalignment("right")
    ax.legend(loc="upper right", frameon=False)
    fig.tight_layout()
    return finish_figure(fig, show=show, save=save)
