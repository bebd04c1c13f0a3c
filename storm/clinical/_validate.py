"""Input checks shared by the clinical statistics: bad input becomes a clear error or a named warning, never a number.

Every public function of :mod:`storm.clinical` funnels its arrays through here, so the rules are the same
everywhere: inputs are aligned by position; rows with a missing value in any input are dropped with a
:class:`ClinicalDataWarning` that says how many; no rows left, no events, one class only or too few patients for
the requested bootstrap raise :class:`ValueError`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

#: Fewest patients a bootstrap confidence interval is computed on. Below that the percentile interval of
#: resampled statistics is mostly resampling noise (a 10-patient cohort has ~92,000 distinct resamples, most of
#: them near-duplicates), so storm refuses rather than print an interval that looks precise.
MIN_BOOTSTRAP_PATIENTS = 10
#: Fewest members of each class (responders, non-responders) or events a bootstrap needs.
MIN_BOOTSTRAP_PER_CLASS = 2


class ClinicalDataWarning(UserWarning):
    """Patients were dropped, or the data look suspect (e.g. event flags that seem inverted)."""


class Interval(NamedTuple):
    """A point estimate with its confidence interval; unpacks as ``estimate, ci_low, ci_high``."""

    estimate: float
    ci_low: float
    ci_high: float


def warn(message: str) -> None:
    """Emit a :class:`ClinicalDataWarning` pointing at the user's call, not at storm's internals."""
    warnings.warn(message, ClinicalDataWarning, stacklevel=4)


def index_of(*arrays: Any, n: int) -> pd.Index:
    """Return the index of the first pandas input (to label per-patient outputs), else ``0..n-1``."""
    for array in arrays:
        if isinstance(array, pd.Series | pd.DataFrame) and len(array.index) == n:
            return array.index
    return pd.RangeIndex(n)


def check_aligned(inputs: Mapping[str, Any], *, context: str) -> None:
    """Refuse pandas inputs labelled with different patients (or the same in another order).

    Inputs are used by position; a Series of ``obs['os_time']`` and a score Series sorted differently would pair
    each time with another patient's score without any error. Default integer indexes are not checked.
    """
    labelled = {
        name: values.index
        for name, values in inputs.items()
        if isinstance(values, pd.Series | pd.DataFrame) and not isinstance(values.index, pd.RangeIndex)
    }
    if len(labelled) < 2:
        return
    (first, reference), *rest = labelled.items()
    for name, index in rest:
        if len(index) == len(reference) and not index.equals(reference):  # other lengths: a clearer error follows
            raise ValueError(
                f"{context}: `{first}` and `{name}` are indexed by different patients or in a different order; "
                f"inputs are paired by position, so align them first (e.g. `{name}.loc[{first}.index]`)."
            )


def numeric(values: Any, name: str) -> np.ndarray:
    """Return ``values`` as a 1-D float array; missing values become NaN; anything non-numeric is an error."""
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.CategoricalDtype):
        raise ValueError(f"`{name}` is categorical; pass a numeric score (or use `groups=` for group labels).")
    if np.ma.isMaskedArray(values):  # R's NA arrives masked (rdata): a masked value is missing, not its fill value
        values = np.ma.filled(np.ma.asarray(values, dtype=float), np.nan)
    shape = np.shape(values)
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise ValueError(f"`{name}` must be one-dimensional, got shape {shape}.")
    try:
        series = pd.to_numeric(pd.Series(np.asarray(values, dtype=object).ravel()), errors="raise")
    except (TypeError, ValueError) as err:
        raise ValueError(f"`{name}` must be numeric: {err}") from None
    return series.astype(float).to_numpy()


def _check_lengths(columns: Mapping[str, np.ndarray]) -> int:
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}: {length}" for name, length in lengths.items())
        raise ValueError(f"Inputs must have one value per patient, aligned by position; got lengths {detail}.")
    return next(iter(lengths.values()))


def drop_missing(columns: dict[str, np.ndarray], *, context: str) -> np.ndarray:
    """Boolean mask of rows complete in every column; warns with the count dropped, errors if none is left.

    NaN is missing (dropped with a warning); an infinite value is an error, since it is no measurement at all.
    """
    n = _check_lengths(columns)
    for name, values in columns.items():
        infinite = np.isinf(values) if np.issubdtype(np.asarray(values).dtype, np.number) else np.zeros(n, bool)
        if infinite.any():
            raise ValueError(
                f"{context}: {int(infinite.sum())} of {n} values of `{name}` are infinite (first at position "
                f"{int(np.flatnonzero(infinite)[0])}). Replace them with finite values, or with NaN to drop those "
                "patients (e.g. `np.where(np.isinf(x), np.nan, x)`)."
            )
    keep = np.ones(n, dtype=bool)
    for values in columns.values():
        keep &= ~pd.isna(values)
    dropped = int(n - keep.sum())
    if keep.sum() == 0:
        raise ValueError(f"{context}: no patient has all of {', '.join(columns)} (all {n} have a missing value).")
    if dropped:
        missing = {name: int(pd.isna(values).sum()) for name, values in columns.items() if pd.isna(values).any()}
        detail = ", ".join(f"{count} missing {name}" for name, count in missing.items())
        warn(f"{context}: dropped {dropped} of {n} patients with missing values ({detail}); {int(keep.sum())} left.")
    return keep


def check_survival(time: np.ndarray, event: np.ndarray, *, context: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate complete survival data: finite non-negative times, not all equal, 0/1 events, at least one event."""
    if not np.isfinite(time).all():
        raise ValueError(f"{context}: survival times must be finite.")
    if (time < 0).any():
        raise ValueError(f"{context}: {int((time < 0).sum())} survival times are negative; times count from 0.")
    if not np.isin(event, (0, 1)).all():
        bad = sorted(set(np.unique(event)) - {0.0, 1.0})[:5]
        raise ValueError(f"{context}: event flags must be 0/1 (or bool), got {bad}.")
    if len(time) > 1 and np.all(time == time[0]):
        raise ValueError(
            f"{context}: all {len(time)} follow-up times are {time[0]:g}, so no two patients can be ordered and "
            "a survival statistic is meaningless. Check that `time` is the follow-up column (time to event or to "
            "last contact)."
        )
    event = event.astype(bool)
    if not event.any():
        raise ValueError(
            f"{context}: no events among {len(event)} patients (all censored); a survival statistic is undefined."
        )
    return time, event


