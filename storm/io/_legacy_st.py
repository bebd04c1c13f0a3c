"""Read legacy Spatial Transcriptomics (ST, Ståhl et al. 2016) slides: a counts table plus a spot selection file."""

from __future__ import annotations

import gzip
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from storm._logging import logger

from ._image import LazyImage
from ._spatial import attach_fullres, check_fit, fit_pixels_per_micron, require_file, spatial_entry, spot_anndata

# Legacy ST arrays: 100 µm spots on a 200 µm centre-to-centre square grid.
ST_PITCH_UM = 200.0
ST_SPOT_DIAMETER_UM = 100.0
_SPOT_KEY = re.compile(r"^(\d+(?:\.\d+)?)x(\d+(?:\.\d+)?)$")
_SELECTION_COLUMNS = ("x", "y", "pixel_x", "pixel_y")


def _header(path: Path) -> list[str]:
    # Read the header ourselves: pandas renames repeated column names (GENE.1), which could collide with real genes.
    with open(path, "rb") as raw:
        gz = raw.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rt") if gz else open(path) as fh:
        return fh.readline().rstrip("\r\n").split("\t")


def _spot_xy(keys: pd.Index) -> np.ndarray | None:
    """Parse ``"<x>x<y>"`` spot names to integer (x, y); None if the names are not spot names."""
    matches = [_SPOT_KEY.match(str(k)) for k in keys]
    if not matches or not all(matches):
        return None
    return np.array([[round(float(m.group(1))), round(float(m.group(2)))] for m in matches], dtype=np.int64)


def read_st_counts(path: str | os.PathLike) -> pd.DataFrame:
    """Read a legacy ST counts table as spots × genes, whichever way round it is stored.

    Spots are named ``"<x>x<y>"`` (array column x, array row y); genes are the other axis.
    """
    path = require_file(path, "ST counts table", "Expected a tab-separated file with spots named '<x>x<y>'.")
    header = _header(path)
    table = pd.read_csv(path, sep="\t", header=None, skiprows=1, index_col=0)
    if table.shape[1] != len(header) - 1:
        raise ValueError(
            f"{path}: the header has {len(header) - 1} columns after the first, the rows {table.shape[1]}."
        )
    table.columns = header[1:]
    table.index = table.index.astype(str)
    table.index.name = None  # pandas names it 0 (the column number), which h5ad cannot store
    if _spot_xy(table.index) is None:
        if _spot_xy(pd.Index(table.columns)) is None:
            raise ValueError(
                f"{path}: neither the row nor the column names are ST spot names ('<x>x<y>', e.g. '10x21'). "
                "Pass the counts table written by the ST pipeline."
            )
        table = table.T
    return table


def read_st_selection(path: str | os.PathLike) -> pd.DataFrame:
    """Read an ST Spot Detector selection file: array ``x``, ``y`` → full-resolution ``pixel_x``, ``pixel_y``.

    Rows with ``selected == 0`` (spots the detector left out, i.e. not under tissue) are dropped. The index is
    ``"<x>x<y>"`` of the integer array position.
    """
    path = require_file(path, "ST spot selection file", "The ST Spot Detector writes <section>_selection.tsv.")
    table = pd.read_csv(path, sep="\t")
    missing = [c for c in _SELECTION_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} lacks the columns {missing} of an ST spot selection file (x, y, pixel_x, pixel_y).")
    if "selected" in table:
        table = table[table["selected"] == 1]
    table = table.assign(x=table["x"].round().astype(np.int64), y=table["y"].round().astype(np.int64))
    table.index = table["x"].astype(str) + "x" + table["y"].astype(str)
    if table.index.has_duplicates:
        raise ValueError(f"{path} lists some array positions twice (e.g. {table.index[table.index.duplicated()][0]}).")
    return table


