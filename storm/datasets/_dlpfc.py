"""The DLPFC Visium sections (Maynard et al. 2021) with their manual cortical-layer labels."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from anndata import AnnData

from storm._logging import logger
from storm.io._rdata import read_rda
from storm.io._spatial import read_png
from storm.io._visium import build_visium, read_scalefactors, read_tissue_positions

from ._fetch import fetch
from ._genes import ensembl_to_symbol
from ._registry import registry

LAYERS = ["L1", "L2", "L3", "L4", "L5", "L6", "WM"]
_COUNTS = "Banksy/data/dlpfc{section}.rda"
_SPATIAL = "HumanPilot/10X/{section}/{file}"
_SPATIAL_FILES = ("tissue_positions_list.txt", "scalefactors_json.json", "tissue_lowres_image.png")
_LABELS = "HumanPilot/10X/barcode_level_layer_map.tsv"


def dlpfc_sections() -> list[str]:
    """List the DLPFC sections storm can load: those whose counts and spatial files are all in the registry.

    Returns
    -------
    Section ids (``"151673"``, ``"151674"``), sorted.
    """
    names = registry()
    sections = {m.group(1) for n in names if (m := re.fullmatch(r"Banksy/data/dlpfc(\d+)\.rda", n))}
    return sorted(s for s in sections if all(_SPATIAL.format(section=s, file=f) in names for f in _SPATIAL_FILES))


def _layer_labels(section: str, barcodes: pd.Index) -> pd.Categorical:
    table = pd.read_csv(fetch(_LABELS), sep="\t", header=None, names=["barcode", "section", "layer"], dtype=str)
    labels = table[table["section"] == section].set_index("barcode")["layer"]
    unknown = sorted(set(labels.dropna()) - set(LAYERS))
    if unknown:
        raise ValueError(f"Unexpected layer labels {unknown} in {_LABELS} for section {section}.")
    return pd.Categorical(labels.reindex(barcodes).to_numpy(), categories=LAYERS)


def dlpfc(section: str = "151673") -> AnnData:
    """Load one section of the human dorsolateral prefrontal cortex Visium data set with its layer labels.

    Raw UMI counts of the 5,000 most variable genes (as packaged by BANKSY), spot positions, scale factors and the
    600-px H&E image of spatialLIBD's HumanPilot repository, and the manual annotation of cortical layers.

    Parameters
    ----------
    section
        One of :func:`dlpfc_sections` (``"151673"``, ``"151674"``).

    Returns
    -------
    AnnData of the spots under tissue (3,639 for 151673, 3,673 for 151674) × 5,000 genes:

    - ``.X``: raw UMI counts, float32 CSR;
    - ``var_names``: HGNC symbols (GENCODE v50 + HGNC, see :func:`storm.datasets.ensembl_to_symbol`), the Ensembl
      id where no symbol maps (264 genes of 151673, 5%), made unique; ``var['gene_ids']``: Ensembl ids;
    - ``obs['layer']``: categorical manual layer, categories ``L1``–``L6``, ``WM``; NaN for the spots the authors
      left unlabelled (28 in 151673, 38 in 151674);
    - ``obs['in_tissue']`` (all 1), ``obs['array_row']``, ``obs['array_col']`` (int), ``obs['library_id']``
      (categorical, the section id);
    - ``obsm['spatial']``: float64 (x, y) = (``pxl_col_in_fullres``, ``pxl_row_in_fullres``) in full-resolution
      pixels;
    - ``uns['spatial'][section]``: ``images['lowres']`` (600-px uint8 RGB; no hires image and no full-resolution
      image exist in the source, so ``metadata`` has no ``fullres_path``); ``scalefactors``: Space Ranger's
      (``tissue_lowres_scalef``, ``tissue_hires_scalef``, ``spot_diameter_fullres``, ``fiducial_diameter_fullres``)
      plus ``microns_per_pixel`` (≈ 0.73, fitted from the 100 µm spot grid) and ``spot_pitch_fullres`` (≈ 137 px);
      ``metadata``: ``platform='visium'``, ``source`` (citation).

    Raises
    ------
    ValueError
        ``section`` is not one of :func:`dlpfc_sections`.

    Notes
    -----
    The lowres image has about 4 pixels per spot: fine for plots and coarse context, too coarse for patch
    morphology. ``microns_per_pixel`` is fitted from the spot grid, not taken as ``55 / spot_diameter_fullres``
    (that would give 0.57, 22% too small; see :func:`storm.io.read_visium`).

    References
    ----------
    Maynard KR et al. Transcriptome-scale spatial gene expression in the human dorsolateral prefrontal cortex.
    Nat Neurosci 24, 425-436 (2021). Counts as packaged by Singhal V et al. BANKSY unifies cell typing and tissue
    domain segmentation for scalable spatial omics data analysis. Nat Genet 56, 431-441 (2024).
    """
    section = str(section)
    valid = dlpfc_sections()
    if section not in valid:
        raise ValueError(f"Unknown DLPFC section {section!r}; storm has {', '.join(valid)}.")

    files = {f: fetch(_SPATIAL.format(section=section, file=f)) for f in _SPATIAL_FILES}
    positions = read_tissue_positions(files["tissue_positions_list.txt"])
    scalefactors = read_scalefactors(files["scalefactors_json.json"])
    lowres = read_png(files["tissue_lowres_image.png"])

    counts_name = _COUNTS.format(section=section)
    (obj,) = read_rda(fetch(counts_name)).values()
    expression = obj["expression"]  # xarray: Ensembl ids × barcodes, dense float64 counts
    gene_dim, spot_dim = expression.dims
    ensembl = pd.Index(expression.coords[gene_dim].values.astype(str))
    barcodes = pd.Index(expression.coords[spot_dim].values.astype(str))
    counts = np.asarray(expression.values, dtype=np.float32).T

    symbols = ensembl_to_symbol(ensembl)
    var = pd.DataFrame({"gene_ids": ensembl.to_numpy()}, index=pd.Index(symbols, dtype=object))

    citation = registry()[counts_name].citation
    adata = build_visium(
        positions,
        scalefactors,
        {"lowres": lowres},
        library_id=section,
        source=f"DLPFC section {section}: {citation}",
        counts=counts,
        barcodes=barcodes,
        var=var,
    )
    adata.obs["layer"] = _layer_labels(section, adata.obs_names)
    logger.info(
        "Loaded DLPFC %s: %d spots × %d genes (%d unlabelled spots, %d genes kept as Ensembl ids)",
        section,
        adata.n_obs,
        adata.n_vars,
        adata.obs["layer"].isna().sum(),
        int((adata.var["gene_ids"].to_numpy() == symbols).sum()),
    )
    return adata
