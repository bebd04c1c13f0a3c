"""``storm.pl.domains``: spatial domains over the H&E, beside a ground truth, several slides side by side."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure


def first_axes(axes: Axes | Sequence[Axes] | np.ndarray | dict) -> Axes:
    """Return one Axes of whatever a plotting function returned (an Axes, a list/array of them, a dict)."""
    if isinstance(axes, Axes):
        return axes
    if isinstance(axes, dict):
        return first_axes(list(axes.values()))
    return first_axes(np.asarray(axes, dtype=object).ravel()[0])


def finish_figure(fig: Figure, *, show: bool | None, save: str | PathLike | None, dpi: float | None = None):
    """Save ``fig`` to ``save`` (a path: the format follows the suffix), then show it or return it.

    Returns
    -------
    The figure when ``show=False``; ``None`` when it was shown (``show=True``, or ``None`` with scanpy's autoshow on),
    as scanpy's plotting functions do, so a notebook does not draw it twice.
    """
    import matplotlib.pyplot as plt
    import scanpy as sc

    if save is not None:
        fig.savefig(save, dpi=dpi or "figure", bbox_inches="tight")
    if show is None:
        show = sc.settings.autoshow
    if show:
        plt.show()
        return None
    return fig


def _panel_titles(adata: AnnData, colors: list[str], library_key: str, img: bool) -> list[str] | None:
    """Titles "slide: column" in squidpy's panel order (slide first) when slides get panels of their own."""
    from storm.pl._spatial import _image_key

    column = adata.obs.get(library_key)
    if column is None or not isinstance(column.dtype, pd.CategoricalDtype) or len(column.cat.categories) < 2:
        return None
    libraries = [str(c) for c in column.cat.categories]
    keys = {_image_key(adata, lib) for lib in libraries}
    if not img or None in keys or len(keys) != 1:  # storm.pl.spatial then draws one panel per column
        return None
    return [f"{lib}: {c}" for lib in libraries for c in colors]


def domains(
    adata: AnnData,
    key: str = "storm_domains",
    *,
    groundtruth: str | Sequence[str] | None = None,
    library_key: str = "library_id",
    img: bool = True,
    size: float | None = None,
    title: str | Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    show: bool | None = None,
    save: str | PathLike | None = None,
    dpi: float | None = None,
    **kwargs: Any,
) -> Figure | None:
    """Plot spatial domains over the tissue image, beside the ground truth, one panel per slide and label.

    A wrapper of :func:`storm.pl.spatial` (itself over :func:`squidpy.pl.spatial_scatter`): the domains are drawn
    with the colours :func:`storm.tl.domains` stored in ``uns[f"{key}_colors"]``, so a domain keeps its colour in
    every figure; several slides (``obs[library_key]``) are drawn side by side.

    Parameters
    ----------
    adata
        AnnData in squidpy layout with ``obs[key]``.
    key
        Column of ``obs`` with the domains.
    groundtruth
        Column(s) of ``obs`` with a reference annotation (DLPFC ``"layer"``, HER2ST ``"label"``), drawn first.
    library_key
        Column of ``obs`` that tells slides apart.
    img
        Draw the H&E image under the spots.
    size, title, figsize
        As in :func:`squidpy.pl.spatial_scatter`.
    show
        Show the figure (``None``: scanpy's ``settings.autoshow``); ``False`` returns it instead.
    save
        Path to save the figure to (format from the suffix).
    dpi
        Resolution of the saved figure (and of the figure itself, passed to squidpy).
    **kwargs
        Passed to :func:`squidpy.pl.spatial_scatter` (e.g. ``ncols``, ``legend_loc``, ``crop_coord``).

    Returns
    -------
    The :class:`~matplotlib.figure.Figure` when ``show=False``, else ``None``. Writes nothing of its own; squidpy
    stores default colours in ``uns[f"{groundtruth}_colors"]`` when that key is absent, as scanpy plots do.

    Raises
    ------
    ValueError
        ``obs[key]`` or a ground-truth column is missing.
    """
    from storm.pl._spatial import spatial

    truths = [] if groundtruth is None else [groundtruth] if isinstance(groundtruth, str) else list(groundtruth)
    for column in [*truths, key]:
        if column not in adata.obs:
            hint = " Run `storm.tl.domains(adata, n_domains=...)` first." if column == key else ""
            raise ValueError(f"No `adata.obs[{column!r}]` to plot.{hint}")
    if not isinstance(adata.obs[key].dtype, pd.CategoricalDtype):
        raise ValueError(f"`adata.obs[{key!r}]` must be categorical (as storm.tl.domains writes it).")
    colors = [*truths, key]
    if title is None:
        title = _panel_titles(adata, colors, library_key, img)
    with warnings.catch_warnings():
        # without an image squidpy draws points (shape=None) and hands matplotlib explicit category colours together
        # with a cmap/norm, which matplotlib warns it ignores: harmless, and not the user's doing
        warnings.filterwarnings("ignore", message="No data for colormapping provided", category=UserWarning)
        axes = spatial(
            adata,
            colors,
            library_key=library_key,
            img=img,
            size=size,
            title=title,
            figsize=figsize,
            dpi=dpi,
            return_ax=True,
            **kwargs,
        )
    return finish_figure(first_axes(axes).figure, show=show, save=save, dpi=dpi)
