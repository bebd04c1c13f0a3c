"""Agreement between a domain map and an annotation (NMI, ARI, FMI, homogeneity, completeness) and ASW."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from sklearn import metrics as skm

from ._spatial import _factorize, chaos, pas

__all__ = ["ari", "asw", "clustering_scores", "completeness", "fmi", "homogeneity", "nmi"]

# Silhouette costs O(n²) distance evaluations; beyond this many spots `asw` scores a random subsample
# (the standard error of a mean over 20,000 silhouettes is far below the differences worth reporting).
ASW_MAX_SPOTS = 20_000


def _paired_codes(labels_true: ArrayLike, labels_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of both label vectors at the positions where neither is missing."""
    true = _factorize(labels_true, "labels_true")
    pred = _factorize(labels_pred, "labels_pred")
    if true.shape[0] != pred.shape[0]:
        raise ValueError(f"`labels_true` has {true.shape[0]} entries but `labels_pred` has {pred.shape[0]}.")
    keep = (true >= 0) & (pred >= 0)
    if not keep.any():
        raise ValueError("No spots left after dropping those with a missing label.")
    return true[keep], pred[keep]


def nmi(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Compute the normalised mutual information of two labellings (arithmetic-mean normalisation).

    Thin wrapper over :func:`sklearn.metrics.normalized_mutual_info_score` that first drops every position where
    either label is missing (NaN, None, ``pd.NA``; e.g. unannotated spots), so a partial annotation is
    compared on its annotated part only. Labels may be numbers, strings or categoricals; only the partition matters.

    Parameters
    ----------
    labels_true
        Reference labels (e.g. a pathologist's annotation), length ``n``.
    labels_pred
        Predicted labels (e.g. K-means domains), length ``n``.

    Returns
    -------
    NMI in [0, 1]; 1 for identical partitions.

    Raises
    ------
    ValueError
        If the two vectors differ in length or no position has both labels.

    References
    ----------
    Strehl, A. & Ghosh, J. Cluster ensembles: a knowledge reuse framework for combining multiple partitions.
    *J. Mach. Learn. Res.* 3, 583–617 (2002).
    """
    true, pred = _paired_codes(labels_true, labels_pred)
    return float(skm.normalized_mutual_info_score(true, pred))


def ari(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Compute the adjusted Rand index of two labellings.

    Thin wrapper over :func:`sklearn.metrics.adjusted_rand_score` that first drops every position where
    either label is missing (NaN, None, ``pd.NA``; e.g. unannotated spots), so a partial annotation is
    compared on its annotated part only. Labels may be numbers, strings or categoricals; only the partition matters.

    Parameters
    ----------
    labels_true
        Reference labels (e.g. a pathologist's annotation), length ``n``.
    labels_pred
        Predicted labels (e.g. K-means domains), length ``n``.

    Returns
    -------
    ARI, at most 1; 0 in expectation for random labels, negative below chance.

    Raises
    ------
    ValueError
        If the two vectors differ in length or no position has both labels.

    References
    ----------
    Hubert, L. & Arabie, P. Comparing partitions. *J. Classif.* 2, 193–218 (1985).
    """
    true, pred = _paired_codes(labels_true, labels_pred)
    return float(skm.adjusted_rand_score(true, pred))


def fmi(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Compute the Fowlkes–Mallows index, the geometric mean of pairwise precision and recall.

    Thin wrapper over :func:`sklearn.metrics.fowlkes_mallows_score` that first drops every position where
    either label is missing (NaN, None, ``pd.NA``; e.g. unannotated spots), so a partial annotation is
    compared on its annotated part only. Labels may be numbers, strings or categoricals; only the partition matters.

    Parameters
    ----------
    labels_true
        Reference labels (e.g. a pathologist's annotation), length ``n``.
    labels_pred
        Predicted labels (e.g. K-means domains), length ``n``.

    Returns
    -------
    FMI in [0, 1].

    Raises
    ------
    ValueError
        If the two vectors differ in length or no position has both labels.

    References
    ----------
    Fowlkes, E. B. & Mallows, C. L. A method for comparing two hierarchical clusterings.
    *J. Am. Stat. Assoc.* 78, 553–569 (1983).
    """
    true, pred = _paired_codes(labels_true, labels_pred)
    return float(skm.fowlkes_mallows_score(true, pred))


def homogeneity(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Compute the homogeneity: whether each predicted domain contains spots of a single reference label.

    Thin wrapper over :func:`sklearn.metrics.homogeneity_score` that first drops every position where
    either label is missing (NaN, None, ``pd.NA``; e.g. unannotated spots), so a partial annotation is
    compared on its annotated part only. Labels may be numbers, strings or categoricals; only the partition matters.

    Parameters
    ----------
    labels_true
        Reference labels (e.g. a pathologist's annotation), length ``n``.
    labels_pred
        Predicted labels (e.g. K-means domains), length ``n``.

    Returns
    -------
    Homogeneity in [0, 1].

    Raises
    ------
    ValueError
        If the two vectors differ in length or no position has both labels.

    References
    ----------
    Rosenberg, A. & Hirschberg, J. V-Measure: a conditional entropy-based external cluster evaluation
    measure. *EMNLP-CoNLL*, 410–420 (2007).
    """
    true, pred = _paired_codes(labels_true, labels_pred)
    return float(skm.homogeneity_score(true, pred))


def completeness(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Compute the completeness: whether all spots of a reference label fall in a single predicted domain.

    Thin wrapper over :func:`sklearn.metrics.completeness_score` that first drops every position where
    either label is missing (NaN, None, ``pd.NA``; e.g. unannotated spots), so a partial annotation is
    compared on its annotated part only. Labels may be numbers, strings or categoricals; only the partition matters.

    Parameters
    ----------
    labels_true
        Reference labels (e.g. a pathologist's annotation), length ``n``.
    labels_pred
        Predicted labels (e.g. K-means domains), length ``n``.

    Returns
    -------
    Completeness in [0, 1].

    Raises
    ------
    ValueError
        If the two vectors differ in length or no position has both labels.

    References
    ----------
    Rosenberg, A. & Hirschberg, J. V-Measure: a conditional entropy-based external cluster evaluation
    measure. *EMNLP-CoNLL*, 410–420 (2007).
    """
    true, pred = _paired_codes(labels_true, labels_pred)
    return float(skm.completeness_score(true, pred))


def asw(
    embedding: ArrayLike,
    labels: ArrayLike,
    *,
    metric: str = "euclidean",
    sample_size: int | None = None,
    random_state: int | None = 0,
) -> float:
    """Average silhouette width rescaled to [0, 1] as ``(s + 1) / 2``, the scIB convention [Luecken2022]_.

    ``s`` is :func:`sklearn.metrics.silhouette_score` of ``embedding`` grouped by ``labels`` [Rousseeuw1987]_.
    After rescaling, 1 means compact, well separated groups, 0.5 overlapping groups, 0 spots closer to
    another group than to their own. Spots with a missing label are dropped.

    Parameters
    ----------
    embedding
        Points to score, shape ``(n, n_features)``: a representation such as ``obsm['X_storm']`` (scIB's
        "label ASW"), or spatial coordinates for the spatial-coherence ASW of SDMBench [Yuan2024]_.
    labels
        Group per point, length ``n``; at least two groups, and fewer groups than points.
    metric
        Any metric accepted by :func:`sklearn.metrics.pairwise_distances`.
    sample_size
        Score a uniform random subsample of this many labelled points. ``None`` uses every point up to
        ``ASW_MAX_SPOTS`` (20,000) and a subsample of that size beyond, since the cost is quadratic.
    random_state
        Seed of the subsample, for reproducible scores.

    Returns
    -------
    ASW in [0, 1]; higher is better.

    Raises
    ------
    ValueError
        On a length mismatch, when no labelled point is left, or (from scikit-learn) when the (sub)sample holds
        fewer than two groups.

    References
    ----------
    .. [Rousseeuw1987] Rousseeuw, P. J. Silhouettes: a graphical aid to the interpretation and validation of
       cluster analysis. *J. Comput. Appl. Math.* 20, 53–65 (1987).
    .. [Luecken2022] Luecken, M. D. et al. Benchmarking atlas-level data integration in single-cell genomics.
       *Nat. Methods* 19, 41–50 (2022). (``scib.metrics.silhouette`` with ``scale=True``.)
    """
    x = np.asarray(embedding)
    codes = _factorize(labels, "labels")
    if x.ndim != 2 or x.shape[0] != codes.shape[0]:
        raise ValueError(
            f"`embedding` must have shape (n, n_features) with n={codes.shape[0]} labels, got {np.shape(embedding)}."
        )
    keep = np.flatnonzero(codes >= 0)
    if keep.size == 0:
        raise ValueError("No points left after dropping missing labels.")
    n_sub = min(keep.size, ASW_MAX_SPOTS) if sample_size is None else int(sample_size)
    if n_sub < keep.size:
        keep = np.sort(np.random.default_rng(random_state).choice(keep, size=n_sub, replace=False))
    s = skm.silhouette_score(x[keep], codes[keep], metric=metric)
    return float((s + 1.0) / 2.0)


def clustering_scores(
    labels_true: ArrayLike,
    labels_pred: ArrayLike,
    *,
    embedding: ArrayLike | None = None,
    coords: ArrayLike | None = None,
    library: ArrayLike | None = None,
    k: int = 10,
    sample_size: int | None = None,
    random_state: int | None = 0,
) -> dict[str, float]:
    """All eight spatial-domain metrics of the STORM protocol in one call.

    Parameters
    ----------
    labels_true
        Reference domains, length ``n``; missing entries are dropped pairwise (see :func:`nmi`).
    labels_pred
        Predicted domains, length ``n``.
    embedding
        Representation the domains were clustered from, shape ``(n, n_features)``; needed for ASW.
    coords
        Spatial coordinates, shape ``(n, n_dims)``; needed for CHAOS and PAS.
    library
        Slide per spot, so CHAOS and PAS are computed per slide (see :func:`chaos`).
    k
        Neighbours for PAS.
    sample_size, random_state
        Passed to :func:`asw`.

    Returns
    -------
    ``{'NMI', 'ARI', 'FMI', 'homogeneity', 'completeness', 'ASW', 'CHAOS', 'PAS'}`` as floats, in that order.
    Agreement metrics compare ``labels_pred`` with ``labels_true`` (higher is better). ASW scores
    ``embedding`` grouped by ``labels_true``, the scIB label ASW: how well the representation separates the
    annotated domains, independent of the clustering step (higher is better); call :func:`asw` with
    ``labels_pred`` or with ``coords`` for the other variants. CHAOS and PAS score the spatial continuity
    of ``labels_pred`` (lower is better). ASW is NaN without ``embedding``, CHAOS and PAS without ``coords``,
    so the keys are always the same and several runs stack into one :class:`pandas.DataFrame`.
    """
    true, pred = _paired_codes(labels_true, labels_pred)
    scores = {
        "NMI": float(skm.normalized_mutual_info_score(true, pred)),
        "ARI": float(skm.adjusted_rand_score(true, pred)),
        "FMI": float(skm.fowlkes_mallows_score(true, pred)),
        "homogeneity": float(skm.homogeneity_score(true, pred)),
        "completeness": float(skm.completeness_score(true, pred)),
        "ASW": np.nan,
        "CHAOS": np.nan,
        "PAS": np.nan,
    }
    if embedding is not None:
        scores["ASW"] = asw(embedding, labels_true, sample_size=sample_size, random_state=random_state)
    if coords is not None:
        scores["CHAOS"] = chaos(labels_pred, coords, library=library)
        scores["PAS"] = pas(labels_pred, coords, k=k, library=library)
    return scores
