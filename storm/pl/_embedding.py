"""``storm.pl.embedding``: a UMAP of the STORM embedding, stored under a key of its own and cached."""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.figure import Figure

from storm._logging import logger
from storm.pl._domains import finish_figure, first_axes
from storm.tl._utils import elapsed, get_rep, save_data, start_timer


def _umap(rep: np.ndarray, obs_names: pd.Index, n_neighbors: int, random_state: int) -> np.ndarray:
    """UMAP of ``rep`` computed on a throw-away AnnData, so no neighbors graph is left in the user's object."""
    import scanpy as sc

    work = AnnData(obs=pd.DataFrame(index=obs_names), obsm={"rep": rep})
    sc.pp.neighbors(work, n_neighbors=n_neighbors, use_rep="rep", random_state=random_state)
    sc.tl.umap(work, random_state=random_state)
    return np.asarray(work.obsm["X_umap"], dtype=np.float32)


def embedding(
    adata: AnnData,
    *,
    use_rep: str = "X_storm",
    color: str | Sequence[str] | None = None,
    n_neighbors: int = 15,
    random_state: int = 0,
    basis_added: str | None = None,
    library_key: str = "library_id",
    recompute: bool = False,
    show: bool | None = None,
    save: str | PathLike | None = None,
    dpi: float | None = None,
    **kwargs: Any,
) -> Figure | None:
    """Plot a UMAP of the embedding ``obsm[use_rep]``, coloured by domains, slides or any ``obs``/gene key.

    The UMAP (scanpy: kNN graph of the embedding, then :func:`scanpy.tl.umap`) is computed once and stored under a
    key specific to the representation, so it never overwrites a user's ``X_umap`` and later calls with the same
    parameters reuse it.

    Parameters
    ----------
    adata
        AnnData with ``obsm[use_rep]``.
    use_rep
        Embedding to project.
    color
        Keys of ``obs`` or ``var_names``; default: ``storm_domains`` and ``library_key`` where present.
    n_neighbors, random_state
        Of the kNN graph and the UMAP.
    basis_added
        Key of ``obsm`` for the UMAP; default ``f"X_umap_{use_rep without 'X_'}"`` (``X_umap_storm``).
    library_key
        Slide column, coloured by default when there are several slides.
    recompute
        Recompute the UMAP even when a stored one has the same parameters.
    show
        Show the figure (``None``: scanpy's ``settings.autoshow``); ``False`` returns it instead.
    save
        Path to save the figure to.
    dpi
        Resolution of the saved figure.
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (e.g. ``ncols``, ``legend_loc``, ``size``).

    Returns
    -------
    The :class:`~matplotlib.figure.Figure` when ``show=False``, else ``None``. Written (unless reused):

    - ``obsm[basis_added]``: float32 (n_obs, 2) UMAP coordinates;
    - ``uns[basis_added without 'X_']['params']``: ``use_rep``, ``n_neighbors``, ``random_state``.

    Raises
    ------
    ValueError
        ``obsm[use_rep]`` missing or not finite, or a ``color`` key that exists nowhere.
    """
    import scanpy as sc

    rep = get_rep(adata, use_rep)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or not 2 <= n_neighbors < adata.n_obs:
        raise ValueError(f"`n_neighbors` must be an integer in [2, n_obs), got {n_neighbors!r}.")
    basis = basis_added or f"X_umap_{use_rep.removeprefix('X_')}"
    uns_key = basis.removeprefix("X_")
    if color is None:
        color = [c for c in ("storm_domains", library_key) if c in adata.obs and adata.obs[c].nunique() > 1] or None
    colors = [color] if isinstance(color, str) else list(color or [])
    unknown = [c for c in colors if c not in adata.obs and c not in adata.var_names]
    if unknown:
        raise ValueError(f"`color` key(s) {unknown} are neither columns of `adata.obs` nor genes.")

    params = {"use_rep": use_rep, "n_neighbors": int(n_neighbors), "random_state": int(random_state)}
    stored = adata.uns.get(uns_key, {}).get("params") if isinstance(adata.uns.get(uns_key), dict) else None
    if recompute or basis not in adata.obsm or stored != params:
        start = start_timer()
        coords = _umap(rep, adata.obs_names, n_neighbors, random_state)
        save_data(adata, attr="obsm", key=basis, data=coords)
        save_data(adata, attr="uns", key=uns_key, data={"params": params})
        logger.info(f"embedding: finished ({elapsed(start)}): UMAP of obsm[{use_rep!r}] in obsm[{basis!r}]")

    # scanpy finds obsm["X_" + basis]; without the prefix the axes read "umap_storm1", not "X_umap_storm1"
    fig = sc.pl.embedding(adata, basis=uns_key, color=color, show=False, return_fig=True, **kwargs)
    if not isinstance(fig, Figure):  # scanpy returns axes for some argument combinations
        fig = first_axes(fig).figure
    return finish_figure(fig, show=show, save=save, dpi=dpi)
