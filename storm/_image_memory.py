"""Refuse to decode an image whose pixels would not fit the memory available (decompression bombs included).

A PNG of a few hundred KB can declare 40,000 × 40,000 pixels; decoding it whole costs gigabytes (PIL's own copy,
the RGB conversion, the numpy array). The header gives the size before any pixel is decoded, so the cost is known
in advance. No AnnData, no torch: the readers of :mod:`storm.io` and the data loaders share it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["available_memory", "check_decode_fits", "decode_bytes"]

#: Bytes per pixel of PIL's in-memory image by mode (PIL keeps RGB, LA and 32-bit modes in 4 bytes per pixel).
_PIL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}
#: Fraction of the available memory one decoded image may take: the patches, the model and the rest of the
#: session need the remainder.
MEMORY_FRACTION = 0.5


def decode_bytes(width: int, height: int, mode: str) -> int:
    """Peak bytes of decoding a ``mode`` image into a uint8 RGB numpy array (PIL image, RGB copy, numpy array)."""
    pixels = int(width) * int(height)
    source = _PIL_BYTES.get(mode, 4)
    converted = 0 if mode == "RGB" else 4  # convert("RGB") makes a second PIL image unless it is RGB already
    return pixels * (source + converted + 3)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``; psutil elsewhere), ``None`` if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def check_decode_fits(path: str | os.PathLike, width: int, height: int, mode: str) -> None:
    """Raise ``ValueError`` before decoding when the image would take over half of the memory available.

    Raises
    ------
    ValueError
        The decoded image would need more than ``MEMORY_FRACTION`` of the available memory; the message gives both
        figures and what to do.
    """
    available = available_memory()
    needed = decode_bytes(width, height, mode)
    if available is None or needed <= MEMORY_FRACTION * available:
        return
    size_kb = Path(path).stat().st_size / 1e3 if Path(path).is_file() else float("nan")
    raise ValueError(
        f"Refusing to decode {path}: its header declares {width:,} × {height:,} px (mode {mode!r}; the file is "
        f"{size_kb:,.0f} KB), which needs about {needed / 1e9:.1f} GB to decode, more than half of the "
        f"{available / 1e9:.1f} GB of memory available. If the image is genuine, convert it to a tiled pyramidal "
        "TIFF (e.g. `vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg`) and open it with a whole-slide "
        "reader, downscale it, or run where more memory is free; if you did not expect an image this large, the file "
        "is not the slide you meant (or a decompression bomb)."
    )
