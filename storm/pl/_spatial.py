"""Spatial scatter over the tissue image: squidpy's ``spatial_scatter`` with storm's defaults."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from anndata import AnnData


def _image_key(adata: AnnData, library_id: str) -> str | None:
    images = adata.uns.get("spatial", {}).get(library_id, {}).get("images", {})
    for key in ("hires", "lowres"):
        if key in images:
            return key
    return None


def spatial(
    adata: AnnData,
    color: str | Sequence[str] | None = None,
    *,
    library_key: str = "library_id",
    img: bool = True,
    size: float | None = None,
    title: str | Sequence[str] | None = None,
    figsize: tuple[float, float] | None = None,
    save: str | None = None,
    **kwargs: Any,
) -> Any:
    """Plot spots (or cells) coloured by ``color`` over the H&E image, one panel per slide.

    A thin wrapper of :func:`squidpy.pl.spatial_scatter` that picks the best image each slide carries
    (``'hires'``, else ``'lowres'``) and draws several slides side by side.

    Parameters
    ----------
    adata
        AnnData in squidpy layout (``obsm['spatial']``, ``uns['spatial'][library_id]``).
    color
        Keys of ``obs`` or ``var_names`` to colour by.
    library_key
        Column of ``obs`` that tells slides apart.
    img
        Draw the tissue image under the spots.
    size
        Spot size scale (squidpy's ``size``); squidpy's default draws Visium spots at their true diameter.
    title, figsize, save
        As in :func:`squidpy.pl.spatial_scatter`.
    **kwargs
        Passed to :func:`squidpy.pl.spatial_scatter`.

    Returns
    -------
    Whatever :func:`squidpy.pl.spatial_scatter` returns (``None`` unless ``return_ax=True``).
    """
    import squidpy as sq

    if "spatial" not in adata.obsm:
        raise ValueError("adata.obsm['spatial'] is missing: load data with storm.datasets or storm.io first.")
    libraries = (
        list(adata.obs[library_key].cat.categories)
        if library_key in adata.obs and hasattr(adata.obs[library_key], "cat")
        else list(adata.uns.get("spatial", {}))
    )
    img_keys = [_image_key(adata, lib) for lib in libraries]
    has_img = img and libraries and all(k is not None for k in img_keys) and len(set(img_keys)) == 1
    common = {"color": color, "size": size, "title": title, "figsize": figsize, "save": save, **kwargs}
    if has_img:
        lib_kwargs = {"library_key": library_key, "library_id": libraries} if len(libraries) > 1 else {}
        return sq.pl.spatial_scatter(adata, img_res_key=img_keys[0], **lib_kwargs, **common)
    return sq.pl.spatial_scatter(adata, shape=None, img=False, **common)
