"""``storm.pp.set_slide``: declare the slide of a plain AnnData (counts + coordinates) in one call."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from storm._logging import logger

from ._validate import check_positive


def _image_entry(image: str | os.PathLike | np.ndarray, xy: np.ndarray, mpp: float, image_scalef: float) -> dict:
    """``images``/``scalefactors``/``metadata`` parts of an entry for ``image`` (checked against the coordinates)."""
    from storm._wsi_reader import is_whole_slide
    from storm.io._spatial import attach_fullres, spatial_entry, to_rgb_uint8
    from storm.io._wsi import wsi_entry

    if isinstance(image, np.ndarray):
        entry = spatial_entry(platform="", source="", scalefactors={"tissue_hires_scalef": image_scalef})
        entry["images"]["hires"] = to_rgb_uint8(image)
        height, width = entry["images"]["hires"].shape[:2]
        pix = xy * image_scalef
    else:
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"No image file at {path}: pass the slide's full-resolution H&E image.")
        if is_whole_slide(path):
            entry = wsi_entry(path, microns_per_pixel=mpp)
        else:
            entry = spatial_entry(platform="", source="", scalefactors={})
            attach_fullres(entry, path, xy, thumbnail=True)
        height, width = entry["metadata"]["fullres_shape"]
        pix = xy
    outside = (pix < -0.5).any(axis=1) | (pix[:, 0] > width - 0.5) | (pix[:, 1] > height - 0.5)
    if outside.any():
        raise ValueError(
            f"{int(outside.sum())} of {len(xy)} spots lie outside the {width} × {height} px image: `obsm['spatial']` "
            "must be in pixels of the image's full resolution (for an array, image px = coordinate × image_scalef)."
        )
    return entry


def set_slide(
    adata: AnnData,
    *,
    platform: str,
    microns_per_pixel: float,
    library_id: str = "slide",
    image: str | os.PathLike | np.ndarray | None = None,
    image_scalef: float = 1.0,
    spatial_key: str = "spatial",
    library_key: str = "library_id",
    source: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Declare the slide of an AnnData that has counts and coordinates but no ``uns['spatial']``, in one call.

    What a MERFISH, CosMx or Xenium export or a colleague's h5ad often is: ``obsm['spatial']`` without the slide
    record that :func:`storm.tl.embed`, :func:`storm.pp.extract_patches` and the plots read (DEVELOPERS.md layout).

    Parameters
    ----------
    adata
        Spots or cells × genes with coordinates in ``obsm[spatial_key]`` (the first two columns are x, y).
    platform
        ``"visium"``, ``"st"`` (grid platforms: 5×5 windows on ``obs['array_row'/'array_col']`` where present),
        ``"xenium"``, ``"cosmx"``, ``"merfish"``, ``"visium_hd"``, … (k-nearest-neighbour windows).
    microns_per_pixel
        µm per unit of the coordinates: 1.0 for coordinates in µm (most single-cell exports), the scan's µm per pixel
        for coordinates in full-resolution image pixels.
    library_id
        Slide id: the key of ``uns['spatial']`` and the value of ``obs[library_key]``. If ``obs[library_key]``
        already tells several slides apart, only the spots with this id are declared (call once per slide).
    image
        Optional H&E of the slide, in the coordinates' frame: a file (a whole-slide image read tile by tile, or a
        JPEG/PNG/TIFF recorded lazily as ``metadata['fullres_path']``) or a uint8 RGB array kept as
        ``images['hires']``.
    image_scalef
        For an array ``image``: its pixels per coordinate unit (``tissue_hires_scalef``).
    spatial_key
        ``obsm`` key of the coordinates (copied to ``obsm['spatial']`` when another).
    library_key
        Column of ``obs`` naming each spot's slide.
    source
        Where the data come from (stored in ``metadata['source']``).
    copy
        Return a declared copy instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the declared copy if ``copy=True``. Written: ``obs[library_key]`` (categorical; set to
    ``library_id`` for every spot when the column is absent), ``obsm['spatial']`` (float64 ``(n_obs, 2)``) and
    ``uns['spatial'][library_id]`` with ``scalefactors['microns_per_pixel']`` (and ``tissue_hires_scalef`` with an
    image), ``metadata`` (``platform``, ``source``; with an image file ``fullres_path``, ``fullres_shape``) and
    ``images`` (a ``hires`` thumbnail or array with an image).

    Raises
    ------
    ValueError
        No or non-finite coordinates, a non-positive scale, an empty platform, ``library_id`` absent from an existing
        ``obs[library_key]``, or spots outside the image. Nothing is written then.
    FileNotFoundError
        ``image`` names no file.

    Examples
    --------
    >>> storm.pp.set_slide(adata, platform="merfish", microns_per_pixel=1.0, library_id="s1")  # doctest: +SKIP
    >>> storm.tl.embed(adata)  # doctest: +SKIP
    """
    if not isinstance(platform, str) or not platform.strip():
        raise ValueError(f"platform must name the technology (e.g. 'visium', 'merfish'), got {platform!r}.")
    check_positive(microns_per_pixel, "microns_per_pixel")
    check_positive(image_scalef, "image_scalef")
    library_id = str(library_id)
    if spatial_key not in adata.obsm:
        keys = ", ".join(repr(k) for k in adata.obsm) or "none"
        raise ValueError(
            f"`adata.obsm[{spatial_key!r}]` is missing (obsm keys: {keys}): put each spot's (x, y) there, or name the "
            "key with spatial_key=."
        )
    xy = np.asarray(adata.obsm[spatial_key], dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] < 2 or xy.shape[0] != adata.n_obs:
        raise ValueError(f"`adata.obsm[{spatial_key!r}]` has shape {xy.shape}; expected (n_obs, 2) of x, y.")
    xy = np.ascontiguousarray(xy[:, :2])
    if not np.isfinite(xy).all():
        raise ValueError(f"`adata.obsm[{spatial_key!r}]` holds NaN or infinite coordinates; drop those spots first.")
    rows = np.ones(adata.n_obs, dtype=bool)
    if library_key in adata.obs:
        rows = (adata.obs[library_key].astype(str) == library_id).to_numpy()
        if not rows.any():
            raise ValueError(
                f"library_id {library_id!r} is not in `adata.obs[{library_key!r}]` (slides: "
                f"{sorted(map(str, pd.unique(adata.obs[library_key].astype(str))))[:5]}): pass one of them, or drop "
                "the column to declare all spots one slide."
            )
    # everything that can fail is built before anything is written
    entry = {"images": {}, "scalefactors": {}, "metadata": {}}
    if image is not None:
        entry = _image_entry(image, xy[rows], float(microns_per_pixel), float(image_scalef))
    entry["scalefactors"]["microns_per_pixel"] = float(microns_per_pixel)
    entry["metadata"]["platform"] = platform.strip().lower()
    entry["metadata"]["source"] = source or entry["metadata"].get("source") or "declared with storm.pp.set_slide"

    out = adata.copy() if copy else adata
    if library_key not in out.obs:
        out.obs[library_key] = pd.Categorical([library_id] * out.n_obs)
    elif not isinstance(out.obs[library_key].dtype, pd.CategoricalDtype):
        out.obs[library_key] = out.obs[library_key].astype(str).astype("category")
    out.obsm["spatial"] = xy
    spatial = dict(out.uns.get("spatial") or {})
    if library_id in spatial:
        logger.info(f"set_slide: replacing the existing `uns['spatial'][{library_id!r}]`")
    spatial[library_id] = entry
    out.uns["spatial"] = spatial
    logger.info(
        f"set_slide: slide {library_id!r} ({int(rows.sum()):,} spots, platform {entry['metadata']['platform']!r}, "
        f"{float(microns_per_pixel):g} µm per coordinate unit{', with an image' if image is not None else ''}): "
        f"added `obs[{library_key!r}]`, `obsm['spatial']`, `uns['spatial'][{library_id!r}]`"
    )
    return out if copy else None
