"""Response discrimination (ROC AUC with a stratified bootstrap) and paired comparison of two scores."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pandas as pd

from storm.clinical._survival import _report_skipped, harrell_c
from storm.clinical._validate import (
    Interval,
    binary_response,
    bootstrap_indices,
    check_aligned,
    check_bootstrap,
    check_survival,
    drop_missing,
    numeric,
    percentile_interval,
)


def _response_data(response: Any, scores: dict[str, Any], positive: Any, context: str):
    """Complete-case 0/1 response and scores; both classes must remain after dropping missing values."""
    check_aligned({"response": response, **scores}, context=context)
    columns = {"response": binary_response(response, positive, context=context)}
    columns.update({name: numeric(values, name) for name, values in scores.items()})
    keep = drop_missing(columns, context=context)
    y = columns.pop("response")[keep]
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"{context}: after dropping missing values all {len(y)} patients are in one class "
            f"({n_pos} responders, {n_neg} non-responders); an AUC needs both."
        )
    return y.astype(int), {name: values[keep] for name, values in columns.items()}, n_pos, n_neg


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def response_auc(
    response: Any,
    score: Any,
    *,
    positive: Any = "R",
    n_boot: int = 1000,
    random_state: int | np.random.Generator | None = 0,
    ci: float = 0.95,
) -> Interval:
    """Area under the ROC curve of a score for response, with a stratified percentile bootstrap interval.

    The AUC (scikit-learn ``roc_auc_score``) is the probability that a random responder scores higher than a random
    non-responder (ties count one half). The bootstrap resamples responders and non-responders separately, so
    every resample keeps the cohort's class sizes and its AUC is defined.

    Parameters
    ----------
    response
        Label per patient (e.g. ``obs['response']`` with ``R``/``NR``); missing labels are dropped with a warning.
    score
        Higher = more likely ``positive``.
    positive
        The label of responders.
    n_boot
        Bootstrap resamples (0: point estimate only, interval NaN).
    random_state
        Seed or generator: the same seed gives the same interval.
    ci
        Confidence level.

    Returns
    -------
    ``Interval(estimate, ci_low, ci_high)``: unpacks as ``auc, ci_low, ci_high``.

    Raises
    ------
    ValueError
        One class only, more than two labels, ``positive`` not among the labels, a non-numeric score, or fewer than
        10 patients or 2 of a class for a bootstrap.

    References
    ----------
    Hanley JA, McNeil BJ. The meaning and use of the area under a receiver operating characteristic (ROC) curve.
    Radiology 143, 29-36 (1982).
    """
    y, scores, n_pos, n_neg = _response_data(response, {"score": score}, positive, "response_auc")
    s = scores["score"]
    estimate = _auc(y, s)
    check_bootstrap(n_boot, len(y), {"responders": n_pos, "non-responders": n_neg}, context="response_auc")
    if n_boot == 0:
        return Interval(estimate, np.nan, np.nan)
    replicates = np.array([_auc(y[idx], s[idx]) for idx in bootstrap_indices(len(y), n_boot, random_state, y)])
    return Interval(estimate, *percentile_interval(replicates, ci))


def _survival_target(y_or_surv: Any) -> tuple[Any, Any]:
    """``(time, event)`` from a pair, a two-column DataFrame or scikit-survival's structured array."""
    if isinstance(y_or_surv, np.ndarray) and y_or_surv.dtype.names is not None:
        names = y_or_surv.dtype.names
        if len(names) != 2:
            raise ValueError(f"A structured survival array needs two fields (event, time), got {names}.")
        event_field = next((f for f in names if y_or_surv.dtype[f] == np.dtype(bool)), names[0])
        time_field = next(f for f in names if f != event_field)
        return y_or_surv[time_field], y_or_surv[event_field]
    if isinstance(y_or_surv, pd.DataFrame):
        if {"time", "event"} <= set(y_or_surv.columns):
            return y_or_surv["time"], y_or_surv["event"]
        if y_or_surv.shape[1] == 2:
            return y_or_surv.iloc[:, 0], y_or_surv.iloc[:, 1]
        raise ValueError("A survival DataFrame needs columns 'time' and 'event' (or exactly two: time, event).")
    if isinstance(y_or_surv, tuple | list) and len(y_or_surv) == 2:
        return y_or_surv[0], y_or_surv[1]
    raise ValueError(
        "For metric='c_index' pass the survival as (time, event), a DataFrame with 'time' and 'event', or a "
        "scikit-survival structured array."
    )


