"""Read one bin size of a 10x Visium HD Space Ranger output (``binned_outputs/square_XXXum``) into storm's layout.

No public Visium HD output small enough for storm's data mirror exists, so this reader is tested on a tiny folder
written by the tests in Space Ranger's file formats (10x HDF5 matrix, ``tissue_positions.parquet``,
``scalefactors_json.json`` with ``microns_per_pixel``, PNG images), not on real data.

Why not ``spatialdata_io.visium_hd``: version 0.7.1 needs the whole ``outs/`` folder, starting with
``<dataset_id>_feature_slice.h5`` (it stops with "Cannot locate the feature slice file" on a bin folder holding all
the files read here), and returns a SpatialData of all bin sizes with bins as shapes in pixel coordinates; storm needs
one bin size as an AnnData in µm with the images' scale factors converted, which these three files give directly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from anndata import AnnData

from storm._logging import logger
from storm.io._spatial import read_png
from storm.io._visium import IMAGE_FILES, _read_counts, read_scalefactors, read_tissue_positions
from storm.io._xenium import cell_anndata

_POSITIONS = ("tissue_positions.parquet", "tissue_positions.csv")


def _bin_folder(path: Path, bin_size: int) -> Path:
    """Find the ``square_XXXum`` folder from a path to ``outs/``, ``binned_outputs/`` or the bin folder itself."""
    name = f"square_{bin_size:03d}um"
    for candidate in (path / "binned_outputs" / name, path / name, path):
        if (candidate / "spatial").is_dir():
            return candidate
    raise FileNotFoundError(
        f"No Visium HD bin folder {name}/ (with a spatial/ subfolder) at {path}. Pass Space Ranger's outs/ folder, "
        f"outs/binned_outputs/ or outs/binned_outputs/{name}/; Space Ranger writes bins of 2, 8 and 16 µm."
    )


def read_visium_hd(
    path: str | os.PathLike,
    *,
    bin_size: int = 8,
    library_id: str | None = None,
    counts_file: str = "filtered_feature_bc_matrix.h5",
    load_images: bool = True,
) -> AnnData:
    """Read one bin size of a 10x Visium HD Space Ranger output into storm's AnnData layout (one row per bin).

    Parameters
    ----------
    path
        Space Ranger's ``outs/`` folder, its ``binned_outputs/`` folder, or one ``square_XXXum/`` folder. The bin
        folder holds the count matrix and ``spatial/`` with ``tissue_positions.parquet`` and
        ``scalefactors_json.json`` (which must give ``microns_per_pixel``).
    bin_size
        Bin side in µm: 2, 8 or 16 (``square_002um`` … ``square_016um``).
    library_id
        Key of the slide in ``uns['spatial']`` and value of ``obs['library_id']``. Default: the ``library_ids``
        attribute of the count file, else the sample folder name (the folder above ``outs/``).
    counts_file
        The count matrix relative to the bin folder: a 10x ``.h5`` file or a matrix folder.
    load_images
        Read ``tissue_hires_image.png`` and ``tissue_lowres_image.png`` where present.

    Returns
    -------
    AnnData with

    - ``.X``: counts, float32 CSR; ``var_names`` gene symbols made unique, ``var['gene_ids']``, ``var['genome']``;
      control features (none in current probe sets) would go to ``obsm['controls']``, with
      ``obs['control_counts']`` their sum (0 otherwise);
    - ``obs['in_tissue']``, ``obs['array_row']``, ``obs['array_col']`` (int; the bin grid), ``obs['library_id']``;
    - ``obsm['spatial']``: float64 (x, y) in µm: ``(pxl_col_in_fullres, pxl_row_in_fullres) × microns_per_pixel``,
      so in the frame of the full-resolution H&E image;
    - ``uns['spatial'][library_id]``: ``images`` ``'hires'``/``'lowres'`` (uint8 RGB); ``scalefactors``:
      ``microns_per_pixel = 1`` (coordinates are µm), ``tissue_hires_scalef``/``tissue_lowres_scalef`` converted
      to image pixels per µm, ``spot_diameter_fullres`` = ``bin_size_um`` (the bin side in µm); ``metadata``:
      ``platform='visium_hd'``, ``source``, ``pixel_size_um`` (Space Ranger's ``microns_per_pixel`` of the
      full-resolution image), ``bin_size_um``, and Space Ranger's ``chemistry_description``/``software_version``
      where the count file has them.

    Raises
    ------
    FileNotFoundError
        No bin folder, positions file, scale factors or count matrix.
    ValueError
        ``scalefactors_json.json`` has no ``microns_per_pixel``, or bins of the matrix are missing from the
        positions.

    References
    ----------
    10x Genomics, Space Ranger: Visium HD outputs (``binned_outputs``, ``tissue_positions.parquet``).
    """
    if int(bin_size) != bin_size or bin_size <= 0:
        raise ValueError(f"bin_size must be a positive whole number of µm (2, 8 or 16), got {bin_size!r}.")
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"No Visium HD output at {root}. Pass Space Ranger's outs/ folder.")
    folder = _bin_folder(root, int(bin_size))
    spatial = folder / "spatial"
    positions_path = next((spatial / f for f in _POSITIONS if (spatial / f).is_file()), None)
    if positions_path is None:
        raise FileNotFoundError(f"No bin positions in {spatial} (looked for {', '.join(_POSITIONS)}).")
    positions = read_tissue_positions(positions_path)
    scalefactors = read_scalefactors(spatial / "scalefactors_json.json")
    mpp = scalefactors.get("microns_per_pixel")
    if not mpp or mpp <= 0:
        raise ValueError(
            f"{spatial / 'scalefactors_json.json'} gives no microns_per_pixel: is this a Visium HD output? "
            "Standard Visium slides are read by storm.io.read_visium."
        )
    counts_path = folder / counts_file
    if not counts_path.exists():
        raise FileNotFoundError(f"No count matrix at {counts_path}. Check `counts_file` (relative to {folder}).")
    table, meta = _read_counts(counts_path)
    barcodes = table.obs_names.astype(str)
    unknown = barcodes.difference(positions.index)
    if len(unknown):
        raise ValueError(
            f"{len(unknown)} of {len(barcodes)} bins of the count matrix are not in {positions_path.name} (e.g. "
            f"{list(unknown[:3])}): the two come from different runs or bin sizes."
        )
    obs = positions.loc[barcodes, ["in_tissue", "array_row", "array_col"]]
    xy_um = positions.loc[barcodes, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64) * mpp

    # image px per full-res px → image px per µm, since the coordinates are now µm
    sf: dict[str, float] = {"spot_diameter_fullres": float(bin_size)}
    images: dict[str, np.ndarray] = {}
    for name, fname in IMAGE_FILES.items():
        key = f"tissue_{name}_scalef"
        if load_images and (spatial / fname).is_file() and key in scalefactors:
            images[name] = read_png(spatial / fname)
            sf[key] = scalefactors[key] / mpp

    ids = meta.pop("library_ids", None)
    if library_id is None:
        outs = folder.parent.parent if folder.parent.name == "binned_outputs" else folder
        library_id = (
            ids[0]
            if isinstance(ids, list) and len(ids) == 1
            else (outs.parent.name if outs.name == "outs" else outs.name)
        )
    extra: dict[str, Any] = {"bin_size_um": float(bin_size), **{k: str(v) for k, v in meta.items()}}
    adata = cell_anndata(
        table.X,
        table.var_names,
        obs=obs,
        xy_um=xy_um,
        library_id=library_id,
        platform="visium_hd",
        source=str(folder),
        pixel_size_um=mpp,
        var=table.var,
        metadata=extra,
        scalefactors=sf,
    )
    adata.uns["spatial"][library_id]["images"] = images
    logger.info(
        "Read Visium HD slide %r at %d µm: %d bins × %d genes, image %.4f µm/px",
        library_id,
        bin_size,
        adata.n_obs,
        adata.n_vars,
        mpp,
    )
    return adata
