"""Single-cell spatial data sets (MERFISH, CosMx, Xenium) and tiny real vendor output folders for the readers."""

from __future__ import annotations

import shutil
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from storm._logging import logger
from storm._settings import data_dir
from storm.io._rdata import r_to_pandas, read_rda
from storm.io._spatial import read_png
from storm.io._xenium import XENIUM_PIXEL_SIZE_UM, cell_anndata

from ._fetch import fetch
from ._registry import registry

_MERFISH = "SEraster/data/merfish_mousePOA.rda"
_NSCLC = "InSituType/data/mini_nsclc.RData"
_XENIUM_H5AD = "derived/voltron_xenium_breast_rep1/xenium_voltron_breast_rep1.h5ad"
_XENIUM_DAPI = "derived/voltron_xenium_breast_rep1/xenium_voltron_breast_rep1_dapi_1um.png"
_VENDOR_ROOT = "SpatialFeatureExperiment/inst/extdata/"
#: storm's platform names → the vendor folder of SpatialFeatureExperiment's test data.
VENDOR_FOLDERS = {"xenium": "xenium", "cosmx": "cosmx", "merscope": "vizgen"}
#: The 2022 NSCLC CosMx release came from NanoString's prototype instrument: 0.18 µm per pixel (its SMI ReadMe).
_NSCLC_PIXEL_SIZE_UM = 0.18


def merfish_preoptic() -> AnnData:
    """Load the MERFISH mouse hypothalamic preoptic region (Moffitt et al. 2018), one section, as packaged by SEraster.

    Returns
    -------
    AnnData of 6,509 cells × 155 genes:

    - ``.X``: float32 CSR of **counts divided by cell volume** (the authors' ``volnorm`` values; not integers, and
      not raw counts as storm's layout otherwise has: recorded in ``uns['X_values']``);
    - ``obs['celltype']`` (categorical: Inhibitory, Excitatory, Astrocyte, OD Mature/Immature 1–4, Endothelial 1–3,
      Ependymal, Microglia, Pericytes, Ambiguous), ``obs['neurontype']`` (categorical: the authors' 62 neuron
      clusters ``E-*``, ``I-*``, ``H-1``; NaN for the 3,177 non-neurons), ``obs['bregma']`` (−0.29 mm),
      ``obs['sample_id']``, ``obs['control_counts']`` (0: the set has no control probes), ``obs['library_id']``
      (``'merfish_mousePOA'``); obs names the cell UUIDs;
    - ``obsm['spatial']``: float64 (x, y) in µm (0–1,792 µm; median nearest-neighbour distance 12 µm);
      ``obsm['controls']``: an empty DataFrame;
    - ``uns['spatial']['merfish_mousePOA']``: ``scalefactors['microns_per_pixel'] = 1``; ``metadata``:
      ``platform='merfish'``, ``source`` (citation), ``x_values``; no image and no ``pixel_size_um`` (the source
      gives coordinates in µm only);
    - ``uns['X_values']``: what ``.X`` holds.

    References
    ----------
    Moffitt JR et al. Molecular, spatial, and functional single-cell profiling of the hypothalamic preoptic region.
    Science 362, eaau5324 (2018). Packaged by SEraster (JEFworks-Lab, GPL-3.0).
    """
    (obj,) = read_rda(fetch(_MERFISH)).values()
    mat = obj.assays.data.listData["volnorm"]  # dgCMatrix: genes × cells, compressed by column
    n_genes, n_cells = (int(d) for d in mat.Dim)
    values = sparse.csc_matrix((mat.x, mat.i, mat.p), shape=(n_genes, n_cells)).T.tocsr()
    genes, cells = (np.asarray(names).astype(str) for names in mat.Dimnames)

    col = obj.colData.listData
    neuron = np.asarray(r_to_pandas(col["neurontype"]), dtype=object)
    neuron[neuron == ""] = np.nan  # non-neurons have an empty neuron type
    obs = pd.DataFrame(
        {
            "celltype": pd.Categorical(r_to_pandas(col["celltype"])),
            "neurontype": pd.Categorical(neuron),
            "bregma": r_to_pandas(col["bregma"]),
            "sample_id": pd.Categorical(r_to_pandas(col["sample_id"])),
        },
        index=pd.Index(cells, dtype=object),
    )
    xy = np.asarray(obj.int_colData.listData["spatialCoords"].values, dtype=np.float64)
    note = "volnorm: counts divided by cell volume (Moffitt et al. 2018), not integer counts"
    library_id = "merfish_mousePOA"
    adata = cell_anndata(
        values,
        genes,
        obs=obs,
        xy_um=xy,
        library_id=library_id,
        platform="merfish",
        source=f"MERFISH mouse preoptic area, bregma -0.29: {registry()[_MERFISH].citation}",
        pixel_size_um=None,
        metadata={"x_values": note},
    )
    adata.uns["X_values"] = note
    logger.info("Loaded MERFISH preoptic area: %d cells × %d genes (X: %s)", adata.n_obs, adata.n_vars, note)
    return adata


