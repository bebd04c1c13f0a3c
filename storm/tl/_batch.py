"""Batch correction of a representation before clustering: Harmony (``harmonypy``) over a column of ``obs``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

#: Harmony's kernel bandwidth used by :func:`storm.tl.domains`, wider than harmonypy's 0.1 (why: :func:`harmonize`).
HARMONY_SIGMA = 1.0


def batch_labels(adatas: Sequence[AnnData], batch_key: str) -> np.ndarray:
    """Return ``obs[batch_key]`` of every AnnData, concatenated, as strings; raise if it cannot define batches.

    Raises
    ------
    ValueError
        The column is missing from one of the AnnData, holds missing values, or has a single value overall.
    """
    if not isinstance(batch_key, str) or not batch_key:
        raise ValueError(f"`batch_key` must be the name of a column of `adata.obs`, got {batch_key!r}.")
    missing = [i for i, a in enumerate(adatas) if batch_key not in a.obs]
    if missing:
        where = "`adata.obs`" if len(adatas) == 1 else f"`obs` of the AnnData at position(s) {missing}"
        raise ValueError(
            f"`batch_key`={batch_key!r} is not a column of {where}. Add one naming each spot's batch (patient, "
            "slide), e.g. `adata.obs['patient'] = ...`, or pass `batch_key=library_key` to correct between slides."
        )
    values = pd.concat([a.obs[batch_key] for a in adatas], ignore_index=True)
    if values.isna().any():
        n_missing = int(values.isna().sum())
        raise ValueError(f"`obs[{batch_key!r}]` has {n_missing} missing value(s); give every spot a batch.")
    values = values.astype(str).to_numpy()
    if len(np.unique(values)) < 2:
        raise ValueError(
            f"`obs[{batch_key!r}]` has one value ({values[0]!r}) on every spot: there is no batch effect to correct. "
            "Leave `batch_key=None`, or name the column that tells the batches apart."
        )
    return values


def harmony_params(harmony_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the options of :func:`harmonypy.run_harmony` for :func:`harmonize`: storm's ``sigma``, then the user's."""
    if harmony_kwargs is not None and not isinstance(harmony_kwargs, Mapping):
        raise ValueError(f"`harmony_kwargs` must be a dict of harmonypy.run_harmony options, got {harmony_kwargs!r}.")
    reserved = {"data_mat", "meta_data", "vars_use", "random_state"} & set(harmony_kwargs or {})
    if reserved:
        raise ValueError(
            f"`harmony_kwargs` may not set {sorted(reserved)}: storm passes the representation, `batch_key` and "
            "`random_state` itself."
        )
    return {"sigma": HARMONY_SIGMA, **(harmony_kwargs or {})}


def harmonize(rep: np.ndarray, batches: np.ndarray, *, random_state: int | None, **kwargs: Any) -> np.ndarray:
    """Harmony-correct ``rep`` (n_obs, d) for ``batches`` (n_obs,) with ``harmonypy`` (Korsunsky et al. 2019).

    Harmony soft-clusters the spots on their cosine-normalised coordinates, favouring clusters that mix the batches,
    and moves each spot by its clusters' batch offsets, so a domain found on several patients lands in one place.
    harmonypy's kernel bandwidth ``sigma=0.1`` suits cells that already overlap between batches; when a batch is
    shifted by more than the distance between domains (as between patients), clusters that narrow hold one batch
    each and nothing is corrected. ``sigma`` = :data:`HARMONY_SIGMA` (1.0) keeps the clusters soft enough to mix
    the batches (``tests/test_tl_domains.py`` simulates it; ``benchmarks/domains_joint.py`` measures both on
    HER2ST and DLPFC).
    """
    try:
        import harmonypy
    except ImportError as err:  # a dependency of storm-st; only a broken environment lacks it
        raise ImportError("`batch_key` needs harmonypy: `pip install 'harmonypy>=2'`.") from err
    meta = pd.DataFrame({"batch": batches})
    kwargs.setdefault("verbose", False)
    # (d, n_obs) is read unambiguously by harmonypy, even when n_obs == d; 2.x returns Z_corr as (n_obs, d)
    seed = 0 if random_state is None else random_state
    ho = harmonypy.run_harmony(np.ascontiguousarray(rep.T), meta, ["batch"], random_state=seed, **kwargs)
    corrected = np.asarray(ho.Z_corr, dtype=np.float64)
    if corrected.shape != rep.shape:  # harmonypy < 2 returned (d, n_obs); pyproject asks for >= 2
        raise RuntimeError(f"harmonypy returned shape {corrected.shape} for {rep.shape}: install harmonypy >= 2.")
    return corrected
