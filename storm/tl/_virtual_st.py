"""``storm.tl.virtual_st``: whole-slide virtual spatial transcriptomics, streamed tile by tile from the H&E.

The tissue is found on a thumbnail, cut into a grid of ``tile_um`` tiles, and the image is read in horizontal bands
of tile rows: each band's tiles are cut, encoded and dropped before the next band is read. What is kept per tile is
its image feature vector and, at the end, its prediction, so working memory does not grow with the slide (the
decoded image itself is the one exception for formats that can only be decoded whole, such as JPEG; ``.npy`` files
and numpy arrays, memory-mapped ones included, are read band by band; whole-slide images (SVS, pyramidal TIFF, …,
:func:`storm.io.read_wsi`) are read from the pyramid level nearest the model's patch resolution, one region per batch
of tiles, so memory stays flat in the slide's size).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from storm._logging import logger
from storm.tl._expression_features import head_stain_target, resolve_model, stain_featurizer
from storm.tl._predict_expression import check_head, check_record, is_spatial_head, var_frame
from storm.tl._utils import elapsed, start_timer

#: Longest side of the thumbnail on which tissue is detected (and which is kept for plots).
THUMBNAIL_SIDE = 2048
#: Saturation below which a pixel is never tissue (bare glass and its noise), whatever Otsu's threshold says.
MIN_SATURATION = 0.05


# ---------------------------------------------------------------------------------------------------- image access
class _Bands:
    """An RGB image read in bands of rows: ``shape`` (height, width), ``read(y0, y1)``, ``thumbnail(side)``."""

    path: str | None = None
    shape: tuple[int, int]
    #: full-resolution px per px read (a whole-slide image is read at a coarser pyramid level when that suffices)
    downsample: float = 1.0
    #: µm per pixel from the file's metadata, where it has one
    microns_per_pixel: float | None = None
    #: read one region per batch of tiles instead of whole bands (memory flat in the slide's width)
    by_region: bool = False

    @property
    def base_shape(self) -> tuple[int, int]:
        """``(height, width)`` at full resolution."""
        return self.shape

    def use_downsample(self, downsample: float) -> None:
        """Read from the pyramid level nearest ``downsample`` where there is one (a no-op for plain images)."""

    def read(self, y0: int, y1: int) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        """Subsampled copy (every ``s``-th pixel), read band by band; and its scale (thumbnail px per image px)."""
        h, w = self.shape
        step = max(1, int(np.ceil(max(h, w) / max_side)))
        rows = []
        band = max(step, (64 << 20) // max(1, w * 3) // step * step)
        for y0 in range(0, h, band):
            rows.append(self.read(y0, min(h, y0 + band))[::step, ::step].copy())
        return np.concatenate(rows), 1.0 / step

    def close(self) -> None:
        """Release what the reader holds."""


class _ArrayBands(_Bands):
    def __init__(self, array: np.ndarray) -> None:
        _check_rgb(array, "the image array")
        self.array = array
        self.shape = tuple(int(s) for s in array.shape[:2])

    def read(self, y0: int, y1: int) -> np.ndarray:
        return np.asarray(self.array[y0:y1])


class _NpyBands(_Bands):
    """A ``.npy`` file of a C-ordered uint8 (height, width, 3) image, read band by band (no memory map)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            fmt = np.lib.format
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            self._offset = fh.tell()
        if fortran or dtype != np.uint8 or len(shape) != 3 or shape[2] != 3:
            raise ValueError(
                f"{path} must hold a C-ordered uint8 (height, width, 3) RGB image, got {dtype} {shape}"
                f"{' (Fortran order)' if fortran else ''}."
            )
        self.shape = (int(shape[0]), int(shape[1]))

    def read(self, y0: int, y1: int) -> np.ndarray:
        w = self.shape[1]
        with open(self.path, "rb") as fh:
            fh.seek(self._offset + y0 * w * 3)
            data = np.fromfile(fh, dtype=np.uint8, count=(y1 - y0) * w * 3)
        return data.reshape(y1 - y0, w, 3)


