"""Cut spot patches from an already-decoded slide image, without AnnData (used inside data-loader workers).

The geometry is :func:`storm._patch_geometry.crop_resize`, the one :func:`storm.pp.extract_patches` uses too;
``tests/test_train_data.py`` checks that both give identical bytes.
"""

from __future__ import annotations

import os

import numpy as np

from storm._image_memory import check_decode_fits
from storm._patch_geometry import PAD_VALUE, crop_resize

__all__ = ["PAD_VALUE", "crop_patches", "decode_image"]

#: Refuse larger images (decompression-bomb guard, as :class:`storm.io.LazyImage`).
MAX_PIXELS = 2_500_000_000


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
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    out = np.empty((len(centres), out_px, out_px, 3), dtype=np.uint8)
    for i, (cx, cy) in enumerate(centres):
        out[i] = crop_resize(image, float(cx), float(cy), float(side), int(out_px))
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
            check_decode_fits(path, *im.size, im.mode)
            return np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise FileNotFoundError(f"The slide image {path} does not exist (moved or deleted since setup?).") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"Could not decode the slide image {path}: {err}.") from err
    finally:
        Image.MAX_IMAGE_PIXELS = previous
