"""Read NanoString/Bruker CosMx SMI flat files (expression matrix + cell metadata) into storm's AnnData layout.

Why not ``spatialdata_io.cosmx``: version 0.7.1 requires ``*_fov_positions_file.csv`` and the ``CellComposite/``
and ``CellLabels/`` image folders before it reads any table, and the flat-file exports used for analysis (such as
the small real folder storm tests on) often come without them; it also leaves the coordinates in pixels. The two
CSV files read here are what every CosMx export (legacy and AtoMx flat files) holds.

Pixel size: the global pixel coordinates are camera pixels. NanoString gives 0.12028 µm per pixel for the
commercial instrument (``ImPixel_nm: 120.280945`` in a run's configuration) and 0.18 µm for the early "Dash"
prototype that produced the 2022 NSCLC release. The mouse-brain run in storm's mirror (``Run5642_S3_Quarter``) has
transcripts at local FOV positions up to 4,243 × 4,102 px: beyond the prototype's 5,472 × 3,648 px frame in y, and
within the commercial 4,256 × 4,256 px one, so 0.12028 µm per pixel (the default) is the one that fits it; pass
``pixel_size_um`` for other runs (the run's ``ImPixel_nm`` / 1000).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from storm._logging import logger
from storm.io._xenium import cell_anndata, find_one

#: µm per pixel of the commercial CosMx SMI camera (NanoString: ``ImPixel_nm: 120.280945``).
COSMX_PIXEL_SIZE_UM = 0.12028
_EXPR = ("*_exprMat_file.csv", "*_exprMat_file.csv.gz", "*exprMat_file.csv*")
_ADVICE = "Pass the folder of a CosMx flat-file export (or the *_exprMat_file.csv file itself)."
_KEYS = ("fov", "cell_ID")


def _cosmx_files(path: Path) -> tuple[Path, Path, str]:
    """(expression matrix, metadata, run prefix) for a folder or an ``*_exprMat_file.csv`` path."""
    if not path.exists():
        raise FileNotFoundError(f"No CosMx export at {path}. {_ADVICE}")
    expr = path if path.is_file() else find_one(path, _EXPR, "CosMx expression matrix (*_exprMat_file.csv)", _ADVICE)
    prefix = expr.name.split("_exprMat_file")[0]
    suffix = expr.name.split("_exprMat_file")[1]
    meta = expr.with_name(f"{prefix}_metadata_file{suffix}")
    if not meta.is_file():
        raise FileNotFoundError(
            f"No cell metadata file {meta.name} beside {expr.name} in {expr.parent}: it holds the cell positions. "
            "Export the flat files together."
        )
    return expr, meta, prefix


def _cell_key(table: pd.DataFrame, where: Path, *, use_cell: bool) -> pd.Index:
    """Cell ids: AtoMx's ``cell`` column (``use_cell``), else ``<fov>_<cell_ID>`` (cell ids restart in every FOV)."""
    if use_cell:
        return pd.Index(table["cell"].astype(str))
    missing = [k for k in _KEYS if k not in table]
    if missing:
        raise ValueError(f"{where.name} lacks the columns {missing} that identify a cell.")
    return pd.Index(table["fov"].astype(str) + "_" + table["cell_ID"].astype(str))


