"""Tiny real data for fast tests: squidpy's 49-spot Visium mouse-brain crop and its Space Ranger ``spatial/`` folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse
from scipy.spatial import cKDTree

from storm._logging import logger
from storm._settings import data_dir
from storm.io._image import LazyImage
from storm.io._visium import VISIUM_PITCH_UM, visium_microns_per_pixel

from ._fetch import fetch
from ._registry import registry

_ROOT = "squidpy/tests/_data/"
_H5AD = _ROOT + "test_data.h5ad"
_IMAGE = _ROOT + "test_img.jpg"
_SPATIAL_FILES = (
    "tissue_positions_list.csv",
    "scalefactors_json.json",
    "tissue_hires_image.png",
    "tissue_lowres_image.png",
)
_LIBRARY = "V1_Adult_Mouse_Brain"


def _counts_from_lognorm(lognorm: sparse.csr_matrix) -> sparse.csr_matrix:
    """Undo ``normalize_total`` + ``log1p``: per spot, expm1 divided by its smallest non-zero value.

    Exact where each spot's smallest stored count is 1 (true of every spot here: the quotients are integers to
    1e-3). Raises if they are not integers, rather than return scaled values as counts.
    """
    counts = lognorm.astype(np.float64).tocsr(copy=True)
    counts.data = np.expm1(counts.data)
    for i in range(counts.shape[0]):
        row = slice(counts.indptr[i], counts.indptr[i + 1])
        if counts.data[row].size:
            counts.data[row] /= counts.data[row].min()
    if np.abs(counts.data - np.rint(counts.data)).max(initial=0) > 1e-2:
        raise ValueError("squidpy's test_data.h5ad values do not invert to integer counts.")
    counts.data = np.rint(counts.data)
    return counts.astype(np.float32)


def _hex_grid(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Array rows and columns of axis-aligned Visium spots from their pixel positions (row + col even, as Visium)."""
    distance, _ = cKDTree(xy).query(xy, k=2)
    pitch = float(np.median(distance[:, 1]))
    row_f = (xy[:, 1] - xy[:, 1].min()) / (pitch * np.sqrt(3) / 2)
    col_f = (xy[:, 0] - xy[:, 0].min()) / (pitch / 2)
    row, col = np.rint(row_f).astype(np.int64), np.rint(col_f).astype(np.int64)
    if max(np.abs(row_f - row).max(), np.abs(col_f - col).max()) > 0.25 or len(np.unique((row + col) % 2)) != 1:
        raise ValueError("The fixture's spots do not lie on an axis-aligned hexagonal grid.")
    return row, col + (row[0] + col[0]) % 2


