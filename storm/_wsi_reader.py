"""Whole-slide images read tile by tile through tiffslide (or OpenSlide), without AnnData.

A :class:`WholeSlideImage` reads the header and the level pyramid when it is opened, and pixels only for the regions
asked for: a region decodes the tiles (or strips) that cover it, never a whole level. :class:`LevelArray` presents
one pyramid level as a read-only ``(height, width, 3)`` uint8 array whose 2-D slices read those tiles, so the one
patch cutter of storm (:func:`storm._patch_geometry.crop_resize`) cuts whole-slide patches unchanged, in
:mod:`storm.pp`, in :mod:`storm.models` and in the data-loader workers of :mod:`storm.train` alike.

Before any pixel is decoded, the header is checked: a file that declares more than ``max_pixels`` pixels, or whose
tiles or strips would each decode to more than ``max_chunk_bytes`` (a TIFF written as one strip), is refused.
"""

from __future__ import annotations

import logging
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LevelArray", "WholeSlideImage", "is_whole_slide"]

_log = logging.getLogger("storm")

#: 10^11 pixels: four times a 150,000-px-square scan, the largest whole-slide images in use; a header declaring more
#: is a decompression bomb or a corrupt file.
MAX_PIXELS = 100_000_000_000
#: A tile or strip is decoded whole: refuse files whose decode units are larger than this (256 MiB; a 256-px tile is
#: 192 KiB, a 16-row strip of a 100,000-px-wide scan 4.6 MiB).
MAX_CHUNK_BYTES = 256 * 2**20
#: Plain (stripped, one-level) TIFFs above this size go through this reader strip by strip instead of PIL whole.
STRIP_READ_PIXELS = 2**26
#: µm per pixel outside this window is not a microscope scan (a TIFF's default 72 dpi gives 353 µm/px): ignored.
PLAUSIBLE_MPP = (0.01, 100.0)
#: A level may be this much coarser than asked for and still be used (5 %: invisible after resizing to the patch).
LEVEL_TOLERANCE = 1.05

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: Formats only OpenSlide reads (not TIFF containers).
_OPENSLIDE_ONLY = (".mrxs", ".vms", ".vmu", ".svslide")
#: Vendor TIFF variants that are whole-slide images whatever their size.
_VENDOR_TIFF = (".svs", ".ndpi", ".scn", ".bif", ".qptiff")

_CONVERT_ADVICE = (
    "Convert it to a tiled pyramidal TIFF, e.g. `vips tiffsave IN OUT.tif --tile --pyramid --compression jpeg --Q 90 "
    "--tile-width 256 --tile-height 256` (libvips), `bfconvert -pyramid-resolutions 4 -tilex 256 -tiley 256 IN "
    "OUT.ome.tif` (Bio-Formats), or tifffile (`TiffWriter.write(..., tile=(256, 256), subifds=3)`)."
)


def _is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


@lru_cache(maxsize=256)
def _is_whole_slide(path: str, _mtime_ns: int, _size: int) -> bool:
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in _OPENSLIDE_ONLY or suffix in _VENDOR_TIFF:
        return True
    if not _is_tiff(p):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(p) as tf:
            series = tf.series[0]
            page = series.levels[0].keyframe
            height, width = int(page.imagelength), int(page.imagewidth)
            return len(series.levels) > 1 or bool(page.is_tiled) or height * width > STRIP_READ_PIXELS
    except Exception:  # not a TIFF tifffile reads: leave it to PIL, which says what is wrong
        return False


def is_whole_slide(path: str | os.PathLike) -> bool:
    """Whether ``path`` is read as a whole slide (tile by tile) rather than decoded whole with PIL.

    Yes for vendor formats (SVS, NDPI, SCN, BIF, MRXS, VMS, …) and for TIFFs that are tiled, pyramidal, or larger than
    ``STRIP_READ_PIXELS`` (64 Mpx, read strip by strip); no for JPEG/PNG and small plain TIFFs. Reads the header only.
    """
    p = Path(path)
    try:
        stat = p.stat()
    except OSError:
        return p.suffix.lower() in _OPENSLIDE_ONLY + _VENDOR_TIFF
    return _is_whole_slide(str(p.resolve()), stat.st_mtime_ns, stat.st_size)