class _PILBands(_Bands):
    """An image file PIL decodes (JPEG, PNG, TIFF, …): decoded whole on the first band, released at the end."""

    def __init__(self, path: Path) -> None:
        from storm.io import LazyImage

        self.path = str(path)
        self.image = LazyImage(path)
        self.shape = self.image.shape[:2]

    def read(self, y0: int, y1: int) -> np.ndarray:
        return self.image.load()[y0:y1]

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        return self.image.thumbnail(max_side)

    def close(self) -> None:
        self.image.release()


class _SlideBands(_Bands):
    """A whole-slide image (:class:`storm.io.WholeSlideImage`) read at one pyramid level, region by region."""

    by_region = True

    def __init__(self, path: Path) -> None:
        from storm._wsi_reader import WholeSlideImage

        self.path = str(path)
        self.wsi = WholeSlideImage(path)
        self.microns_per_pixel = self.wsi.microns_per_pixel
        self.level = 0
        self.shape = self.wsi.shape

    @property
    def base_shape(self) -> tuple[int, int]:
        return self.wsi.shape

    def use_downsample(self, downsample: float) -> None:
        self.level = self.wsi.best_level(downsample)
        self.downsample = self.wsi.level_downsamples[self.level]
        self.shape = self.wsi.level_shapes[self.level]

    def read(self, y0: int, y1: int, x0: int = 0, x1: int | None = None) -> np.ndarray:
        return self.wsi.read(self.level, y0, y1, x0, self.shape[1] if x1 is None else x1)

    def thumbnail(self, max_side: int) -> tuple[np.ndarray, float]:
        thumb, scale = self.wsi.thumbnail(max_side)
        return thumb, scale * self.downsample  # thumbnail px per px of the level read

    def close(self) -> None:
        self.wsi.close()


def _check_rgb(array: np.ndarray, what: str) -> None:
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"{what} must be a uint8 (height, width, 3) RGB array, got {array.dtype} {array.shape}.")


def _open(image: Any) -> _Bands:
    if isinstance(image, np.ndarray):
        return _ArrayBands(image)
    if isinstance(image, str | os.PathLike):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"No image file at {path}: pass the path of the slide's H&E image.")
        from storm._wsi_reader import is_whole_slide

        if path.suffix.lower() == ".npy":
            return _NpyBands(path)
        return _SlideBands(path) if is_whole_slide(path) else _PILBands(path)
    from storm.io import LazyImage

    if isinstance(image, LazyImage):
        return _PILBands(image.path)
    raise ValueError(
        f"virtual_st needs an AnnData, an image path, a storm.io.LazyImage or a uint8 RGB array, got "
        f"{type(image).__name__}."
    )


def _from_adata(adata: AnnData, library_id: str | None, mpp: float | None) -> tuple[_Bands, str, float | None]:
    spatial = adata.uns.get("spatial") or {}
    if library_id is None:
        if len(spatial) != 1:
            raise ValueError(
                f"`adata.uns['spatial']` has {len(spatial)} slides ({list(spatial)[:5]}): pass `library_id=` to say "
                "which slide to tile."
            )
        library_id = next(iter(spatial))
    if library_id not in spatial:
        raise ValueError(f"library_id {library_id!r} is not in `adata.uns['spatial']` ({list(spatial)[:5]}).")
    entry = spatial[library_id] or {}
    path = (entry.get("metadata") or {}).get("fullres_path")
    if not path:
        raise ValueError(
            f"Slide {library_id!r} has no full-resolution image: virtual_st tiles the tissue at full resolution. "
            "Record its path in `adata.uns['spatial'][library_id]['metadata']['fullres_path']`, or pass the image "
            "(a path or an array) with `microns_per_pixel=`."
        )
    if mpp is None:
        mpp = (entry.get("scalefactors") or {}).get("microns_per_pixel")
    if mpp is None and adata.n_obs >= 2 and "spatial" in adata.obsm:
        from storm.pp._scale import slide_scale
        from storm.pp._validate import check_spatial

        mpp = slide_scale(adata, library_id, np.arange(adata.n_obs), check_spatial(adata)).microns_per_pixel
    return _open(path), str(library_id), mpp


