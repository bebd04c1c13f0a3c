"""Survival discrimination and curves: Harrell's C with a bootstrap interval, Kaplan–Meier, log-rank, AUC(t)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd

from storm.clinical._validate import (
    Interval,
    bootstrap_indices,
    check_aligned,
    check_bootstrap,
    check_survival,
    drop_missing,
    numeric,
    percentile_interval,
    survival_data,
    warn,
)

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from lifelines import KaplanMeierFitter


def harrell_c(event: np.ndarray, time: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C of complete data via scikit-survival (tied risks count 1/2); ValueError if no pair is comparable."""
    from sksurv.metrics import concordance_index_censored

    return float(concordance_index_censored(event, time, risk)[0])


def c_index(
    time: Any,
    event: Any,
    risk: Any,
    *,
    n_boot: int = 1000,
    random_state: int | np.random.Generator | None = 0,
    ci: float = 0.95,
) -> Interval:
    """Harrell's concordance index of a risk score, with a percentile bootstrap confidence interval.

    C is the share of comparable patient pairs (the one with the shorter observed time had the event) in which the
    patient who failed first has the higher risk; ties in risk count one half. It is computed by scikit-survival's
    ``concordance_index_censored``; the interval resamples patients with replacement (the paper's protocol: 1,000
    bootstraps).

    Parameters
    ----------
    time, event
        Follow-up time and event flag (1 observed, 0 censored) per patient.
    risk
        Higher = worse prognosis (earlier event). For a protective score (e.g. an immune signature under
        immunotherapy) pass its negative, or read C as 1 - C.
    n_boot
        Bootstrap resamples (0: point estimate only, interval NaN). Resamples without an event or comparable pair
        are skipped (a warning says how many when over 1%).
    random_state
        Seed or generator of the resampling: the same seed gives the same interval.
    ci
        Confidence level of the percentile interval.

    Returns
    -------
    ``Interval(estimate, ci_low, ci_high)``: unpacks as ``c, ci_low, ci_high``.

    Raises
    ------
    ValueError
        No events, no comparable pair, bad times or events, or fewer than 10 patients or 2 events for a bootstrap.

    References
    ----------
    Harrell FE et al. Evaluating the yield of medical tests. JAMA 247, 2543-2546 (1982).
    Pölsterl S. scikit-survival: a library for time-to-event analysis built on top of scikit-learn. J Mach Learn
    Res 21, 1-6 (2020).
    """
    t, e, clean, _ = survival_data(time, event, {"risk": risk}, context="c_index")
    r = clean["risk"]
    try:
        estimate = harrell_c(e, t, r)
    except ValueError as err:
        raise ValueError(f"c_index: {err}") from None
    check_bootstrap(n_boot, len(t), {"events": int(e.sum())}, context="c_index")
    if n_boot == 0:
        return Interval(estimate, np.nan, np.nan)
    replicates = []
    for idx in bootstrap_indices(len(t), n_boot, random_state):
        if e[idx].any():
            with contextlib.suppress(ValueError):  # no comparable pair in this resample
                replicates.append(harrell_c(e[idx], t[idx], r[idx]))
    _report_skipped(n_boot, len(replicates), "c_index")
    return Interval(estimate, *percentile_interval(np.asarray(replicates), ci))


