"""``storm.pp.stain_profile``: the Macenko stain profile of one slide, or of several pooled, from its spot patches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from anndata import AnnData

from storm.pp._patches import extract_patches
from storm.pp._stain import StainProfile, fit_stain_profile
from storm.pp._validate import check_libraries

#: Patches a profile is fitted on, per slide: enough pixels (~10⁶ at 64 px) for stable percentiles, cheap to cut.
N_PATCHES = 256


def sample_rows(n: int, n_patches: int, random_state: int) -> np.ndarray:
    """Sorted rows of a random sample of ``n_patches`` out of ``n`` (all of them if fewer)."""
    if n <= n_patches:
        return np.arange(n)
    return np.sort(np.random.default_rng(random_state).choice(n, size=n_patches, replace=False))


def stain_profile(
    adata: AnnData | Sequence[AnnData],
    *,
    size_um: float = 55.0,
    out_px: int = 64,
    n_patches: int = N_PATCHES,
    library_id: str | None = None,
    library_key: str = "library_id",
    random_state: int = 0,
) -> StainProfile:
    """Fit a Macenko stain profile (:func:`storm.pp.fit_stain_profile`) to the H&E patches of a sample of spots.

    With several slides (one AnnData holding several, or a list) the pixels of all of them are pooled, up to
    ``n_patches`` spots from each: the profile of a training set, which :func:`storm.tl.train_expression_head` uses
    as the target every slide is normalised to.

    Parameters
    ----------
    adata
        Spots with an H&E image (see :func:`storm.pp.extract_patches`), or a list of such. Not modified.
    size_um, out_px
        Patch side in µm and in pixels (use the model's: 55 µm, ``model.config.patch_px``).
    n_patches
        Spots sampled per slide.
    library_id
        Only this slide of ``adata``.
    library_key
        Column of ``obs`` naming each spot's slide.
    random_state
        Seed of the sample.

    Returns
    -------
    :class:`storm.pp.StainProfile`
    """
    adatas = [adata] if isinstance(adata, AnnData) else list(adata)
    pixels = []
    for a in adatas:
        libs, codes = check_libraries(a, library_key)
        for c, lib in enumerate(libs):
            if library_id is not None and lib != library_id:
                continue
            rows = np.flatnonzero(codes == c)
            sample = a[rows[sample_rows(len(rows), n_patches, random_state)]]
            pixels += list(extract_patches(sample, size_um=size_um, out_px=out_px, library_key=library_key))
    if not pixels:
        raise ValueError(f"No spots to fit a stain profile on (library_id={library_id!r}).")
    return fit_stain_profile(np.concatenate(pixels))