# ------------------------------------------------------------------------------------------------------- tissue
def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in [0, 1] (maximal between-class variance)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        mu0 = m0 / w0
        mu1 = (m0[-1] - m0) / w1
        between = w0 * w1 * (mu0 - mu1) ** 2
    between = np.nan_to_num(between[:-1], nan=-1.0)
    return float(edges[1:][int(np.argmax(between))]) if between.max() > 0 else 1.0


def tissue_mask(
    thumbnail: np.ndarray, threshold: float | None = None, *, smooth_px: float = 0.0
) -> tuple[np.ndarray, float]:
    """Tissue pixels of an H&E thumbnail: smoothed colour saturation above ``threshold`` (Otsu's when ``None``).

    Stained tissue is coloured (pink/purple), bare glass is white or grey, so saturation ``(max - min) / max`` of
    RGB separates them. A box filter of ``smooth_px`` first fills the pale gaps inside tissue (loose stroma, fat
    between stained septa). A floor of ``MIN_SATURATION`` keeps an empty slide from being split into two classes of
    noise.

    Returns
    -------
    tuple
        Bool mask of the thumbnail's shape, and the threshold used.
    """
    from scipy.ndimage import uniform_filter

    rgb = thumbnail.astype(np.float32)
    hi, lo = rgb.max(axis=2), rgb.min(axis=2)
    sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1), 0.0).astype(np.float32)
    if smooth_px >= 2:
        sat = uniform_filter(sat, size=round(smooth_px), mode="nearest")
    thr = _otsu(sat.ravel()) if threshold is None else float(threshold)
    thr = max(thr, MIN_SATURATION) if threshold is None else thr
    return sat > thr, thr


