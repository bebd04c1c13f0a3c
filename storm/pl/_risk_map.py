"""``storm.pl.risk_map``: a slide's tiles coloured by their attention or attribution, over the H&E image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from anndata import AnnData

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes


def _library(adata: AnnData, library_id: str | None, library_key: str) -> tuple[str | None, np.ndarray]:
    """Return the slide to draw and the mask of its tiles; one slide in ``adata`` needs no ``library_id``."""
    libraries = (
        [str(x) for x in adata.obs[library_key].astype("category").cat.remove_unused_categories().cat.categories]
        if library_key in adata.obs
        else [str(x) for x in adata.uns.get("spatial", {})]
    )
    if library_id is None:
        if len(libraries) > 1:
            raise ValueError(f"`adata` holds {len(libraries)} slides {libraries[:5]}: pass library_id= to pick one.")
        library_id = libraries[0] if libraries else None
    elif library_id not in libraries:
        raise ValueError(f"library_id={library_id!r} is not among the slides {libraries[:10]}.")
    if library_key in adata.obs and library_id is not None:
        mask = (adata.obs[library_key].astype(str) == library_id).to_numpy()
    else:
        mask = np.ones(adata.n_obs, dtype=bool)
    return library_id, mask


def _image(adata: AnnData, library_id: str | None, img_key: str | None) -> tuple[np.ndarray | None, float]:
    """Return the slide's image (``img_key``, else ``'hires'``, else ``'lowres'``) and its full-res px scale."""
    entry = adata.uns.get("spatial", {}).get(library_id, {}) if library_id is not None else {}
    images = entry.get("images", {}) or {}
    keys = [img_key] if img_key is not None else ["hires", "lowres"]
    for key in keys:
        if key in images and np.asarray(images[key]).size > 0:
            scale = entry.get("scalefactors", {}).get(f"tissue_{key}_scalef")
            if scale is None:
                raise ValueError(
                    f"uns['spatial'][{library_id!r}]['scalefactors'] lacks 'tissue_{key}_scalef': cannot place the "
                    "tiles on the image; pass img=False."
                )
            return np.asarray(images[key]), float(scale)
    if img_key is not None:
        raise ValueError(f"Slide {library_id!r} has no image {img_key!r} (images: {list(images)}).")
    return None, 1.0


def _tile_spacing(xy: np.ndarray) -> float:
    """Median distance from each tile centre to its nearest neighbour (the tiling pitch)."""
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return 1.0
    distance, _ = cKDTree(xy).query(xy, k=2)
    spacing = float(np.median(distance[:, 1]))
    return spacing if spacing > 0 else 1.0


