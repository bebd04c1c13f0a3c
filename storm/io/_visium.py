"""Read a 10x Visium Space Ranger output folder (``spatial/`` + count matrix) into storm's AnnData layout."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from storm._logging import logger

from ._spatial import (
    attach_fullres,
    check_fit,
    fit_pixels_per_micron,
    read_png,
    require_file,
    spatial_entry,
    spot_anndata,
)

POSITION_COLUMNS = ["in_tissue", "array_row", "array_col", "pxl_row_in_fullres", "pxl_col_in_fullres"]
# Newest first: Space Ranger ≥ 2.0 writes tissue_positions.csv (with a header), 1.x tissue_positions_list.csv (none).
POSITION_FILES = (
    "tissue_positions.parquet",
    "tissue_positions.csv",
    "tissue_positions_list.csv",
    "tissue_positions_list.txt",
)
IMAGE_FILES = {"hires": "tissue_hires_image.png", "lowres": "tissue_lowres_image.png"}
# Visium spots sit on a hexagonal grid with a 100 µm centre-to-centre pitch: one array column is half a pitch
# along x, one array row is (√3/2) pitch along y.
VISIUM_PITCH_UM = 100.0
_COL_STEP_UM = VISIUM_PITCH_UM / 2
_ROW_STEP_UM = VISIUM_PITCH_UM * np.sqrt(3) / 2


def read_tissue_positions(path: str | os.PathLike) -> pd.DataFrame:
    """Read a Space Ranger spot positions file, with or without its header row.

    Parameters
    ----------
    path
        ``tissue_positions.csv`` (Space Ranger ≥ 2.0, header row), ``tissue_positions_list.csv``/``.txt`` (1.x, no
        header) or ``tissue_positions.parquet``.

    Returns
    -------
    A DataFrame indexed by barcode with integer ``in_tissue``, ``array_row``, ``array_col`` and float
    ``pxl_row_in_fullres``, ``pxl_col_in_fullres``.
    """
    path = require_file(path, "spot positions file", "Space Ranger writes it to outs/spatial/.")
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
    else:
        with open(path) as fh:
            first = fh.readline()
        has_header = first.split(",")[0].strip().strip('"').lower() == "barcode"
        table = pd.read_csv(path, header=0 if has_header else None)
        if not has_header:
            if table.shape[1] != 6:
                raise ValueError(
                    f"{path} has {table.shape[1]} columns; a Space Ranger positions file has 6 (barcode, in_tissue, "
                    "array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres)."
                )
            table.columns = ["barcode", *POSITION_COLUMNS]
    missing = {"barcode", *POSITION_COLUMNS} - set(table.columns)
    if missing:
        raise ValueError(f"{path} lacks the columns {sorted(missing)} of a Space Ranger positions file.")
    table = table.set_index("barcode")
    table.index = table.index.astype(str)
    table.index.name = None
    for key in ("in_tissue", "array_row", "array_col"):
        table[key] = table[key].astype(np.int64)
    for key in ("pxl_row_in_fullres", "pxl_col_in_fullres"):
        table[key] = table[key].astype(np.float64)
    return table[POSITION_COLUMNS]


def read_scalefactors(path: str | os.PathLike) -> dict[str, float]:
    """Read ``scalefactors_json.json`` into a ``{name: float}`` dict (non-numeric entries are dropped)."""
    path = require_file(path, "scalefactors_json.json", "Space Ranger writes it to outs/spatial/.")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from err
    return {k: float(v) for k, v in raw.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def visium_microns_per_pixel(positions: pd.DataFrame, *, library_id: str = "") -> tuple[float, float]:
    """µm per full-resolution pixel of a Visium slide, fitted from its spot grid; also the pitch in pixels.

    Every spot of the positions file (in tissue or not) enters a least-squares fit of pixel vs grid position, the
    grid being hexagonal with a 100 µm centre-to-centre pitch. Space Ranger's ``spot_diameter_fullres`` is not used:
    10x defines it as a "theoretical 65 µm spot" in Space Ranger ≥ 1.3 and as the tissue spot in earlier versions,
    and on the DLPFC slides it matches neither (96.4 px against a 137 px pitch).
    """
    grid = np.c_[positions["array_col"] * _COL_STEP_UM, positions["array_row"] * _ROW_STEP_UM]
    pixels = positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(float)
    fit = fit_pixels_per_micron(grid, pixels, what="Visium spots")
    check_fit(fit, VISIUM_PITCH_UM, library_id, hexagonal=True)
    return 1.0 / fit.px_per_um, VISIUM_PITCH_UM * fit.px_per_um


def build_visium(
    positions: pd.DataFrame,
    scalefactors: dict[str, float],
    images: dict[str, np.ndarray],
    *,
    library_id: str,
    source: str,
    counts: sparse.spmatrix | np.ndarray | None = None,
    barcodes: pd.Index | None = None,
    var: pd.DataFrame | None = None,
    in_tissue_only: bool = True,
    fullres_image: str | os.PathLike | None = None,
) -> AnnData:
    """Assemble a Visium AnnData from parsed Space Ranger pieces (shared by :func:`read_visium` and the datasets).

    ``counts`` is spots × genes with rows in the order of ``barcodes``; without counts, the spots of the positions
    file (in tissue only, unless ``in_tissue_only=False``) are returned with no genes.
    """
    if counts is not None:
        barcodes = pd.Index(barcodes).astype(str)
        unknown = barcodes.difference(positions.index)
        if len(unknown):
            raise ValueError(
                f"{len(unknown)} of {len(barcodes)} barcodes of the count matrix are not in the positions file (e.g. "
                f"{list(unknown[:3])}): the two come from different runs."
            )
        obs = positions.loc[barcodes]
    else:
        obs = positions[positions["in_tissue"] == 1] if in_tissue_only else positions

    sf = dict(scalefactors)
    if "microns_per_pixel" not in sf:  # Visium HD writes it; standard Visium needs the grid fit
        mpp, pitch_px = visium_microns_per_pixel(positions, library_id=library_id)
        sf["microns_per_pixel"] = mpp
        sf["spot_pitch_fullres"] = pitch_px
    entry = spatial_entry(platform="visium", source=source, scalefactors=sf)
    entry["images"] = {name: img for name, img in images.items() if img is not None}

    xy = obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)  # scanpy's (x, y) = (col, row)
    if fullres_image is not None:
        attach_fullres(entry, fullres_image, xy, thumbnail="hires" not in entry["images"])
    obs_out = obs[["in_tissue", "array_row", "array_col"]].copy()
    return spot_anndata(counts, obs=obs_out, var=var, spatial_xy=xy, library_id=library_id, entry=entry)


def _locate(path: Path) -> tuple[Path, Path]:
    """Return (outs folder, spatial folder) for a path to either of them."""
    if (path / "spatial").is_dir():
        return path, path / "spatial"
    if (path / "scalefactors_json.json").is_file() or any((path / f).is_file() for f in POSITION_FILES):
        return path.parent, path
    raise FileNotFoundError(
        f"{path} is neither a Space Ranger output folder (with a spatial/ subfolder) nor a spatial/ folder "
        f"(with scalefactors_json.json and one of {', '.join(POSITION_FILES)}). Pass Space Ranger's `outs/` folder."
    )


def _default_library_id(outs: Path) -> str:
    # <sample>/outs/spatial is Space Ranger's layout: the sample folder names the slide
    return outs.parent.name if outs.name == "outs" else outs.name


def _decode(value: Any) -> Any:
    """HDF5 attributes come as bytes or arrays of bytes: return str or a list of str."""
    if isinstance(value, np.ndarray):
        return [_decode(v) for v in value.tolist()]
    return value.decode() if isinstance(value, bytes) else value


def _read_counts(path: Path) -> tuple[AnnData, dict[str, Any]]:
    """Read a 10x count matrix (``.h5`` or an ``mtx`` folder) with scanpy; also Space Ranger's run metadata."""
    import scanpy as sc

    meta: dict[str, Any] = {}
    if path.is_dir():
        counts = sc.read_10x_mtx(path, var_names="gene_symbols", make_unique=False)
    else:
        import h5py

        counts = sc.read_10x_h5(path)
        with h5py.File(path, "r") as f:
            for key in ("chemistry_description", "software_version", "library_ids"):
                if key in f.attrs:
                    meta[key] = _decode(f.attrs[key])
    return counts, meta


def read_visium(
    path: str | os.PathLike,
    *,
    library_id: str | None = None,
    counts_file: str | os.PathLike | None = "filtered_feature_bc_matrix.h5",
    fullres_image: str | os.PathLike | None = None,
    in_tissue_only: bool = True,
    load_images: bool = True,
    source: str | None = None,
) -> AnnData:
    """Read a 10x Visium Space Ranger output into storm's AnnData layout.

    Counts are read by :func:`scanpy.read_10x_h5` (or :func:`scanpy.read_10x_mtx` for a matrix folder); the spatial
    files are parsed here, because scanpy and squidpy need a count matrix and keep integer pixel positions.

    Parameters
    ----------
    path
        Space Ranger's ``outs/`` folder (holding ``spatial/``) or the ``spatial/`` folder itself. It must hold
        ``scalefactors_json.json`` and a positions file: ``tissue_positions.csv`` (with a header row, Space Ranger
        ≥ 2.0), ``tissue_positions_list.csv``/``.txt`` (no header, 1.x) or ``tissue_positions.parquet``.
    library_id
        Key of the slide in ``uns['spatial']`` and value of ``obs['library_id']``. Default: the ``library_ids``
        attribute of the count file, else the sample folder name (the folder above ``outs/``).
    counts_file
        Count matrix, relative to the ``outs/`` folder or absolute: a 10x ``.h5`` file or a matrix folder
        (``filtered_feature_bc_matrix/``). ``None``, or the default when it does not exist, reads spots only
        (``n_vars == 0``; a warning says so for the default).
    fullres_image
        The full-resolution image given to Space Ranger (not part of ``outs/``). It is never decoded here: its path
        and shape are recorded for :class:`storm.io.LazyImage`, after checking the spots fall inside it.
    in_tissue_only
        Without a count matrix, keep only spots with ``in_tissue == 1`` (with one, the matrix decides).
    load_images
        Read ``tissue_hires_image.png`` and ``tissue_lowres_image.png`` where present.
    source
        Text recorded in ``uns['spatial'][library_id]['metadata']['source']`` (default: the folder path).

    Returns
    -------
    AnnData with

    - ``.X``: raw counts, float32 CSR (spots × genes); ``var_names`` gene symbols made unique, ``var['gene_ids']``
      Ensembl ids, ``var['feature_types']``, ``var['genome']`` as in the count file;
    - ``obs['in_tissue']``, ``obs['array_row']``, ``obs['array_col']`` (int), ``obs['library_id']`` (categorical);
    - ``obsm['spatial']``: float64 (x, y) = (``pxl_col_in_fullres``, ``pxl_row_in_fullres``);
    - ``uns['spatial'][library_id]``: ``images`` (``'hires'``/``'lowres'`` uint8 RGB), ``scalefactors`` (those of
      ``scalefactors_json.json``, plus ``microns_per_pixel`` and ``spot_pitch_fullres`` fitted from the 100 µm
      spot grid, see Notes), ``metadata`` (``platform='visium'``, ``source``, ``fullres_path`` and
      ``fullres_shape`` where ``fullres_image`` is given, Space Ranger's ``chemistry_description`` and
      ``software_version`` where the count file has them).

    Raises
    ------
    FileNotFoundError
        The folder, positions file, scale factors or an explicitly named count matrix are missing.
    ValueError
        Malformed positions, unreadable images, count barcodes missing from the positions, or spots outside
        ``fullres_image``.

    Notes
    -----
    ``microns_per_pixel`` comes from a least-squares fit of each spot's pixel position against its array position on
    the hexagonal 100 µm grid (every spot of the positions file: 4,992 on a standard slide). It is not
    ``55 / spot_diameter_fullres``: 10x defines ``spot_diameter_fullres`` as a "theoretical 65 µm spot" (Space
    Ranger ≥ 1.3), and on older outputs (DLPFC) it fits neither 55 nor 65 µm (96.4 px against a 138 px pitch).
    A ``microns_per_pixel`` already in the scale factors (Visium HD) is kept.

    References
    ----------
    10x Genomics, Space Ranger output: spatial outputs (``scalefactors_json.json``, ``tissue_positions``).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"No Space Ranger output at {path}. Pass the `outs/` (or `outs/spatial/`) folder.")
    outs, spatial_dir = _locate(path)

    positions_path = next((spatial_dir / f for f in POSITION_FILES if (spatial_dir / f).is_file()), None)
    if positions_path is None:
        raise FileNotFoundError(
            f"No spot positions file in {spatial_dir} (looked for {', '.join(POSITION_FILES)}). Space Ranger writes "
            "one to outs/spatial/; copy the whole folder."
        )
    positions = read_tissue_positions(positions_path)
    scalefactors = read_scalefactors(spatial_dir / "scalefactors_json.json")

    images: dict[str, np.ndarray] = {}
    if load_images:
        for name, fname in IMAGE_FILES.items():
            if (spatial_dir / fname).is_file():
                images[name] = read_png(spatial_dir / fname)

    counts = barcodes = var = None
    meta: dict[str, Any] = {}
    if counts_file is not None:
        counts_path = Path(counts_file).expanduser()
        counts_path = counts_path if counts_path.is_absolute() else outs / counts_path
        if counts_path.exists():
            table, meta = _read_counts(counts_path)
            counts, barcodes, var = table.X, table.obs_names, table.var
        elif str(counts_file) == "filtered_feature_bc_matrix.h5":
            logger.warning(
                "No count matrix at %s: reading spot positions and images only (n_vars = 0). Pass counts_file= to "
                "name the matrix, or counts_file=None to silence this.",
                counts_path,
            )
        else:
            raise FileNotFoundError(f"No count matrix at {counts_path}. Check `counts_file` (relative to {outs}).")

    ids = meta.pop("library_ids", None)
    if library_id is None:
        library_id = ids[0] if isinstance(ids, list) and len(ids) == 1 else _default_library_id(outs)
    adata = build_visium(
        positions,
        scalefactors,
        images,
        library_id=library_id,
        source=source or str(outs),
        counts=counts,
        barcodes=barcodes,
        var=var,
        in_tissue_only=in_tissue_only,
        fullres_image=fullres_image,
    )
    adata.uns["spatial"][library_id]["metadata"].update(meta)
    logger.info(
        "Read Visium slide %r: %d spots × %d genes, %.3f µm/px (%s)",
        library_id,
        adata.n_obs,
        adata.n_vars,
        adata.uns["spatial"][library_id]["scalefactors"]["microns_per_pixel"],
        outs,
    )
    return adata