def _box_fraction(mask: np.ndarray, x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray) -> np.ndarray:
    """Mean of ``mask`` over boxes [y0, y1) × [x0, x1) (integer thumbnail coordinates), by an integral image."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    integral[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    h, w = mask.shape
    x0, x1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
    y0, y1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
    x1, y1 = np.maximum(x1, x0 + 1), np.maximum(y1, y0 + 1)
    x1, y1 = np.minimum(x1, w), np.minimum(y1, h)
    total = integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]
    area = np.maximum((y1 - y0) * (x1 - x0), 1)
    return total / area


# ------------------------------------------------------------------------------------------------------ the tool
def virtual_st(
    image_or_adata: AnnData | str | os.PathLike | np.ndarray,
    head: Any,
    *,
    model: Any = None,
    microns_per_pixel: float | None = None,
    library_id: str | None = None,
    tile_um: float = 55.0,
    tissue_threshold: float | None = None,
    min_tissue_fraction: float = 0.5,
    batch_size: int = 256,
    band_tiles: int = 8,
    embedding_key: str | None = None,
    table_key: str | None = None,
    image_key: str | None = None,
    key_added: str = "virtual_st",
    accelerator: str | torch.device = "auto",
    progress: bool = True,
) -> AnnData:
    """Predict expression over a whole slide: detect tissue, tile it at ``tile_um``, predict every tile (streamed).

    Parameters
    ----------
    image_or_adata
        An AnnData whose ``uns['spatial'][library_id]['metadata']['fullres_path']`` names the full-resolution H&E
        (scale from ``scalefactors['microns_per_pixel']``, else fitted from its spots), such as
        :func:`storm.io.read_wsi` returns; or the image itself: a file path (a whole-slide image read tile by tile,
        with its own µm per pixel; JPEG/PNG/small TIFF via PIL; or a ``.npy`` uint8 ``(height, width, 3)`` array read
        band by band), a :class:`storm.io.LazyImage` or a uint8 RGB array (then ``microns_per_pixel`` is required).
        Not modified. Or a :class:`spatialdata.SpatialData`: its image element is tiled (read lazily, band by band;
        µm per pixel from the table's slide record and the elements' transformations, or ``microns_per_pixel``) and
        the tiles are added to it as the table ``key_added`` and the circles ``f"{key_added}_tiles"``.
    head
        A trained :class:`storm.nn.ExpressionHead` (:func:`storm.tl.train_expression_head`).
    model
        The :class:`storm.models.StormModel` the head was trained on; default the embedded storm-mini.
    microns_per_pixel
        µm per full-resolution pixel of the image (overrides the AnnData's and a whole-slide file's own). For a
        downscaled copy of a slide, the original value times the downscaling factor: tiles then cover the same tissue.
    library_id
        Which slide of an AnnData (needed when ``uns['spatial']`` holds several); the id of the result otherwise.
    tile_um
        Tile side and grid pitch in µm (the paper: 55 µm, a Visium spot).
    tissue_threshold
        Colour saturation above which a pixel is tissue; ``None``: Otsu's threshold on the thumbnail (at least
        ``0.05``).
    min_tissue_fraction
        Keep tiles whose footprint is at least this fraction tissue.
    batch_size
        Tiles per forward pass.
    band_tiles
        Tile rows read and encoded per band (memory: one band of the image, ``band_tiles · tile`` pixels high).
    embedding_key
        Also keep each tile's embedding, the features the head's gene readout reads, in ``obsm[embedding_key]``: the
        centre token of its window of tiles (the STORM model in H&E mode for a ``"frozen"`` head; the head's own
        spatial transformer for a ``"spatial"`` one). ``None``: do not keep it.
    table_key, image_key
        SpatialData only: which table (for the scale) and image element (default: the only one).
    key_added
        SpatialData only: name of the table added to it (the tile circles, with the image's transformations, are the
        shapes element ``f"{key_added}_tiles"``).
    accelerator
        ``"auto"``, ``"cpu"``, ``"cuda"`` or a ``torch.device``.
    progress
        Show progress bars.

    Returns
    -------
    AnnData
        One observation per tissue tile, named ``{library_id}_tile_{row}_{col}``: ``X`` float32 predicted ``log1p``
        normalised expression; ``var`` the head's genes with ``var['val_pearson']``; ``obs['array_row']``,
        ``obs['array_col']`` (tile grid), ``obs['tissue_fraction']``, ``obs['library_id']``; ``obsm['spatial']`` tile
        centres (x, y) in full-resolution pixels; ``obsm[embedding_key]`` where asked; ``uns['spatial'][library_id]``
        with ``images['hires']`` (the thumbnail), ``scalefactors`` (``tissue_hires_scalef``, ``microns_per_pixel``,
        ``spot_diameter_fullres`` = the tile side) and ``metadata`` (``platform='tiles'``, ``fullres_shape``,
        ``fullres_path`` where there is a file); ``uns['virtual_st']``
        with ``params`` (``tile_um``, ``tissue_threshold``, ``min_tissue_fraction``, ``context_step_tiles``,
        ``encoder``, ``features``, ``stain_normalized``, ``level_downsample``: full-resolution px per px of the pyramid
        level read, 1 for plain images) and ``timing``. Ready for :func:`storm.pl.expression_maps` and
        :func:`storm.pl.spatial`.

    Raises
    ------
    FileNotFoundError
        The image file does not exist.
    ValueError
        No image, no scale, a head of another encoder, an image that is not RGB, or no tissue found (the message
        says how to lower the threshold).

    Notes
    -----
    Each tile is encoded like a spot: its ``size_um`` patch (the model's) through the image encoder, then the
    spatial transformer over a window of tiles. The window's step is the neighbour spacing of the spots the head was
    trained on (``head.setup['context_pitch_um']``, e.g. 200 µm for legacy ST, 100 µm for Visium), rounded to whole
    tiles, so tiles see the context their head learned from. A head trained with ``stain_norm=True`` has its
    tiles Macenko-normalised to its stain target, from the slide's own profile fitted on 256 of its tiles (one
    extra read of those tiles' bands).
    """
    from storm.models._model import resolve_device
    from storm.nn import BatchKeys, predict_with_head
    from storm.pp._windows import _grid_offsets

    start = start_timer()
    if not 0 < tile_um < 10_000:
        raise ValueError(f"tile_um must be a positive size in µm, got {tile_um}.")
    if not 0 <= min_tissue_fraction <= 1:
        raise ValueError(f"min_tissue_fraction must be in [0, 1], got {min_tissue_fraction}.")
    spatial = is_spatial_head(head)  # a spatial head carries its own tower and transformer: no model needed
    if spatial:
        check_record(head)
    else:
        model = resolve_model(model)
        check_head(head, model)
    from storm.tl._spatialdata import add_tiles, is_spatialdata, slide_of_spatialdata

    sdata = image_or_adata if is_spatialdata(image_or_adata) else None
    if isinstance(image_or_adata, AnnData):
        reader, library_id, mpp = _from_adata(image_or_adata, library_id, microns_per_pixel)
    elif sdata is not None:
        pixels, mpp, lib, sdata_info = slide_of_spatialdata(
            sdata, table_key=table_key, image_key=image_key, microns_per_pixel=microns_per_pixel, key_added=key_added
        )
        reader, library_id = _ArrayBands(pixels), library_id or lib or sdata_info["image_key"]
    else:
        reader, mpp = _open(image_or_adata), microns_per_pixel
        library_id = library_id or (Path(reader.path).stem if reader.path else "slide")
    if mpp is None:
        mpp = reader.microns_per_pixel  # a whole-slide file's own metadata
    if mpp is None or not np.isfinite(mpp) or mpp <= 0:
        reader.close()
        raise ValueError(
            f"No physical scale for the image: pass microns_per_pixel= (µm per pixel; got {mpp!r}). HER2ST and "
            "Visium full-resolution scans are about 0.3–0.8 µm/px."
        )
    # a whole-slide image is read at its pyramid level nearest the model's patch resolution; below, pixels are the
    # level's (ds full-resolution px each) until the tiles' positions are written back in full-resolution pixels
    mpp_full = float(mpp)
    finest_um_per_px = (
        min(head.setup["scales_um"]) / int(head.setup["patch_px"])
        if spatial
        else model.config.size_um / model.config.patch_px
    )
    reader.use_downsample(finest_um_per_px / mpp_full)
    ds = float(reader.downsample)
    mpp = mpp_full * ds
    height, width = reader.shape
    pitch = tile_um / mpp
    sizes_um = [float(v) for v in head.setup["scales_um"]] if spatial else [float(model.config.size_um)]
    sides = [v / mpp for v in sizes_um]
    n_rows, n_cols = int(height // pitch), int(width // pitch)
    if n_rows < 1 or n_cols < 1:
        reader.close()
        raise ValueError(f"The image ({width}×{height} px at {mpp:.3g} µm/px) is smaller than one {tile_um:g}-µm tile.")

    thumb, sf = reader.thumbnail(THUMBNAIL_SIDE)
    mask, thr = tissue_mask(thumb, tissue_threshold, smooth_px=pitch * sf)
    rr, cc = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    frac = _box_fraction(
        mask,
        np.floor(cc * pitch * sf).astype(int),
        np.ceil((cc + 1) * pitch * sf).astype(int),
        np.floor(rr * pitch * sf).astype(int),
        np.ceil((rr + 1) * pitch * sf).astype(int),
    )
    keep = frac >= min_tissue_fraction if min_tissue_fraction > 0 else frac > 0
    if not keep.any():
        reader.close()
        raise ValueError(
            f"No tissue found: no {tile_um:g}-µm tile is ≥ {min_tissue_fraction:.0%} tissue (saturation threshold "
            f"{thr:.3f}, {mask.mean():.1%} of the thumbnail above it). Check that this is an H&E image; otherwise "
            "lower tissue_threshold= or min_tissue_fraction=."
        )
    rr, cc, frac = rr[keep], cc[keep], frac[keep]
    n = len(rr)
    centres = np.stack([(cc + 0.5) * pitch, (rr + 0.5) * pitch], axis=1)  # continuous (x, y)
    logger.info(
        f"virtual_st: {width}×{height} px at {mpp:.3f} µm/px"
        f"{f' (a pyramid level, downsample {ds:.3g})' if ds != 1 else ''}; {n:,} tissue tiles of {tile_um:g} µm "
        f"({pitch:.1f} px) on a {n_cols}×{n_rows} grid (saturation threshold {thr:.3f})"
    )

    device = torch.device("cpu") if spatial else resolve_device(accelerator)
    module = head if spatial else model.module.to(device)
    was_training = module.training
    module.eval()
    names = [f["name"] for f in head.features]
    px = int(head.setup["patch_px"]) if spatial else model.config.patch_px
    feat_dim = len(sizes_um) * head.tower.out_dim if spatial else int(module.image_dim)
    feat = np.zeros((n, feat_dim), dtype=np.float32)
    stain = stain_featurizer().to(device) if "stain" in names else None
    stain_feat = np.zeros((n, stain.out_dim), dtype=np.float32) if stain is not None else None
    margin = max(0.0, max(sides) / 2 - pitch / 2) + 2
    stain_target = head_stain_target(head)
    from storm._patch_crop import crop_patches
    from storm.pp import fit_stain_profile, normalize_stain
    from storm.pp._stain_profile import N_PATCHES, sample_rows

    bounds = np.searchsorted(rr, np.arange(0, n_rows + band_tiles, band_tiles))
    bands = [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1) if bounds[i + 1] > bounds[i]]

    def tile_patches(selected: np.ndarray | None = None, desc: str | None = None):
        """Yield (tile indices, uint8 patches of each size), band by band (tiles sorted by row: a band is a slice)."""
        for b0, b1 in tqdm(bands, desc=desc, unit="band", disable=not progress or desc is None):
            idx = np.arange(b0, b1) if selected is None else selected[(selected >= b0) & (selected < b1)]
            if not len(idx):
                continue
            y0 = max(0, int(np.floor(rr[idx[0]] * pitch - margin)))
            y1 = min(height, int(np.ceil((rr[idx[-1]] + 1) * pitch + margin)))
            if reader.by_region:  # whole slide: one region per batch of tiles, column by column
                idx = idx[np.argsort(cc[idx], kind="stable")]
                for s0 in range(0, len(idx), batch_size):
                    part = idx[s0 : s0 + batch_size]
                    x0 = max(0, int(np.floor(cc[part].min() * pitch - margin)))
                    x1 = min(width, int(np.ceil((cc[part].max() + 1) * pitch + margin)))
                    region, local = reader.read(y0, y1, x0, x1), centres[part] - np.array([x0, y0])
                    yield part, [crop_patches(region, local, side, px) for side in sides]
                continue
            band = reader.read(y0, y1)
            for s0 in range(0, len(idx), batch_size):
                part = idx[s0 : s0 + batch_size]
                local = centres[part] - np.array([0.0, y0])
                yield part, [crop_patches(band, local, side, px) for side in sides]
            del band

    try:
        source = None
        if stain_target is not None:  # pass 0: the slide's own stains, from a sample of its tiles
            sample = [p[0] for _, p in tile_patches(sample_rows(n, N_PATCHES, 0))]
            source = fit_stain_profile(np.concatenate(sample))
        with torch.inference_mode():
            # pass 1: image features, band by band
            for part, per_size in tile_patches(desc="virtual_st: encode tiles"):
                if source is not None:
                    per_size = [normalize_stain(p, source, stain_target) for p in per_size]
                ts = [torch.from_numpy(p).permute(0, 3, 1, 2).to(device) for p in per_size]
                if spatial:
                    feat[part] = head.tokens(torch.stack([head.bottom(t) for t in ts], dim=1)).numpy()
                    continue
                feat[part] = module.image_features(ts[0]).float().cpu().numpy()
                if stain is not None:
                    stain_feat[part] = stain(ts[0]).cpu().numpy()
            reader.close()
            # pass 2: windows of tiles through the spatial transformer, then the head
            grid = np.full((n_rows, n_cols), -1, dtype=np.int64)
            grid[rr, cc] = np.arange(n)
            pitch_um = float(head.setup.get("context_pitch_um", float("nan")))
            step = max(1, round(pitch_um / tile_um)) if np.isfinite(pitch_um) else 1
            window = int(head.setup["window"]) if spatial else int(model.config.window)
            window_size = head.arch["window_size"] if spatial else module.config.window_size
            offsets = _grid_offsets("st", window)[:window_size]
            projected = head.proj(torch.from_numpy(feat)) if spatial else None
            pred = np.zeros((n, len(head.genes)), dtype=np.float32)
            embedding = None  # allocated at the first batch, at the embedding's width
            for s0 in tqdm(range(0, n, batch_size), desc="virtual_st: predict", unit="batch", disable=not progress):
                sl = slice(s0, min(n, s0 + batch_size))
                nr = rr[sl, None] + offsets[None, :, 0].astype(np.int64) * step
                nc = cc[sl, None] + offsets[None, :, 1].astype(np.int64) * step
                inside = (nr >= 0) & (nr < n_rows) & (nc >= 0) & (nc < n_cols)
                index = np.where(inside, grid[np.clip(nr, 0, n_rows - 1), np.clip(nc, 0, n_cols - 1)], -1)
                valid = index >= 0
                off = np.stack([(nc - cc[sl, None]) * pitch * mpp, (nr - rr[sl, None]) * pitch * mpp], axis=-1)
                off = np.where(valid[..., None], off, 0.0).astype(np.float32)
                valid_t = torch.from_numpy(valid).to(device)
                tokens = None
                if spatial:
                    index_t, off_t = torch.from_numpy(index), torch.from_numpy(off)
                    tokens = head.window_embedding(projected, index_t, off_t)
                    pred[sl] = head.out(tokens).numpy()
                else:
                    img = torch.from_numpy(feat[np.maximum(index, 0)]).to(device) * valid_t.unsqueeze(-1)
                    batch = {BatchKeys.OFFSETS: torch.from_numpy(off).to(device), BatchKeys.POS_MASK: valid_t}
                    batch[BatchKeys.IMAGE] = img
                    if "storm" in names or embedding_key:
                        tokens = module.embed(batch, use_image=True, use_expression=False).float().cpu()
                    blocks = [tokens if name == "storm" else torch.from_numpy(stain_feat[sl]) for name in names]
                    pred[sl] = predict_with_head(head, torch.cat(blocks, dim=1), device=device).numpy()
                if embedding_key:
                    if embedding is None:
                        embedding = np.zeros((n, tokens.shape[1]), dtype=np.float32)
                    embedding[sl] = tokens.float().numpy()
    finally:
        reader.close()
        module.train(was_training)

    obs = pd.DataFrame(
        {
            "array_row": rr.astype(np.int64),
            "array_col": cc.astype(np.int64),
            "tissue_fraction": frac.astype(np.float32),
            "library_id": pd.Categorical([library_id] * n),
        },
        # the slide in the name: tiles of several slides stay distinct when their AnnData are concatenated
        index=pd.Index([f"{library_id}_tile_{r}_{c}" for r, c in zip(rr, cc, strict=True)]),
    )
    out = AnnData(X=pred, obs=obs, var=var_frame(head))
    # continuous level coordinate → full-resolution pixel index, the obsm['spatial'] convention
    out.obsm["spatial"] = centres * ds - 0.5
    if embedding is not None:
        out.obsm[embedding_key] = embedding
    base_h, base_w = reader.base_shape
    metadata = {"platform": "tiles", "fullres_shape": [int(base_h), int(base_w)], "source": "storm.tl.virtual_st"}
    if reader.path:
        metadata["fullres_path"] = str(reader.path)
    out.uns["spatial"] = {
        library_id: {
            "images": {"hires": thumb},
            "scalefactors": {
                "tissue_hires_scalef": float(sf) / ds,
                "microns_per_pixel": mpp_full,
                "spot_diameter_fullres": float(pitch) * ds,
            },
            "metadata": metadata,
        }
    }
    seconds = time.perf_counter() - start
    out.uns["virtual_st"] = {
        "params": {
            "tile_um": float(tile_um),
            "tissue_threshold": float(thr),
            "min_tissue_fraction": float(min_tissue_fraction),
            "context_step_tiles": int(step),
            "encoder": head.encoder.get("name"),
            "features": names,
            "stain_normalized": stain_target is not None,
            "level_downsample": ds,
        },
        "timing": {"seconds": seconds, "tiles_per_second": n / max(seconds, 1e-9)},
    }
    logger.info(f"virtual_st: finished ({elapsed(start)}): {n:,} tiles × {out.n_vars:,} genes")
    if sdata is not None:
        add_tiles(sdata, out, sdata_info, key_added)
    return out
