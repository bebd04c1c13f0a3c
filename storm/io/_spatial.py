"""Helpers shared by the spot readers: physical scale from the spot grid, the ``uns['spatial']`` entry, input checks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData
from anndata.utils import make_index_unique
from scipy import sparse

from storm._logging import logger

from ._image import LazyImage

# Side of the plotting thumbnail made from a full-resolution image (Space Ranger's hires image has the same size).
HIRES_SIDE = 2000


def require_file(path: str | os.PathLike, what: str, advice: str = "") -> Path:
    """Return ``path`` as a Path, or raise a FileNotFoundError that names ``what`` was expected there and what to do."""
    path = Path(path).expanduser()
    if not path.is_file():
        hint = f" {advice}" if advice else ""
        raise FileNotFoundError(f"No {what} at {path}.{hint}")
    return path


class GridFit(NamedTuple):
    """A least-squares affine map from spots' grid positions (µm) to their pixel positions."""

    px_per_um: float  # isotropic scale, sqrt(|det A|)
    rms_px: float  # root-mean-square residual in pixels
    anisotropy: float  # ratio of the map's two axis scales (singular values of A): 1 for square pixels


def fit_pixels_per_micron(grid_um: np.ndarray, pixels: np.ndarray, *, what: str = "spots") -> GridFit:
    """Fit full-resolution pixels per µm from spots' grid positions (µm) and their pixel positions.

    A least-squares affine map ``pixels ≈ grid_um @ A + b`` absorbs rotation, flips and offsets; the isotropic scale is
    ``sqrt(|det A|)``. Returns it with the root-mean-square residual in pixels and the map's anisotropy (the ratio of
    its singular values; a scanner's pixels are square, so a correct grid gives ≈ 1).
    """
    grid_um = np.asarray(grid_um, dtype=float)
    pixels = np.asarray(pixels, dtype=float)
    ok = np.isfinite(grid_um).all(1) & np.isfinite(pixels).all(1)
    grid_um, pixels = grid_um[ok], pixels[ok]
    design = np.c_[grid_um, np.ones(len(grid_um))]
    if len(grid_um) < 3 or np.linalg.matrix_rank(design) < 3:
        raise ValueError(
            f"Cannot fit the spot pitch: fewer than 3 {what} off one line ({len(grid_um)} with finite positions). "
            "Set `uns['spatial'][library_id]['scalefactors']['microns_per_pixel']` by hand."
        )
    coef, *_ = np.linalg.lstsq(design, pixels, rcond=None)
    scale = float(np.sqrt(abs(np.linalg.det(coef[:2]))))
    rms = float(np.sqrt(((design @ coef - pixels) ** 2).sum(1).mean()))
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"The grid and pixel positions of the {what} give no usable scale (fitted {scale}).")
    singular = np.linalg.svd(coef[:2], compute_uv=False)
    return GridFit(scale, rms, float(singular[0] / singular[1]))


#: On a hexagonal Visium grid the affine fit's anisotropy is ≈ 1; with ``array_row``/``array_col`` swapped, one axis
#: of the grid (50 µm per column unit) is read as the other (86.6 µm per row unit): the map stretches by √3 along one
#: axis and shrinks by √3 along the other, a ratio of 3, while its scale and residual stay the same. Between 2 and 4.5
#: nothing but a swap explains it (measured: 1.00 on the squidpy crop and DLPFC 151673, 3.00 swapped).
HEX_SWAP_ANISOTROPY = (2.0, 4.5)


