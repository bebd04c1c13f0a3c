"""Images opened lazily: the header is read at once, the pixels only when asked for."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from storm._image_memory import check_decode_fits

# 2.5 gigapixels: above every H&E image that fits in memory as one array (a 50k × 50k scan); pyramidal whole-slide
# images go through their own reader instead. PIL's own bomb guard (89 Mpx) is below a 9,300-px HER2ST scan.
DEFAULT_MAX_PIXELS = 2_500_000_000


class LazyImage:
    """An RGB image file whose pixels are decoded on first use and then kept.

    Parameters
    ----------
    path
        A file PIL can read (JPEG, PNG, TIFF, …).
    max_pixels
        Refuse images with more pixels than this (a guard against decompression bombs and files too big to decode
        into memory).

    Notes
    -----
    Opening reads only the header (size and mode). :meth:`load` decodes the full image once; :meth:`thumbnail` uses
    JPEG draft mode, which decodes at 1/2, 1/4 or 1/8 scale directly and never builds the full-resolution array.
    """

    def __init__(self, path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"No image file at {self.path}.")
        try:
            with self._open() as im:
                width, height = im.size
                self.mode = im.mode
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(
                f"{self.path} is not an image file PIL can read ({err}). Convert it to TIFF/PNG/JPEG."
            ) from err
        if width * height > max_pixels:
            raise ValueError(
                f"{self.path} has {width} × {height} = {width * height:,} pixels, more than max_pixels={max_pixels:,}. "
                "If you trust the file, pass a larger max_pixels; whole-slide pyramids need a tiled reader."
            )
        self.max_pixels = max_pixels
        self.shape = (height, width, 3)
        self._array: np.ndarray | None = None

    def __repr__(self) -> str:
        h, w, _ = self.shape
        return f"LazyImage({str(self.path)!r}, {w}×{h}, {'decoded' if self.decoded else 'not decoded'})"

    @property
    def decoded(self) -> bool:
        """Whether the full-resolution pixels are in memory."""
        return self._array is not None

    def _open(self) -> Image.Image:
        # Our own guard replaces PIL's 89-Mpx warning, which a single legitimate H&E scan exceeds.
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(self.path)
        finally:
            Image.MAX_IMAGE_PIXELS = previous

    def load(self) -> np.ndarray:
        """Decode (once) and return the full-resolution image as a uint8 (height, width, 3) array.

        Refused (``ValueError``) before decoding when the pixels would take over half of the memory available.
        """
        if self._array is None:
            height, width, _ = self.shape
            check_decode_fits(self.path, width, height, self.mode)
            try:
                with self._open() as im:
                    # convert() copies even an RGB image: skip it then (a 9,300-px scan is 275 MB per copy)
                    rgb = im if im.mode == "RGB" else im.convert("RGB")
                    self._array = np.asarray(rgb)
                    del rgb
            except OSError as err:
                raise ValueError(f"Could not decode {self.path}: {err}. The file may be truncated or corrupt.") from err
        return self._array

    def release(self) -> None:
        """Drop the decoded pixels (they are decoded again on the next :meth:`load`)."""
        self._array = None

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """Return a downscaled uint8 RGB copy whose longer side is at most ``max_side``, and its scale factor.

        The scale factor is thumbnail pixels per full-resolution pixel (squidpy's ``tissue_hires_scalef``).
        """
        height, width, _ = self.shape
        scale = min(1.0, max_side / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        try:
            with self._open() as im:
                im.draft("RGB", size)  # JPEG: decode at a reduced scale directly; other formats ignore it
                check_decode_fits(self.path, *im.size, im.mode)  # after draft: the size that will be decoded
                thumb = im.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        except OSError as err:
            raise ValueError(f"Could not decode {self.path}: {err}. The file may be truncated or corrupt.") from err
        return np.asarray(thumb), size[0] / width


def read_image(path: str | os.PathLike, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> LazyImage:
    """Open an image lazily: read its header now, decode its pixels on first use.

    Parameters
    ----------
    path
        An image file PIL can read.
    max_pixels
        Refuse images with more pixels (decompression-bomb guard).

    Returns
    -------
    A :class:`LazyImage`.
    """
    return LazyImage(path, max_pixels=max_pixels)