def risk_map(
    tiles_adata: AnnData,
    attributions: Any,
    *,
    ax: Axes | None = None,
    library_id: str | None = None,
    library_key: str = "library_id",
    spatial_key: str = "spatial",
    img: bool = True,
    img_key: str | None = None,
    size: float | None = None,
    cmap: str | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.8,
    colorbar: bool = True,
    title: str | None = None,
    figsize: tuple[float, float] = (5.5, 5.0),
    **kwargs: Any,
) -> Axes:
    """Draw a slide's tiles as squares coloured by attention or attribution, over its H&E image when present.

    Signed values (integrated gradients) get a diverging colour map centred at 0 (red raises the risk, blue
    lowers it); non-negative values (attention) a sequential one.

    Parameters
    ----------
    tiles_adata
        AnnData of the tiles (squidpy layout: ``obsm['spatial']`` in full-resolution pixels,
        ``uns['spatial'][library_id]`` with ``images`` and ``scalefactors``).
    attributions
        One value per tile of the slide drawn (e.g. :func:`storm.tl.tile_attributions`, in the order of the
        slide's tiles), or a column of ``obs``.
    ax
        Axes to draw on; a new figure when ``None``.
    library_id
        The slide to draw when ``tiles_adata`` holds several (``obs[library_key]``).
    library_key
        Column of ``obs`` that tells slides apart.
    spatial_key
        ``obsm`` key of the tile centres.
    img
        Draw the tissue image under the tiles (when the slide has one).
    img_key
        ``'hires'``, ``'lowres'`` or another key of ``images``; ``None``: ``'hires'``, else ``'lowres'``.
    size
        Marker size in points²; ``None``: squares as wide as the tiling pitch.
    cmap
        Colour map; ``None``: ``'RdBu_r'`` for signed values, ``'viridis'`` otherwise.
    vmin, vmax
        Colour limits; for signed values the default is symmetric about 0.
    alpha
        Opacity of the tiles.
    colorbar
        Add a colour bar.
    title
        Axes title.
    figsize
        Size of a new figure.
    **kwargs
        Passed to :meth:`matplotlib.axes.Axes.scatter`.

    Returns
    -------
    The Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize, TwoSlopeNorm

    if spatial_key not in tiles_adata.obsm:
        raise ValueError(f"tiles_adata.obsm[{spatial_key!r}] is missing: the tile centres are needed to draw them.")
    library_id, mask = _library(tiles_adata, library_id, library_key)
    if isinstance(attributions, str):
        if attributions not in tiles_adata.obs:
            raise ValueError(f"{attributions!r} is not a column of tiles_adata.obs.")
        values = tiles_adata.obs[attributions].to_numpy(dtype=float)[mask]
    else:
        values = np.asarray(attributions, dtype=float).reshape(-1)
        if len(values) == tiles_adata.n_obs and not mask.all():
            values = values[mask]
        if len(values) != int(mask.sum()):
            raise ValueError(
                f"attributions has {len(values)} values; slide {library_id!r} has {int(mask.sum())} tiles "
                "(pass one value per tile of the slide, in obs order)."
            )
    xy = np.asarray(tiles_adata.obsm[spatial_key], dtype=float)[mask, :2]
    image, scale = _image(tiles_adata, library_id, img_key) if img else (None, 1.0)
    xy = xy * scale

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    finite = values[np.isfinite(values)]
    signed = finite.size > 0 and finite.min() < 0 < finite.max()
    if signed:
        bound = float(np.abs(finite).max())
        low = -bound if vmin is None else vmin
        high = bound if vmax is None else vmax
        norm: Normalize = TwoSlopeNorm(0.0, min(low, -1e-12), max(high, 1e-12))
    else:
        low = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
        high = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
        norm = Normalize(vmin=low, vmax=high if high > low else low + 1e-12)
    cmap = cmap or ("RdBu_r" if signed else "viridis")

    if image is not None:
        ax.imshow(image, origin="upper")
    pad = _tile_spacing(xy)
    ax.set_xlim(xy[:, 0].min() - pad, xy[:, 0].max() + pad)
    ax.set_ylim(xy[:, 1].max() + pad, xy[:, 1].min() - pad)  # image convention: y grows downwards
    ax.set_aspect("equal")
    if colorbar:
        # Added before the tiles are sized: the colour bar takes its room from the axes.
        from matplotlib.cm import ScalarMappable

        ax.figure.colorbar(
            ScalarMappable(norm=norm, cmap=cmap), ax=ax, shrink=0.7, label="attribution" if signed else "attention"
        )
    if size is None:
        # Squares one tiling pitch wide: convert the pitch from data units to points at the final axes size.
        ax.apply_aspect()
        x_low, x_high = ax.get_xlim()
        points_per_unit = ax.get_window_extent().width / max(x_high - x_low, 1e-12) * 72.0 / ax.figure.dpi
        size = max((pad * points_per_unit) ** 2, 0.5)
    ax.scatter(
        xy[:, 0], xy[:, 1], c=values, s=size, marker="s", cmap=cmap, norm=norm, alpha=alpha, linewidths=0, **kwargs
    )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title if title is not None else (str(library_id) if library_id is not None else ""))
    return ax
