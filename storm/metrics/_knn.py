"""How well an embedding separates known cell types: cross-validated k-nearest-neighbour accuracy."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import KNeighborsClassifier

__all__ = ["knn_accuracy"]


def knn_accuracy(
    X: ArrayLike,
    labels: ArrayLike,
    *,
    n_neighbors: int = 15,
    n_splits: int = 5,
    min_per_class: int = 10,
    random_state: int = 0,
) -> float:
    """Mean accuracy of a k-nearest-neighbour classifier of ``labels`` from ``X``, stratified k-fold cross-validation.

    A probe of whether a frozen embedding keeps cell identity: the classifier has no parameters of its own, so the
    score measures the embedding's neighbourhoods.
    Euclidean distance, majority vote (:class:`sklearn.neighbors.KNeighborsClassifier`), folds from
    :class:`sklearn.model_selection.StratifiedKFold` with shuffling.

    Parameters
    ----------
    X
        ``(n, d)`` embedding.
    labels
        Length ``n``; missing labels (NaN, None) are left out, and so are classes with fewer than
        ``min_per_class`` members (too few to stratify).
    n_neighbors
        ``k`` of the classifier.
    n_splits
        Folds.
    min_per_class
        Smallest class kept.
    random_state
        Seed of the fold assignment.

    Returns
    -------
    float
        Accuracy averaged over the folds.

    Raises
    ------
    ValueError
        Lengths differ, ``X`` holds NaN, or fewer than two classes remain.
    """
    X = np.asarray(X, dtype=np.float64)
    labels = pd.Series(np.asarray(labels, dtype=object))
    if X.ndim != 2 or X.shape[0] != len(labels):
        raise ValueError(f"`X` must be (n, d) with n = len(labels) = {len(labels)}, got shape {X.shape}.")
    if not np.isfinite(X).all():
        raise ValueError("`X` holds NaN or infinite values.")
    counts = labels.value_counts()
    keep = (labels.notna() & labels.isin(counts.index[counts >= min_per_class])).to_numpy()
    y = labels[keep].astype(str).to_numpy()
    if np.unique(y).size < 2:
        raise ValueError(f"Fewer than two classes with at least {min_per_class} labelled members: nothing to classify.")
    cv = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    scores = cross_val_score(KNeighborsClassifier(n_neighbors=n_neighbors), X[keep], y, cv=cv)
    return float(scores.mean())