def cosmx_nsclc() -> AnnData:
    """Load ``mini_nsclc``: 2,198 cells of a CosMx non-small-cell lung cancer section, as shipped with InSituType.

    Licence: NanoString's non-commercial licence (see ``InSituType/LICENSE`` in the registry): fine for tests,
    teaching and notebooks; not for commercial use.

    Returns
    -------
    AnnData of 2,198 cells × 960 genes:

    - ``.X``: counts, float32 CSR; ``var_names`` gene symbols;
    - ``obsm['controls']``: float32 DataFrame of the 20 negative probes (``NegPrb3`` … ``NegPrb23``), kept apart from
      the genes; ``obs['control_counts']`` their sum;
    - ``obs['slide']``, ``obs['fov']``, ``obs['cell_ID']`` (int, parsed from the cell names ``c_<slide>_<fov>_<cell>``),
      ``obs['library_id']`` (``'mini_nsclc'``); no cell types (the package ships none);
    - ``obsm['spatial']``: float64 (x, y) in µm: the source's ``x``, ``y`` are in mm (a 0.7 × 0.7 mm crop; median
      nearest-neighbour distance 9 µm) and are multiplied by 1,000; y is negative, as in the source;
    - ``obsm['X_umap']``: InSituType's UMAP;
    - ``uns['spatial']['mini_nsclc']``: ``scalefactors['microns_per_pixel'] = 1``; ``metadata``: ``platform='cosmx'``,
      ``source`` (citation), ``license``, ``pixel_size_um`` (0.18: the prototype instrument of the 2022 NSCLC
      release; the coordinates here are already physical).

    References
    ----------
    Danaher P et al. Insitutype: likelihood-based cell typing for single cell spatial transcriptomics. bioRxiv
    (2022); He S et al. Nat Biotechnol 40, 1794-1806 (2022) (the NSCLC CosMx data).
    """
    data = read_rda(fetch(_NSCLC))["mini_nsclc"]
    counts, neg = data["counts"], data["neg"]
    cells = pd.Index(np.asarray(counts.coords[counts.dims[0]].values).astype(str), dtype=object)
    genes = np.asarray(counts.coords[counts.dims[1]].values).astype(str)
    probes = np.asarray(neg.coords[neg.dims[1]].values).astype(str)
    if not np.array_equal(np.asarray(neg.coords[neg.dims[0]].values).astype(str), cells.to_numpy()):
        raise ValueError(f"{_NSCLC}: the negative-probe matrix lists other cells than the count matrix.")

    parts = cells.str.split("_", expand=True)  # c_<slide>_<fov>_<cell>
    obs = pd.DataFrame(
        {
            "slide": parts.get_level_values(1).astype(int),
            "fov": parts.get_level_values(2).astype(int),
            "cell_ID": parts.get_level_values(3).astype(int),
        },
        index=cells,
    )
    matrix = np.hstack([np.asarray(counts.values), np.asarray(neg.values)])
    xy_um = np.column_stack([data["x"], data["y"]]).astype(np.float64) * 1000.0  # mm → µm
    library_id = "mini_nsclc"
    entry = registry()[_NSCLC]
    adata = cell_anndata(
        matrix,
        np.concatenate([genes, probes]),
        obs=obs,
        xy_um=xy_um,
        library_id=library_id,
        platform="cosmx",
        source=f"CosMx NSCLC subset mini_nsclc: {entry.citation}",
        pixel_size_um=_NSCLC_PIXEL_SIZE_UM,
        control_mask=np.r_[np.zeros(len(genes), bool), np.ones(len(probes), bool)],
        metadata={"license": entry.license, "coordinates": "x, y in mm × 1000"},
    )
    adata.obsm["X_umap"] = np.asarray(data["umap"].values, dtype=np.float64)
    logger.info(
        "Loaded CosMx mini_nsclc: %d cells × %d genes (+%d negative probes; NanoString non-commercial licence)",
        adata.n_obs,
        adata.n_vars,
        len(probes),
    )
    return adata


