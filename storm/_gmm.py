"""Gaussian-mixture domains of an embedding (numpy and scikit-learn only, no AnnData).

Shared by :func:`storm.tl.domains` and the pretraining loop's domain probe (:mod:`storm.train`), so it lives below
both layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from storm._logging import logger

__all__ = ["COVARIANCE_TYPES", "fit_gmm", "reduce_rep"]

#: ``covariance_type`` values :class:`sklearn.mixture.GaussianMixture` accepts.
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def fit_gmm(rep: np.ndarray, n_domains: int, random_state: int | None, **kwargs: Any) -> np.ndarray:
    """Labels of a Gaussian mixture of ``n_domains`` components (tied covariance unless ``kwargs`` say otherwise)."""
    from sklearn.mixture import GaussianMixture

    # one covariance shared by all domains (mclust's "EEE", the usual choice for tissue domains): robust on a few
    # hundred spots, where per-domain full covariances collapse, and it lets domains be elongated, unlike K-means
    kwargs.setdefault("covariance_type", "tied")
    if kwargs["covariance_type"] not in COVARIANCE_TYPES:
        raise ValueError(
            f"`covariance_type` must be one of {COVARIANCE_TYPES} (sklearn's GaussianMixture), got "
            f"{kwargs['covariance_type']!r}."
        )
    kwargs.setdefault("n_init", 3)
    reg_covar = kwargs.pop("reg_covar", 1e-6)
    for attempt in range(4):
        try:
            gmm = GaussianMixture(n_components=n_domains, random_state=random_state, reg_covar=reg_covar, **kwargs)
            return gmm.fit(rep).predict(rep)
        except ValueError as err:  # sklearn: "ill-defined empirical covariance" when a component collapses
            if "ill-defined empirical covariance" not in str(err) or attempt == 3:
                raise
            reg_covar *= 100
            logger.warning(f"domains: GMM fit failed numerically; retrying with reg_covar={reg_covar:g}.")
    raise AssertionError("unreachable")  # pragma: no cover


def reduce_rep(rep: np.ndarray, n_pcs: int | None, random_state: int | None) -> np.ndarray:
    """Standardise each dimension, then keep the first ``n_pcs`` principal components (all dims if ``None``).

    The standardisation stops one high-variance dimension from dominating the distances; the PCA drops the
    low-variance dimensions whose noise blurs the domains and keeps the covariance of a GMM well conditioned.
    """
    std = rep.std(axis=0)
    rep = (rep - rep.mean(axis=0)) / np.where(std > 0, std, 1.0)
    if n_pcs is None or n_pcs >= min(rep.shape):
        return rep
    from sklearn.decomposition import PCA

    return PCA(n_components=n_pcs, random_state=random_state).fit_transform(rep)
