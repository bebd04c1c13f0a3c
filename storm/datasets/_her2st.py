"""The HER2-positive breast cancer legacy-ST sections (Andersson et al. 2021) and the Hist2ST gene list."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from anndata import AnnData

from storm._logging import logger
from storm.io._legacy_st import read_legacy_st

from ._fetch import fetch
from ._registry import registry

LABELS = [
    "invasive cancer",
    "cancer in situ",
    "immune infiltrate",
    "breast glands",
    "connective tissue",
    "adipose tissue",
    "undetermined",
]
_ROOT = "her2st/data"
_COUNTS = _ROOT + "/ST-cnts/{section}.tsv.gz"
_SPOTS = _ROOT + "/ST-spotfiles/{section}_selection.tsv"
_LABEL_FILE = _ROOT + "/ST-pat/lbl/{section}_labeled_coordinates.tsv"
_HIST2ST_GENES = "Hist2ST/data/her_hvg_cut_1000.npy"


def _image_name(section: str) -> str | None:
    prefix = f"{_ROOT}/ST-imgs/{section[0]}/{section}/"
    return next((n for n in registry() if n.startswith(prefix) and n.lower().endswith((".jpg", ".tif", ".png"))), None)


def her2st_sections(*, with_image: bool | None = None, labelled: bool | None = None) -> list[str]:
    """List the HER2ST sections storm can load (those with counts and a spot selection file in the registry).

    Parameters
    ----------
    with_image
        ``True``: only sections whose full-resolution H&E image is in the registry (C2–C6); ``False``: only those
        without; ``None``: all.
    labelled
        ``True``: only sections with pathologist labels (B1, C1, D1, E1, F1); ``False``: only those without;
        ``None``: all.

    Returns
    -------
    Section ids (patient letter + section number), sorted.
    """
    names = registry()
    sections = [
        m.group(1)
        for n in names
        if (m := re.fullmatch(_COUNTS.format(section=r"([A-Z]\d)").replace(".", r"\."), n))
        and _SPOTS.format(section=m.group(1)) in names
    ]
    if with_image is not None:
        sections = [s for s in sections if (_image_name(s) is not None) == with_image]
    if labelled is not None:
        sections = [s for s in sections if (_LABEL_FILE.format(section=s) in names) == labelled]
    return sorted(sections)


def _labels(section: str, array_xy: np.ndarray) -> pd.Categorical:
    """Pathologist labels matched to spots by rounding the label file's array x, y to the grid."""
    table = pd.read_csv(fetch(_LABEL_FILE.format(section=section)), sep="\t")
    located = table[["x", "y"]].notna().all(axis=1)
    if not located.all():
        logger.info("%s: %d label rows without coordinates ignored.", section, (~located).sum())
    table = table[located]
    keys = table["x"].round().astype(int).astype(str) + "x" + table["y"].round().astype(int).astype(str)
    if keys.duplicated().any():
        raise ValueError(
            f"Label file of {section} gives two labels to one spot (e.g. {keys[keys.duplicated()].iloc[0]})."
        )
    unknown = sorted(set(table["label"].dropna()) - set(LABELS))
    if unknown:
        raise ValueError(f"Unexpected labels {unknown} in the label file of {section}.")
    labels = pd.Series(table["label"].to_numpy(), index=keys.to_numpy())
    spot_keys = pd.Index([f"{x}x{y}" for x, y in array_xy])
    unmatched = (~labels.index.isin(spot_keys)).sum()
    if unmatched:
        logger.info("%s: %d labelled spots have no counts (not loaded).", section, unmatched)
    return pd.Categorical(labels.reindex(spot_keys).to_numpy(), categories=LABELS)


