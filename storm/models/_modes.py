"""Which modalities a model reads from an AnnData: ``mode="auto"`` resolved from its counts and images.

Shared by :func:`storm.tl.embed` and the pretraining loop's domain probe (:mod:`storm.train`), so it lives here,
below both.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from anndata import AnnData

from storm._logging import logger
from storm.pp._scale import is_he_image

__all__ = ["Mode", "auto_mode", "resolve_mode", "too_coarse"]

Mode = Literal["auto", "joint", "image", "expression"]
_MODES = ("auto", "joint", "image", "expression")


def _libraries(adata: AnnData, library_key: str) -> list[str]:
    """Slide ids of ``adata``: the categories of ``obs[library_key]`` present, else the keys of ``uns['spatial']``."""
    if library_key in adata.obs:
        return [str(x) for x in adata.obs[library_key].astype("category").cat.remove_unused_categories().cat.categories]
    return [str(x) for x in adata.uns.get("spatial", {})]


def _has_image(adata: AnnData, library_id: str) -> bool:
    entry = adata.uns.get("spatial", {}).get(library_id, {})
    if not is_he_image(entry.get("metadata")):
        return False  # e.g. Xenium's DAPI image: not an H&E for the model's image encoder
    images = entry.get("images", {}) or {}
    # a full-resolution file opened lazily (storm.io.LazyImage) counts as much as an in-memory image
    in_memory = any(np.asarray(img).size > 0 for img in images.values())
    return in_memory or bool(entry.get("metadata", {}).get("fullres_path"))


def _has_counts(adata: AnnData) -> bool:
    return adata.X is not None and adata.n_vars > 0


def resolve_mode(adata: AnnData, mode: str, *, library_key: str = "library_id") -> str:
    """Resolve ``mode="auto"`` from what ``adata`` holds, and check an explicit mode has the inputs it needs.

    ``"auto"`` is ``"joint"`` when there are counts and every slide has an image, ``"image"`` with images and no
    counts, ``"expression"`` with counts but an image missing for at least one slide (one mode for the whole AnnData,
    so that all its spots land in the same space).

    Raises
    ------
    ValueError
        Unknown ``mode``, or inputs missing for it.
    """
    if mode not in _MODES:
        raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}.")
    libraries = _libraries(adata, library_key)
    missing = [lib for lib in libraries if not _has_image(adata, lib)]
    has_images = bool(libraries) and not missing
    has_counts = _has_counts(adata)
    if mode == "auto":
        if has_counts and has_images:
            return "joint"
        if has_images:
            return "image"
        if has_counts:
            if libraries:
                logger.info(f"embed: no image for slide(s) {missing}; embedding from expression only.")
            return "expression"
        raise ValueError(
            "Nothing to embed: `adata` has neither gene counts (`.X` with genes) nor an H&E image per slide in "
            "`adata.uns['spatial'][library_id]['images']`. Load the data with `storm.datasets` or `storm.io`."
        )
    if mode in ("joint", "image") and not has_images:
        where = f"slide(s) {missing}" if missing else "any slide (`adata.uns['spatial']` is empty)"
        raise ValueError(
            f"mode={mode!r} needs an H&E image for every slide, but none was found for {where}. Add images to "
            "`adata.uns['spatial'][library_id]['images']` (squidpy layout), or use mode='expression'."
        )
    if mode in ("joint", "expression") and not has_counts:
        raise ValueError(f"mode={mode!r} needs gene counts in `.X`, but `adata` has no genes; use mode='image'.")
    return mode


def too_coarse(adata: AnnData, model: Any, library_key: str) -> list[str]:
    """Slides whose best image gives the model's patches at under half their pixel size (upsampled over 2×).

    Such a patch is a few blurred pixels (e.g. DLPFC here: only a 600-px low-resolution image, so 55 µm are 3.4 px
    zoomed 19×): colour, not morphology. ``mode="auto"`` then embeds from expression alone.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "size_um") or not hasattr(config, "patch_px"):
        return []  # a duck-typed model: nothing to judge the scale by
    from storm.pp import patch_scale

    scale = patch_scale(
        adata,
        size_um=float(config.size_um),
        out_px=int(config.patch_px),
        image=str(getattr(config, "image", "auto")),
        library_key=library_key,
    )
    return [str(lib) for lib, zoom in scale["zoom"].items() if zoom > 2.0]


def auto_mode(adata: AnnData, model: Any, *, library_key: str = "library_id") -> str:
    """Return the mode that ``embed(adata, model, mode="auto")`` uses.

    :func:`resolve_mode`'s choice, but ``"expression"`` where a slide's image is too coarse for the model's patches.
    """
    resolved = resolve_mode(adata, "auto", library_key=library_key)
    coarse = too_coarse(adata, model, library_key) if resolved == "joint" else []
    if coarse:
        logger.info(
            f"embed: the image of slide(s) {coarse} is too coarse for {model.config.size_um:g}-µm patches "
            f"(upsampled over 2×); embedding from expression only. Pass mode='joint' to use it anyway."
        )
        return "expression"
    return resolved