def compare_scores(
    y_or_surv: Any,
    score_a: Any,
    score_b: Any,
    *,
    metric: Literal["auc", "c_index"] = "auc",
    n_boot: int = 1000,
    random_state: int | np.random.Generator | None = 0,
    positive: Any = "R",
    ci: float = 0.95,
) -> dict[str, Any]:
    """Paired bootstrap comparison of two scores on the same patients: difference in AUC or Harrell's C.

    Both scores are evaluated on the same resample each time, so the interval of the difference accounts for
    their correlation (two scores of one immune infiltrate are strongly correlated; comparing their separate
    intervals would be far too conservative).

    Parameters
    ----------
    y_or_surv
        ``metric="auc"``: response labels. ``metric="c_index"``: ``(time, event)``, a DataFrame with ``time`` and
        ``event`` columns, or a scikit-survival structured array.
    score_a, score_b
        Two scores per patient (for ``c_index``: higher = earlier event; for ``auc``: higher = ``positive``).
    metric
        ``"auc"`` (stratified resampling by response) or ``"c_index"`` (patients resampled).
    n_boot
        Bootstrap resamples (at least 1; 1,000 or more for a p-value to two digits).
    random_state
        Seed or generator.
    positive
        Responder label for ``metric="auc"``.
    ci
        Confidence level of the interval of the difference.

    Returns
    -------
    A dict: ``metric``, ``estimate_a``, ``estimate_b``, ``difference`` (a - b), ``ci_low``, ``ci_high``
    (percentile interval of the difference), ``p`` (two-sided bootstrap p-value of no difference:
    ``2 min(#(d* <= 0) + 1, #(d* >= 0) + 1) / (B + 1)``, capped at 1, so never 0), ``n``, ``n_boot`` (resamples
    used).

    Raises
    ------
    ValueError
        The errors of :func:`response_auc` or :func:`c_index`, an unknown metric, or ``n_boot < 1``.

    References
    ----------
    Efron B, Tibshirani RJ. An Introduction to the Bootstrap, ch. 15-16. Chapman & Hall (1993).
    """
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 1:
        raise ValueError(f"compare_scores: a paired bootstrap needs n_boot >= 1, got {n_boot!r}.")
    context = "compare_scores"
    strata = None
    statistic: Callable[[np.ndarray, np.ndarray], float]
    if metric == "auc":
        y, scores, n_pos, n_neg = _response_data(y_or_surv, {"score_a": score_a, "score_b": score_b}, positive, context)
        check_bootstrap(n_boot, len(y), {"responders": n_pos, "non-responders": n_neg}, context=context)
        strata, n = y, len(y)

        def statistic(idx: np.ndarray, s: np.ndarray) -> float:
            return _auc(y[idx], s[idx])

    elif metric == "c_index":
        time, event = _survival_target(y_or_surv)
        check_aligned({"time": time, "event": event, "score_a": score_a, "score_b": score_b}, context=context)
        columns = {"time": numeric(time, "time"), "event": numeric(event, "event")}
        columns.update(score_a=numeric(score_a, "score_a"), score_b=numeric(score_b, "score_b"))
        keep = drop_missing(columns, context=context)
        t, e = check_survival(columns["time"][keep], columns["event"][keep], context=context)
        scores = {name: columns[name][keep] for name in ("score_a", "score_b")}
        check_bootstrap(n_boot, len(t), {"events": int(e.sum())}, context=context)
        n = len(t)

        def statistic(idx: np.ndarray, s: np.ndarray) -> float:
            return harrell_c(e[idx], t[idx], s[idx])

    else:
        raise ValueError(f"metric must be 'auc' or 'c_index', got {metric!r}.")

    everyone = np.arange(n)
    try:
        a, b = statistic(everyone, scores["score_a"]), statistic(everyone, scores["score_b"])
    except ValueError as err:
        raise ValueError(f"{context}: {err}") from None
    differences = []
    for idx in bootstrap_indices(n, n_boot, random_state, strata):
        with contextlib.suppress(ValueError):  # a survival resample without event or comparable pair
            differences.append(statistic(idx, scores["score_a"]) - statistic(idx, scores["score_b"]))
    _report_skipped(n_boot, len(differences), context)
    d = np.asarray(differences)
    low, high = percentile_interval(d, ci)
    tail = min((d <= 0).sum() + 1, (d >= 0).sum() + 1) / (len(d) + 1)
    return {
        "metric": metric,
        "estimate_a": a,
        "estimate_b": b,
        "difference": a - b,
        "ci_low": low,
        "ci_high": high,
        "p": float(min(1.0, 2 * tail)),
        "n": n,
        "n_boot": len(d),
    }
