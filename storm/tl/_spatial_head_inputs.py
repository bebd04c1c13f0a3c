"""AnnData → the cached inputs of a :class:`storm.nn.SpatialExpressionHead` (virtual ST v2), slide by slide.

Shared by :func:`storm.tl.train_expression_head` (with augmented copies) and :func:`storm.tl.predict_expression`
(the patches as scanned), so that a head sees the same patches, stains and windows in training and in prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from storm._logging import logger
from storm.pp._stain import StainProfile

#: Largest upsampling of a patch from its slide's image the head accepts (beyond it there is no morphology to read).
MAX_ZOOM = 4.0


@dataclass
class SlideInputs:
    """One slide's cached bottom maps and windows (obs rows of the slide in ``rows``)."""

    library_id: str
    rows: np.ndarray
    bottoms: torch.Tensor
    index: torch.Tensor
    offsets_um: torch.Tensor


def check_image_resolution(adata: AnnData, *, size_um: float, out_px: int, library_key: str = "library_id") -> None:
    """Refuse slides whose image is too coarse for ``size_um`` patches at ``out_px`` (or that have no image)."""
    from storm.pp import patch_scale

    try:
        table = patch_scale(adata, size_um=size_um, out_px=out_px, library_key=library_key)
    except (KeyError, ValueError) as err:
        raise ValueError(
            f"A slide has no usable H&E image ({err}). The spatial expression head reads each spot's patch: record the "
            "full-resolution image (`uns['spatial'][library_id]['metadata']['fullres_path']`) or a hires image."
        ) from err
    coarse = table[table["zoom"] > MAX_ZOOM]
    if len(coarse):
        lib = coarse.index[0]
        row = coarse.iloc[0]
        raise ValueError(
            f"Slide {lib!r}: its {row['image']} image is too coarse for the head's patches: {size_um:g} µm is "
            f"{row['crop_px']:.1f} px of that image, upsampled {row['zoom']:.0f}× to {out_px} px (at most "
            f"{MAX_ZOOM:g}× is accepted; {size_um * MAX_ZOOM / out_px:.2f} µm per image pixel or finer). Use the "
            "slide's full-resolution scan."
        )


def slide_inputs(
    adata: AnnData,
    head: Any,
    *,
    scales_um: Sequence[float],
    patch_px: int,
    window: int,
    stain_target: StainProfile | None = None,
    n_augment: int = 0,
    augment_sigma: float = 0.05,
    library_key: str = "library_id",
    generator: torch.Generator | None = None,
    batch_size: int = 128,
    cache_dtype: torch.dtype = torch.bfloat16,
    progress: bool = False,
) -> list[SlideInputs]:
    """Bottom maps of every spot's patches (as scanned, then ``n_augment`` augmented copies) and its window, per slide.

    Parameters
    ----------
    adata
        Spots with ``obsm['spatial']`` and an H&E image per slide. Not modified.
    head
        The :class:`storm.nn.SpatialExpressionHead` whose frozen bottom is run.
    scales_um
        Patch sides in µm (one patch per scale and spot).
    patch_px
        Side in pixels every patch is resized to.
    window
        Window side on grid platforms (:func:`storm.pp.spatial_windows`).
    stain_target
        Macenko-normalise each slide's patches (from its own profile) to these stains first.
    n_augment
        Augmented copies per patch (:func:`storm.nn.augment_patches`: HED jitter, rotation/flip).
    augment_sigma
        Strength of the HED jitter.
    library_key
        Column of ``obs`` naming each spot's slide.
    generator
        Random generator of the augmentations.
    batch_size
        Patches per forward pass.
    cache_dtype
        Storage of the cached maps (bfloat16 halves the memory; the top of the tower computes in float32).
    progress
        Show a progress bar.

    Returns
    -------
    list of SlideInputs
        ``bottoms`` ``(1 + n_augment, n_spots, n_scales, C, h, w)``.
    """
    from tqdm.auto import tqdm

    from storm.nn import augment_patches
    from storm.pp import extract_patches, normalize_stain, spatial_windows, stain_profile
    from storm.pp._validate import check_libraries

    check_image_resolution(adata, size_um=min(scales_um), out_px=patch_px, library_key=library_key)
    libs, codes = check_libraries(adata, library_key)
    windows = spatial_windows(adata, size=window, library_key=library_key)
    out = []
    for c, lib in enumerate(tqdm(libs, desc="spatial head: encode patches", unit="slide", disable=not progress)):
        rows = np.flatnonzero(codes == c)
        source = None
        if stain_target is not None:
            source = stain_profile(adata, size_um=min(scales_um), library_id=lib, library_key=library_key)
        per_scale = []
        for size in scales_um:
            copies: list[list[torch.Tensor]] = [[] for _ in range(1 + n_augment)]
            batches = extract_patches(
                adata, size_um=size, out_px=patch_px, batch_size=batch_size, library_id=lib, library_key=library_key
            )
            for batch in batches:
                if source is not None:
                    batch = normalize_stain(batch, source, stain_target)
                t = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2)
                copies[0].append(head.bottom(t).to(cache_dtype))
                for a in range(n_augment):
                    aug = augment_patches(t, sigma=augment_sigma, bias=augment_sigma, generator=generator)
                    copies[1 + a].append(head.bottom(aug).to(cache_dtype))
            per_scale.append(torch.stack([torch.cat(parts) for parts in copies]))  # (copies, n, C, h, w)
        bottoms = torch.stack(per_scale, dim=2).contiguous()  # (copies, n, scales, C, h, w)
        # window rows are obs rows: map them to rows of this slide
        local = np.full(adata.n_obs, -1, dtype=np.int64)
        local[rows] = np.arange(len(rows))
        index = windows.index[rows]
        index = np.where(index >= 0, local[np.maximum(index, 0)], -1)
        out.append(
            SlideInputs(
                library_id=str(lib),
                rows=rows,
                bottoms=bottoms,
                index=torch.from_numpy(index),
                offsets_um=torch.from_numpy(np.asarray(windows.offsets_um[rows], dtype=np.float32)),
            )
        )
        logger.debug(f"slide_inputs: {lib!r}: {len(rows):,} spots, bottom maps {tuple(bottoms.shape)}")
    return out
