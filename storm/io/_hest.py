"""``storm.io.read_hest``: one sample of a HEST-1k folder (``st/``, ``wsis/``, ``metadata/``) in storm's layout."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData
from anndata.utils import make_index_unique
from scipy import sparse

from storm._logging import logger

from ._wsi import wsi_entry

#: HEST's ``st_technology`` → storm's ``metadata['platform']``.
PLATFORMS = {
    "visium": "visium",
    "visium hd": "visium_hd",
    "xenium": "xenium",
    "spatial transcriptomics": "st",
    "st": "st",
}
#: Pixel-size fields of a HEST metadata file, in the order they are trusted: HEST's own estimate from the spot
#: spacing (what its patches are cut with), then the value embedded in the scan.
MPP_KEYS = ("pixel_size_um_estimated", "pixel_size_um_embedded")
_WSI_SUFFIXES = (".tif", ".tiff", ".svs", ".ome.tif", ".ndpi")


def _wsi_path(folder: Path, sample_id: str) -> Path | None:
    for suffix in _WSI_SUFFIXES:
        path = folder / "wsis" / f"{sample_id}{suffix}"
        if path.is_file():
            return path
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def hest_metadata(folder: str | os.PathLike, sample_id: str) -> dict[str, Any]:
    """Read ``metadata/<sample_id>.json`` of a HEST folder.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a JSON object.
    """
    path = Path(folder) / "metadata" / f"{sample_id}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"No HEST metadata file {path}: a HEST-1k folder holds metadata/<id>.json beside st/<id>.h5ad and "
            "wsis/<id>.tif (download them with the hest library or huggingface_hub)."
        )
    meta = json.loads(path.read_text())
    if not isinstance(meta, dict):
        raise ValueError(f"{path} is not a JSON object of sample metadata.")
    return meta


def hest_samples(
    folder: str | os.PathLike,
    *,
    st_technology: str | list[str] | None = None,
    species: str | None = None,
    organ: str | None = None,
) -> list[str]:
    """List the samples of a HEST folder that have counts and metadata, optionally filtered by their metadata.

    Parameters
    ----------
    folder
        A HEST-1k folder (or a part of one).
    st_technology
        Keep samples of these technologies (HEST's ``st_technology``: ``"Visium"``, ``"Xenium"``,
        ``"Spatial Transcriptomics"``, ``"Visium HD"``); case-insensitive.
    species, organ
        Keep samples whose ``species`` (``"Homo sapiens"``, ``"Mus musculus"``) / ``organ`` matches, case-insensitive.

    Returns
    -------
    Sample ids, sorted.
    """
    folder = Path(folder)
    if not (folder / "st").is_dir():
        raise FileNotFoundError(f"{folder} has no st/ folder: not a HEST-1k folder.")
    wanted_tech = None
    if st_technology is not None:
        techs = [st_technology] if isinstance(st_technology, str) else list(st_technology)
        wanted_tech = {t.lower() for t in techs}
    out = []
    for st in sorted((folder / "st").glob("*.h5ad")):
        sample = st.stem
        if not (folder / "metadata" / f"{sample}.json").is_file():
            continue
        meta = hest_metadata(folder, sample)
        if wanted_tech is not None and str(meta.get("st_technology", "")).lower() not in wanted_tech:
            continue
        if species is not None and str(meta.get("species", "")).lower() != species.lower():
            continue
        if organ is not None and str(meta.get("organ", "")).lower() != organ.lower():
            continue
        out.append(sample)
    return out


def read_hest(
    folder: str | os.PathLike,
    sample_id: str,
    *,
    image: bool = True,
    microns_per_pixel: float | None = None,
) -> AnnData:
    """Read one sample of a HEST-1k folder: counts, spot coordinates, pixel size and the whole-slide image.

    HEST-1k (Jaume et al. 2024) holds each sample as ``st/<id>.h5ad`` (counts, ``obsm['spatial']`` in pixels of the
    whole-slide image), ``wsis/<id>.tif`` (a pyramidal TIFF) and ``metadata/<id>.json`` (``st_technology``,
    ``pixel_size_um_estimated``, ``pixel_size_um_embedded``, ``spot_diameter`` and ``inter_spot_dist`` in µm,
    ``species``, ``organ``, ``oncotree_code``, …); the other folders (patches, segmentations) are not needed.

    Parameters
    ----------
    folder
        The HEST folder (with ``st/``, ``metadata/`` and ``wsis/``).
    sample_id
        Sample id, e.g. ``"TENX95"`` (:func:`storm.io.hest_samples` lists them).
    image
        Open the whole-slide image (:func:`storm.io.read_wsi`: thumbnail and pyramid; patches read tile by tile).
    microns_per_pixel
        Override the metadata's pixel size.

    Returns
    -------
    AnnData
        HEST's counts and ``obs`` (``in_tissue``, ``array_row``/``array_col`` where present, …) with
        ``obs['library_id']`` = ``sample_id``; ``obsm['spatial']`` (x, y) in full-resolution pixels;
        ``uns['spatial'][sample_id]``: ``scalefactors`` ``microns_per_pixel`` (``pixel_size_um_estimated``, else
        ``pixel_size_um_embedded``), ``spot_diameter_fullres`` (``spot_diameter`` µm in pixels, where given),
        ``tissue_hires_scalef`` and ``images['hires']`` (the whole-slide thumbnail) with an image; ``metadata``:
        ``platform`` (from ``st_technology``: ``'visium'``, ``'xenium'``, ``'st'``, ``'visium_hd'``), ``source``,
        ``mpp_source``, with an image ``fullres_path``, ``fullres_shape`` and the pyramid (``wsi``), and ``hest``: the
        sample's metadata (numbers and strings). HEST's own ``uns['spatial']`` entry (a downscaled copy) is replaced.

    Raises
    ------
    FileNotFoundError
        A missing counts, metadata or (with ``image=True``) whole-slide file.
    ValueError
        No usable pixel size, no spot coordinates, or spots outside the image.

    References
    ----------
    Jaume G et al. HEST-1k: a dataset for spatial transcriptomics and histology image analysis. NeurIPS Datasets and
    Benchmarks (2024).
    """
    import anndata as ad

    folder = Path(folder)
    sample_id = str(sample_id)
    st = folder / "st" / f"{sample_id}.h5ad"
    if not st.is_file():
        raise FileNotFoundError(f"No HEST counts file {st} (samples there: {hest_samples(folder)[:5]}).")
    meta = hest_metadata(folder, sample_id)
    tech = str(meta.get("st_technology") or "")
    platform = PLATFORMS.get(tech.lower(), tech.lower().replace(" ", "_") or "unknown")
    if microns_per_pixel is not None:
        mpp, mpp_source = float(microns_per_pixel), "argument"
    else:
        key = next((k for k in MPP_KEYS if _finite(meta.get(k))), None)
        if key is None:
            raise ValueError(
                f"{sample_id}: the HEST metadata has no positive {' or '.join(MPP_KEYS)}; pass microns_per_pixel=."
            )
        mpp, mpp_source = float(meta[key]), f"HEST metadata {key}"

    adata = ad.read_h5ad(st)
    if "spatial" in adata.obsm:
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    elif {"pxl_col_in_fullres", "pxl_row_in_fullres"} <= set(adata.obs.columns):
        xy = adata.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=np.float64)
    else:
        raise ValueError(f"{st} has no spot coordinates (obsm['spatial'] or obs['pxl_col/row_in_fullres']).")

    source = f"HEST-1k {sample_id}: {meta.get('dataset_title') or tech}"
    if image:
        wsi = _wsi_path(folder, sample_id)
        if wsi is None:
            raise FileNotFoundError(
                f"No whole-slide image wsis/{sample_id}.tif in {folder}; download it, or pass image=False."
            )
        entry = wsi_entry(wsi, microns_per_pixel=mpp, platform=platform, source=source)
        height, width = entry["metadata"]["fullres_shape"]
        outside = (xy < -0.5).any(axis=1) | (xy[:, 0] > width - 0.5) | (xy[:, 1] > height - 0.5)
        if outside.any():
            raise ValueError(
                f"{outside.sum()} of {len(xy)} spots of {sample_id} lie outside its {width} × {height} px whole-slide "
                "image: the h5ad and the image are not of one sample (or the coordinates are not full-resolution)."
            )
    else:
        entry = {"images": {}, "scalefactors": {}, "metadata": {"platform": platform, "source": source}}
    entry["scalefactors"]["microns_per_pixel"] = mpp
    if _finite(meta.get("spot_diameter")):
        entry["scalefactors"]["spot_diameter_fullres"] = float(meta["spot_diameter"]) / mpp
    entry["metadata"]["mpp_source"] = mpp_source
    entry["metadata"]["hest"] = {
        str(k): v for k, v in meta.items() if isinstance(v, str) or (isinstance(v, int | float) and math.isfinite(v))
    }

    X = adata.X if sparse.issparse(adata.X) else sparse.csr_matrix(adata.X)
    out = AnnData(
        X=sparse.csr_matrix(X, dtype=np.float32),
        obs=adata.obs.copy(),
        var=adata.var.set_axis(make_index_unique(pd.Index(adata.var_names.astype(str)))),
    )
    out.obs["library_id"] = pd.Categorical([sample_id] * out.n_obs)
    for key in ("array_row", "array_col"):
        if key in out.obs:
            out.obs[key] = out.obs[key].astype(np.int64)
    out.obsm["spatial"] = np.ascontiguousarray(xy)
    out.uns["spatial"] = {sample_id: entry}
    logger.info(
        f"read_hest: {sample_id}: {out.n_obs:,} spots × {out.n_vars:,} genes, {tech or 'unknown technology'} "
        f"(platform {platform!r}), {mpp:.4f} µm/px ({mpp_source}), "
        + ("whole-slide image recorded lazily" if image else "no image")
    )
    return out
