"""The one patch cutter of storm: a square of tissue at sub-pixel precision, white outside the image.

numpy and PIL only, so that :func:`storm.pp.extract_patches` (AnnData, whole slides) and the data-loader workers of
:mod:`storm.train` (no AnnData) cut the very same pixels.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

#: Padding value where a patch reaches past the image border: white, the colour of bare glass on an H&E slide, so the
#: image encoder sees "no tissue" there (black would look like dense, dark-stained tissue or ink).
PAD_VALUE = 255

# Bilinear in PIL is a separable convolution whose support widens with the reduction factor, so when a crop is larger
# than out_px it averages over the source area (antialiased, like area resampling); when smaller (the common case:
# 55 µm ≈ 75–110 full-res px → 224 px) it interpolates linearly.
RESAMPLE = Image.Resampling.BILINEAR


def crop_resize(img: np.ndarray, cx: float, cy: float, side: float, out_px: int) -> np.ndarray:
    """Cut the square of ``side`` image px centred at continuous position (cx, cy) and resize it to ``out_px``.

    Only a small window around the square is copied (padded with white where it leaves the image); PIL's ``box``
    argument then resamples the exact, sub-pixel square, so centring and size are not rounded to whole pixels.
    """
    height, width = img.shape[:2]
    half = side / 2
    x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
    # one pixel of margin: the bilinear kernel reads the neighbours of the edge pixels
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
        (out_px, out_px), RESAMPLE, box=(x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
    )
    return np.asarray(patch)