def xenium_breast() -> AnnData:
    """Load a 690 × 545 µm crop of the Xenium human breast cancer section (Janesick et al. 2023) with cell types.

    A mirror-only, derived file: it was converted from VoltRon's R objects (see the mirror's ``derived/README.md``),
    has no public URL, and loads only where ``$STORM_DATA_MIRROR`` holds it.

    Returns
    -------
    AnnData of 2,189 cells × 313 genes:

    - ``.X``: counts, float32 CSR; ``var_names`` gene symbols (no control probes in this export:
      ``obsm['controls']`` is empty and ``obs['control_counts']`` 0);
    - ``obs['celltype']`` (categorical: DCIS_1/2, IT_1–3, ACTA2/KRT15 myoepithelial, T/B cells, macrophages,
      endothelial, stromal, mast, myeloma, Low Count Cells), ``obs['cluster']``, ``obs['n_counts']``,
      ``obs['library_id']`` (``'xenium_breast_rep1'``);
    - ``obsm['spatial']``: float64 (x, y) in µm, y pointing down (image rows);
    - ``uns['spatial']['xenium_breast_rep1']``: ``images['hires']``: the DAPI image at 1 µm per pixel (689 × 545,
      grey in uint8 RGB; fluorescence, **not H&E**); ``scalefactors``: ``microns_per_pixel = 1``,
      ``tissue_hires_scalef = 1`` (image px per µm); ``metadata``: ``platform='xenium'``, ``source`` (citation),
      ``pixel_size_um`` (0.2125, Xenium's morphology image), ``image_type``, ``provenance``, ``celltype_note``,
      ``mirror_only`` (True).

    Raises
    ------
    storm.datasets.DataUnavailableError
        No data mirror holds the file.

    References
    ----------
    Janesick A et al. High resolution mapping of the tumor microenvironment using integrated single-cell, spatial
    and in situ analysis. Nat Commun 14, 8353 (2023). Converted from VoltRon (BIMSBbioinfo, MIT).
    """
    raw = ad.read_h5ad(fetch(_XENIUM_H5AD))
    dapi = read_png(fetch(_XENIUM_DAPI))
    image_info = raw.uns.get("image", {})
    um_per_px = float(image_info.get("um_per_px", 1.0))
    if float(image_info.get("x_um_at_col0", 0.0)) != 0.0 or float(image_info.get("y_um_at_row0", 0.0)) != 0.0:
        raise ValueError(f"{_XENIUM_H5AD}: the DAPI image does not start at (0, 0) µm; storm assumes it does.")

    obs = raw.obs[["cluster", "celltype", "n_counts"]].copy()
    obs["celltype"] = obs["celltype"].astype("category")
    library_id = "xenium_breast_rep1"
    adata = cell_anndata(
        raw.X,
        raw.var_names,
        obs=obs,
        xy_um=np.asarray(raw.obsm["spatial"], dtype=np.float64),
        library_id=library_id,
        platform="xenium",
        source=f"Xenium human breast rep1 crop: {registry()[_XENIUM_H5AD].citation}",
        pixel_size_um=XENIUM_PIXEL_SIZE_UM,
        metadata={
            "image_type": "DAPI fluorescence at 1 µm per pixel (no H&E in this set)",
            "provenance": str(raw.uns.get("provenance", "")),
            "celltype_note": str(raw.uns.get("celltype_note", "")),
            "mirror_only": True,
        },
        scalefactors={"tissue_hires_scalef": 1.0 / um_per_px},
    )
    adata.uns["spatial"][library_id]["images"] = {"hires": dapi}
    logger.info(
        "Loaded Xenium breast crop (mirror-only derived file): %d cells × %d genes, %d cell types, DAPI %d × %d px",
        adata.n_obs,
        adata.n_vars,
        adata.obs["celltype"].nunique(),
        dapi.shape[1],
        dapi.shape[0],
    )
    return adata


def vendor_folder(platform: str) -> Path:
    """Return a local folder laid out as the instrument writes it: tiny real outputs for the readers' tests.

    The files are SpatialFeatureExperiment's test data (Artistic-2.0), cut down from real runs: Xenium (526 cells ×
    27 genes + 3 controls in a 400 µm square; ``transcripts.parquet`` holds 5,260 transcripts, a subsample: the
    cells' matrix counts 45,726), CosMx (mouse brain, 27 cells of one FOV × 950 genes + 10 negative probes, with
    ``*_tx_file.csv``) and MERSCOPE (mouse liver ``Liver1Slice1``, 100 cells × 347 genes + 38 blanks, with
    ``detected_transcripts.csv``). For readers' tests, not for biology.

    Parameters
    ----------
    platform
        ``"xenium"``, ``"cosmx"`` or ``"merscope"`` (``"vizgen"`` too).

    Returns
    -------
    The folder: the mirror's (or cache's) own folder where all its files lie together there, else a copy under
    ``$STORM_DATA_DIR/vendor/<platform>/``. For :func:`storm.io.read_xenium`, :func:`storm.io.read_cosmx`,
    :func:`storm.io.read_merscope` and :func:`storm.pp.read_transcripts`.

    Raises
    ------
    ValueError
        Unknown platform.
    """
    key = "merscope" if platform == "vizgen" else platform
    if key not in VENDOR_FOLDERS:
        raise ValueError(f"Unknown platform {platform!r}; storm has vendor folders for {', '.join(VENDOR_FOLDERS)}.")
    prefix = f"{_VENDOR_ROOT}{VENDOR_FOLDERS[key]}/"
    names = sorted(n for n in registry() if n.startswith(prefix))
    relative = [n[len(prefix) :] for n in names]
    paths = [fetch(n) for n in names]
    # the folder each file implies, given its path below the vendor folder
    roots = {p.parents[len(Path(rel).parts) - 1] for p, rel in zip(paths, relative, strict=True)}
    if len(roots) == 1:
        return roots.pop()
    folder = data_dir() / "vendor" / key
    for path, rel in zip(paths, relative, strict=True):
        target = folder / rel
        if not target.is_file() or target.stat().st_size != path.stat().st_size:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    return folder