def _report_skipped(n_boot: int, n_done: int, context: str) -> None:
    skipped = n_boot - n_done
    if n_done < max(2, n_boot // 2):
        raise ValueError(f"{context}: {skipped} of {n_boot} bootstrap resamples were degenerate; too few events.")
    if skipped > 0.01 * n_boot:
        warn(f"{context}: {skipped} of {n_boot} bootstrap resamples had no event or comparable pair (skipped).")


def _grouped(time: Any, event: Any, groups: Any, *, context: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Complete-case time, event and group labels, and the groups in their order (categorical order kept)."""
    check_aligned({"time": time, "event": event, "groups": groups}, context=context)
    labels = pd.Series(np.asarray(groups, dtype=object).ravel())
    columns = {"time": numeric(time, "time"), "event": numeric(event, "event"), "groups": labels.to_numpy()}
    keep = drop_missing(columns, context=context)
    t, e = check_survival(columns["time"][keep], columns["event"][keep], context=context)
    g = labels.to_numpy()[keep]
    dtype = getattr(groups, "dtype", None)
    if isinstance(dtype, pd.CategoricalDtype):
        order = [level for level in dtype.categories if (g == level).any()]
    else:
        order = list(pd.unique(g))
        with contextlib.suppress(TypeError):  # mixed types: keep the order of appearance
            order = sorted(order)
    return t, e, g, order


def km(time: Any, event: Any, groups: Any = None) -> dict[str, KaplanMeierFitter]:
    """Kaplan–Meier survival curves, one per group, fitted by lifelines.

    Parameters
    ----------
    time, event
        Follow-up time and event flag (1 observed, 0 censored) per patient.
    groups
        Group label per patient (e.g. ``cox_split(...)["groups"]``); ``None``: one curve of all patients.
        Categorical order is kept; patients with a missing label are dropped with a warning.

    Returns
    -------
    ``{label: KaplanMeierFitter}`` in group order; each fitter carries its ``median_survival_time_``,
    ``survival_function_`` and ``confidence_interval_`` (see lifelines). :func:`storm.pl.km` draws them.

    References
    ----------
    Kaplan EL, Meier P. Nonparametric estimation from incomplete observations. J Am Stat Assoc 53, 457-481 (1958).
    """
    from lifelines import KaplanMeierFitter

    if groups is None:
        groups = np.full(len(numeric(time, "time")), "all", dtype=object)
    t, e, g, order = _grouped(time, event, groups, context="km")
    return {str(level): KaplanMeierFitter(label=str(level)).fit(t[g == level], e[g == level]) for level in order}


def logrank(time: Any, event: Any, groups: Any) -> dict[str, Any]:
    """Log-rank test of equal survival across groups (lifelines), with pairwise tests when there are more than two.

    Parameters
    ----------
    time, event
        Follow-up time and event flag (1 observed, 0 censored) per patient.
    groups
        Group label per patient; at least two groups.

    Returns
    -------
    A dict: ``statistic`` (chi-square), ``df``, ``p`` (lifelines ``multivariate_logrank_test``; with two groups it
    equals ``logrank_test``), ``groups`` (labels in order), ``n`` and ``events`` (Series per group), and
    ``pairwise``: lifelines ``pairwise_logrank_test`` summary (unadjusted p) for three or more groups, else
    ``None``.

    Raises
    ------
    ValueError
        Fewer than two groups, no events, bad times or events.

    References
    ----------
    Mantel N. Evaluation of survival data and two new rank order statistics arising in its consideration. Cancer
    Chemother Rep 50, 163-170 (1966).
    """
    from lifelines.statistics import multivariate_logrank_test, pairwise_logrank_test

    t, e, g, order = _grouped(time, event, groups, context="logrank")
    if len(order) < 2:
        raise ValueError(f"logrank: needs at least two groups with patients, got {order}.")
    result = multivariate_logrank_test(t, g, e)
    pairwise = pairwise_logrank_test(t, g, e).summary if len(order) > 2 else None
    return {
        "statistic": float(result.test_statistic),
        "df": int(result.degrees_of_freedom),
        "p": float(result.p_value),
        "groups": order,
        "n": pd.Series({level: int((g == level).sum()) for level in order}),
        "events": pd.Series({level: int(e[g == level].sum()) for level in order}),
        "pairwise": pairwise,
    }


class TimeDependentAUC(NamedTuple):
    """Cumulative/dynamic AUC at each time and its mean (weighted by the survival function's drop)."""

    auc: pd.Series
    mean_auc: float


def _surv(event: np.ndarray, time: np.ndarray) -> np.ndarray:
    from sksurv.util import Surv

    return Surv.from_arrays(event=event, time=time)


def time_dependent_auc(
    time: Any,
    event: Any,
    risk: Any,
    times: Any,
    *,
    train_time: Any = None,
    train_event: Any = None,
) -> TimeDependentAUC:
    """Cumulative/dynamic AUC(t): how well the risk separates patients with an event by t from those event-free.

    Computed by scikit-survival's ``cumulative_dynamic_auc`` with inverse-probability-of-censoring weights
    (Uno et al. 2007; Hung & Chiang 2010). The censoring distribution is estimated by Kaplan–Meier on the
    *training* data: pass ``train_time``/``train_event`` when the risk model was fitted on other patients; by
    default the evaluated patients themselves are used (right for a fixed biomarker, which has no training set).

    Parameters
    ----------
    time, event
        Follow-up time and event flag of the evaluated patients.
    risk
        Higher = earlier event.
    times
        Time points (same unit as ``time``), within the evaluated follow-up: from its first to before its last time.
    train_time, train_event
        Survival of the patients to estimate the censoring distribution on; both or neither.

    Returns
    -------
    ``TimeDependentAUC(auc, mean_auc)``: ``auc`` a Series indexed by time, ``mean_auc`` its summary over
    ``times``.

    Raises
    ------
    ValueError
        Times outside the follow-up range, no events, bad inputs, only one of the training arrays.

    References
    ----------
    Uno H et al. Evaluating prediction rules for t-year survivors with censored regression models. J Am Stat Assoc
    102, 527-537 (2007). Hung H, Chiang CT. Estimation methods for time-dependent AUC models with survival data.
    Can J Stat 38, 8-26 (2010).
    """
    from sksurv.metrics import cumulative_dynamic_auc

    t, e, clean, _ = survival_data(time, event, {"risk": risk}, context="time_dependent_auc")
    if (train_time is None) != (train_event is None):
        raise ValueError("time_dependent_auc: pass both train_time and train_event, or neither.")
    if train_time is None:
        train_t, train_e = t, e
    else:
        train_t, train_e, _, _ = survival_data(train_time, train_event, context="time_dependent_auc (training)")
    grid = np.atleast_1d(numeric(times, "times"))
    if not np.isfinite(grid).all() or len(grid) == 0:
        raise ValueError("time_dependent_auc: times must be finite numbers.")
    low, high = t.min(), t.max()
    outside = grid[(grid < low) | (grid >= high)]
    if len(outside):
        raise ValueError(
            f"time_dependent_auc: times {outside.tolist()} are outside the follow-up of the evaluated patients "
            f"[{low:.4g}, {high:.4g}); choose times inside it (e.g. quantiles of the event times)."
        )
    try:
        auc, mean_auc = cumulative_dynamic_auc(_surv(train_e, train_t), _surv(e, t), clean["risk"], grid)
    except ValueError as err:
        raise ValueError(f"time_dependent_auc: {err}") from None
    return TimeDependentAUC(pd.Series(auc, index=pd.Index(grid, name="time"), name="auc"), float(mean_auc))


def check_events(adata: AnnData, *, endpoints: tuple[str, ...] = ("os", "pfs")) -> pd.DataFrame:
    """Check a cohort's event flags against its response; warn where they look inverted.

    Responders should die and progress no more often than non-responders. Where they do (the Miao cohort of
    PredictioR: responders 8/10 deaths against 10/18), the censoring flags are most likely coded the wrong way
    round upstream: do not trust a hazard ratio of that cohort until the flags are checked against the source.

    Parameters
    ----------
    adata
        A cohort from :func:`storm.datasets.icb_cohort` (``obs['response']``, ``obs['os_event']``, …).
    endpoints
        Endpoints to check.

    Returns
    -------
    :func:`storm.datasets.icb_event_check`'s table (events and patients per response group, ``suspicious``).

    Warns
    -----
    ClinicalDataWarning
        One per suspicious endpoint, naming the counts.
    """
    from storm.datasets import icb_event_check

    if "response" not in adata.obs:
        raise ValueError("check_events: adata.obs has no 'response' column to check the events against.")
    table = icb_event_check(adata)
    table = table.loc[[endpoint for endpoint in endpoints if endpoint in table.index]]
    cohort = adata.uns.get("icb", {}).get("cohort", "this cohort")
    for endpoint, row in table[table["suspicious"]].iterrows():
        warn(
            f"{cohort}: {endpoint.upper()} events look inverted (responders {row['events_R']}/{row['n_R']} events, "
            f"non-responders {row['events_NR']}/{row['n_NR']}). Do not trust its hazard ratios or C-index until the "
            "flags are checked against the original study; exclude it from pooled survival analyses."
        )
    return table
