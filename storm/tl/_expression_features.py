"""Spot and tile features that expression heads read: the frozen STORM embedding (H&E mode) and stain statistics.

Shared by :func:`storm.tl.train_expression_head`, :func:`storm.tl.predict_expression` and :func:`storm.tl.virtual_st`,
so that a head sees the same features at training and at prediction time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from anndata import AnnData

from storm._logging import logger
from storm.pp._stain import StainProfile

#: Feature blocks a head can read, in the order they are concatenated.
FEATURE_BLOCKS = ("storm", "stain")


def resolve_model(model: Any = None) -> Any:
    """Return the given :class:`storm.models.StormModel`, or the embedded storm-mini when ``None``."""
    from storm.models import StormModel

    if model is None:
        return StormModel.from_pretrained()
    if isinstance(model, str):
        return StormModel.from_pretrained(model)
    if not isinstance(model, StormModel):
        kind = type(model).__name__
        raise ValueError(f"`model` must be a storm.models.StormModel, a model name or None, got {kind}.")
    return model


def encoder_identity(model: Any) -> dict[str, Any]:
    """Identity of a model's H&E feature path: a fingerprint of its inference weights and network configuration.

    A head records it at training time; :meth:`storm.nn.SavedHead.load` and the prediction functions refuse a
    head whose encoder fingerprint differs from the model's (its features would be meaningless to the head).

    Parameters
    ----------
    model
        A :class:`storm.models.StormModel`.

    Returns
    -------
    dict
        ``name`` (a readable description), ``fingerprint`` (sha256 hex), ``dim``, ``patch_px``, ``size_um``.
    """
    import json

    digest = hashlib.sha256()
    digest.update(json.dumps(model.config.net.to_dict(), sort_keys=True).encode())
    state = model.module.inference_state_dict()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        digest.update(key.encode())
        digest.update(str(tuple(t.shape)).encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    net = model.config.net
    return {
        "name": f"storm dim={net.dim} depth={net.depth} image_encoder={net.image_encoder} genes={len(model.genes)}",
        "fingerprint": digest.hexdigest(),
        "dim": int(net.dim),
        "patch_px": int(model.config.patch_px),
        "size_um": float(model.config.size_um),
    }


def check_features(features: Sequence[str] | str) -> list[str]:
    """Validate the feature block names (``"storm"``, ``"stain"``), keeping their canonical order."""
    names = [features] if isinstance(features, str) else [str(f) for f in features]
    unknown = sorted(set(names) - set(FEATURE_BLOCKS))
    if unknown or not names:
        raise ValueError(f"`features` must be a non-empty subset of {FEATURE_BLOCKS}, got {names!r}.")
    return [f for f in FEATURE_BLOCKS if f in names]


def warn_if_too_coarse(adatas: Sequence[AnnData], model: Any, library_key: str, *, context: str) -> None:
    """Log a warning for slides whose image gives the model's patches at under half their pixel size.

    Every feature block of a head is read from the H&E patch; a patch upsampled over 2× (e.g. DLPFC's 600-px
    low-resolution image: 55 µm are 3.4 px) holds colour, not morphology. ``storm.tl.embed`` then falls back to
    expression; a head has no such fallback, so the user is told.
    """
    from storm.models._modes import too_coarse

    coarse = [lib for a in adatas for lib in too_coarse(a, model, library_key)]
    if coarse:
        logger.warning(
            f"{context}: the image of slide(s) {coarse} is too coarse for {model.config.size_um:g}-µm patches "
            f"(upsampled over 2×), so its H&E features carry colour, not morphology. Load the full-resolution image "
            "(`uns['spatial'][library_id]['metadata']['fullres_path']`) or a hires image for these slides."
        )


def stain_featurizer():
    """Return the training-free stain/colour/texture featurizer used for the ``"stain"`` block."""
    from storm.nn import StainTextureFeaturizer

    return StainTextureFeaturizer()


def head_stain_target(head: Any) -> StainProfile | None:
    """Return the stains a head's patches are normalised to (``setup['stain_target']``), or ``None``."""
    target = getattr(head, "setup", {}).get("stain_target")
    return None if target is None else StainProfile.from_dict(target)


def feature_spec(model: Any, features: Sequence[str]) -> list[dict[str, Any]]:
    """Name and width of each feature block, as the head records them."""
    out = []
    for f in features:
        dim = model.dim if f == "storm" else stain_featurizer().out_dim
        out.append({"name": f, "dim": int(dim)})
    return out


def spot_features(
    adata: AnnData,
    model: Any,
    features: Sequence[str],
    *,
    batch_size: int = 256,
    accelerator: str = "auto",
    library_key: str = "library_id",
    stain_target: StainProfile | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Features of every spot of ``adata`` for an expression head: float32 ``(n_obs, sum of block widths)``.

    ``"storm"``: the frozen model's H&E-only embedding (:meth:`storm.models.StormModel.embed` with ``mode="image"``:
    the centre token of each spot's spatial window, so neighbouring tissue gives context). ``"stain"``: stain, colour
    and texture statistics (:class:`storm.nn.StainTextureFeaturizer`) of the same patch the model sees (``size_um``
    of tissue at ``patch_px``). With ``stain_target``, every slide's patches are first Macenko-normalised to it
    (each slide's own profile fitted on a sample of its spots). ``adata`` is not modified.
    """
    from storm.pp import extract_patches, normalize_stain, stain_profile
    from storm.pp._validate import check_libraries

    size_um, px = model.config.size_um, model.config.patch_px

    blocks = []
    for f in features:
        if f == "storm":
            blocks.append(
                np.asarray(
                    model.embed(
                        adata,
                        mode="image",
                        batch_size=batch_size,
                        accelerator=accelerator,
                        library_key=library_key,
                        stain_target=stain_target,
                        progress=progress,
                    ),
                    dtype=np.float32,
                )
            )
        elif f == "stain":
            featurizer = stain_featurizer()
            block = np.zeros((adata.n_obs, featurizer.out_dim), dtype=np.float32)
            libs, codes = check_libraries(adata, library_key)
            for c, lib in enumerate(libs):  # slide by slide: each has its own stains
                source = None
                if stain_target is not None:
                    source = stain_profile(adata, size_um=size_um, out_px=px, library_id=lib, library_key=library_key)
                parts = []
                batches = extract_patches(
                    adata, size_um=size_um, out_px=px, batch_size=batch_size, library_id=lib, library_key=library_key
                )
                with torch.inference_mode():
                    for batch in batches:
                        if source is not None:
                            batch = normalize_stain(batch, source, stain_target)
                        parts.append(featurizer(torch.from_numpy(batch).permute(0, 3, 1, 2)).numpy())
                block[codes == c] = np.concatenate(parts)
            blocks.append(block)
    out = np.concatenate(blocks, axis=1)
    logger.debug(f"spot_features: {out.shape[0]:,} spots × {out.shape[1]} features ({'+'.join(features)})")
    return out