def check_fit(fit: GridFit, pitch_um: float, library_id: str, *, hexagonal: bool = False) -> None:
    """Check a grid fit: refuse swapped row/column columns of a hexagonal grid, warn on spots far off a regular grid.

    Raises
    ------
    ValueError
        If ``hexagonal`` and the fit's anisotropy lies in :data:`HEX_SWAP_ANISOTROPY` (``array_row`` and
        ``array_col`` swapped).
    """
    low, high = HEX_SWAP_ANISOTROPY
    if hexagonal and low <= fit.anisotropy <= high:
        raise ValueError(
            f"obs['array_row'] and obs['array_col'] of slide {library_id!r} look swapped: on the hexagonal Visium "
            f"grid, neighbouring spots of one row are 2 columns apart, and these positions fit that grid only when "
            f"stretched {fit.anisotropy:.2f}× more along one axis than the other (≈ 1 when the columns are right, "
            "3 when swapped). Swap them back, e.g. `adata.obs[['array_row', 'array_col']] = "
            "adata.obs[['array_col', 'array_row']].to_numpy()`, or check the column order of the positions file."
        )
    pitch_px = pitch_um * fit.px_per_um
    if fit.rms_px > 0.25 * pitch_px:
        logger.warning(
            "Spot positions of %r fit the array grid poorly (RMS residual %.0f px for a %.0f px pitch): check that "
            "the positions file belongs to these counts and that its columns are in the expected order.",
            library_id,
            fit.rms_px,
            pitch_px,
        )


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Return an (h, w, 3) uint8 RGB array from a PIL-read or user-given image array.

    Grey ``(h, w)`` or ``(h, w, 1)`` is repeated to RGB, RGBA drops its alpha; floats in [0, 1] are scaled by 255;
    integer images whose values exceed 255 but fit 16 bits (``uint16`` or any other integer type holding 16-bit
    values, e.g. ``int64`` from a TIFF reader) are rescaled from 0–65535 to 0–255.

    Raises
    ------
    ValueError
        Not 2-D or 3-D with 1, 3 or 4 channels; NaN/infinite or negative pixels; integers above 65535.
    """
    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise ValueError(
            f"The image has shape {img.shape}; expected (height, width) grey, (height, width, 3) RGB or "
            "(height, width, 4) RGBA. Pass the H&E as RGB (a 2-channel image is not one: stack or pick its channels)."
        )
    if img.shape[-1] == 4:  # Space Ranger writes RGBA PNGs; alpha carries nothing
        img = img[..., :3]
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    if not np.issubdtype(img.dtype, np.number) or np.issubdtype(img.dtype, np.complexfloating):
        raise ValueError(f"The image holds {img.dtype} values; pass a numeric (uint8, uint16 or float) RGB array.")
    if np.issubdtype(img.dtype, np.floating):
        n_bad = int(img.size - np.count_nonzero(np.isfinite(img)))
        if n_bad:
            raise ValueError(
                f"The image has {n_bad:,} NaN or infinite pixel values. Fill them first, e.g. "
                "`np.nan_to_num(image, nan=1.0)` (white, for floats in [0, 1]) or crop them away."
            )
    low, high = (img.min(), img.max()) if img.size else (0, 0)
    if low < 0:
        raise ValueError(f"The image has negative pixel values (down to {low}); pass RGB intensities ≥ 0.")
    if np.issubdtype(img.dtype, np.floating):
        scale = 255.0 if high <= 1.0 else 1.0
        if high > 255:
            raise ValueError(
                f"The float image has values up to {high:g}: neither [0, 1] nor [0, 255]. Rescale it to one of them."
            )
        return np.clip(np.rint(img * scale), 0, 255).astype(np.uint8)
    if high <= 255 and img.dtype != np.uint16:  # 8-bit values in a wider integer type
        return img.astype(np.uint8)
    if high > 65535:
        raise ValueError(
            f"The integer image has values up to {high}: more than 16 bits. Rescale it to uint8 (0–255) first."
        )
    return (img.astype(np.uint32) // 257).astype(np.uint8)  # 16-bit range → 8-bit, as for uint16 files


def read_png(path: Path) -> np.ndarray:
    """Read a small image (Space Ranger's hires/lowres PNG) into a uint8 RGB array; unreadable → ValueError."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return to_rgb_uint8(np.asarray(im.convert("RGB") if im.mode in {"P", "CMYK", "YCbCr", "LA"} else im))
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path} is not an image file PIL can read ({err}). Re-export it as PNG.") from err


def attach_fullres(
    spatial_entry: dict[str, Any],
    image: str | os.PathLike | LazyImage,
    coords: np.ndarray,
    *,
    thumbnail: bool,
    max_side: int = HIRES_SIDE,
) -> LazyImage:
    """Record a full-resolution image lazily in one ``uns['spatial'][lib]`` entry; optionally add a hires thumbnail.

    The image header is read (size), never its pixels: :meth:`LazyImage.thumbnail` decodes a JPEG at 1/2–1/8 scale
    directly. Spot centres outside the image mean the image does not belong to these coordinates: ValueError.
    """
    lazy = image if isinstance(image, LazyImage) else LazyImage(image)
    height, width, _ = lazy.shape
    coords = np.asarray(coords, dtype=float)
    if len(coords):
        outside = (coords[:, 0] < 0) | (coords[:, 1] < 0) | (coords[:, 0] >= width) | (coords[:, 1] >= height)
        if outside.any():
            raise ValueError(
                f"{outside.sum()} of {len(coords)} spot centres lie outside the {width} × {height} px image "
                f"{lazy.path} (x up to {coords[:, 0].max():.0f}, y up to {coords[:, 1].max():.0f}): it is not the "
                "full-resolution image these coordinates refer to (another section, or a downscaled copy)."
            )
    meta = spatial_entry["metadata"]
    meta["fullres_path"] = str(lazy.path.resolve())
    meta["fullres_shape"] = [int(height), int(width)]
    if thumbnail:
        thumb, scalef = lazy.thumbnail(max_side)
        spatial_entry["images"]["hires"] = thumb
        spatial_entry["scalefactors"]["tissue_hires_scalef"] = float(scalef)
    return lazy


def spatial_entry(*, platform: str, source: str, scalefactors: dict[str, float]) -> dict[str, Any]:
    """Return a fresh ``uns['spatial'][library_id]`` entry in the layout of DEVELOPERS.md."""
    return {
        "images": {},
        "scalefactors": {k: float(v) for k, v in scalefactors.items()},
        "metadata": {"platform": platform, "source": source},
    }


def spot_anndata(
    counts: sparse.spmatrix | np.ndarray | None,
    *,
    obs: pd.DataFrame,
    var: pd.DataFrame | None,
    spatial_xy: np.ndarray,
    library_id: str,
    entry: dict[str, Any],
) -> AnnData:
    """Assemble a spot-level AnnData in the layout contract: float32 CSR counts, float64 (x, y), categorical library."""
    n = len(obs)
    if counts is None:
        X = sparse.csr_matrix((n, 0), dtype=np.float32)
        var = pd.DataFrame(index=pd.Index([], dtype=object))
    else:
        X = sparse.csr_matrix(counts, dtype=np.float32)
        var = var.copy()
        # unique symbols: a few genes share one (PAR genes, Excel-era renames); keep all, suffixed -1, -2, …
        var.index = make_index_unique(pd.Index(var.index.astype(str)))
    obs = obs.copy()
    obs["library_id"] = pd.Categorical([library_id] * n)
    for key in ("array_row", "array_col"):
        if key in obs:
            obs[key] = obs[key].astype(np.int64)
    adata = AnnData(X=X, obs=obs, var=var)
    adata.obsm["spatial"] = np.ascontiguousarray(spatial_xy, dtype=np.float64)
    adata.uns["spatial"] = {library_id: entry}
    return adata
