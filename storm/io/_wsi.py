"""``storm.io.read_wsi``: a whole-slide image (SVS, NDPI, MRXS, pyramidal TIFF / OME-TIFF) as an AnnData, lazily."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from storm._logging import logger
from storm._wsi_reader import WholeSlideImage

from ._spatial import spatial_entry

#: Longer side of the thumbnail kept in ``uns['spatial'][lib]['images']['hires']`` for plots and tissue detection.
THUMBNAIL_SIDE = 2000


def slide_id_from_path(path: str | os.PathLike) -> str:
    """Return the file name without its extensions (``slide.ome.tif`` → ``slide``)."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def resolve_mpp(wsi: WholeSlideImage, microns_per_pixel: float | None) -> tuple[float, str]:
    """µm per full-resolution pixel: the argument when given (the file's value is only compared), else the file's.

    Raises
    ------
    ValueError
        Neither gives a pixel size, or the argument is not a positive number.
    """
    if microns_per_pixel is not None:
        try:
            mpp = float(microns_per_pixel)
        except (TypeError, ValueError):
            mpp = float("nan")
        if not np.isfinite(mpp) or mpp <= 0:
            raise ValueError(f"microns_per_pixel must be a positive number (µm per pixel), got {microns_per_pixel!r}.")
        if wsi.microns_per_pixel and abs(mpp / wsi.microns_per_pixel - 1) > 0.05:
            logger.warning(
                f"read_wsi: microns_per_pixel={mpp:g} overrides the {wsi.mpp_source} of {wsi.path.name} "
                f"({wsi.microns_per_pixel:g} µm/px)."
            )
        return mpp, "argument"
    if wsi.microns_per_pixel is None:
        raise ValueError(
            f"No pixel size for {wsi.path}: its metadata has none (no vendor MPP, OME-XML PhysicalSizeX or TIFF "
            "resolution tags in µm units). Pass microns_per_pixel= (µm per full-resolution pixel: about 0.25 for a "
            "40× scan, 0.5 for 20×); patch and tile sizes are in µm, so storm cannot guess it."
        )
    return float(wsi.microns_per_pixel), str(wsi.mpp_source)


def wsi_entry(
    path: str | os.PathLike,
    *,
    microns_per_pixel: float | None = None,
    backend: str = "auto",
    thumbnail_side: int = THUMBNAIL_SIDE,
    platform: str = "wsi",
    source: str | None = None,
) -> dict:
    """Build the ``uns['spatial'][lib]`` entry (DEVELOPERS.md layout) of a whole-slide image (decodes a thumbnail)."""
    with WholeSlideImage(path, backend=backend) as wsi:
        mpp, mpp_source = resolve_mpp(wsi, microns_per_pixel)
        thumb, scalef = wsi.thumbnail(thumbnail_side)
        entry = spatial_entry(
            platform=platform,
            source=source or f"{wsi.vendor} whole-slide image {wsi.path.name}",
            scalefactors={"microns_per_pixel": mpp, "tissue_hires_scalef": scalef},
        )
        entry["images"]["hires"] = thumb
        height, width = wsi.shape
        entry["metadata"] |= {
            "fullres_path": str(wsi.path.resolve()),
            "fullres_shape": [int(height), int(width)],
            "image_type": "H&E",
            "mpp_source": mpp_source,
            # h5ad stores no None: absent keys say the same
            "wsi": {k: v for k, v in wsi.describe().items() if v is not None},
        }
        logger.info(
            f"read_wsi: {wsi.path.name}: {width:,} × {height:,} px, {wsi.level_count} level(s) "
            f"(downsamples {', '.join(f'{d:.4g}' for d in wsi.level_downsamples)}), {mpp:.4f} µm/px ({mpp_source}), "
            f"read by {wsi.backend}; thumbnail {thumb.shape[1]}×{thumb.shape[0]}"
        )
    return entry


def read_wsi(
    path: str | os.PathLike,
    *,
    library_id: str | None = None,
    microns_per_pixel: float | None = None,
    backend: str = "auto",
    thumbnail_side: int = THUMBNAIL_SIDE,
) -> AnnData:
    """Open a whole-slide image lazily: an AnnData that records the slide, for tiling, patches and plots.

    Only the header, the level pyramid and a thumbnail are read. Patches are later read from the pyramid level
    nearest the resolution asked for, tile by tile (:func:`storm.pp.extract_patches`, :func:`storm.tl.virtual_st`,
    :func:`storm.tl.embed` on the tiles); the full-resolution level is never decoded whole.

    Parameters
    ----------
    path
        Aperio SVS, Hamamatsu NDPI, Leica SCN, Ventana BIF, pyramidal TIFF / OME-TIFF, a plain TIFF (read strip by
        strip, slowly), or with ``storm-st[openslide]`` MIRAX (MRXS) and the other OpenSlide formats.
    library_id
        Slide id (the key of ``uns['spatial']``); default the file name without extensions.
    microns_per_pixel
        µm per full-resolution pixel. Default: from the file (Aperio ``MPP``, OME-XML ``PhysicalSizeX``, TIFF
        resolution tags in centimetre or inch units; implausible values such as a writer's default 72 dpi are ignored).
        Given, it overrides the file's value (a warning says so when they differ by more than 5 %).
    backend
        ``"auto"`` (tiffslide for TIFF files, OpenSlide for others), ``"tiffslide"`` or ``"openslide"``.
    thumbnail_side
        Longer side of the thumbnail kept for plots and tissue detection.

    Returns
    -------
    AnnData
        No observations yet (tile it with :func:`storm.tl.virtual_st`); ``obsm['spatial']`` ``(0, 2)``;
        ``uns['spatial'][library_id]`` with ``images['hires']`` (the thumbnail, uint8 RGB), ``scalefactors``
        (``microns_per_pixel``, ``tissue_hires_scalef`` = thumbnail px per full-resolution px) and ``metadata``:
        ``platform='wsi'``, ``source``, ``fullres_path``, ``fullres_shape`` ``[height, width]``, ``image_type='H&E'``,
        ``mpp_source`` (where the pixel size came from: ``'argument'``, ``'aperio metadata'``, …) and ``wsi``: the
        pyramid (``backend``, ``vendor``, ``objective_power`` where known, ``level_shapes``, ``level_downsamples``,
        ``chunk_shapes``).

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        No pixel size in the file and none given (the message names ``microns_per_pixel``); a file neither reader
        opens; not 8-bit RGB; a header declaring more than 10^11 pixels (decompression bomb) or a TIFF stored in
        strips or tiles too large to decode one at a time (with advice to convert it into a tiled pyramid); OpenSlide
        needed and not installed.

    Examples
    --------
    >>> import storm
    >>> slide = storm.io.read_wsi("slide.svs")  # doctest: +SKIP
    >>> tiles = storm.tl.virtual_st(slide, head)  # doctest: +SKIP
    """
    library_id = str(library_id) if library_id is not None else slide_id_from_path(path)
    entry = wsi_entry(path, microns_per_pixel=microns_per_pixel, backend=backend, thumbnail_side=thumbnail_side)
    adata = AnnData(
        X=sparse.csr_matrix((0, 0), dtype=np.float32),
        obs=pd.DataFrame(index=pd.Index([], dtype=object)),
        var=pd.DataFrame(index=pd.Index([], dtype=object)),
    )
    adata.obsm["spatial"] = np.zeros((0, 2), dtype=np.float64)
    adata.uns["spatial"] = {library_id: entry}
    return adata