def read_legacy_st(
    counts: str | os.PathLike,
    spots: str | os.PathLike,
    image: str | os.PathLike | None = None,
    *,
    library_id: str,
    source: str | None = None,
    thumbnail_side: int = 2000,
) -> AnnData:
    """Read one legacy Spatial Transcriptomics section into storm's AnnData layout.

    Parameters
    ----------
    counts
        Tab-separated counts table (``.tsv`` or ``.tsv.gz``), spots × genes or genes × spots, spots named
        ``"<x>x<y>"`` by their array position.
    spots
        Spot selection file of the ST Spot Detector: columns ``x``, ``y`` (array), ``pixel_x``, ``pixel_y``
        (full-resolution image pixels), optionally ``new_x``, ``new_y`` (sub-grid array positions) and ``selected``.
    image
        The full-resolution H&E image of the section. It is never decoded in full: its path and shape are recorded
        and a thumbnail for plotting is decoded at reduced scale.
    library_id
        Key of the section in ``uns['spatial']`` and value of ``obs['library_id']``.
    source
        Text recorded in ``uns['spatial'][library_id]['metadata']['source']`` (default: the counts path).
    thumbnail_side
        Longer side in pixels of the ``'hires'`` thumbnail made from ``image``.

    Returns
    -------
    AnnData with

    - ``.X``: raw counts, float32 CSR (spots × genes); ``var_names``: the table's gene names, made unique;
    - ``obs_names``: ``"<x>x<y>"``; ``obs['array_row']`` = y, ``obs['array_col']`` = x (int);
      ``obs['library_id']`` (categorical);
    - ``obsm['spatial']``: float64 (``pixel_x``, ``pixel_y``) in full-resolution pixels;
    - ``uns['spatial'][library_id]``: ``images['hires']`` (uint8 RGB thumbnail, with ``image``); ``scalefactors``
      ``microns_per_pixel`` (200 µm / fitted pitch), ``spot_pitch_fullres`` (the pitch in pixels),
      ``spot_diameter_fullres`` (100 µm in pixels), ``tissue_hires_scalef`` (with ``image``); ``metadata``
      ``platform='st'``, ``source``, and with ``image`` ``fullres_path`` and ``fullres_shape`` ``[height, width]``.

    Raises
    ------
    FileNotFoundError
        A named file does not exist.
    ValueError
        Files that are not ST counts/selection tables, an unreadable image, or spots outside the image.

    Notes
    -----
    Spots of the counts table absent from the selection file have no pixel position (the detector did not place
    them under tissue): they are dropped, with a warning giving their number. The pitch in pixels is fitted per
    section by least squares of pixel against array position (``new_x``/``new_y`` where present: the pixel positions
    are an exact affine map of them), because scans differ in resolution.

    References
    ----------
    Ståhl PL et al. Visualization and analysis of gene expression in tissue sections by spatial transcriptomics.
    Science 353, 78-82 (2016).
    """
    # Check every input before parsing the (large) counts table: a bad image path should fail at once.
    require_file(counts, "ST counts table", "Expected a tab-separated file with spots named '<x>x<y>'.")
    lazy = None
    if image is not None:
        lazy = LazyImage(require_file(image, "H&E image", "Pass image=None to read the section without one."))
    selection = read_st_selection(spots)
    table = read_st_counts(counts)

    spot_xy = _spot_xy(table.index)
    keys = pd.Index([f"{x}x{y}" for x, y in spot_xy])
    placed = keys.isin(selection.index)
    if not placed.all():
        logger.warning(
            "%s: %d of %d spots of the counts table are not selected in the spot selection file (no pixel position, "
            "not under tissue): dropped (e.g. %s).",
            library_id,
            (~placed).sum(),
            len(keys),
            list(table.index[~placed][:3]),
        )
    table, keys = table[placed], keys[placed]
    sel = selection.loc[keys]

    grid_cols = ["new_x", "new_y"] if {"new_x", "new_y"} <= set(selection.columns) else ["x", "y"]
    fit = fit_pixels_per_micron(
        selection[grid_cols].to_numpy(float) * ST_PITCH_UM, selection[["pixel_x", "pixel_y"]].to_numpy(float)
    )
    check_fit(fit, ST_PITCH_UM, library_id)  # a square grid: swapping its rows and columns is a mere reflection
    pitch_px = ST_PITCH_UM * fit.px_per_um
    mpp = 1.0 / fit.px_per_um
    entry = spatial_entry(
        platform="st",
        source=source or str(Path(counts)),
        scalefactors={
            "microns_per_pixel": mpp,
            "spot_pitch_fullres": pitch_px,
            "spot_diameter_fullres": ST_SPOT_DIAMETER_UM / mpp,
        },
    )
    xy = sel[["pixel_x", "pixel_y"]].to_numpy(np.float64)
    if lazy is not None:
        attach_fullres(entry, lazy, xy, thumbnail=True, max_side=thumbnail_side)

    obs = pd.DataFrame(
        {"array_row": sel["y"].to_numpy(np.int64), "array_col": sel["x"].to_numpy(np.int64)},
        index=pd.Index(table.index, dtype=object),
    )
    var = pd.DataFrame(index=pd.Index(table.columns.astype(str), dtype=object))
    adata = spot_anndata(
        table.to_numpy(np.float32), obs=obs, var=var, spatial_xy=xy, library_id=library_id, entry=entry
    )
    logger.info(
        "Read ST section %r: %d spots × %d genes, pitch %.1f px = %.3f µm/px%s",
        library_id,
        adata.n_obs,
        adata.n_vars,
        pitch_px,
        mpp,
        ", full-res image recorded (not decoded)" if image is not None else "",
    )
    return adata
