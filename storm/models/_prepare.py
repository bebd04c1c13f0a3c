"""The data path AnnData → arrays: expression on the model's genes, windows, and each slide's patch source.

This module (with :mod:`storm.tl`) is the only place where the torch side meets AnnData; everything it returns is
numpy (:class:`storm.train.SlideArrays`).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from storm._logging import logger
from storm._slide_data import PatchSource, SlideArrays
from storm.io._spatial import to_rgb_uint8
from storm.models._config import StormModelConfig
from storm.pp import harmonize_genes, normalize, patch_scale, spatial_windows
from storm.pp._scale import image_centres, is_he_image
from storm.pp._validate import (
    check_coordinates_in_image,
    check_gene_overlap,
    check_libraries,
    check_spatial,
    get_matrix,
)

__all__ = [
    "has_counts",
    "lognorm_on_panel",
    "match_genes",
    "panel_coverage",
    "prepare_slides",
    "select_genes",
    "slide_has_image",
]

MODES = ("auto", "joint", "image", "expression")


@contextmanager
def _keep_torch_threads() -> Iterator[None]:
    """Restore torch's intra-op thread count after scanpy calls.

    scanpy's numba kernels (e.g. in ``normalize_total``) start numba's OpenMP layer, which sets the thread count of
    the OpenMP runtime torch shares to all cores: a ``torch.set_num_threads`` chosen by the user would be lost.
    """
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)


def _light(X, n_obs: int, var_names: pd.Index) -> AnnData:
    """Wrap ``X`` alone in an AnnData (no copy of obs/uns/images): what normalize/harmonize need."""
    obs = pd.DataFrame(index=pd.Index(np.arange(n_obs).astype(str)))
    return AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(var_names.astype(str))))


def has_counts(adata: AnnData, layer: str | None = None) -> bool:
    """Whether ``adata`` holds an expression matrix to read counts from (``.X`` or ``layer``, with genes)."""
    if adata.n_vars == 0:
        return False
    return (adata.X is not None) if layer is None else (layer in adata.layers)


def _warn_if_not_counts(X, where: str) -> None:
    values = X.data if sparse.issparse(X) else np.asarray(X).ravel()
    sample = values[:100_000]
    if sample.size and np.any(sample != np.round(sample)) and float(sample.max()) < 30:
        logger.warning(
            f"{where} holds non-integer values below 30: it looks log-normalised. storm normalises raw counts itself; "
            "pass the raw counts (e.g. `layer='counts'`)."
        )


def match_genes(source: Sequence[str] | pd.Index, genes: Sequence[str], *, ignore_case: bool = True) -> pd.Index:
    """Rename the genes ``source`` onto the gene list ``genes``: exact matches, then matches ignoring letter case.

    A gene of ``source`` keeps its name unless it is not on ``genes`` but exactly one gene of ``genes`` not matched
    exactly equals it ignoring case, and no other gene of ``source`` claims that name: then it takes that name. This
    maps e.g. a mouse panel (``Gad1``) onto a human gene list (``GAD1``): for most one-to-one orthologues the symbols
    agree up to letter case.

    Parameters
    ----------
    source
        Gene names of the data (unique).
    genes
        The target gene list (unique).
    ignore_case
        Allow the matches ignoring case; ``False`` returns ``source`` unchanged.

    Returns
    -------
    pd.Index
        ``source`` with renamed genes, in the same order (unique).
    """
    source = pd.Index([str(g) for g in source])
    if not ignore_case:
        return source
    target = pd.Index([str(g) for g in genes])
    exact = set(source) & set(target)
    free = target[~target.isin(exact)]
    upper = pd.Series(free, index=free.str.upper())
    upper = upper[~upper.index.duplicated(keep=False)]  # ambiguous ignoring case: no match
    names = source.to_numpy(dtype=object).copy()
    todo = np.flatnonzero(~source.isin(exact))
    keys = source[todo].str.upper()
    claims = pd.Series(keys).value_counts()
    for i, key in zip(todo, keys, strict=True):
        if key in upper.index and claims[key] == 1:
            names[i] = upper[key]
    return pd.Index(names)


def panel_coverage(source: Sequence[str] | pd.Index, genes: Sequence[str], *, ignore_case: bool = True) -> dict:
    """How much of a data set's gene panel a model with gene list ``genes`` reads (see :func:`match_genes`).

    Parameters
    ----------
    source
        Gene names of the data.
    genes
        The model's gene list.
    ignore_case
        Match names ignoring letter case where no exact match exists.

    Returns
    -------
    dict
        ``n_genes`` (data), ``n_model_genes``, ``n_used`` (data genes on the model's list; the others are ignored),
        ``n_matched_ignoring_case``, ``fraction_used`` (``n_used / n_genes``) and ``fraction_of_model``
        (``n_used / n_model_genes``).
    """
    source = pd.Index([str(g) for g in source])
    renamed = match_genes(source, genes, ignore_case=ignore_case)
    target = pd.Index([str(g) for g in genes])
    used = renamed.isin(target)
    n_used = int(used.sum())
    return {
        "n_genes": len(source),
        "n_model_genes": len(target),
        "n_used": n_used,
        "n_matched_ignoring_case": int((used & (renamed != source)).sum()),
        "fraction_used": n_used / max(len(source), 1),
        "fraction_of_model": n_used / max(len(target), 1),
    }


def lognorm_on_panel(
    adata: AnnData,
    genes: Sequence[str],
    *,
    target_sum: float = 1e4,
    layer: str | None = None,
    ignore_case: bool = False,
) -> tuple[sparse.csr_matrix, np.ndarray]:
    """``log1p`` of library-size-normalised counts (:func:`storm.pp.normalize`) on the gene list ``genes``.

    Library sizes are those of all of ``adata``'s genes; then the columns are put on ``genes``
    (:func:`storm.pp.harmonize_genes`), zeros where ``adata`` does not measure a gene.

    Parameters
    ----------
    adata
        Spots × genes with raw counts in ``.X`` (or ``layer``). Not modified.
    genes
        Target gene list.
    target_sum
        Counts per spot before ``log1p``.
    layer
        Read counts from this layer.
    ignore_case
        Match gene names ignoring letter case where no exact match exists (:func:`match_genes`).

    Returns
    -------
    tuple
        float32 CSR ``(n_obs, len(genes))`` and bool ``(len(genes),)``: which genes ``adata`` measures.

    Raises
    ------
    ValueError
        No gene in common with ``genes`` (the message gives both sizes and examples), no counts, negative or
        non-finite counts, or duplicated gene names.
    """
    X = get_matrix(adata, layer)
    var_names = match_genes(adata.var_names, genes, ignore_case=ignore_case)
    check_gene_overlap(var_names, pd.Index(genes))
    light = _light(X, adata.n_obs, var_names)
    with _keep_torch_threads():
        normalize(light, target_sum=target_sum, layer_added="lognorm")  # checks the counts first (dtype, sign)
    _warn_if_not_counts(X, "`adata.X`" if layer is None else f"`adata.layers[{layer!r}]`")
    panel = harmonize_genes(_light(light.layers["lognorm"], adata.n_obs, var_names), genes)
    return sparse.csr_matrix(panel.X, dtype=np.float32), panel.var["measured"].to_numpy(dtype=bool)


def slide_has_image(adata: AnnData, library_id: str, image: str = "auto") -> bool:
    """Whether a slide has an H&E image patches can be cut from (a recorded full-resolution file, or hires/lowres).

    Images whose ``metadata['image_type']`` names another stain (e.g. DAPI) do not count (:func:`is_he_image`).
    """
    entry = adata.uns.get("spatial", {}).get(library_id) or {}
    if not is_he_image(entry.get("metadata")):
        return False
    images = entry.get("images") or {}
    path = (entry.get("metadata") or {}).get("fullres_path")
    if image == "auto":
        return bool(path) or "hires" in images or "lowres" in images
    if image == "fullres":
        return bool(path)
    return image in images


def _patch_source(
    adata: AnnData, library_id: str, rows: np.ndarray, xy: np.ndarray, config: StormModelConfig
) -> PatchSource:
    """Locate the slide's image and the spots' centres in its pixels (scale as :func:`storm.pp.patch_scale`)."""
    scale = patch_scale(
        adata, size_um=config.size_um, out_px=config.patch_px, library_id=library_id, image=config.image
    ).loc[library_id]
    name = str(scale["image"])
    level = int(scale["level"])
    # continuous coordinates in the image cut from, as storm.pp.extract_patches
    centres = image_centres(xy[rows], float(scale["scalef"]), pyramid=level >= 0)
    check_coordinates_in_image(
        centres - 0.5,
        (int(scale["image_height"]), int(scale["image_width"])),
        library_id=library_id,
        image_name=name,
        obs_names=adata.obs_names[rows],
    )
    entry = adata.uns["spatial"][library_id]
    if name == "fullres":
        path = str(entry["metadata"]["fullres_path"])
        return PatchSource(centres, float(scale["crop_px"]), path=path, name=name, level=None if level < 0 else level)
    return PatchSource(centres, float(scale["crop_px"]), array=to_rgb_uint8(entry["images"][name]), name=name)


def _no_counts_error(adata: AnnData, layer: str | None, n_used: int, mode: str) -> ValueError:
    """Return the error for counts all zero on the model's genes (whose embedding would be the same everywhere)."""
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    X = get_matrix(adata, layer)
    anything = X.count_nonzero() if sparse.issparse(X) else np.count_nonzero(X)
    if anything:
        what = f"{where} has no count on any of the {n_used:,} genes the model reads"
    else:
        what = f"{where} is all zero"
    other = " or use mode='image' where the slides have an H&E image" if mode == "auto" else ""
    return ValueError(
        f"{what}: there is no expression to embed. Pass the raw counts (e.g. `layer='counts'`, or restore "
        f"`adata.X` from `adata.raw`){other}."
    )


def prepare_slides(
    adata: AnnData,
    config: StormModelConfig,
    *,
    mode: str = "auto",
    library_key: str = "library_id",
    layer: str | None = None,
    modalities: Sequence[str] = ("image", "expression"),
) -> list[SlideArrays]:
    """Turn an AnnData (one or several slides) into per-slide arrays for a model of configuration ``config``.

    Parameters
    ----------
    adata
        Spots with ``obsm['spatial']``, ``obs[library_key]``, ``uns['spatial']`` (see DEVELOPERS.md) and raw counts.
        Not modified.
    config
        The model's configuration (gene list, patch size, window).
    mode
        ``"auto"``: every modality the model has and the slide offers; ``"joint"``: both, required on every slide;
        ``"image"``: H&E only (required); ``"expression"``: expression only (required).
    library_key
        Column of ``adata.obs`` naming each spot's slide.
    layer
        Read raw counts from this layer instead of ``.X``.
    modalities
        Modalities the model has (``StormPretrainModel.modalities``).

    Returns
    -------
    list[SlideArrays]
        One per slide, in order of first appearance in ``adata.obs[library_key]``; ``obs_rows`` map back to
        ``adata``'s rows.

    Raises
    ------
    ValueError
        Unknown mode; a modality the mode requires that the model or a slide lacks (no image, no counts); no gene in
        common with the model; and every check of :func:`storm.pp.spatial_windows` and
        :func:`storm.pp.extract_patches` (coordinates, scale, spots outside the image).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    want_image = mode in ("auto", "joint", "image")
    want_expr = mode in ("auto", "joint", "expression")
    need_image = mode in ("joint", "image")
    need_expr = mode in ("joint", "expression")
    for m, needed in (("image", need_image), ("expression", need_expr)):
        if needed and m not in modalities:
            raise ValueError(f"mode={mode!r} needs the {m} modality, which this model does not have ({modalities}).")
    want_image &= "image" in modalities
    want_expr &= "expression" in modalities

    xy = check_spatial(adata)
    libs, codes = check_libraries(adata, library_key)

    expr = measured = None
    if want_expr:
        if has_counts(adata, layer):
            coverage = panel_coverage(adata.var_names, config.genes)
            if coverage["n_used"] == 0:
                raise ValueError(
                    f"No gene overlaps: the data has {coverage['n_genes']:,} genes (e.g. "
                    f"{', '.join(map(repr, adata.var_names[:3]))}) and the model's gene panel {len(config.genes):,} "
                    f"(e.g. {', '.join(map(repr, config.genes[:3]))}), none in common even ignoring letter case, so "
                    "the model cannot read this expression. Put gene symbols in `adata.var_names` (not Ensembl ids or "
                    "probe names), pretrain or adapt a model on this panel (`StormModel.setup(adata)` + "
                    "`storm.train.pretrain`), or "
                    "use mode='image' where the slides have an H&E image."
                )
            logger.info(
                f"prepare_slides: {coverage['n_used']:,} of the data's {coverage['n_genes']:,} genes "
                f"({coverage['fraction_used']:.0%}) are on the model's gene list of {coverage['n_model_genes']:,}"
                + (
                    f" ({coverage['n_matched_ignoring_case']:,} matched ignoring letter case)"
                    if coverage["n_matched_ignoring_case"]
                    else ""
                )
                + f"; the other {coverage['n_genes'] - coverage['n_used']:,} are ignored"
            )
            expr, measured = lognorm_on_panel(
                adata, config.genes, target_sum=config.target_sum, layer=layer, ignore_case=True
            )
            if expr.count_nonzero() == 0:
                raise _no_counts_error(adata, layer, coverage["n_used"], mode)
        elif need_expr:
            where = "`adata.X` is empty" if layer is None else f"there is no `adata.layers[{layer!r}]`"
            raise ValueError(
                f"mode={mode!r} needs expression counts, but {where} (n_vars={adata.n_vars}). Pass an AnnData with raw "
                "counts, or use mode='image'."
            )
    missing = [lib for lib in libs if not (want_image and slide_has_image(adata, lib, config.image))]
    if need_image and missing:
        raise ValueError(
            f"mode={mode!r} needs an H&E image, but {len(missing)} slide(s) have none ({missing[:5]}): record "
            "`uns['spatial'][library_id]['metadata']['fullres_path']` or add `images['hires'|'lowres']` with its "
            "`tissue_*_scalef`; or use mode='expression'."
        )
    if expr is None and len(missing) == len(libs):
        raise ValueError(
            "Nothing to embed: the data have no expression counts and no slide image for this model "
            f"(modalities {modalities}, mode={mode!r})."
        )

    windows = spatial_windows(
        adata, size=config.window, method=config.window_method, k=config.k, library_key=library_key
    )
    local = np.empty(adata.n_obs, dtype=np.int64)
    slides = []
    for code, lib in enumerate(libs):
        rows = np.flatnonzero(codes == code)
        whole = len(libs) == 1  # one slide: its rows are all rows, in order; no copies (a million cells: ~1 GB)
        local[rows] = np.arange(len(rows))
        if whole:
            index, offsets = windows.index, windows.offsets_um
        else:
            index = windows.index[rows]
            index = np.where(index >= 0, local[np.maximum(index, 0)], -1)
            offsets = windows.offsets_um[rows]
        patches = None
        if lib not in missing:
            patches = _patch_source(adata, lib, rows, xy, config)
        slides.append(
            SlideArrays(
                library_id=lib,
                index=index,
                offsets_um=offsets,
                expr=(expr if whole else expr[rows]) if expr is not None else None,
                gene_mask=measured,
                patches=patches,
                obs_rows=rows,
            )
        )
    return slides


def select_genes(
    datasets: Sequence[Sequence[AnnData]],
    *,
    n_top_genes: int = 1000,
    include: Sequence[str] = (),
    library_key: str = "library_id",
    layer: str | None = None,
    target_sum: float = 1e4,
) -> list[str]:
    """Choose the model gene list: ``include`` ∪ the ``n_top_genes`` most variable genes of each data set.

    Parameters
    ----------
    datasets
        Data sets, each a list of AnnData (e.g. the sections of one study); highly variable genes are chosen per
        data set (Seurat dispersion on log-normalised counts, :func:`scanpy.pp.highly_variable_genes`, with the
        slides as batches) on the genes all of its AnnData measure.
    n_top_genes
        Highly variable genes per data set.
    include
        Genes to put first (e.g. :func:`storm.datasets.hist2st_genes`); those no data set measures are dropped.
    library_key
        Column of ``obs`` naming each spot's slide.
    layer
        Read raw counts from this layer.
    target_sum
        Counts per spot before ``log1p``.

    Returns
    -------
    list[str]
        ``include`` (measured ones, in order), then each data set's highly variable genes in order of dispersion.
    """
    import anndata as ad
    import scanpy as sc

    measured_anywhere: set[str] = set()
    chosen: list[str] = []
    for data in datasets:
        lights = []
        for i, adata in enumerate(data):
            X = get_matrix(adata, layer)
            light = _light(X, adata.n_obs, adata.var_names)
            with _keep_torch_threads():
                normalize(light, target_sum=target_sum, layer_added="lognorm")
            light.X = light.layers.pop("lognorm")
            if library_key in adata.obs:
                light.obs["batch"] = [f"{i}:{v}" for v in adata.obs[library_key].astype(str)]
            else:
                light.obs["batch"] = str(i)
            lights.append(light)
            measured_anywhere.update(map(str, adata.var_names))
        combined = ad.concat(lights, join="inner", index_unique="-") if len(lights) > 1 else lights[0]
        n_batches = combined.obs["batch"].nunique()
        with warnings.catch_warnings(), _keep_torch_threads():
            # scanpy's notes about batch handling and zero-variance genes carry no action for the user here
            warnings.simplefilter("ignore", category=UserWarning)
            hvg = sc.pp.highly_variable_genes(
                combined,
                n_top_genes=min(n_top_genes, combined.n_vars),
                flavor="seurat",
                batch_key="batch" if n_batches > 1 else None,
                inplace=False,
            )
        hvg.index = combined.var_names
        score = "dispersions_norm"
        order = hvg.sort_values(
            ["highly_variable_nbatches", score] if "highly_variable_nbatches" in hvg else [score],
            ascending=False,
            na_position="last",
        )
        # scanpy may flag a few more than n_top_genes where dispersions tie at the cut-off
        chosen += [str(g) for g in order.index[order["highly_variable"].to_numpy(dtype=bool)]][:n_top_genes]
    kept = [str(g) for g in include if str(g) in measured_anywhere]
    if len(kept) < len(include):
        logger.info(f"select_genes: {len(include) - len(kept)} of {len(include)} included genes are measured nowhere")
    genes = list(dict.fromkeys([*kept, *chosen]))
    logger.info(
        f"select_genes: {len(genes):,} genes ({len(kept):,} included + highly variable of {len(datasets)} sets)"
    )
    return genes


def pca_loadings(
    slides: Sequence[SlideArrays], n_components: int, *, max_spots: int = 10_000, random_state: int = 0
) -> np.ndarray | None:
    """PCA loadings ``(G, k)`` of the slides' expression (a random subsample of spots), for gene embeddings.

    Returns ``None`` when no slide has expression.
    """
    from sklearn.decomposition import PCA

    with_expr = [s for s in slides if s.has_expr]
    if not with_expr:
        return None
    sizes = np.array([s.n_obs for s in with_expr])
    rng = np.random.default_rng(random_state)
    n = int(sizes.sum())
    pick = np.sort(rng.choice(n, size=min(max_spots, n), replace=False))
    starts = np.concatenate([[0], np.cumsum(sizes)])
    parts = []
    for i, s in enumerate(with_expr):
        local = pick[(pick >= starts[i]) & (pick < starts[i + 1])] - starts[i]
        if len(local):
            parts.append(s.expression(local))
    X = np.concatenate(parts)
    k = int(min(n_components, X.shape[0] - 1, X.shape[1]))
    if k < 1:
        return None
    pca = PCA(n_components=k, svd_solver="randomized" if k < min(X.shape) // 2 else "full", random_state=random_state)
    pca.fit(X)
    return pca.components_.T.astype(np.float32)
