"""Spatial smoothing of a representation before domains are clustered: a Gaussian average over each spot's slide.

A domain is a contiguous piece of tissue, but the niche embedding of neighbouring spots still carries each spot's own
sampling noise (a Visium spot holds a few thousand UMIs). Averaging it over a Gaussian of a few spot pitches, within
each slide, keeps the boundaries (they are wider than one spot) and removes the salt-and-pepper labels that a
clustering of the raw embedding gives. BANKSY augments each cell with its neighbourhood's mean for the same reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

if TYPE_CHECKING:  # AnnData only in the helpers of storm.tl.domains; the probe of storm.train passes arrays
    from anndata import AnnData

#: Neighbours farther than this many σ get no weight (their Gaussian weight is below 1.2 %).
CUTOFF_SIGMAS = 3.0


def spot_pitch(xy: np.ndarray) -> float:
    """Median distance from each spot to its nearest other spot, in the units of ``xy`` (the slide's spot pitch)."""
    from scipy.spatial import cKDTree

    if len(xy) < 2:
        return float("nan")
    dist, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(dist[:, 1]))


def gaussian_weights(xy: np.ndarray, sigma: float) -> sparse.csr_matrix:
    """Row-normalised Gaussian weights ``exp(-d²/2σ²)`` between the points of ``xy`` within ``CUTOFF_SIGMAS · σ``."""
    from scipy.spatial import cKDTree

    tree = cKDTree(xy)
    dist = tree.sparse_distance_matrix(tree, CUTOFF_SIGMAS * sigma, output_type="coo_matrix")
    # every pair within the cutoff, the spot itself included (distance 0, weight 1)
    weights = sparse.csr_matrix((np.exp(-0.5 * (dist.data / sigma) ** 2), (dist.row, dist.col)), shape=dist.shape)
    return sparse.diags(1.0 / np.asarray(weights.sum(axis=1)).ravel()) @ weights


def slide_groups(adatas: Sequence[AnnData], library_key: str) -> list[np.ndarray]:
    """Row indices of each slide in the concatenation of ``adatas`` (an AnnData without ``library_key``: one slide)."""
    groups, offset = [], 0
    for a in adatas:
        if library_key in a.obs:
            codes = a.obs[library_key].astype("category").cat.codes.to_numpy()
            groups += [offset + np.flatnonzero(codes == c) for c in np.unique(codes)]
        else:
            groups.append(offset + np.arange(a.n_obs))
        offset += a.n_obs
    return groups


def spatial_coordinates(adatas: Sequence[AnnData]) -> np.ndarray:
    """``obsm['spatial']`` of every AnnData, concatenated, as finite float (n, 2); a ValueError naming ``smooth=0``."""
    parts = []
    for i, a in enumerate(adatas):
        xy = a.obsm.get("spatial")
        if xy is None:
            raise ValueError(
                f"Spatial smoothing needs each spot's position in obsm['spatial'], missing from AnnData {i}; pass "
                "smooth=0 to cluster the representation as it is."
            )
        xy = np.asarray(xy, dtype=np.float64)[:, :2]
        if not np.isfinite(xy).all():
            raise ValueError(
                f"obsm['spatial'] of AnnData {i} has NaN or infinite positions; drop those spots or pass smooth=0."
            )
        parts.append(xy)
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def smooth_spatially(
    rep: np.ndarray, xy: np.ndarray, groups: Sequence[np.ndarray], smooth: float
) -> tuple[np.ndarray, list[float]]:
    """Gaussian-average ``rep`` over each group of rows (a slide), σ = ``smooth`` × the group's spot pitch.

    Returns the smoothed representation and each group's pitch (in the units of ``xy``). Groups never mix: the
    weights are computed within each slide, so slides placed side by side in one coordinate frame stay apart.
    """
    out = np.array(rep, dtype=np.float64, copy=True)
    pitches = []
    for rows in groups:
        pitch = spot_pitch(xy[rows])
        pitches.append(pitch)
        if not np.isfinite(pitch) or pitch <= 0:  # one spot, or every spot at one position: nothing to average over
            continue
        out[rows] = gaussian_weights(xy[rows], smooth * pitch) @ rep[rows]
    return out.astype(rep.dtype, copy=False), pitches