def survival_data(
    time: Any, event: Any, others: Mapping[str, Any] | None = None, *, context: str
) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Parse, align and clean ``time``, ``event`` and other numeric per-patient inputs.

    Returns the complete-case ``time`` (float), ``event`` (bool), the other columns, and the boolean mask of the
    input rows kept.
    """
    check_aligned({"time": time, "event": event, **(others or {})}, context=context)
    columns = {"time": numeric(time, "time"), "event": numeric(event, "event")}
    for name, values in (others or {}).items():
        columns[name] = numeric(values, name)
    keep = drop_missing(columns, context=context)
    clean = {name: values[keep] for name, values in columns.items()}
    t, e = check_survival(clean.pop("time"), clean.pop("event"), context=context)
    return t, e, clean, keep


def binary_response(response: Any, positive: Any, *, context: str) -> np.ndarray:
    """Response labels as float 1.0 (``positive``) / 0.0 (the other label) / NaN (missing)."""
    values = pd.Series(np.asarray(response, dtype=object).ravel())
    missing = values.isna()
    labels = list(pd.unique(values[~missing]))
    if len(labels) > 2:
        raise ValueError(f"{context}: response must have two labels, got {len(labels)}: {labels[:6]}.")
    if positive not in labels:
        if len(labels) < 2:
            raise ValueError(
                f"{context}: every patient with a known response is {labels} (one class); an AUC needs both "
                f"responders and non-responders."
            )
        raise ValueError(f"{context}: positive={positive!r} is not among the response labels {labels}.")
    if len(labels) < 2:
        raise ValueError(
            f"{context}: every patient with a known response is {positive!r} (one class); an AUC needs both "
            "responders and non-responders."
        )
    out = (values == positive).astype(float).to_numpy()
    out[missing.to_numpy()] = np.nan
    return out


def check_bootstrap(n_boot: int, n_patients: int, classes: Mapping[str, int] | None = None, *, context: str) -> None:
    """Refuse a bootstrap on too few patients, or too few members of a class (responders, events)."""
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise ValueError(f"{context}: n_boot must be a non-negative integer, got {n_boot!r}.")
    if n_boot == 0:
        return
    if n_patients < MIN_BOOTSTRAP_PATIENTS:
        raise ValueError(
            f"{context}: {n_patients} patients are too few for a bootstrap confidence interval (storm needs at "
            f"least {MIN_BOOTSTRAP_PATIENTS}); pass n_boot=0 for the point estimate only, or pool cohorts."
        )
    for name, size in (classes or {}).items():
        if size < MIN_BOOTSTRAP_PER_CLASS:
            raise ValueError(
                f"{context}: {size} {name} are too few for a bootstrap (at least {MIN_BOOTSTRAP_PER_CLASS} needed); "
                "pass n_boot=0 for the point estimate only."
            )


def bootstrap_indices(
    n: int, n_boot: int, random_state: int | np.random.Generator | None, strata: np.ndarray | None = None
) -> Iterator[np.ndarray]:
    """Yield the indices of ``n_boot`` resamples with replacement; within each stratum when ``strata`` is given.

    Stratified resampling keeps every replicate's class sizes equal to the data's, so an AUC is defined in each.
    """
    rng = np.random.default_rng(random_state)
    if strata is None:
        for _ in range(n_boot):
            yield rng.integers(0, n, size=n)
        return
    groups = [np.flatnonzero(strata == level) for level in np.unique(strata)]
    for _ in range(n_boot):
        yield np.concatenate([group[rng.integers(0, len(group), size=len(group))] for group in groups])


def percentile_interval(replicates: np.ndarray, ci: float) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993, ch. 13) of the finite replicates."""
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}.")
    alpha = (1 - ci) / 2
    low, high = np.quantile(replicates, [alpha, 1 - alpha])
    return float(low), float(high)
