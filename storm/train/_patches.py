"""Cut spot patches from an already-decoded slide image, without AnnData (used inside data-loader workers).

The geometry is that of :func:`storm.pp.extract_patches` (which works on an AnnData and streams a whole slide):
a square of ``side`` image pixels centred at a continuous position, resampled at sub-pixel precision by PIL's
bilinear filter, white outside the image. ``tests/test_train_data.py`` checks that both give identical bytes.
"""

from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["PAD_VALUE", "crop_patches", "decode_image"]

#: White (bare glass) where a patch reaches past the image border, as in :mod:`storm.pp`.
PAD_VALUE = 255
#: Refuse larger images (decompression-bomb guard, as :class:`storm.io.LazyImage`).
MAX_PIXELS = 2_500_000_000


def _crop_one(img: np.ndarray, cx: float, cy: float, side: float, out_px: int, resample) -> np.ndarray:
    from PIL import Image

    height, width = img.shape[:2]
    half = side / 2
    x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
    # One pixel of margin: the bilinear kernel reads the neighbours of the edge pixels.
    ix0, iy0 = math.floor(x0) - 1, math.floor(y0) - 1
    ix1, iy1 = math.ceil(x1) + 1, math.ceil(y1) + 1
    if ix0 >= 0 and iy0 >= 0 and ix1 <= width and iy1 <= height:
        region = img[iy0:iy1, ix0:ix1]
    else:
        region = np.full((iy1 - iy0, ix1 - ix0, 3), PAD_VALUE, dtype=np.uint8)
        sx0, sy0, sx1, sy1 = max(ix0, 0), max(iy0, 0), min(ix1, width), min(iy1, height)
        if sx1 > sx0 and sy1 > sy0:
            region[sy0 - iy0 : sy1 - iy0, sx0 - ix0 : sx1 - ix0] = img[sy0:sy1, sx0:sx1]
    patch = Image.fromarray(np.ascontiguousarray(region)).resize(
        (out_px, out_px), resample, box=(x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
    )
    return np.asarray(patch)


def crop_patches(image: np.ndarray, centres: np.ndarray, side: float, out_px: int) -> np.ndarray:
    """Cut square patches of ``side`` image pixels centred on ``centres`` and resize them to ``out_px``.

    Parameters
    ----------
    image
        uint8 ``(height, width, 3)`` RGB image.
    centres
        ``(n, 2)`` float (x, y) continuous image coordinates (pixel ``i`` spans ``[i, i + 1)``, so a spot at pixel
        index ``p`` is at ``p + 0.5``).
    side
        Side of the square in image pixels (``size_um / µm per image pixel``).
    out_px
        Side of each returned patch in pixels.

    Returns
    -------
    np.ndarray
        uint8 ``(n, out_px, out_px, 3)``; white (255) where a square leaves the image.
    """
    from PIL import Image

    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    out = np.empty((len(centres), out_px, out_px, 3), dtype=np.uint8)
    resample = Image.Resampling.BILINEAR
    for i, (cx, cy) in enumerate(centres):
        out[i] = _crop_one(image, float(cx), float(cy), float(side), int(out_px), resample)
    return out


def decode_image(path: str | os.PathLike) -> np.ndarray:
    """Decode an RGB image file into a uint8 ``(height, width, 3)`` array (PIL; no AnnData, no storm.io).

    Parameters
    ----------
    path
        A file PIL can read.

    Returns
    -------
    np.ndarray
        The pixels.
    """
    from PIL import Image, UnidentifiedImageError

    previous = Image.MAX_IMAGE_PIXELS
    # PIL's bomb guard (89 Mpx) is below one HER2ST scan; the size is checked against MAX_PIXELS instead.
    Image.MAX_IMAGE_PIXELS = None
    try:
        with Image.open(path) as im:
            if im.size[0] * im.size[1] > MAX_PIXELS:
                raise ValueError(f"{path} has {im.size[0]} × {im.size[1]} pixels, more than {MAX_PIXELS:,}.")
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"The slide image {path} does not exist (moved or deleted since setup?).") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"Could not decode the slide image {path}: {err}.") from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous
