"""Read a Vizgen MERSCOPE output folder (cell-by-gene table + cell metadata, µm) into storm's AnnData layout.

Why not ``spatialdata_io.merscope``: version 0.7.1 needs ``images/micron_to_mosaic_pixel_transform.csv`` and the
mosaic z-stack images before it reads the tables, expects the file names without a region prefix (or a
``vpt_outputs`` mapping), and fails on cell boundaries stored as single polygons (``'Polygon' object has no
attribute 'geoms'``) as in the small real folder storm tests on. Only the two tables are needed here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData

from storm._logging import logger
from storm.io._xenium import cell_anndata, find_one

#: µm per pixel of MERSCOPE mosaic images, used when the folder states none (``images/manifest.json``,
#: ``images/micron_to_mosaic_pixel_transform.csv``).
MERSCOPE_PIXEL_SIZE_UM = 0.108
_ADVICE = "Pass the MERSCOPE region folder (it holds cell_by_gene.csv and cell_metadata.csv)."


def _read_cell_table(path: Path) -> pd.DataFrame:
    """Read a MERSCOPE cell table indexed by cell id, as text: ids are 128-bit integers that float64 would round.

    The id is the ``EntityID`` column where present (vpt re-segmentation outputs, whose first column is a row
    number), else the first column (the instrument's tables).
    """
    columns = pd.read_csv(path, nrows=0).columns
    key = "EntityID" if "EntityID" in columns else columns[0]
    table = pd.read_csv(path, dtype={key: str})
    table.index = pd.Index(table.pop(key).astype(str), name=None)
    if key != columns[0] and columns[0].startswith("Unnamed"):
        table = table.drop(columns=columns[0])
    return table


def _pixel_size(folder: Path) -> tuple[float, str]:
    images = folder / "images"
    manifest = images / "manifest.json"
    if manifest.is_file():
        value = json.loads(manifest.read_text()).get("microns_per_pixel")
        if value:
            return float(value), "images/manifest.json"
    transform = images / "micron_to_mosaic_pixel_transform.csv"
    if transform.is_file():
        # a 3 × 3 affine from µm to mosaic pixels: its scale is pixels per µm
        matrix = np.loadtxt(transform)
        return 1.0 / float(np.sqrt(abs(np.linalg.det(matrix[:2, :2])))), "images/micron_to_mosaic_pixel_transform.csv"
    return MERSCOPE_PIXEL_SIZE_UM, "nominal (MERSCOPE mosaic images)"


def read_merscope(path: str | os.PathLike, *, library_id: str | None = None) -> AnnData:
    """Read a Vizgen MERSCOPE region folder into storm's AnnData layout (one row per segmented cell).

    Parameters
    ----------
    path
        The region folder, holding ``[<prefix>_]cell_by_gene.csv`` and ``[<prefix>_]cell_metadata.csv``.
    library_id
        Key of the slide in ``uns['spatial']`` and value of ``obs['library_id']``. Default: the file prefix (e.g.
        ``"Liver1Slice1"``), else the folder name.

    Returns
    -------
    AnnData with

    - ``.X``: counts of the genes, float32 CSR; ``var_names`` gene symbols;
    - ``obsm['controls']``: float32 DataFrame of the blank barcodes (``Blank-*``), never among ``var_names``;
      ``obs['control_counts']`` their sum;
    - ``obs``: the metadata columns (``fov``, ``volume`` in µm³, bounding box ``min_x`` … ``max_y`` in µm, …),
      ``obs['library_id']``; obs names the cell ids (128-bit integers, as text);
    - ``obsm['spatial']``: float64 (x, y) = (``center_x``, ``center_y``) in µm;
    - ``uns['spatial'][library_id]``: ``scalefactors['microns_per_pixel'] = 1``; ``metadata``:
      ``platform='merscope'``, ``source``, ``pixel_size_um`` (µm per mosaic-image pixel: ``images/manifest.json``,
      else the micron-to-mosaic transform, else 0.108) and ``pixel_size_source``.

    Raises
    ------
    FileNotFoundError
        The folder or one of the two tables is missing.
    ValueError
        Cells of the count table are missing from the metadata.

    References
    ----------
    Vizgen, MERSCOPE Instrument User Guide: output files (``cell_by_gene.csv``, ``cell_metadata.csv``).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"No MERSCOPE output folder at {folder}. {_ADVICE}")
    counts_path = find_one(folder, ("*cell_by_gene.csv", "*cell_by_gene.csv.gz"), "cell-by-gene table", _ADVICE)
    meta_path = find_one(folder, ("*cell_metadata.csv", "*cell_metadata.csv.gz"), "cell metadata table", _ADVICE)
    counts = _read_cell_table(counts_path)
    meta = _read_cell_table(meta_path)
    missing = counts.index.difference(meta.index)
    if len(missing):
        raise ValueError(
            f"{len(missing)} cells of {counts_path.name} are not in {meta_path.name} (e.g. {list(missing[:3])}): "
            "the tables come from different segmentations."
        )
    meta = meta.loc[counts.index]
    if not {"center_x", "center_y"} <= set(meta.columns):
        raise ValueError(f"{meta_path.name} lacks the center_x / center_y columns (cell centres in µm).")

    prefix = counts_path.name.split("cell_by_gene")[0].rstrip("_")
    library_id = library_id or prefix or folder.name
    pixel_size, pixel_source = _pixel_size(folder)
    adata = cell_anndata(
        counts.to_numpy(np.float32),
        counts.columns,
        obs=meta.drop(columns=["center_x", "center_y"]),
        xy_um=meta[["center_x", "center_y"]].to_numpy(np.float64),
        library_id=library_id,
        platform="merscope",
        source=str(folder),
        pixel_size_um=pixel_size,
        metadata={"pixel_size_source": pixel_source},
    )
    logger.info(
        "Read MERSCOPE region %r: %d cells × %d genes (+%d blank barcodes in obsm['controls'])",
        library_id,
        adata.n_obs,
        adata.n_vars,
        adata.obsm["controls"].shape[1],
    )
    return adata