def visium_fixture() -> AnnData:
    """Load squidpy's 49-spot crop of the 10x Visium adult mouse brain slide, in storm's layout, for fast tests.

    Returns
    -------
    anndata.AnnData
        AnnData of 49 spots × 1,999 genes:

        - ``.X``: counts, float32 CSR, recovered from the stored ``log1p(normalize_total)`` values (each spot's
          expm1 values divided by their minimum: integers to 1e-3); ``.layers['lognorm']``: the values as stored;
        - ``var_names``: gene symbols; ``var['gene_ids']`` Ensembl ids; squidpy's HVG columns;
        - ``obs['in_tissue']``, ``obs['leiden']`` (squidpy's clusters), ``obs['array_row']``, ``obs['array_col']``
          (int; reconstructed from the pixel positions on the hexagonal grid, the h5ad has none: relative to the crop,
          not the slide), ``obs['library_id']`` (``'V1_Adult_Mouse_Brain'``);
        - ``obsm['spatial']``: float64 (x, y) in pixels of the full-resolution crop ``test_img.jpg``; squidpy's
          ``X_pca``/``X_umap`` and neighbour graphs are kept;
        - ``uns['spatial']['V1_Adult_Mouse_Brain']``: ``images`` ``'hires'`` (1,000 px) and ``'lowres'`` (300 px)
          thumbnails of ``test_img.jpg``; ``scalefactors`` ``tissue_hires_scalef``, ``tissue_lowres_scalef``,
          ``spot_diameter_fullres`` (Space Ranger's), ``microns_per_pixel`` (≈ 0.73, fitted from the 100 µm grid),
          ``spot_pitch_fullres``; ``metadata`` ``platform='visium'``, ``fullres_path`` (``test_img.jpg``),
          ``fullres_shape`` ``[1717, 950]``, ``source``, and Space Ranger's ``chemistry_description`` and
          ``software_version``.

    References
    ----------
    Palla G et al. Squidpy: a scalable framework for spatial omics analysis. Nat Methods 19, 171-178 (2022);
    data: 10x Genomics, Visium adult mouse brain (V1_Adult_Mouse_Brain).
    """
    adata = ad.read_h5ad(fetch(_H5AD))
    image = LazyImage(fetch(_IMAGE))
    old = adata.uns["spatial"][_LIBRARY]

    adata.layers["lognorm"] = adata.X.copy()
    adata.X = _counts_from_lognorm(sparse.csr_matrix(adata.X))
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    adata.obsm["spatial"] = xy
    row, col = _hex_grid(xy)
    adata.obs["array_row"], adata.obs["array_col"] = row, col
    adata.obs["library_id"] = pd.Categorical([_LIBRARY] * adata.n_obs)

    positions = pd.DataFrame(
        {"array_row": row, "array_col": col, "pxl_col_in_fullres": xy[:, 0], "pxl_row_in_fullres": xy[:, 1]}
    )
    mpp, pitch_px = visium_microns_per_pixel(positions, library_id=_LIBRARY)
    hires, hires_scalef = image.thumbnail(1000)
    lowres, lowres_scalef = image.thumbnail(300)
    height, width, _ = image.shape
    adata.uns["spatial"] = {
        _LIBRARY: {
            "images": {"hires": hires, "lowres": lowres},
            "scalefactors": {
                "tissue_hires_scalef": hires_scalef,
                "tissue_lowres_scalef": lowres_scalef,
                "spot_diameter_fullres": float(old["scalefactors"]["spot_diameter_fullres"]),
                "microns_per_pixel": mpp,
                "spot_pitch_fullres": pitch_px,
            },
            "metadata": {
                "platform": "visium",
                "fullres_path": str(image.path.resolve()),
                "fullres_shape": [int(height), int(width)],
                "source": f"squidpy test crop of 10x V1_Adult_Mouse_Brain: {registry()[_H5AD].citation}",
                **{k: str(v) for k, v in old.get("metadata", {}).items()},
            },
        }
    }
    logger.info(
        "Loaded the Visium fixture: %d spots × %d genes, %.3f µm/px (%.0f px per %.0f µm pitch)",
        adata.n_obs,
        adata.n_vars,
        mpp,
        pitch_px,
        VISIUM_PITCH_UM,
    )
    return adata


def visium_fixture_folder() -> Path:
    """Return a Space Ranger ``spatial/`` folder made of squidpy's test files (100 spots, no count matrix).

    The folder holds ``tissue_positions_list.csv`` (no header), ``scalefactors_json.json``,
    ``tissue_hires_image.png`` and ``tissue_lowres_image.png``, all verified against the registry. Where they lie
    in different places (some cached, some mirrored), they are copied together under ``$STORM_DATA_DIR/fixtures/``.

    Returns
    -------
    Path of the ``spatial/`` folder, for :func:`storm.io.read_visium`.

    References
    ----------
    Palla G et al. Squidpy: a scalable framework for spatial omics analysis. Nat Methods 19, 171-178 (2022).
    """
    paths = [fetch(_ROOT + "spatial/" + f) for f in _SPATIAL_FILES]
    if len({p.parent for p in paths}) == 1:
        return paths[0].parent
    folder = data_dir() / "fixtures" / "squidpy_visium" / "spatial"
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        target = folder / path.name
        if not target.is_file() or target.stat().st_size != path.stat().st_size:
            shutil.copyfile(path, target)
    return folder
