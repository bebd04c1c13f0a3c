"""Macenko stain normalisation of H&E patches: one stain profile fitted per slide, patches mapped to a target.

A slide scanned in another lab differs in haematoxylin and eosin hue and intensity. Macenko et al. (2009, "A method
for normalizing histology slides for quantitative analysis", ISBI) describe each stain by a direction in optical
density (OD) space and each pixel by two stain concentrations; normalising keeps the concentrations (the tissue) and
swaps the stain directions and the concentration scale for a target's (the look).

The profile is fitted once per slide, on pixels pooled from many patches, rather than per patch as most
implementations do: a 55-µm patch of stroma holds almost no haematoxylin, and a per-patch fit would turn its eosin
into "haematoxylin". Plain numpy on uint8 ``(..., 3)`` RGB arrays, the format of every patch in storm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: Intensity of bare glass (OD 0). The usual value for brightfield scans, as in Macenko et al.
BACKGROUND_INTENSITY = 240.0
_UINT8_DENSITY = -np.log((np.arange(256, dtype=np.float64) + 1.0) / BACKGROUND_INTENSITY)
#: Pixels whose OD is below this in any channel are background or too faint to carry stain information.
OD_THRESHOLD = 0.15
#: Percentile of the angles (and of the concentrations) taken as the extreme stain directions (and maxima).
ANGLE_PERCENTILE = 1.0
#: Fewest tissue pixels a fit accepts.
MIN_TISSUE_PIXELS = 500


@dataclass(frozen=True)
class StainProfile:
    """The stains of one slide (or of a reference): H and E directions in OD space and their robust maxima.

    Attributes
    ----------
    stain_matrix
        ``(3, 2)``: unit OD vectors of haematoxylin (column 0) and eosin (column 1).
    max_concentrations
        ``(2,)``: the 99th percentile of each stain's concentration over the slide's tissue pixels.
    """

    stain_matrix: np.ndarray
    max_concentrations: np.ndarray

    def __post_init__(self) -> None:
        matrix = np.asarray(self.stain_matrix, dtype=np.float64)
        maxima = np.asarray(self.max_concentrations, dtype=np.float64)
        if matrix.shape != (3, 2) or maxima.shape != (2,):
            raise ValueError(f"A stain profile is a (3, 2) matrix and 2 maxima, got {matrix.shape} and {maxima.shape}.")
        if not (np.isfinite(matrix).all() and np.isfinite(maxima).all() and (maxima > 0).all()):
            raise ValueError("A stain profile needs finite stain vectors and positive maximum concentrations.")
        object.__setattr__(self, "stain_matrix", matrix)
        object.__setattr__(self, "max_concentrations", maxima)

    @classmethod
    def reference(cls) -> StainProfile:
        """Return the reference H&E profile of Macenko et al. (2009), the usual target when no slide is chosen."""
        return cls(
            np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]]),
            np.array([1.9705, 1.0308]),
        )

    def to_dict(self) -> dict[str, list]:
        """JSON-ready form (as an expression head records its target)."""
        return {
            "stain_matrix": [[float(v) for v in row] for row in self.stain_matrix],
            "max_concentrations": [float(v) for v in self.max_concentrations],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StainProfile:
        """Inverse of :meth:`to_dict`."""
        return cls(np.asarray(data["stain_matrix"]), np.asarray(data["max_concentrations"]))


def _optical_density(rgb: np.ndarray) -> np.ndarray:
    """``(N, 3)`` optical densities of RGB pixels."""
    rgb = np.asarray(rgb).reshape(-1, 3)
    if rgb.dtype == np.uint8:  # a table of the 256 grey levels' densities: a lookup, not a log per pixel
        return _UINT8_DENSITY[rgb]
    return -np.log((rgb.astype(np.float64) + 1.0) / BACKGROUND_INTENSITY)


def fit_stain_profile(pixels: np.ndarray) -> StainProfile:
    """Fit a Macenko stain profile to RGB pixels pooled from one slide (e.g. a few hundred of its patches).

    The plane of the two largest principal directions of the tissue pixels' OD holds both stains; the extreme angles
    in that plane (1st and 99th percentiles) are the stain directions, the one with the larger red OD being
    haematoxylin.

    Kept rather than torchstain's ``MacenkoNormalizer``, which gives the same stain vectors on real H&E
    (``tests/test_pp_stain_torchstain.py``) but refits every image it normalises: storm fits one profile per slide,
    from a sample of its patches, and takes the maxima over tissue pixels only (torchstain's count the glass).

    Parameters
    ----------
    pixels
        uint8 RGB array of any shape ending in 3 (patches ``(n, h, w, 3)``, an image, or a pixel list).

    Returns
    -------
    StainProfile

    Raises
    ------
    ValueError
        Fewer than 500 tissue pixels (OD ≥ 0.15 in every channel): blank or unstained input.
    """
    pixels = np.asarray(pixels)
    if pixels.shape[-1:] != (3,):
        raise ValueError(f"Stain profiles are fitted to RGB pixels (last axis 3), got shape {pixels.shape}.")
    od = _optical_density(pixels)
    tissue = od[(od >= OD_THRESHOLD).all(axis=1)]
    if len(tissue) < MIN_TISSUE_PIXELS:
        raise ValueError(
            f"Only {len(tissue)} stained pixels (OD ≥ {OD_THRESHOLD} in every channel) to fit the stains; at least "
            f"{MIN_TISSUE_PIXELS} are needed. Are these patches of H&E-stained tissue?"
        )
    _, vectors = np.linalg.eigh(np.cov(tissue, rowvar=False))
    plane = vectors[:, [1, 2]]  # eigh sorts ascending: the two largest
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)  # stains absorb: point the axes to positive OD
    projected = tissue @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    lo, hi = np.percentile(angles, [ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE])
    v_lo = plane @ np.array([np.cos(lo), np.sin(lo)])
    v_hi = plane @ np.array([np.cos(hi), np.sin(hi)])
    matrix = np.stack([v_lo, v_hi], axis=1) if v_lo[0] > v_hi[0] else np.stack([v_hi, v_lo], axis=1)
    matrix /= np.linalg.norm(matrix, axis=0, keepdims=True)
    concentrations = np.linalg.pinv(matrix) @ tissue.T  # the least-squares solution, without lstsq's cost
    maxima = np.percentile(concentrations, 100 - ANGLE_PERCENTILE, axis=1)
    if not (maxima > 0).all():
        raise ValueError("The fitted stains have no positive concentration: the pixels do not look like H&E.")
    return StainProfile(matrix, maxima)


def normalize_stain(pixels: np.ndarray, source: StainProfile, target: StainProfile | None = None) -> np.ndarray:
    """Map RGB pixels from the ``source`` slide's stains to the ``target``'s (Macenko et al. 2009).

    Each pixel's H and E concentrations are solved for in the source's stain basis, rescaled by the ratio of the
    two profiles' maximum concentrations, and re-rendered with the target's stain vectors. Background stays
    background (zero concentration renders as bare glass). The rendering inverts the optical density exactly, so
    that pixels mapped to their own profile come back unchanged (torchstain's are up to one grey level brighter).

    Parameters
    ----------
    pixels
        uint8 RGB array of any shape ending in 3 (e.g. patches ``(n, h, w, 3)``).
    source
        Profile of the slide the pixels come from (:func:`fit_stain_profile`).
    target
        Profile to map to; default :meth:`StainProfile.reference`.

    Returns
    -------
    np.ndarray
        uint8, the shape of ``pixels``.
    """
    target = StainProfile.reference() if target is None else target
    pixels = np.asarray(pixels)
    od = np.ascontiguousarray(_optical_density(pixels).T)  # channels first: the 3 × 3 product is then fast
    # concentrations = pinv(source) @ od (the least-squares solution), rescaled, re-rendered with the target's
    # stains: one 3 × 3 map of optical densities, applied to every pixel at once
    scale = target.max_concentrations / source.max_concentrations
    od_map = target.stain_matrix @ (scale[:, None] * np.linalg.pinv(source.stain_matrix))
    rgb = BACKGROUND_INTENSITY * np.exp(-(od_map @ od)) - 1.0
    out = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(out.T).reshape(pixels.shape)
