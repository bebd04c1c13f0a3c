"""``storm.io.write_pyramid``: an RGB image as a tiled, pyramidal (OME-)TIFF, written tile by tile with tifffile."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from storm._logging import logger


def _level_tiles(image: Any, factor: int, shape: tuple[int, int], tile: int) -> Iterator[np.ndarray]:
    """Tiles (row-major, padded with white at the edges) of ``image`` shrunk ``factor``× by area averaging."""
    height, width = shape
    for y in range(0, height, tile):
        for x in range(0, width, tile):
            h, w = min(tile, height - y), min(tile, width - x)
            region = np.asarray(image[y * factor : (y + h) * factor, x * factor : (x + w) * factor], dtype=np.uint8)
            if factor > 1:  # PIL's box reduction (C, uint8): each pixel the mean of a factor × factor block
                region = np.asarray(Image.fromarray(np.ascontiguousarray(region)).reduce(factor))
            if (h, w) != (tile, tile):
                padded = np.full((tile, tile, 3), 255, dtype=np.uint8)
                padded[:h, :w] = region
                region = padded
            yield np.ascontiguousarray(region, dtype=np.uint8)


def write_pyramid(
    path: str | os.PathLike,
    image: Any,
    *,
    microns_per_pixel: float,
    levels: int = 4,
    tile: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
    ome: bool | None = None,
) -> Path:
    """Write an RGB image as a tiled pyramidal TIFF (OME-TIFF with sub-resolutions, or a generic tiled TIFF).

    Level ``k`` is the image shrunk ``2**k`` times by area averaging; every level is tiled, and tiles are produced
    one at a time from ``image`` (an array or any array-like whose 2-D slices return pixels, e.g. a level of
    :class:`storm.io.WholeSlideImage`), so the image need never be in memory whole. The pixel size is written into
    the TIFF resolution tags (pixels per centimetre) and, for OME-TIFF, ``PhysicalSizeX``/``PhysicalSizeY`` in µm:
    :func:`storm.io.read_wsi`, QuPath, OpenSlide and tiffslide read it back.

    Parameters
    ----------
    path
        Output file (``.ome.tif`` for OME-TIFF); replaced if it exists.
    image
        uint8 ``(height, width, 3)`` RGB pixels.
    microns_per_pixel
        µm per pixel of ``image``.
    levels
        Pyramid levels, the full resolution included (levels smaller than one tile are dropped).
    tile
        Tile side in pixels (a multiple of 16).
    compression
        tifffile compression of the tiles (``"jpeg"``, ``"zlib"``, ``"webp"``, ``None``, …).
    quality
        JPEG/WebP quality.
    ome
        Write OME-TIFF (levels as SubIFDs) rather than a generic pyramidal TIFF (levels as reduced pages); default
        from the file name.

    Returns
    -------
    Path
        ``path``.
    """
    import tifffile

    path = Path(path)
    height, width, channels = (int(s) for s in image.shape)
    if channels != 3 or np.dtype(getattr(image, "dtype", np.uint8)) != np.uint8:
        raise ValueError(f"write_pyramid writes uint8 RGB images, got shape {image.shape}.")
    if not np.isfinite(microns_per_pixel) or microns_per_pixel <= 0:
        raise ValueError(f"microns_per_pixel must be a positive number, got {microns_per_pixel!r}.")
    if tile % 16:
        raise ValueError(f"tile must be a multiple of 16 (TIFF tiles), got {tile}.")
    ome = path.name.lower().endswith((".ome.tif", ".ome.tiff")) if ome is None else bool(ome)
    factors = [2**k for k in range(max(1, int(levels))) if k == 0 or min(height, width) >> k >= tile]
    shapes = [(height // f, width // f) for f in factors]
    per_cm = 1e4 / float(microns_per_pixel)
    options: dict[str, Any] = {
        "tile": (tile, tile),
        "photometric": "rgb",
        "compression": compression,
        "dtype": np.uint8,
        "resolutionunit": "CENTIMETER",
    }
    if compression in ("jpeg", "webp"):
        options["compressionargs"] = {"level": int(quality)}
    bigtiff = height * width * 3 * 4 // 3 > 2**31  # past ~2 GiB uncompressed, stay safe of the 4 GiB TIFF limit
    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=ome) as tw:
        for i, (factor, shape) in enumerate(zip(factors, shapes, strict=True)):
            kwargs = dict(options, resolution=(per_cm / factor, per_cm / factor), shape=(*shape, 3))
            if i == 0:
                if ome:
                    kwargs |= {
                        "subifds": len(factors) - 1,
                        "metadata": {
                            "axes": "YXS",
                            "PhysicalSizeX": float(microns_per_pixel),
                            "PhysicalSizeY": float(microns_per_pixel),
                            "PhysicalSizeXUnit": "µm",
                            "PhysicalSizeYUnit": "µm",
                        },
                    }
                else:
                    kwargs["metadata"] = None
            else:
                kwargs["subfiletype"] = 1  # a reduced-resolution image of the first
                if not ome:
                    kwargs["metadata"] = None
            tw.write(_level_tiles(image, factor, shape, tile), **kwargs)
    logger.info(
        f"write_pyramid: {path.name}: {width:,} × {height:,} px at {microns_per_pixel:.4g} µm/px, {len(factors)} "
        f"levels, {tile}-px {compression} tiles ({'OME-TIFF' if ome else 'generic TIFF'}, "
        f"{path.stat().st_size / 2**20:,.1f} MiB)"
    )
    return path