def her2st(section: str = "C2", *, thumbnail_side: int = 2000) -> AnnData:
    """Load one section of the HER2-positive breast cancer legacy Spatial Transcriptomics data set.

    Parameters
    ----------
    section
        One of :func:`her2st_sections`: patients B–F, e.g. ``"B1"``, ``"C2"``, ``"F3"``.
    thumbnail_side
        Longer side of the plotting thumbnail made from the full-resolution H&E (sections C2–C6).

    Returns
    -------
    AnnData of the section's spots (176–712) × genes (~15,000 gene symbols):

    - ``.X``: raw counts, float32 CSR; ``var_names``: gene symbols of the counts table (made unique);
    - ``obs_names``: ``"<x>x<y>"`` array positions; ``obs['array_row']`` (= y), ``obs['array_col']`` (= x);
      ``obs['library_id']`` (categorical, the section id); ``obs['patient']`` (categorical, the letter);
    - ``obs['label']`` (labelled sections B1, C1, D1, E1, F1 only): categorical pathologist label, categories
      ``invasive cancer``, ``cancer in situ``, ``immune infiltrate``, ``breast glands``, ``connective tissue``,
      ``adipose tissue``, ``undetermined`` (kept: the pathologist's own category); NaN where a spot has no label;
    - ``obsm['spatial']``: float64 (``pixel_x``, ``pixel_y``) in the full-resolution H&E's pixels;
    - ``uns['spatial'][section]``: ``scalefactors`` ``microns_per_pixel`` (200 µm / pitch, ≈ 0.69), the fitted
      ``spot_pitch_fullres`` (≈ 291 px), ``spot_diameter_fullres`` (100 µm); where the image exists (C2–C6)
      ``images['hires']`` (thumbnail) and ``tissue_hires_scalef``; ``metadata`` ``platform='st'``, ``source``
      (citation), and ``fullres_path`` and ``fullres_shape`` ``[height, width]`` where the image exists.

    Raises
    ------
    ValueError
        ``section`` is not one of :func:`her2st_sections`.

    Notes
    -----
    The full-resolution image (~9,300 × 9,900 px) is never decoded here: its path is recorded for
    :class:`storm.io.LazyImage`, and the thumbnail is decoded at reduced scale (JPEG draft mode, ~0.2 s). Spots in
    the counts but not in the spot selection file would have no position and would be dropped with a warning; in
    this release every counted spot is in its selection file. Labels match spots by rounding the label file's x, y
    to the array grid; labelled spots without counts (1 in C1, 3 in D1) are not loaded.

    References
    ----------
    Andersson A et al. Spatial deconvolution of HER2-positive breast cancer delineates tumor-associated cell type
    interactions. Nat Commun 12, 6012 (2021).
    """
    section = str(section).upper()
    valid = her2st_sections()
    if section not in valid:
        raise ValueError(f"Unknown HER2ST section {section!r}; storm has {', '.join(valid)}.")
    counts_name = _COUNTS.format(section=section)
    image_name = _image_name(section)
    adata = read_legacy_st(
        fetch(counts_name),
        fetch(_SPOTS.format(section=section)),
        fetch(image_name) if image_name else None,
        library_id=section,
        source=f"HER2ST section {section}: {registry()[counts_name].citation}",
        thumbnail_side=thumbnail_side,
    )
    adata.obs["patient"] = pd.Categorical([section[0]] * adata.n_obs)
    n_labelled = 0
    if _LABEL_FILE.format(section=section) in registry():
        xy = adata.obs[["array_col", "array_row"]].to_numpy()
        adata.obs["label"] = _labels(section, xy)
        n_labelled = int(adata.obs["label"].notna().sum())
    logger.info(
        "Loaded HER2ST %s: %d spots × %d genes, %d labelled, %s",
        section,
        adata.n_obs,
        adata.n_vars,
        n_labelled,
        "full-res H&E recorded lazily" if image_name else "no H&E image in the registry",
    )
    return adata


def hist2st_genes() -> list[str]:
    """Return the 785 genes on which HER2ST expression-prediction papers (Hist2ST, HisToGene, …) report scores.

    Returns
    -------
    Gene symbols, in the order of the published file.

    References
    ----------
    Zeng Y et al. Spatial transcriptomics prediction from histology jointly through Transformer and graph neural
    networks. Brief Bioinform 23, bbac297 (2022).
    """
    return [str(g) for g in np.load(fetch(_HIST2ST_GENES), allow_pickle=False)]
