"""Batch correction of a representation before clustering: Harmony (``harmonypy``) over a column of ``obs``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData


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
        raise ValueError(f"`obs[{batch_key!r}]` has {int(values.isna().sum())} missing value(s); give every spot a batch.")
    values = values.astype(str).to_numpy()
    if len(np.unique(values)) < 2:
        raise ValueError(
            f"`obs[{batch_key!r}]` has one value ({values[0]!r}) on every spot: there is no batch effect to correct. "
            "Leave `batch_key=None`, or name the column that tells the batches apart."
        )
    return values


def harmonize(rep: np.ndarray, batches: np.ndarray, *, random_state: int | None, **kwargs) -> np.ndarray:
    """Harmony-correct ``rep`` (n_obs, d) for ``batches`` (n_obs,) with ``harmonypy`` (Korsunsky et al. 2019).

    Harmony moves each spot towards the centroid of its soft cluster shared across batches, so a domain present
    on several patients lands in one place while domains present on one patient only stay apart.
    """
    try:
        import harmonypy
    except ImportError as err:  # a dependency of storm-st; only a broken environment lacks it
        raise ImportError("`batch_key` needs harmonypy: `pip install harmonypy`.") from err
    meta = pd.DataFrame({"batch": batches})
    kwargs.setdefault("verbose", False)
    ho = harmonypy.run_harmony(rep, meta, ["batch"], random_state=0 if random_state is None else random_state, **kwargs)
    corrected = np.asarray(ho.Z_corr, dtype=np.float64)
    # harmonypy < 2 returns (d, n_obs), 2.x (n_obs, d)
    return corrected.T if corrected.shape != rep.shape else corrected
