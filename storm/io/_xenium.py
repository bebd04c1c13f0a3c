"""Read a 10x Xenium output folder (cell-feature matrix + cell centroids in µm) into storm's AnnData layout.

Also home of the helpers every single-cell reader shares (:func:`split_controls`, :func:`cell_anndata`): one place
decides what a control probe is and how a cell-level AnnData is laid out.

Why not ``spatialdata_io.xenium``: version 0.7.1 opens ``experiment.xenium`` and ``cells.zarr.zip`` unconditionally
(even with ``cells_labels=False``), which older or trimmed outputs (such as the small real folder storm tests on)
lack; it returns a SpatialData whose table keeps control probes among the genes (``gex_only=False``) or drops them
(``gex_only=True``), so the layout would need rebuilding anyway. The two files read here are the ones every Xenium
Onboard Analysis version writes.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from storm._logging import logger
from storm.io._spatial import spatial_entry, spot_anndata

#: Name prefixes of control features (case-insensitive) on the single-cell platforms: Xenium negative control
#: probes/codewords, blank, unassigned, deprecated codewords and intergenic/genomic controls; CosMx negative probes
#: and system controls; MERSCOPE blank barcodes.
CONTROL_PREFIXES: tuple[str, ...] = (
    "NegControlProbe_",
    "NegControlCodeword_",
    "UnassignedCodeword_",
    "DeprecatedCodeword_",
    "Intergenic_Region_",
    "GenomicControl",
    "antisense_",
    "BLANK_",
    "Blank-",
    "NegPrb",
    "Negative",
    "SystemControl",
    "FalseCode",
)
#: The only Xenium feature type that is a gene; all others (negative control probe/codeword, unassigned or
#: deprecated codeword, genomic control, …) are controls.
XENIUM_GENE_TYPE = "Gene Expression"
#: Xenium morphology images: 0.2125 µm per pixel (10x, "Understanding Xenium outputs"), used when the folder
#: states none (no ``experiment.xenium``, no OME ``PhysicalSizeX``).
XENIUM_PIXEL_SIZE_UM = 0.2125
XENIUM_COUNTS = ("cell_feature_matrix.h5", "cell_feature_matrix")
XENIUM_CELLS = {"parquet": "cells.parquet", "csv": "cells.csv.gz"}


def is_control(names: Sequence[str] | pd.Index, prefixes: Sequence[str] = CONTROL_PREFIXES) -> np.ndarray:
    """Return a boolean mask: which feature names start with one of the control ``prefixes`` (case-insensitive)."""
    lowered = tuple(p.lower() for p in prefixes)
    if not lowered:
        return np.zeros(len(names), dtype=bool)
    return np.fromiter((str(n).lower().startswith(lowered) for n in names), dtype=bool, count=len(names))


def split_controls(
    counts: sparse.spmatrix | np.ndarray,
    names: Sequence[str] | pd.Index,
    *,
    obs_names: pd.Index,
    control_mask: np.ndarray | None = None,
) -> tuple[sparse.csr_matrix, np.ndarray, pd.DataFrame]:
    """Split a cells × features matrix into genes and controls.

    Returns the gene matrix (float32 CSR), the boolean gene mask over ``names`` and a float32 DataFrame of the control
    columns (index ``obs_names``), in the order of ``names``.
    """
    names = pd.Index(np.asarray(names).astype(str))
    ctrl = is_control(names) if control_mask is None else np.asarray(control_mask, dtype=bool)
    matrix = sparse.csr_matrix(counts, dtype=np.float32)
    controls = pd.DataFrame(
        matrix[:, np.flatnonzero(ctrl)].toarray(),
        index=pd.Index(obs_names).astype(str),
        columns=pd.Index(names[ctrl], dtype=object),
    )
    return matrix[:, np.flatnonzero(~ctrl)], ~ctrl, controls


def cell_anndata(
    counts: sparse.spmatrix | np.ndarray,
    names: Sequence[str] | pd.Index,
    *,
    obs: pd.DataFrame,
    xy_um: np.ndarray,
    library_id: str,
    platform: str,
    source: str,
    pixel_size_um: float | None,
    var: pd.DataFrame | None = None,
    control_mask: np.ndarray | None = None,
    metadata: dict[str, Any] | None = None,
    scalefactors: dict[str, float] | None = None,
) -> AnnData:
    """Assemble a cell- or bin-level AnnData in storm's layout: genes in ``X``, controls in ``obsm['controls']``.

    ``counts`` is cells × features in the order of ``names`` (and of ``var``'s rows, when given), rows in the order of
    ``obs``. Coordinates are µm, so ``scalefactors['microns_per_pixel'] = 1``; ``pixel_size_um`` (µm per pixel of the
    instrument's image/coordinate system) goes to the metadata when known.
    """
    names = pd.Index(np.asarray(names).astype(str))
    genes, gene_mask, controls = split_controls(counts, names, obs_names=obs.index, control_mask=control_mask)
    var = pd.DataFrame(index=names) if var is None else var.copy()
    var.index = names
    var = var.loc[gene_mask]
    if "feature_types" in var and var["feature_types"].nunique() <= 1:
        var = var.drop(columns="feature_types")  # one type after the split carries nothing

    obs = obs.copy()
    obs.index = obs.index.astype(str)
    obs["control_counts"] = controls.sum(axis=1).to_numpy(np.float32) if controls.shape[1] else np.float32(0)

    entry = spatial_entry(
        platform=platform, source=source, scalefactors={"microns_per_pixel": 1.0, **(scalefactors or {})}
    )
    if pixel_size_um is not None:
        entry["metadata"]["pixel_size_um"] = float(pixel_size_um)
    entry["metadata"].update(metadata or {})
    adata = spot_anndata(genes, obs=obs, var=var, spatial_xy=xy_um, library_id=library_id, entry=entry)
    adata.obsm["controls"] = controls.set_axis(adata.obs_names, axis=0)
    return adata


def find_one(folder: Path, patterns: Sequence[str], what: str, advice: str) -> Path:
    """Return the one file in ``folder`` matching the first pattern that matches; else FileNotFoundError/ValueError."""
    for pattern in patterns:
        hits = sorted(p for p in folder.glob(pattern) if p.is_file())
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise ValueError(
                f"{folder} holds several {what} files ({', '.join(p.name for p in hits)}): pass the path of one."
            )
    raise FileNotFoundError(f"No {what} in {folder} (looked for {', '.join(patterns)}). {advice}")


def _decode_strings(values: pd.Series | np.ndarray) -> np.ndarray:
    """Xenium < 1.3 stores ids and feature names as bytes in parquet files: return str."""
    arr = np.asarray(values, dtype=object)
    return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in arr], dtype=object)


def _read_matrix(path: Path) -> AnnData:
    import scanpy as sc

    if path.is_dir():
        return sc.read_10x_mtx(path, var_names="gene_symbols", gex_only=False, make_unique=False)
    return sc.read_10x_h5(path, gex_only=False)


def _ome_pixel_size(folder: Path) -> float | None:
    """``PhysicalSizeX`` of a Xenium morphology OME-TIFF, read from the header only."""
    for name in ("morphology_focus.ome.tif", "morphology_mip.ome.tif", "morphology.ome.tif"):
        path = folder / name
        if not path.is_file():
            continue
        import tifffile

        with tifffile.TiffFile(path) as tif:
            match = re.search(r'PhysicalSizeX="([0-9.eE+-]+)"', tif.ome_metadata or "")
        if match:
            return float(match.group(1))
    return None


def read_xenium(
    path: str | os.PathLike,
    *,
    library_id: str | None = None,
    cells: str = "auto",
) -> AnnData:
    """Read a 10x Xenium output folder into storm's AnnData layout (one row per segmented cell).

    Parameters
    ----------
    path
        The Xenium output folder (``outs/``), holding ``cell_feature_matrix.h5`` (or the ``cell_feature_matrix/``
        folder) and ``cells.parquet`` or ``cells.csv.gz``. ``experiment.xenium`` is read where present.
    library_id
        Key of the slide in ``uns['spatial']`` and value of ``obs['library_id']``. Default: ``run_name`` and
        ``region_name`` of ``experiment.xenium``, else the folder name.
    cells
        Cell table: ``"parquet"`` (``cells.parquet``), ``"csv"`` (``cells.csv.gz``) or ``"auto"`` (the parquet file
        where present, else the CSV).

    Returns
    -------
    AnnData with

    - ``.X``: counts of the genes (features of type ``Gene Expression``), float32 CSR; ``var_names`` gene symbols,
      ``var['gene_ids']`` Ensembl ids, ``var['genome']``;
    - ``obsm['controls']``: float32 DataFrame (cells × control features: negative control probes and codewords,
      unassigned/blank/deprecated codewords, …), never among ``var_names``; ``obs['control_counts']`` their sum;
    - ``obs``: the cell table's columns (``transcript_counts``, ``control_probe_counts``, ``cell_area``,
      ``nucleus_area``, … as written by the instrument's software; centroids move to ``obsm``),
      ``obs['library_id']`` (categorical);
    - ``obsm['spatial']``: float64 (x, y) = (``x_centroid``, ``y_centroid``) in µm;
    - ``uns['spatial'][library_id]``: ``images`` (none), ``scalefactors['microns_per_pixel'] = 1`` (coordinates are
      µm), ``metadata``: ``platform='xenium'``, ``source`` (the folder), ``pixel_size_um`` (µm per pixel of the
      morphology image: ``experiment.xenium``'s ``pixel_size``, else the OME-TIFF's ``PhysicalSizeX``, else 0.2125),
      ``pixel_size_source``, ``morphology_image`` (path of the DAPI morphology OME-TIFF, where present: a
      fluorescence image, not H&E, at ``pixel_size_um``), and ``analysis_sw_version``, ``panel_name``,
      ``run_name``, ``region_name`` where ``experiment.xenium`` has them.

    Raises
    ------
    FileNotFoundError
        The folder, the count matrix or the cell table is missing.
    ValueError
        Cells of the matrix are missing from the cell table, or ``cells`` is not one of the choices.

    References
    ----------
    10x Genomics, Xenium Onboard Analysis output files (``cell_feature_matrix``, ``cells``, ``experiment.xenium``).
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"No Xenium output folder at {folder}. Pass the folder Xenium Onboard Analysis wrote.")
    if cells not in ("auto", *XENIUM_CELLS):
        raise ValueError(f"cells={cells!r}: choose 'auto', 'parquet' or 'csv'.")

    matrix_path = next((folder / n for n in XENIUM_COUNTS if (folder / n).exists()), None)
    if matrix_path is None:
        raise FileNotFoundError(
            f"No cell-feature matrix in {folder} (looked for {' or '.join(XENIUM_COUNTS)}). Copy the whole Xenium "
            "output folder, not only some files."
        )
    order = list(XENIUM_CELLS.values()) if cells == "auto" else [XENIUM_CELLS[cells]]
    cells_path = next((folder / n for n in order if (folder / n).is_file()), None)
    if cells_path is None:
        raise FileNotFoundError(
            f"No cell table in {folder} (looked for {' or '.join(order)}); it holds the cell centroids in µm."
        )

    spec: dict[str, Any] = {}
    if (folder / "experiment.xenium").is_file():
        spec = json.loads((folder / "experiment.xenium").read_text())

    table = _read_matrix(matrix_path)
    barcodes = pd.Index(_decode_strings(table.obs_names))
    cell_table = pd.read_parquet(cells_path) if cells_path.suffix == ".parquet" else pd.read_csv(cells_path)
    cell_table.index = pd.Index(_decode_strings(cell_table.pop("cell_id")))
    missing = barcodes.difference(cell_table.index)
    if len(missing):
        raise ValueError(
            f"{len(missing)} of {len(barcodes)} cells of {matrix_path.name} are not in {cells_path.name} (e.g. "
            f"{list(missing[:3])}): the two files come from different runs."
        )
    cell_table = cell_table.loc[barcodes]
    xy = cell_table[["x_centroid", "y_centroid"]].to_numpy(np.float64)
    obs = cell_table.drop(columns=["x_centroid", "y_centroid"])

    feature_types = table.var.get("feature_types", pd.Series(XENIUM_GENE_TYPE, index=table.var_names))
    control_mask = (feature_types.astype(str).to_numpy() != XENIUM_GENE_TYPE) | is_control(table.var_names)

    if spec.get("pixel_size"):
        pixel_size, pixel_source = float(spec["pixel_size"]), "experiment.xenium"
    elif (ome := _ome_pixel_size(folder)) is not None:
        pixel_size, pixel_source = ome, "OME-TIFF PhysicalSizeX"
    else:
        pixel_size, pixel_source = XENIUM_PIXEL_SIZE_UM, "nominal (Xenium morphology images)"

    meta: dict[str, Any] = {"pixel_size_source": pixel_source}
    for key in ("analysis_sw_version", "panel_name", "run_name", "region_name"):
        if spec.get(key):
            meta[key] = str(spec[key])
    morphology = next(
        (folder / n for n in ("morphology_focus.ome.tif", "morphology.ome.tif") if (folder / n).is_file()), None
    )
    if morphology is not None:
        meta["morphology_image"] = str(morphology.resolve())

    if library_id is None:
        parts = [str(spec[k]) for k in ("run_name", "region_name") if spec.get(k)]
        library_id = "_".join(parts) if parts else folder.name
    adata = cell_anndata(
        table.X,
        table.var_names,
        obs=obs.set_axis(barcodes, axis=0),
        xy_um=xy,
        library_id=library_id,
        platform="xenium",
        source=str(folder),
        pixel_size_um=pixel_size,
        var=table.var,
        control_mask=control_mask,
        metadata=meta,
    )
    logger.info(
        "Read Xenium slide %r: %d cells × %d genes (+%d control features in obsm['controls'])",
        library_id,
        adata.n_obs,
        adata.n_vars,
        adata.obsm["controls"].shape[1],
    )
    return adata
