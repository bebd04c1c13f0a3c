"""``storm.tl.embed``: the frozen STORM model's centre-token embedding of every spot, into ``obsm``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
from anndata import AnnData

from storm._logging import logger
from storm.tl._utils import as_adata_list, clean_params, elapsed, save_data, start_timer

_Mode = Literal["auto", "joint", "image", "expression"]
_MODES = ("auto", "joint", "image", "expression")


class _Embedder(Protocol):
    """What :func:`embed` needs of a model: :class:`storm.models.StormModel` and any duck-typed stand-in."""

    def embed(self, adata: AnnData, **kwargs: Any) -> np.ndarray: ...


def _libraries(adata: AnnData, library_key: str) -> list[str]:
    """Slide ids of ``adata``: the categories of ``obs[library_key]`` present, else the keys of ``uns['spatial']``."""
    if library_key in adata.obs:
        return [str(x) for x in adata.obs[library_key].astype("category").cat.remove_unused_categories().cat.categories]
    return [str(x) for x in adata.uns.get("spatial", {})]


def _has_image(adata: AnnData, library_id: str) -> bool:
    entry = adata.uns.get("spatial", {}).get(library_id, {})
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


def _check_embedding(emb: Any, adata: AnnData, model_name: str) -> np.ndarray:
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] != adata.n_obs:
        raise RuntimeError(
            f"Model {model_name!r} returned an embedding of shape {emb.shape} for {adata.n_obs} spots; expected "
            "(n_obs, n_dims). This is a bug in the model's `embed`, please report it."
        )
    if not np.isfinite(emb).all():
        raise RuntimeError(
            f"Model {model_name!r} returned NaN or infinite embeddings; check the inputs (counts, images) and the "
            "checkpoint, or try mode='expression' / mode='image' to find which modality fails."
        )
    return emb.astype(np.float32, copy=False)


def embed(
    adata: AnnData | Sequence[AnnData],
    model: _Embedder | None = None,
    *,
    mode: _Mode = "auto",
    key_added: str = "X_storm",
    batch_size: int = 256,
    accelerator: str = "auto",
    library_key: str = "library_id",
    copy: bool = False,
) -> AnnData | list[AnnData] | None:
    """Embed every spot with the frozen STORM model: the centre token of its spatial window (paper, §Embeddings).

    A thin step: check the inputs, call ``model.embed``, write the result. The torch code never sees the AnnData;
    :class:`storm.models.StormModel` cuts windows and patches itself.

    Parameters
    ----------
    adata
        Spots × genes with raw counts in ``.X``, ``obsm['spatial']`` and, for the image modes,
        ``uns['spatial'][library_id]['images']`` (squidpy layout). Several slides are told apart by
        ``obs[library_key]``; windows never cross slides. A list of AnnData is embedded one by one with the same
        model, so their embeddings share one space (cluster them together with :func:`storm.tl.domains`).
    model
        A :class:`storm.models.StormModel`, or any object with ``embed(adata, mode=, batch_size=, accelerator=,
        library_key=) -> ndarray`` and ``name`` / ``version`` attributes. ``None`` loads the model shipped with
        storm (:meth:`storm.models.StormModel.from_pretrained`).
    mode
        ``"joint"`` (H&E + expression), ``"image"`` (H&E only), ``"expression"`` (expression only), or ``"auto"``:
        joint when there are counts and every slide has an image, image with images only, expression otherwise.
    key_added
        Key of ``obsm`` (and ``uns``) written.
    batch_size
        Windows per forward pass.
    accelerator
        ``"auto"``, ``"cpu"``, ``"cuda"``, … (as in Lightning); ``"auto"`` picks a GPU when one is present.
    library_key
        Column of ``obs`` with the slide id.
    copy
        Return a copy (or a list of copies) instead of writing into ``adata``.

    Returns
    -------
    ``None``, or the new AnnData (list of AnnData for a list) if ``copy=True``. Written:

    - ``obsm[key_added]``: float32 (n_obs, n_dims) embedding;
    - ``uns[key_added]['params']``: ``mode`` (resolved), ``model``, ``version``, ``batch_size``, ``library_key``.

    Raises
    ------
    ValueError
        Unknown mode, or the inputs a mode needs are missing (no counts, no image for a slide). Nothing is written.
    RuntimeError
        The model returned an array of the wrong shape or with non-finite values. Nothing is written.

    Examples
    --------
    >>> import storm
    >>> adata = storm.datasets.dlpfc("151673")
    >>> storm.tl.embed(adata)  # doctest: +SKIP
    >>> storm.tl.domains(adata, n_domains=7)  # doctest: +SKIP
    """
    start = start_timer()
    adatas, is_list = as_adata_list(adata)
    if not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"`key_added` must be a non-empty string, got {key_added!r}.")
    # resolve every mode before loading the model or embedding anything: a bad list element fails fast, untouched
    modes = [resolve_mode(a, mode, library_key=library_key) for a in adatas]

    if model is None:
        from storm.models import StormModel  # lazily: torch is imported only when an embedding is asked for

        model = StormModel.from_pretrained(None)
    if not callable(getattr(model, "embed", None)):
        raise ValueError(f"`model` needs an `embed` method (a storm.models.StormModel), got {type(model).__name__}.")
    name = str(getattr(model, "name", None) or type(model).__name__)
    # StormModel keeps the storm version that wrote its checkpoint in its config
    version = getattr(model, "version", None) or getattr(getattr(model, "config", None), "version", None)

    embeddings = []
    for a, resolved in zip(adatas, modes, strict=True):
        emb = model.embed(
            a, mode=resolved, batch_size=int(batch_size), accelerator=accelerator, library_key=library_key
        )
        embeddings.append(_check_embedding(emb, a, name))

    # all embeddings computed and checked: only now write, so a failure leaves every input untouched
    outputs = [a.copy() for a in adatas] if copy else adatas
    for a, emb, resolved in zip(outputs, embeddings, modes, strict=True):
        save_data(a, attr="obsm", key=key_added, data=emb)
        params = {
            "mode": resolved,
            "model": name,
            "version": None if version is None else str(version),
            "batch_size": int(batch_size),
            "library_key": library_key if library_key in a.obs else None,
        }
        save_data(a, attr="uns", key=key_added, data={"params": clean_params(params)})
    dims = embeddings[0].shape[1]
    logger.info(
        f"embed: finished ({elapsed(start)}): {sum(a.n_obs for a in adatas)} spots × {dims} dims "
        f"({', '.join(sorted(set(modes)))} mode, model {name!r}) in obsm[{key_added!r}]"
    )
    if not copy:
        return None
    return outputs if is_list else outputs[0]
