"""Helpers shared by the :mod:`storm.tl` functions: input checks, writing a result, timing the log line."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
from anndata import AnnData

from storm._logging import logger

_Attr = Literal["obs", "obsm", "obsp", "uns", "layers", "var", "varm"]


def save_data(adata: AnnData, *, attr: _Attr, key: str, data: Any) -> None:
    """Write ``data`` to ``adata.<attr>[key]`` and log it (squidpy's ``_save_data``).

    One helper for every write keeps the log lines uniform, so a user can read from the log what a call added.
    """
    getattr(adata, attr)[key] = data
    logger.info(f"Adding `adata.{attr}[{key!r}]`")


def start_timer() -> float:
    """Return the clock reading that :func:`elapsed` compares against."""
    return time.perf_counter()


def elapsed(start: float) -> str:
    """Wall time since ``start`` as ``H:MM:SS`` (scanpy's "finished (0:00:01)" format)."""
    return str(timedelta(seconds=round(time.perf_counter() - start)))


def as_adata_list(adata: AnnData | Sequence[AnnData]) -> tuple[list[AnnData], bool]:
    """Return ``(list of AnnData, whether a list was given)`` after checking every element is an AnnData."""
    if isinstance(adata, AnnData):
        return [adata], False
    if isinstance(adata, Sequence) and not isinstance(adata, str) and len(adata) > 0:
        items = list(adata)
        bad = [type(a).__name__ for a in items if not isinstance(a, AnnData)]
        if bad:
            raise ValueError(f"Expected AnnData objects, got {', '.join(sorted(set(bad)))} in the list.")
        return items, True
    raise ValueError(f"Expected an AnnData or a non-empty list of AnnData, got {type(adata).__name__}.")


def get_rep(adata: AnnData, use_rep: str, *, hint: str = "run `storm.tl.embed(adata)` first") -> np.ndarray:
    """Return ``adata.obsm[use_rep]`` as a finite float (n_obs, d) array, or raise a `ValueError` saying what to do."""
    if use_rep not in adata.obsm:
        keys = ", ".join(repr(k) for k in adata.obsm) or "none"
        raise ValueError(f"`adata.obsm[{use_rep!r}]` is missing (obsm keys: {keys}); {hint}, or pass `use_rep=`.")
    rep = adata.obsm[use_rep]
    if isinstance(rep, pd.DataFrame):
        rep = rep.to_numpy()
    if hasattr(rep, "toarray"):  # a sparse representation (rare, but obsm allows it)
        rep = rep.toarray()
    rep = np.asarray(rep)
    if rep.ndim != 2 or rep.shape[1] == 0:
        raise ValueError(f"`adata.obsm[{use_rep!r}]` has shape {rep.shape}; expected (n_obs, n_dims) with n_dims ≥ 1.")
    try:
        rep = rep.astype(np.float64, copy=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`adata.obsm[{use_rep!r}]` is not numeric ({rep.dtype}).") from err
    bad = ~np.isfinite(rep).all(axis=1)
    if bad.any():
        examples = ", ".join(repr(str(x)) for x in adata.obs_names[bad][:3])
        raise ValueError(
            f"{int(bad.sum())} of {adata.n_obs} rows of `adata.obsm[{use_rep!r}]` hold NaN or infinite values "
            f"(e.g. {examples}). Recompute the embedding, or drop those rows: `adata = adata[mask].copy()`."
        )
    return rep


def clean_params(params: dict[str, Any]) -> dict[str, Any]:
    """Drop ``None`` values: h5ad cannot store ``None`` in ``.uns``, and an absent key says the same."""
    return {k: v for k, v in params.items() if v is not None}