def read_cosmx(
    path: str | os.PathLike,
    *,
    library_id: str | None = None,
    fov_offsets: bool = True,
    pixel_size_um: float = COSMX_PIXEL_SIZE_UM,
) -> AnnData:
    """Read CosMx SMI flat files into storm's AnnData layout (one row per segmented cell).

    Parameters
    ----------
    path
        The export folder, holding one ``<run>_exprMat_file.csv`` and ``<run>_metadata_file.csv`` (``.gz`` too),
        or the path of the expression matrix.
    library_id
        Key of the slide in ``uns['spatial']`` and value of ``obs['library_id']``. Default: the run prefix of the
        file names (e.g. ``"Run5642_S3_Quarter"``).
    fov_offsets
        Place cells in the slide's frame (``CenterX_global_px``/``CenterY_global_px``, i.e. FOV offsets applied;
        AtoMx's ``x_slide_mm``/``y_slide_mm`` where present). ``False`` keeps each FOV's local pixels
        (``CenterX_local_px``/``CenterY_local_px``), where FOVs overlap: only for per-FOV analyses.
    pixel_size_um
        µm per camera pixel: 0.12028 (commercial CosMx, default) or 0.18 (the 2022 prototype data); see the module
        notes.

    Returns
    -------
    AnnData with

    - ``.X``: counts of the genes, float32 CSR; ``var_names`` gene symbols (as the panel names them, e.g.
      ``"Aph1b/c"``);
    - ``obsm['controls']``: float32 DataFrame of the negative probes (``NegPrb*``) and system controls
      (``SystemControl*``, ``FalseCode*``), never among ``var_names``; ``obs['control_counts']`` their sum;
    - ``obs``: the metadata file's columns (``fov``, ``cell_ID``, ``Area``, ``Width``, ``Height``, stain
      intensities, …; pixel units as written), ``obs['area_um2']`` (``Area`` × pixel area) where ``Area`` exists,
      ``obs['library_id']``; obs names ``<fov>_<cell_ID>`` (or AtoMx's ``cell`` ids);
    - ``obsm['spatial']``: float64 (x, y) in µm;
    - ``uns['spatial'][library_id]``: ``scalefactors['microns_per_pixel'] = 1``; ``metadata``: ``platform='cosmx'``,
      ``source``, ``pixel_size_um``, ``coordinates`` (the columns used), ``unassigned_counts`` (transcripts of the
      ``cell_ID == 0`` rows, outside any cell: dropped).

    Raises
    ------
    FileNotFoundError
        The folder, expression matrix or metadata file is missing.
    ValueError
        Several runs in one folder, cells without metadata, or no coordinate columns.

    References
    ----------
    He S et al. High-plex imaging of RNA and proteins at subcellular resolution in fixed tissue by spatial molecular
    imaging. Nat Biotechnol 40, 1794-1806 (2022).
    """
    if pixel_size_um <= 0:
        raise ValueError(f"pixel_size_um must be positive, got {pixel_size_um}.")
    expr_path, meta_path, prefix = _cosmx_files(Path(path).expanduser())
    expr = pd.read_csv(expr_path)
    meta = pd.read_csv(meta_path)
    use_cell = "cell" in expr and "cell" in meta  # only when both files carry it, or the keys would differ
    expr.index = _cell_key(expr, expr_path, use_cell=use_cell)
    meta.index = _cell_key(meta, meta_path, use_cell=use_cell)

    features = [c for c in expr.columns if c not in (*_KEYS, "cell", "cell_id")]
    # cell_ID 0 collects, per FOV, the transcripts outside every segmented cell: not a cell
    outside = expr["cell_ID"].to_numpy() == 0 if "cell_ID" in expr else np.zeros(len(expr), bool)
    unassigned = int(expr.loc[outside, features].to_numpy().sum())
    expr = expr.loc[~outside]
    missing = expr.index.difference(meta.index)
    if len(missing):
        raise ValueError(
            f"{len(missing)} cells of {expr_path.name} have no row in {meta_path.name} (e.g. {list(missing[:3])}): "
            "the files come from different exports."
        )
    meta = meta.loc[expr.index]

    if fov_offsets and {"x_slide_mm", "y_slide_mm"} <= set(meta.columns):
        cols, scale = ("x_slide_mm", "y_slide_mm"), 1000.0
    elif fov_offsets:
        cols, scale = ("CenterX_global_px", "CenterY_global_px"), pixel_size_um
    else:
        cols, scale = ("CenterX_local_px", "CenterY_local_px"), pixel_size_um
        if meta["fov"].nunique() > 1:
            logger.warning(
                "fov_offsets=False: cells of %d FOVs share one local frame and overlap.", meta["fov"].nunique()
            )
    if not set(cols) <= set(meta.columns):
        raise ValueError(
            f"{meta_path.name} has no {' / '.join(cols)} columns"
            + (": pass fov_offsets=False to use each FOV's local pixels." if fov_offsets else ".")
        )
    xy = meta[list(cols)].to_numpy(np.float64) * scale
    obs = meta.drop(columns=[c for c in (*cols, "cell") if c in meta])
    if "Area" in obs and "area_um2" not in obs:
        obs["area_um2"] = obs["Area"].to_numpy(np.float64) * pixel_size_um**2

    library_id = library_id or prefix
    adata = cell_anndata(
        expr[features].to_numpy(np.float32),
        features,
        obs=obs,
        xy_um=xy,
        library_id=library_id,
        platform="cosmx",
        source=str(expr_path.parent),
        pixel_size_um=pixel_size_um,
        metadata={"coordinates": f"{cols[0]}, {cols[1]} × {scale:g}", "unassigned_counts": unassigned},
    )
    logger.info(
        "Read CosMx run %r: %d cells × %d genes (+%d controls), %.5f µm/px; %d transcripts outside cells dropped",
        library_id,
        adata.n_obs,
        adata.n_vars,
        adata.obsm["controls"].shape[1],
        pixel_size_um,
        unassigned,
    )
    return adata
