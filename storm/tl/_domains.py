"""``storm.tl.domains``: spatial domains by clustering the niche embedding (tied-covariance GMM, K-means, Leiden)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from storm._gmm import fit_gmm, reduce_rep
from storm._logging import logger
from storm._smoothing import slide_groups, smooth_spatially, spatial_coordinates
from storm.tl._batch import batch_labels, harmonize, harmony_params
from storm.tl._spatialdata import is_spatialdata, table_of
from storm.tl._utils import as_adata_list, clean_params, elapsed, get_rep, save_data, start_timer

_Method = Literal["kmeans", "gmm", "leiden"]
_METHODS = ("kmeans", "gmm", "leiden")
_MAX_SEARCH_STEPS = 30


def palette(n: int) -> list[str]:
    """Return ``n`` colours from scanpy's default palettes (20, 28 or 102 colours, whichever first fits ``n``).

    A fixed palette (rather than matplotlib's cycle) gives domain ``"3"`` the same colour in every figure.
    """
    from scanpy.plotting import palettes

    for colors in (palettes.default_20, palettes.default_28, palettes.default_102):
        if n <= len(colors):
            return list(colors[:n])
    logger.warning(f"domains: {n} domains but only 102 distinct colours; colours repeat.")
    return [palettes.default_102[i % len(palettes.default_102)] for i in range(n)]


def _relabel_by_size(labels: np.ndarray) -> np.ndarray:
    """Renumber cluster labels 0..K-1 by decreasing size, ties broken by the first row of each cluster.

    The rule does not depend on the clustering algorithm's arbitrary numbering: one partition, one set of names.
    """
    uniques, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = np.lexsort((first, -counts))  # primary key: size (descending), then first occurrence
    new = np.empty(len(uniques), dtype=np.int64)
    new[order] = np.arange(len(uniques))
    return new[np.searchsorted(uniques, labels)]


def _kmeans(rep: np.ndarray, n_domains: int, random_state: int | None, **kwargs: Any) -> np.ndarray:
    from sklearn.cluster import KMeans

    kwargs.setdefault("n_init", 10)  # the paper's K-means; sklearn's "auto" would run k-means++ only once
    return KMeans(n_clusters=n_domains, random_state=random_state, **kwargs).fit_predict(rep)


def _leiden_graph(rep: np.ndarray, n_neighbors: int, random_state: int | None) -> AnnData:
    """Build the kNN graph of ``rep`` in a throw-away AnnData, so the user's object gets no neighbors keys."""
    import scanpy as sc

    graph = AnnData(obs=pd.DataFrame(index=pd.RangeIndex(rep.shape[0]).astype(str)), obsm={"rep": rep})
    sc.pp.neighbors(graph, n_neighbors=n_neighbors, use_rep="rep", random_state=random_state or 0)
    return graph


def _leiden_once(graph: AnnData, resolution: float, random_state: int | None, **kwargs: Any) -> np.ndarray:
    import scanpy as sc

    kwargs.setdefault("n_iterations", 2)
    sc.tl.leiden(
        graph,
        resolution=resolution,
        random_state=random_state or 0,
        flavor="igraph",
        directed=False,
        key_added="leiden",
        **kwargs,
    )
    return graph.obs["leiden"].astype(int).to_numpy()


def _leiden(
    rep: np.ndarray,
    n_domains: int | None,
    resolution: float | None,
    n_neighbors: int,
    random_state: int | None,
    **kwargs: Any,
) -> tuple[np.ndarray, float]:
    """Leiden at ``resolution``, or a bisection on the resolution until ``n_domains`` clusters are found.

    The number of clusters grows with the resolution (not strictly, so the search keeps the closest result seen).
    """
    try:
        import igraph  # noqa: F401
    except ImportError as err:
        raise ImportError("method='leiden' needs igraph: `pip install igraph` (or `scanpy[leiden]`).") from err
    graph = _leiden_graph(rep, n_neighbors, random_state)
    if n_domains is None:
        resolution = 1.0 if resolution is None else resolution
        return _leiden_once(graph, resolution, random_state, **kwargs), resolution

    seen: dict[float, tuple[int, np.ndarray]] = {}

    def run(res: float) -> int:
        labels = _leiden_once(graph, res, random_state, **dict(kwargs))
        seen[res] = (len(np.unique(labels)), labels)
        return seen[res][0]

    lo, hi = 0.0, 1.0
    steps = 0
    while run(hi) < n_domains and steps < 10:  # widen until the upper end has enough clusters (resolution ≤ 1024)
        lo, hi = hi, hi * 2
        steps += 1
    for _ in range(_MAX_SEARCH_STEPS):
        if seen[hi][0] == n_domains or hi - lo < 1e-4:
            break
        mid = (lo + hi) / 2
        n = run(mid)
        if n == n_domains:
            break
        lo, hi = (mid, hi) if n < n_domains else (lo, mid)
    best = min(seen, key=lambda r: (abs(seen[r][0] - n_domains), r))
    n_found, labels = seen[best]
    if n_found != n_domains:
        from scipy.sparse.csgraph import connected_components

        n_parts = connected_components(graph.obsp["connectivities"], directed=False)[0]
        why = f" (the kNN graph has {n_parts} disconnected parts)" if n_parts > n_domains else ""
        logger.warning(
            f"domains: Leiden found no resolution giving {n_domains} domains{why}; using resolution {best:.4g} with "
            f"{n_found}. Use method='kmeans' for an exact number."
        )
    return labels, best


def _check_args(method: str, n_domains: Any, resolution: Any, n_neighbors: Any, n_pcs: Any, n_obs: int) -> None:
    if method not in _METHODS:
        raise ValueError(f"`method` must be one of {_METHODS}, got {method!r}.")
    if n_pcs is not None and (isinstance(n_pcs, bool) or not isinstance(n_pcs, int | np.integer) or n_pcs < 1):
        raise ValueError(f"`n_pcs` must be a positive integer or None, got {n_pcs!r}.")
    if resolution is not None and method != "leiden":
        raise ValueError(f"`resolution` is a Leiden parameter; it has no meaning for method={method!r}.")
    if n_domains is None:
        if method != "leiden":
            raise ValueError(f"method={method!r} needs `n_domains` (the number of domains K); Leiden can do without.")
    else:
        if isinstance(n_domains, bool) or not isinstance(n_domains, int | np.integer):
            raise ValueError(f"`n_domains` must be an integer, got {n_domains!r}.")
        if n_domains < 2:
            raise ValueError(f"`n_domains` must be at least 2, got {n_domains}.")
        if n_domains > n_obs:
            raise ValueError(
                f"`n_domains`={n_domains} is larger than the number of spots ({n_obs}): ask for at most {n_obs} "
                "domains, or cluster this section together with others (a list of AnnData, or one AnnData of "
                "several slides)."
            )
        if resolution is not None:
            raise ValueError("Give either `n_domains` (the resolution is then searched) or `resolution`, not both.")
    if resolution is not None and (not np.isscalar(resolution) or not np.isfinite(resolution) or resolution <= 0):
        raise ValueError(f"`resolution` must be a finite number > 0, got {resolution!r}.")
    if method == "leiden" and (isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 2):
        raise ValueError(f"`n_neighbors` must be an integer ≥ 2, got {n_neighbors!r}.")
    if method == "leiden" and n_neighbors >= n_obs:
        raise ValueError(f"`n_neighbors`={n_neighbors} must be smaller than the number of spots ({n_obs}).")


def domains(
    adata: AnnData | Sequence[AnnData],
    n_domains: int | None = None,
    *,
    use_rep: str = "X_storm_niche",
    method: _Method = "gmm",
    key_added: str = "storm_domains",
    random_state: int | None = 0,
    n_pcs: int | None = 20,
    n_neighbors: int = 15,
    resolution: float | None = None,
    smooth: float = 0.0,
    batch_key: str | None = None,
    harmony_kwargs: Mapping[str, Any] | None = None,
    library_key: str = "library_id",
    table_key: str | None = None,
    copy: bool = False,
    **kwargs: Any,
) -> AnnData | list[AnnData] | None:
    """Assign spatial domains by clustering the niche embedding of every spot.

    By default the niche embedding written by :func:`storm.tl.embed` (``obsm['X_storm_niche']``: the mean of the
    model's output tokens over the spot's window) is standardised, reduced to its first ``n_pcs`` principal
    components and clustered by a Gaussian mixture with one covariance shared by the K domains. The paper clusters
    the centre-spot embedding with K-means (``use_rep="X_storm", method="kmeans", n_pcs=None``); on the labelled
    DLPFC and HER2ST sections here the default is more accurate (``benchmarks/domains.py`` measures both).
    All rows are clustered at once: slides in one AnnData (told apart by ``library_key``) or in a list of AnnData
    embedded by the same model share one labelling, so domain ``"2"`` means the same thing on every slide. Slides of
    several patients or batches differ by more than their tissue, and without correction the same tissue can get a
    different domain on each patient: ``batch_key`` names the ``obs`` column of the batches, whose effect Harmony
    (``harmonypy``) removes from the reduced representation before clustering. ``benchmarks/domains_joint.py``
    measures joint domains, with and without ``batch_key``, against one section at a time.

    Domains are named ``"0"`` … ``"K-1"`` by decreasing size (ties: the domain met first in row order), so the names
    do not depend on the clustering algorithm's arbitrary numbering; results are deterministic for a given
    ``random_state``.

    Parameters
    ----------
    adata
        AnnData with the embedding in ``obsm[use_rep]`` (from :func:`storm.tl.embed`), or a list of them, or a
        :class:`spatialdata.SpatialData` whose table holds it (the domains are written into that table).
    n_domains
        Number of domains K. Required for ``"kmeans"`` and ``"gmm"``; for ``"leiden"`` the resolution is searched by
        bisection until K domains are found (the resolution reached is logged and stored), and without it Leiden
        runs at ``resolution`` (default 1.0).
    use_rep
        Key of ``obsm`` to cluster: ``"X_storm_niche"`` (domains), ``"X_storm"`` (the centre spot: cell types) or any
        other representation.
    method
        ``"gmm"`` (scikit-learn Gaussian mixture with one shared, "tied" covariance, like mclust's EEE; ``n_init=3``;
        retried with more regularisation if a fit fails numerically), ``"kmeans"`` (scikit-learn, ``n_init=10``) or
        ``"leiden"`` (scanpy, igraph flavour, on a ``n_neighbors`` kNN graph; needs ``igraph``).
    key_added
        Key of ``obs`` written (and prefix of the ``uns`` keys).
    random_state
        Seed of the clustering (and of the kNN graph for Leiden).
    n_pcs
        Principal components of the standardised representation that are clustered; ``None`` clusters the
        representation as it is.
    n_neighbors
        Neighbours of the kNN graph (Leiden only).
    resolution
        Leiden resolution, when ``n_domains`` is not given.
    smooth
        σ of a Gaussian average of the representation over each spot's neighbours on its own slide, before it is
        reduced and clustered, in spot pitches (each slide's median distance between nearest spots, so the same
        value suits Visium, legacy ST and single cells); neighbours beyond 3σ are ignored. Domains are contiguous,
        so the average removes each spot's own sampling noise and keeps boundaries wider than a spot. ``0``: no
        smoothing, the default: chosen on each fold's probe sections, the σ gave no gain on the held-out ones
        (``benchmarks/domains_folds.py``: mean ARI 0.153 → 0.156 for storm-mini's recipe, 0.248 → 0.247 for one
        untrained initialisation set up on the section), though single sections gain (and lose) up to 0.1. Needs
        ``obsm['spatial']``.
    batch_key
        Column of ``obs`` (of every AnnData of a list) naming each spot's batch, e.g. the patient, or
        ``library_key`` for slides: the reduced representation (after ``n_pcs``) is corrected with Harmony
        (``harmonypy.run_harmony``, seeded by ``random_state``) before clustering. It needs at least two
        batches and a value on every spot. ``None``: no correction.
    harmony_kwargs
        Options of ``harmonypy.run_harmony`` (``theta``, ``sigma``, ``nclust``, ``max_iter_harmony``, …), with
        ``batch_key`` only. storm's default is ``sigma=1.0`` instead of harmonypy's 0.1: with the narrower kernel,
        batches shifted by more than the distance between domains stay uncorrected.
    library_key
        Column of ``obs`` with the slide id; recorded in the parameters (clustering is over all slides together).
    table_key
        SpatialData only: which table (default: the only one).
    copy
        Return a copy (a list of copies for a list) instead of writing into ``adata``.
    **kwargs
        Passed to :class:`sklearn.cluster.KMeans`, :class:`sklearn.mixture.GaussianMixture` or
        :func:`scanpy.tl.leiden`.

    Returns
    -------
    ``None``, or the new AnnData (list of AnnData for a list) if ``copy=True``. Written:

    - ``obs[key_added]``: categorical domain, categories ``"0"`` … ``"K-1"`` (the same on every AnnData of a list);
    - ``uns[f"{key_added}_colors"]``: one hex colour per domain (scanpy's default palettes), used by
      :func:`storm.pl.domains`, scanpy and squidpy plots;
    - ``uns[key_added]['params']``: ``method``, ``n_domains`` (found), ``use_rep``, ``random_state``, ``n_pcs``
      (``None`` not stored), ``smooth`` (and ``spot_pitch``, each slide's pitch in ``obsm['spatial']`` units, when
      it is above 0), ``covariance_type`` (GMM), ``n_init`` (K-means), and
      ``n_neighbors`` / ``resolution`` (Leiden: the one used), ``n_domains_requested`` (Leiden with ``n_domains``),
      ``library_key`` when that column exists; with ``batch_key``: ``batch_key``, ``batch_correction``
      (``"harmony"``), ``n_batches`` (distinct values of the column) and ``harmony`` (the options given to
      ``harmonypy.run_harmony``: ``sigma`` and ``harmony_kwargs``).

    Raises
    ------
    ValueError
        ``obsm[use_rep]`` missing or with NaN/infinite values, ``n_domains`` < 2 or larger than the number of spots,
        no ``n_domains`` for K-means/GMM, an unknown method, ``smooth`` negative or not finite, ``smooth`` above 0
        without (finite) ``obsm['spatial']``, a ``batch_key`` column missing (from any AnnData of a
        list), with missing values or with a single value, ``harmony_kwargs`` without ``batch_key`` or setting
        the data, batches or seed. ``adata`` (every AnnData of a list) is then left unchanged.
    ImportError
        ``method="leiden"`` without igraph installed.

    Examples
    --------
    >>> storm.tl.domains(adata, n_domains=7)  # doctest: +SKIP
    >>> storm.pl.domains(adata, groundtruth="layer")  # doctest: +SKIP

    One set of domains over the slides of several patients, each slide's ``obs['patient']`` set:

    >>> storm.tl.domains([slide1, slide2, slide3], n_domains=6, batch_key="patient")  # doctest: +SKIP
    """
    start = start_timer()
    if is_spatialdata(adata):
        adata = table_of(adata, table_key)
    adatas, is_list = as_adata_list(adata)
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"`key_added` must be a non-empty string, got {key_added!r}.")
    reps = [get_rep(a, use_rep) for a in adatas]
    dims = {r.shape[1] for r in reps}
    if len(dims) > 1:
        raise ValueError(
            f"The AnnData objects hold embeddings of different widths {sorted(dims)} in obsm[{use_rep!r}]; embed "
            "them with the same model before clustering them together."
        )
    rep = np.concatenate(reps, axis=0) if len(reps) > 1 else reps[0]
    n_obs = rep.shape[0]
    _check_args(method, n_domains, resolution, n_neighbors, n_pcs, n_obs)
    batches = None if batch_key is None else batch_labels(adatas, batch_key)
    harmony = None if batch_key is None else harmony_params(harmony_kwargs)
    if batch_key is None and harmony_kwargs is not None:
        raise ValueError("`harmony_kwargs` configures the batch correction: give `batch_key` too, or leave it out.")
    if isinstance(smooth, bool) or not isinstance(smooth, (int, float)) or not np.isfinite(smooth) or smooth < 0:
        raise ValueError(f"`smooth` is a σ in spot pitches, 0 or more (0: no smoothing), got {smooth!r}.")
    params: dict[str, Any] = {"method": method, "use_rep": use_rep, "random_state": random_state, "n_pcs": n_pcs}
    params["smooth"] = float(smooth)
    if smooth > 0:
        xy = spatial_coordinates(adatas)
        rep, pitches = smooth_spatially(rep, xy, slide_groups(adatas, library_key), float(smooth))
        params["spot_pitch"] = [round(p, 3) for p in pitches]
    rep = reduce_rep(rep, None if n_pcs is None else int(n_pcs), random_state)

    if batches is not None:
        rep = harmonize(rep, batches, random_state=random_state, **harmony)
        params.update(batch_key=batch_key, batch_correction="harmony", harmony=harmony)
        params["n_batches"] = len(np.unique(batches))
    with warnings.catch_warnings():
        # identical embedding rows make sklearn warn that fewer distinct clusters exist; the count found is logged
        warnings.filterwarnings("ignore", message="Number of distinct clusters", category=UserWarning)
        if method == "kmeans":
            labels = _kmeans(rep, int(n_domains), random_state, **kwargs)
            params["n_init"] = int(kwargs.get("n_init", 10))
        elif method == "gmm":
            labels = fit_gmm(rep, int(n_domains), random_state, **kwargs)
            params["covariance_type"] = str(kwargs.get("covariance_type", "tied"))
        else:
            labels, used = _leiden(rep, n_domains, resolution, n_neighbors, random_state, **kwargs)
            params.update(n_neighbors=n_neighbors, resolution=float(used))
            if n_domains is not None:
                params["n_domains_requested"] = int(n_domains)

    labels = _relabel_by_size(np.asarray(labels))
    n_found = int(labels.max()) + 1
    if n_domains is not None and n_found != n_domains and method != "leiden":
        logger.warning(f"domains: asked for {n_domains} domains, {method} found {n_found} (identical embeddings?).")
    categories = [str(i) for i in range(n_found)]
    colors = palette(n_found)
    params["n_domains"] = n_found

    outputs = [a.copy() for a in adatas] if copy else adatas
    offset = 0
    for a in outputs:
        part = labels[offset : offset + a.n_obs]
        offset += a.n_obs
        obs_values = pd.Categorical.from_codes(part, categories=categories)
        save_data(a, attr="obs", key=key_added, data=pd.Series(obs_values, index=a.obs_names))
        save_data(a, attr="uns", key=f"{key_added}_colors", data=list(colors))
        lib = library_key if library_key in a.obs else None
        save_data(a, attr="uns", key=key_added, data={"params": clean_params({**params, "library_key": lib})})
    logger.info(
        f"domains: finished ({elapsed(start)}): {n_found} domains ({method}) over {n_obs} spots"
        f"{f' of {len(adatas)} AnnData' if is_list else ''}, added obs[{key_added!r}]"
    )
    if not copy:
        return None
    return outputs if is_list else outputs[0]
