"""Local spatial windows around each spot: the "sentence" the spatial transformer reads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy.spatial import cKDTree

from storm._logging import logger

from ._scale import GRID_PLATFORMS, slide_platform, slide_scale
from ._validate import check_libraries, check_positive, check_spatial

METHODS = ("auto", "grid", "knn")
_CHUNK = 65_536  # rows per step of the knn queries and offsets: bounds the temporaries


@dataclass(frozen=True, eq=False)  # eq on arrays would be ambiguous
class SpatialWindows:
    """Neighbourhood windows of all spots, in obs order.

    Attributes
    ----------
    index
        int64 (n_obs, W): obs row of each window position; -1 marks padding. Position 0 is the centre spot itself.
    offsets_um
        float32 (n_obs, W, 2): (x, y) of the neighbour minus that of the centre, in µm; 0 at padded positions.
    mask
        bool (n_obs, W): True where a position holds a spot (``index >= 0``).
    method
        ``"grid"``, ``"knn"``, or ``"mixed"`` when slides of one AnnData resolved differently.
    library_methods
        The method used on each slide.
    """

    index: np.ndarray
    offsets_um: np.ndarray
    mask: np.ndarray
    method: str
    library_methods: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n, w = self.index.shape
        if self.offsets_um.shape != (n, w, 2) or self.mask.shape != (n, w):
            raise ValueError("index, offsets_um and mask of a SpatialWindows must agree in shape.")

    def __len__(self) -> int:
        return self.index.shape[0]

    @property
    def window_size(self) -> int:
        """Positions per window (W)."""
        return self.index.shape[1]

    @property
    def n_valid(self) -> np.ndarray:
        """Spots per window, the centre included."""
        return self.mask.sum(axis=1)


def _grid_offsets(platform: str, size: int) -> np.ndarray:
    """(dr, dc) of the ``size``×``size`` window, centre first, then raster order; (nan, nan) for slots with no spot.

    Visium's hexagonal lattice shifts odd rows by one column unit: rows ``dr`` even take columns
    ``{-2h, …, -2, 0, 2, …, 2h}`` (h = size // 2), odd rows ``{-(2h - 1), …, 2h - 1}``, which has one column fewer.
    There is no symmetric extra column, so each odd row contributes one always-padded slot, placed at the end of the
    window (a 5×5 window: 23 spots and 2 padded slots). Legacy ST is a square grid: columns ``-h … h`` in every row.
    """
    h = size // 2
    offsets = []
    n_missing = 0
    for dr in range(-h, h + 1):
        if platform == "visium":
            dcs = range(-2 * h, 2 * h + 1, 2) if dr % 2 == 0 else range(-(2 * h - 1), 2 * h, 2)
            n_missing += size - len(dcs)
        else:
            dcs = range(-h, h + 1)
        offsets += [(dr, dc) for dc in dcs if (dr, dc) != (0, 0)]
    table = np.array([(0, 0), *offsets, *[(np.nan, np.nan)] * n_missing], dtype=np.float64)
    return table.reshape(size * size, 2)


def _grid_index(
    row: np.ndarray,
    col: np.ndarray,
    code: np.ndarray,
    eligible: np.ndarray,
    offsets: np.ndarray,
    obs_names: pd.Index,
) -> np.ndarray:
    """Neighbour obs rows of each spot for given (dr, dc) offsets, via a sorted table of (slide, row, col) keys.

    The key includes the slide, so windows never reach into another slide even where grid positions coincide.
    """
    n = len(row)
    pad = int(np.nanmax(np.abs(offsets))) + 1 if len(offsets) else 1
    r0, c0 = row.min() - pad, col.min() - pad
    n_rows = int(row.max() - r0 + pad + 1)
    n_cols = int(col.max() - c0 + pad + 1)

    def key(code_: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return (code_ * n_rows + (r - r0)) * n_cols + (c - c0)

    cand = np.flatnonzero(eligible)
    table = key(code[cand], row[cand], col[cand])
    order = np.argsort(table, kind="stable")
    table, cand = table[order], cand[order]
    dup = np.flatnonzero(table[1:] == table[:-1])
    if len(dup):
        raise ValueError(
            f"{len(np.unique(table[dup]))} grid positions hold more than one spot of the same slide (e.g. "
            f"{list(obs_names[cand[dup[:3]]])} and {list(obs_names[cand[dup[:3] + 1]])}). Remove the duplicated spots "
            "or use method='knn'."
        )
    index = np.full((n, len(offsets)), -1, dtype=np.int64)
    index[:, 0] = np.arange(n)
    for s in range(1, len(offsets)):
        dr, dc = offsets[s]
        if np.isnan(dr):
            continue
        q = key(code, row + int(dr), col + int(dc))
        pos = np.minimum(np.searchsorted(table, q), max(len(table) - 1, 0))
        if len(table):
            hit = table[pos] == q
            index[hit, s] = cand[pos[hit]]
    return index


def _knn_index(xy_um: np.ndarray, k: int) -> np.ndarray:
    """Centre plus its k nearest neighbours (by distance) within one slide; -1 where the slide has fewer spots."""
    n = len(xy_um)
    tree = cKDTree(xy_um)
    kq = min(k + 1, n)
    out = np.full((n, k + 1), -1, dtype=np.int64)
    out[:, 0] = np.arange(n)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        _, idx = tree.query(xy_um[start:stop], k=kq, workers=-1)
        idx = idx.reshape(stop - start, kq)
        own = np.arange(start, stop)
        if (idx[:, 0] == own).all():  # the usual case: each point is its own nearest neighbour
            neighbours = idx[:, 1:]
        else:
            # Duplicate positions can put another spot before the centre itself: drop the centre wherever it was
            # found and otherwise the farthest candidate, keeping distance order for the rest.
            is_self = idx == own[:, None]
            drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), kq - 1)
            keep = np.ones_like(idx, dtype=bool)
            keep[np.arange(stop - start), drop] = False
            neighbours = idx[keep].reshape(stop - start, kq - 1)
        out[start:stop, 1:kq] = neighbours
    return out


def spatial_windows(
    adata: AnnData,
    *,
    size: int = 5,
    method: str = "auto",
    k: int = 24,
    library_key: str = "library_id",
) -> SpatialWindows:
    """Build the local window of every spot: the centre spot and its spatial neighbours on the same slide.

    Parameters
    ----------
    adata
        Spots, cells or bins with ``obsm['spatial']``, ``obs[library_key]`` and ``uns['spatial'][library_id]``
        (scale factors); grid platforms also ``obs['array_row'/'array_col']``.
    size
        Window side on grid platforms (odd): 5 gives the paper's 5×5 window. ``size=1`` gives the centre alone on
        every platform (the paper's "no spatial context" ablation).
    method
        ``"grid"``: the ``size``×``size`` window on the spot array (Visium's hexagonal lattice, or legacy ST's square
        grid); ``"knn"``: the ``k`` nearest neighbours by physical distance (cells, bins, or any slide without a
        grid); ``"auto"``: ``"grid"`` on slides whose platform is ``"visium"`` or ``"st"`` and that have array
        coordinates, ``"knn"`` elsewhere, decided per slide.
    k
        Neighbours per window with ``method="knn"`` (24 gives 25 positions, as many as a 5×5 window).
    library_key
        Column of ``adata.obs`` naming each spot's slide; windows never cross slides.

    Returns
    -------
    A :class:`SpatialWindows` with ``index`` (n_obs, W), ``offsets_um`` (n_obs, W, 2), ``mask`` and ``method``. W is
    ``size**2`` for grids and ``k + 1`` for knn (the larger when slides mix both; 1 for ``size=1``). ``adata`` is not
    modified.

    Notes
    -----
    Position 0 is always the centre spot; grid windows follow in raster order (rows ``dr``, then columns ``dc``),
    knn windows by increasing distance. Grid positions with no spot (off the array, not in tissue by
    ``obs['in_tissue']``, or filtered out) are padded (-1, offset 0, mask False); on Visium, odd rows of the hexagonal
    lattice hold one spot fewer than even rows, so a 5×5 window holds at most 23 spots and its last 2 slots are always
    padding. Offsets are ``(obsm['spatial'][neighbour] - obsm['spatial'][centre]) * microns_per_pixel`` of the slide,
    i.e. measured positions, not nominal grid steps. knn uses :class:`scipy.spatial.cKDTree` per slide, queried in
    chunks: memory grows linearly with the number of cells.
    """
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}, got {method!r}.")
    check_positive(size, "size", integer=True)
    check_positive(k, "k", integer=True)
    size, k = int(size), int(k)
    if size % 2 == 0:
        raise ValueError(f"`size` must be odd (the centre spot sits in the middle), got {size}.")
    xy = check_spatial(adata)
    libs, codes = check_libraries(adata, library_key)
    if {"array_row", "array_col"} <= set(adata.obs.columns):
        rc = adata.obs[["array_row", "array_col"]].to_numpy(dtype=np.float64)
    else:
        rc = np.full((adata.n_obs, 2), np.nan)

    slide_rows = [np.flatnonzero(codes == c) for c in range(len(libs))]
    mpp = np.array([slide_scale(adata, lib, slide_rows[c], xy).microns_per_pixel for c, lib in enumerate(libs)])
    platforms = [slide_platform(adata, lib) for lib in libs]
    methods: dict[str, str] = {}
    for c, (lib, platform) in enumerate(zip(libs, platforms, strict=True)):
        has_grid = bool(np.isfinite(rc[slide_rows[c]]).all())
        grid_ok = platform in GRID_PLATFORMS and has_grid
        if method == "grid" and not grid_ok:
            need = "obs['array_row'] and obs['array_col']" if not has_grid else "platform 'visium' or 'st'"
            raise ValueError(
                f"method='grid' needs {need}; slide {lib!r} has platform {platform!r}"
                f"{'' if has_grid else ' and no array coordinates'}. Use method='knn' (or 'auto')."
            )
        methods[lib] = "grid" if (method == "grid" or (method == "auto" and grid_ok)) else "knn"

    n = adata.n_obs
    grid_codes = [c for c, lib in enumerate(libs) if methods[lib] == "grid"]
    widths = [1]
    if size > 1:
        widths += [size * size] if grid_codes else []
        widths += [k + 1] if len(grid_codes) < len(libs) else []
    width = max(widths)
    index = np.full((n, width), -1, dtype=np.int64)
    index[:, 0] = np.arange(n)

    if size > 1 and grid_codes:
        in_grid = np.isin(codes, grid_codes)
        if not np.all(rc[in_grid] == np.round(rc[in_grid])):
            raise ValueError(
                "obs['array_row'/'array_col'] must be whole numbers on grid slides (the spot's position on the array). "
                "Fix them or use method='knn'."
            )
        rc = np.where(in_grid[:, None], np.nan_to_num(rc), 0).astype(np.int64)
        eligible = in_grid.copy()
        if "in_tissue" in adata.obs:
            in_tissue = adata.obs["in_tissue"].to_numpy().astype(bool)
            eligible &= in_tissue
            empty = [libs[c] for c in grid_codes if not in_tissue[slide_rows[c]].any()]
            if empty:
                logger.warning(
                    f"spatial_windows: every spot of slide(s) {empty} has obs['in_tissue'] = 0, so every window holds "
                    "only its centre spot (spots out of tissue are never neighbours). Fix the column (1 = under "
                    "tissue), or drop it if it does not apply: `del adata.obs['in_tissue']`."
                )
        for platform in {platforms[c] for c in grid_codes}:
            on = np.isin(codes, [c for c in grid_codes if platforms[c] == platform])
            sub = np.flatnonzero(on)
            offsets = _grid_offsets(platform, size)
            sub_index = _grid_index(rc[sub, 0], rc[sub, 1], codes[sub], eligible[sub], offsets, adata.obs_names[sub])
            index[sub, : sub_index.shape[1]] = np.where(sub_index >= 0, sub[np.maximum(sub_index, 0)], -1)

    if size > 1:
        for c, lib in enumerate(libs):
            if methods[lib] != "knn":
                continue
            rows = slide_rows[c]
            local = _knn_index(xy[rows] * mpp[c], k)
            index[rows, : k + 1] = np.where(local >= 0, rows[np.maximum(local, 0)], -1)

    mask = index >= 0
    offsets_um = np.zeros((n, width, 2), dtype=np.float32)
    for start in range(0, n, _CHUNK):  # chunks: no (n, W, 2) float64 temporaries
        sl = slice(start, min(start + _CHUNK, n))
        safe = np.where(mask[sl], index[sl], np.arange(sl.start, sl.stop)[:, None])  # pads point at the centre: 0
        offsets_um[sl] = (xy[safe] - xy[sl, None, :]) * mpp[codes[sl], None, None]

    used = set(methods.values())
    resolved = used.pop() if len(used) == 1 else "mixed"
    logger.info(
        f"spatial_windows: {n:,} windows of {width} positions ({resolved}"
        f"{', centre only' if size == 1 else ''}), {mask.sum(axis=1).mean():.1f} spots on average"
    )
    return SpatialWindows(index=index, offsets_um=offsets_um, mask=mask, method=resolved, library_methods=methods)