def _mpp_from_tiff(tf: Any) -> tuple[float | None, str]:
    """µm per pixel from OME-XML ``PhysicalSizeX``, else the TIFF resolution tags (centimetre or inch units)."""
    ome = tf.ome_metadata or ""
    match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', ome)
    if match:
        unit = re.search(r'PhysicalSizeXUnit="([^"]+)"', ome)
        units = {"µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}
        factor = units.get(unit.group(1) if unit else "µm")
        if factor is not None:
            return float(match.group(1)) * factor, "OME-XML PhysicalSizeX"
    page = tf.series[0].levels[0].keyframe
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    res = tags.get("XResolution")
    if unit is None or res is None:
        return None, ""
    per_unit_um = {2: 25_400.0, 3: 10_000.0}.get(int(unit.value))  # inch, centimetre; 1 = no unit
    num, den = res.value if isinstance(res.value, tuple) else (res.value, 1)
    if per_unit_um is None or not num:
        return None, ""
    return per_unit_um * den / num, "TIFF resolution tags"


class WholeSlideImage:
    """A whole-slide image opened lazily: its header and level pyramid now, its pixels tile by tile.

    Parameters
    ----------
    path
        SVS, NDPI, SCN, BIF, pyramidal TIFF / OME-TIFF, a plain TIFF (read strip by strip), or with OpenSlide
        installed MRXS / VMS / VMU / SVSLIDE.
    backend
        ``"tiffslide"`` (TIFF containers), ``"openslide"`` (``storm-st[openslide]``), or ``"auto"``: tiffslide for
        TIFF files, OpenSlide for the others.
    max_pixels
        Refuse files whose base level declares more pixels (decompression-bomb guard, checked on the header).
    max_chunk_bytes
        Refuse files whose base-level tiles or strips each decode to more bytes than this (a TIFF stored as one strip
        would be decoded whole for any region); coarser levels with such chunks are not used.

    Attributes
    ----------
    path, backend, vendor
        The file, the reader used, and the scanner vendor where the file says (``"aperio"``, …).
    level_shapes
        ``(height, width)`` of each level, level 0 (full resolution) first.
    level_downsamples
        Full-resolution pixels per level pixel, per level.
    chunk_shapes
        ``(height, width)`` of the decode units (tiles or strips) per level.
    microns_per_pixel, mpp_source
        µm per full-resolution pixel from the file's metadata (``None`` without plausible metadata) and where it came
        from (``"aperio metadata"``, ``"OME-XML PhysicalSizeX"``, ``"TIFF resolution tags"``, …).
    objective_power
        The scan's objective magnification where the file says.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Not a slide either reader opens, not an 8-bit RGB image, a header over the limits (decompression bomb, one
        huge strip), or OpenSlide needed but not installed.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        backend: str = "auto",
        max_pixels: int = MAX_PIXELS,
        max_chunk_bytes: int = MAX_CHUNK_BYTES,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"No whole-slide image at {self.path}.")
        if backend not in ("auto", "tiffslide", "openslide"):
            raise ValueError(f"backend must be 'auto', 'tiffslide' or 'openslide', got {backend!r}.")
        if backend == "auto":
            backend = "tiffslide" if _is_tiff(self.path) else "openslide"
        self.backend = backend
        self._slide: Any = None
        self._arrays: dict[int, Any] = {}
        self._limits = (max_pixels, max_chunk_bytes)
        self._open_backend(max_pixels, max_chunk_bytes)

    # ------------------------------------------------------------------ opening
    def _open_backend(self, max_pixels: int, max_chunk_bytes: int) -> None:
        if self.backend == "tiffslide":
            self._open_tiffslide(max_pixels, max_chunk_bytes)
        else:
            self._open_openslide(max_pixels)
        if self.microns_per_pixel is not None and not PLAUSIBLE_MPP[0] < self.microns_per_pixel < PLAUSIBLE_MPP[1]:
            _log.warning(
                f"{self.path.name}: ignoring its {self.mpp_source} ({self.microns_per_pixel:.4g} µm/px): not the "
                "pixel size of a microscope scan (a TIFF writer's default?)."
            )
            self.microns_per_pixel, self.mpp_source = None, ""

    def _check_size(self, height: int, width: int, max_pixels: int) -> None:
        if height * width > max_pixels:
            raise ValueError(
                f"{self.path} declares {width:,} × {height:,} = {width * height:,} pixels "
                f"({width * height * 3 / 2**30:,.0f} GiB decoded), more than max_pixels={max_pixels:,}: refused before "
                "decoding (a decompression bomb or a corrupt header): check the file against its source."
            )

    def _open_tiffslide(self, max_pixels: int, max_chunk_bytes: int) -> None:
        import tiffslide

        try:
            slide = tiffslide.TiffSlide(self.path)
        except Exception as err:  # tiffslide/tifffile raise many kinds; all mean "cannot read this file"
            raise ValueError(
                f"{self.path} is not a whole-slide image tiffslide can read ({type(err).__name__}: {err}). For MRXS, "
                "VMS or other non-TIFF formats pass backend='openslide' (install `storm-st[openslide]`)."
            ) from err
        self._slide = slide
        props = slide.properties
        series = slide.ts_tifffile.series[int(props.get("tiffslide.series-index") or 0)]
        key0 = series.levels[0].keyframe
        height, width = int(key0.imagelength), int(key0.imagewidth)
        self._check_size(height, width, max_pixels)
        if key0.dtype != np.uint8 or int(key0.samplesperpixel) not in (3, 4):
            raise ValueError(
                f"{self.path} holds {key0.samplesperpixel}-channel {key0.dtype} pixels, not an 8-bit RGB H&E scan "
                "(a fluorescence or multiplexed image?); storm's image encoders read H&E."
            )
        self._axes = str(props.get("tiffslide.series-axes") or series.axes)
        if self._axes not in ("YXS", "SYX", "CYX", "YXC"):
            raise ValueError(f"{self.path}: image axes {self._axes!r} are not a 2-D RGB image (YXS).")
        shapes, downsamples, chunks = [], [], []
        for i, level in enumerate(series.levels):
            key = level.keyframe
            h, w = int(key.imagelength), int(key.imagewidth)
            chunk = key.chunks[:2] if self._axes.startswith("Y") else key.chunks[1:3]
            chunk_bytes = int(np.prod(key.chunks)) * key.dtype.itemsize
            if chunk_bytes > max_chunk_bytes:
                if i == 0:
                    kind = "tiles" if key.is_tiled else "strips"
                    raise ValueError(
                        f"{self.path} ({width:,} × {height:,} px, {len(series.levels)} level(s)) is stored in {kind} "
                        f"of {chunk[0]:,} × {chunk[1]:,} px ({chunk_bytes / 2**20:,.0f} MiB each), and a {kind[:-1]} "
                        f"is decoded whole: more than max_chunk_bytes={max_chunk_bytes / 2**20:,.0f} MiB, refused "
                        f"before decoding. {_CONVERT_ADVICE}"
                    )
                _log.info(f"{self.path.name}: level {i} has {chunk_bytes / 2**20:,.0f}-MiB chunks; not used.")
                break
            shapes.append((h, w))
            downsamples.append(float(slide.level_downsamples[i]))
            chunks.append((int(chunk[0]), int(chunk[1])))
        self.level_shapes, self.level_downsamples, self.chunk_shapes = shapes, downsamples, chunks
        self.vendor = props.get("tiffslide.vendor") or ("ome" if slide.ts_tifffile.is_ome else "generic-tiff")
        self.objective_power = props.get("tiffslide.objective-power")
        mpp, source = None, ""
        if self.vendor not in ("ome", "generic-tiff", None) and props.get("tiffslide.mpp-x"):
            mpp, source = float(props["tiffslide.mpp-x"]), f"{self.vendor} metadata"
        else:
            mpp, source = _mpp_from_tiff(slide.ts_tifffile)
        if mpp is not None and props.get("tiffslide.mpp-y") and abs(float(props["tiffslide.mpp-y"]) / mpp - 1) > 0.01:
            _log.warning(
                f"{self.path.name}: pixels are not square ({props['tiffslide.mpp-y']} µm high); using the width."
            )
        self.microns_per_pixel, self.mpp_source = mpp, source
        if len(shapes) == 1 and height * width > STRIP_READ_PIXELS:
            _log.warning(
                f"{self.path.name}: {width:,} × {height:,} px with no pyramid: every region is read at full "
                f"resolution ({'tile' if key0.is_tiled else 'strip'} by {'tile' if key0.is_tiled else 'strip'}), "
                f"slowly. {_CONVERT_ADVICE}"
            )

    def _open_openslide(self, max_pixels: int) -> None:
        try:
            import openslide
        except ImportError as err:
            raise ValueError(
                f"{self.path.name} needs OpenSlide (MRXS, VMS and other non-TIFF formats): install "
                "`storm-st[openslide]` (openslide-python and the openslide-bin library wheel)."
            ) from err
        try:
            slide = openslide.OpenSlide(str(self.path))
        except Exception as err:  # OpenSlideUnsupportedFormatError, OpenSlideError
            raise ValueError(f"{self.path} is not a whole-slide image OpenSlide can read ({err}).") from err
        self._slide = slide
        width, height = slide.dimensions
        self._check_size(int(height), int(width), max_pixels)
        self.level_shapes = [(int(h), int(w)) for w, h in slide.level_dimensions]
        self.level_downsamples = [float(d) for d in slide.level_downsamples]
        tile = (
            int(slide.properties.get("openslide.level[0].tile-height", 256)),
            int(slide.properties.get("openslide.level[0].tile-width", 256)),
        )
        self.chunk_shapes = [tile] * len(self.level_shapes)
        props = slide.properties
        self.vendor = props.get("openslide.vendor") or "unknown"
        power = props.get("openslide.objective-power")
        self.objective_power = float(power) if power else None
        mpp = props.get("openslide.mpp-x")
        self.microns_per_pixel = float(mpp) if mpp else None
        self.mpp_source = f"{self.vendor} metadata (OpenSlide)" if mpp else ""
        self._axes = "YXS"

    # ------------------------------------------------------------------ description
    def __repr__(self) -> str:
        h, w = self.shape
        mpp = f"{self.microns_per_pixel:.3f} µm/px" if self.microns_per_pixel else "µm/px unknown"
        return f"WholeSlideImage({self.path.name!r}, {w}×{h}, {self.level_count} levels, {mpp}, {self.backend})"

    @property
    def shape(self) -> tuple[int, int]:
        """``(height, width)`` of level 0 (full resolution)."""
        return self.level_shapes[0]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels this reader uses."""
        return len(self.level_shapes)

    def best_level(self, downsample: float) -> int:
        """Return the coarsest level at most ``LEVEL_TOLERANCE`` (5 %) coarser than ``downsample`` (full-res px per px).

        Patches are then cut from the level nearest the resolution asked for and shrunk (antialiased) to their size,
        never enlarged from a coarser level beyond that tolerance; level 0 when every level is coarser.
        """
        fits = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * LEVEL_TOLERANCE]
        return max(fits, key=lambda i: self.level_downsamples[i]) if fits else 0

    def level(self, level: int) -> LevelArray:
        """One pyramid level as a lazy ``(height, width, 3)`` uint8 array."""
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path.name} has levels 0–{self.level_count - 1}, not {level}.")
        return LevelArray(self, level)

    def describe(self) -> dict[str, Any]:
        """Return the pyramid as plain types (for ``uns['spatial'][lib]['metadata']['wsi']``)."""
        return {
            "backend": self.backend,
            "vendor": str(self.vendor),
            "objective_power": float(self.objective_power) if self.objective_power else None,
            "level_shapes": [list(s) for s in self.level_shapes],
            "level_downsamples": list(self.level_downsamples),
            "chunk_shapes": [list(s) for s in self.chunk_shapes],
        }

    # ------------------------------------------------------------------ pixels
    def read(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` of ``level`` (inside the level) as uint8 ``(y1 - y0, x1 - x0, 3)``.

        Only the tiles or strips that cover the region are decoded.

        Raises
        ------
        ValueError
            A tile that cannot be decoded (truncated or corrupt file).
        """
        h, w = self.level_shapes[level]
        if not (0 <= y0 <= y1 <= h and 0 <= x0 <= x1 <= w):
            raise ValueError(f"Region y {y0}:{y1}, x {x0}:{x1} is outside level {level} ({w} × {h} px).")
        if y1 == y0 or x1 == x0:
            return np.empty((y1 - y0, x1 - x0, 3), dtype=np.uint8)
        if self._slide is None:  # closed by release(): reopen on demand
            self._open_backend(*self._limits)
        try:
            if self.backend == "tiffslide":
                arr = self._zarr(level)
                if self._axes.startswith("Y"):
                    region = np.asarray(arr[y0:y1, x0:x1])
                else:
                    region = np.moveaxis(np.asarray(arr[:, y0:y1, x0:x1]), 0, -1)
            else:
                ds = self.level_downsamples[level]
                image = self._slide.read_region((round(x0 * ds), round(y0 * ds)), level, (x1 - x0, y1 - y0))
                region = np.asarray(image)
        except Exception as err:  # imagecodecs, tifffile, zarr, OpenSlide errors: all mean undecodable tiles
            raise ValueError(
                f"Could not decode level {level}, region x {x0}:{x1}, y {y0}:{y1} of {self.path} "
                f"({type(err).__name__}: {err}). The file is truncated or corrupt: check its size or checksum against "
                "the source and copy it again."
            ) from err
        if region.shape[-1] == 4:  # RGBA (OpenSlide, some TIFFs): transparent = not scanned = white glass
            alpha = region[..., 3:4].astype(np.uint16)
            region = ((region[..., :3] * alpha + 255 * (255 - alpha)) // 255).astype(np.uint8)
        return np.ascontiguousarray(region[..., :3], dtype=np.uint8)

    def _zarr(self, level: int) -> Any:
        if level not in self._arrays:
            self._arrays[level] = self._slide.zarr_group[str(level)]
        return self._arrays[level]

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """Return a uint8 RGB copy whose longer side is at most ``max_side``, and its scale (px per level-0 px).

        Read from the smallest level at least ``max_side`` on its longer side, band by band and area-averaged, so a
        slide without a pyramid is streamed rather than decoded whole.
        """
        from PIL import Image

        height, width = self.shape
        scale = min(1.0, max_side / max(height, width))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        big_enough = [i for i, (h, w) in enumerate(self.level_shapes) if max(h, w) >= max(size)]
        level = max(big_enough, key=lambda i: self.level_downsamples[i]) if big_enough else 0
        h, w = self.level_shapes[level]
        step = max(1, min(int(max(h, w) // max(size)), h, w))
        hh, ww = h // step * step, w // step * step  # whole blocks of step × step pixels
        rows = max(step, (64 << 20) // max(1, w * 3) // step * step)  # bands of about 64 MiB
        parts = []
        for y0 in range(0, hh, rows):
            band = self.read(level, y0, min(hh, y0 + rows), 0, ww)
            if step > 1:
                bh, bw = band.shape[0] // step, band.shape[1] // step
                band = band.reshape(bh, step, bw, step, 3).mean(axis=(1, 3)).round().astype(np.uint8)
            parts.append(band)
        small = Image.fromarray(np.concatenate(parts))
        thumb = small.resize(size, Image.Resampling.LANCZOS) if small.size != size else small
        return np.asarray(thumb), size[0] / width

    def close(self) -> None:
        """Release the file handles (the object can be opened again by path)."""
        self._arrays.clear()
        if self._slide is not None:
            self._slide.close()
            self._slide = None

    def __enter__(self) -> WholeSlideImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LevelArray:
    """One pyramid level of a :class:`WholeSlideImage` as a read-only ``(height, width, 3)`` uint8 array.

    Indexing with row (and column) slices reads only the tiles those slices cover; nothing is cached, so memory is
    what the caller keeps. ``np.asarray`` decodes the whole level and is refused above ``MAX_CHUNK_BYTES``.
    """

    dtype = np.dtype(np.uint8)
    ndim = 3

    def __init__(self, wsi: WholeSlideImage, level: int) -> None:
        self.wsi = wsi
        self.level = int(level)
        self.shape = (*wsi.level_shapes[self.level], 3)
        self.downsample = wsi.level_downsamples[self.level]

    def __repr__(self) -> str:
        return f"LevelArray({self.wsi.path.name!r}, level {self.level}, {self.shape[1]}×{self.shape[0]})"

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        rows = key[0]
        cols = key[1] if len(key) > 1 else slice(None)
        if not isinstance(rows, slice) or not isinstance(cols, slice) or len(key) > 3:
            raise TypeError("A LevelArray is read by slices: level[y0:y1, x0:x1].")
        h, w = self.shape[:2]
        y0, y1, ystep = rows.indices(h)
        x0, x1, xstep = cols.indices(w)
        region = self.wsi.read(self.level, y0, max(y0, y1), x0, max(x0, x1))
        if ystep != 1 or xstep != 1:
            region = region[::ystep, ::xstep]
        return region[(slice(None), slice(None), key[2])] if len(key) == 3 else region

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        nbytes = int(np.prod(self.shape))
        if nbytes > MAX_CHUNK_BYTES:
            raise ValueError(
                f"Level {self.level} of {self.wsi.path.name} is {nbytes / 2**20:,.0f} MiB decoded: read regions "
                "(level[y0:y1, x0:x1]) instead of the whole level."
            )
        region = self[:, :]
        return region if dtype is None else region.astype(dtype)

    def release(self) -> None:
        """Close the slide's file handles (reopened by the next read through a new reader)."""
        self.wsi.close()
