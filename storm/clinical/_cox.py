"""Cox proportional-hazards summaries of a score: hazard ratio per SD, and a high/low split at a cut-point."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd

from storm._logging import logger
from storm.clinical._validate import (
    check_aligned,
    check_survival,
    drop_missing,
    index_of,
    numeric,
    survival_data,
    warn,
)

_T, _E = "__time", "__event"  # column names no user score or covariate is likely to carry


def _scores(score: Any) -> dict[str, Any]:
    """Name → values for one score (array or Series) or several (DataFrame or mapping)."""
    if isinstance(score, pd.DataFrame):
        return {str(column): score[column] for column in score.columns}
    if isinstance(score, Mapping):
        return {str(name): values for name, values in score.items()}
    if np.ndim(score) == 2 and np.shape(score)[1] > 1:
        raise ValueError("Pass several scores as a DataFrame or a dict (name → values), not a bare 2-D array.")
    name = score.name if isinstance(score, pd.Series) and score.name is not None else "score"
    return {str(name): score}


def _covariates(covariates: Any, n: int) -> dict[str, np.ndarray]:
    """Numeric covariate columns; categorical ones one-hot encoded (first level dropped), missing kept missing."""
    if covariates is None:
        return {}
    frame = pd.DataFrame(covariates)
    if isinstance(covariates, pd.DataFrame | pd.Series):
        frame = frame.reset_index(drop=True)  # aligned by position, like every other input
    if len(frame) != n:
        raise ValueError(f"covariates have {len(frame)} rows; expected one per patient ({n}).")
    out: dict[str, np.ndarray] = {}
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            out[str(column)] = values.astype(float).to_numpy()
            continue
        # get_dummies turns a missing level into an all-zero row, i.e. silently into the reference level: undo that.
        dummies = pd.get_dummies(values, prefix=str(column), drop_first=True, dtype=float)
        dummies[values.isna().to_numpy()] = np.nan
        if dummies.shape[1] == 0:
            raise ValueError(f"Covariate {column!r} has a single level; it cannot be adjusted for.")
        out.update({str(name): dummies[name].to_numpy() for name in dummies.columns})
    return out


def _fit_cox(frame: pd.DataFrame, *, penalizer: float, ci: float, context: str):
    """Fit lifelines' CoxPHFitter; its convergence problems become storm's clear error or named warning."""
    from lifelines import CoxPHFitter
    from lifelines.exceptions import ConvergenceError, ConvergenceWarning

    fitter = CoxPHFitter(penalizer=penalizer, alpha=1 - ci)
    with warnings.catch_warnings(record=True) as caught:
        # Only lifelines' convergence warnings are caught (to re-issue them with the score's name); others pass.
        warnings.simplefilter("always", ConvergenceWarning)
        try:
            fitter.fit(frame, duration_col=_T, event_col=_E)
        except ConvergenceError as err:
            raise ValueError(
                f"{context}: the Cox model did not converge ({str(err).splitlines()[0]}). Usually a covariate "
                "separates the events perfectly or is collinear with another; drop it or pass penalizer=0.1."
            ) from None
    for item in caught:
        if issubclass(item.category, ConvergenceWarning):
            warn(f"{context}: {str(item.message).splitlines()[0]}")
        else:  # pragma: no cover - re-emit what we did not mean to swallow
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
    return fitter


def _hr_interval(summary: pd.Series) -> dict[str, float]:
    """Read the HR interval from a lifelines summary row (its column names carry the confidence level)."""
    low = next(key for key in summary.index if key.startswith("exp(coef) lower"))
    high = next(key for key in summary.index if key.startswith("exp(coef) upper"))
    return {"ci_low": float(summary[low]), "ci_high": float(summary[high])}


def cox_hr(
    time: Any,
    event: Any,
    score: Any,
    *,
    covariates: Any = None,
    per_sd: bool = True,
    penalizer: float = 0.0,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Hazard ratio of a continuous score (per standard deviation) from a Cox proportional-hazards model.

    Each score is fitted in its own model (with the covariates, if given) by lifelines' ``CoxPHFitter``; p is the
    Wald test of its coefficient (Cox 1972).

    Parameters
    ----------
    time
        Follow-up time per patient (any unit; storm's ICB cohorts use months).
    event
        1/``True`` where the event (death, progression) was observed, 0/``False`` where censored.
    score
        One score (array or Series, named by its ``name``) or several (DataFrame or dict name → values), one value
        per patient. Higher values need not mean higher risk: a protective score has HR < 1.
    covariates
        Adjustment variables (DataFrame or dict), one row per patient; categorical columns are one-hot encoded with
        the first level as reference.
    per_sd
        Standardise each score (mean 0, SD 1 over the patients fitted), so the HR is per SD and comparable across
        scores and cohorts; ``False`` reports it per unit of the score.
    penalizer
        L2 penalty of lifelines' fitter (0: the plain partial likelihood).
    ci
        Confidence level of the interval.

    Returns
    -------
    One row per score (index ``score``): ``n``, ``n_events`` (patients and events fitted), ``coef`` (log HR),
    ``se`` (its standard error), ``hr``, ``ci_low``, ``ci_high`` (Wald interval of the HR), ``z``, ``p``, ``sd``
    (the score's SD over the patients fitted) and ``per_sd``. ``coef`` and ``se`` are what
    :func:`pool_hazard_ratios` pools.

    Raises
    ------
    ValueError
        No events, fewer than two events, a constant score, negative times, non-0/1 events, lengths that differ, or
        a model that does not converge. Patients with a missing value are dropped with a
        :class:`ClinicalDataWarning`.

    References
    ----------
    Cox DR. Regression models and life-tables. J R Stat Soc B 34, 187-220 (1972).
    Davidson-Pilon C. lifelines: survival analysis in Python. J Open Source Softw 4, 1317 (2019).
    """
    scores = _scores(score)
    n = len(numeric(time, "time"))
    if covariates is not None:
        check_aligned({"time": time, "event": event, "covariates": covariates}, context="cox_hr")
    covs = _covariates(covariates, n)
    clash = sorted(set(scores) & set(covs))
    if clash:
        raise ValueError(f"cox_hr: {clash} are names of both a score and a covariate; rename one.")
    rows = {}
    for name, values in scores.items():
        context = f"cox_hr({name!r})"
        t, e, clean, _ = survival_data(time, event, {name: values, **covs}, context=context)
        if e.sum() < 2:
            raise ValueError(f"{context}: {int(e.sum())} event among {len(e)} patients; a Cox model needs at least 2.")
        x = clean.pop(name)
        sd = float(np.std(x, ddof=1)) if len(x) > 1 else 0.0
        if not sd > 0:
            raise ValueError(f"{context}: the score is constant over the {len(x)} patients; no hazard ratio.")
        frame = pd.DataFrame({_T: t, _E: e.astype(int), name: (x - x.mean()) / sd if per_sd else x, **clean})
        summary = _fit_cox(frame, penalizer=penalizer, ci=ci, context=context).summary.loc[name]
        rows[name] = {
            "n": len(t),
            "n_events": int(e.sum()),
            "coef": summary["coef"],
            "se": summary["se(coef)"],
            "hr": summary["exp(coef)"],
            **_hr_interval(summary),
            "z": summary["z"],
            "p": summary["p"],
            "sd": sd,
            "per_sd": per_sd,
        }
        row = rows[name]
        logger.info(
            "Cox %s: HR %.3f (%.3f-%.3f), p = %.3g; %d patients, %d events",
            name,
            row["hr"],
            row["ci_low"],
            row["ci_high"],
            row["p"],
            row["n"],
            row["n_events"],
        )
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "score"
    return table


def logrank_scan(time: np.ndarray, event: np.ndarray, score: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """Two-group log-rank chi-square statistic for each cut-point (high = score > cut), all cuts at once.

    The same statistic as lifelines' ``logrank_test`` (Mantel 1966, hypergeometric variance), vectorised over the
    cut-points a maximally selected search visits; the tests check it against lifelines.
    """
    event_times = np.unique(time[event])
    at_risk = (time[None, :] >= event_times[:, None]).astype(float)  # event times × patients
    died = ((time[None, :] == event_times[:, None]) & event[None, :]).astype(float)
    n_j, d_j = at_risk.sum(1), died.sum(1)
    high = (score[:, None] > cuts[None, :]).astype(float)  # patients × cuts
    n1, d1 = at_risk @ high, died @ high
    expected = n1 * (d_j / n_j)[:, None]
    # Hypergeometric variance; a risk set of one patient contributes none (0/0 guarded).
    scale = np.divide(d_j * (n_j - d_j), n_j**2 * (n_j - 1), out=np.zeros_like(n_j), where=n_j > 1)
    variance = (n1 * (n_j[:, None] - n1) * scale[:, None]).sum(0)
    u = (d1 - expected).sum(0)
    return np.divide(u**2, variance, out=np.zeros_like(u), where=variance > 0)


def _maxstat_cut(time: np.ndarray, event: np.ndarray, score: np.ndarray, min_prop: float) -> tuple[float, float]:
    """Cut-point maximising the log-rank statistic, each group holding at least ``min_prop`` of the patients."""
    values = np.unique(score)[:-1]  # a cut at the maximum would leave the high group empty
    low_share = np.array([(score <= v).mean() for v in values])
    cuts = values[(low_share >= min_prop) & (low_share <= 1 - min_prop)]
    if len(cuts) == 0:
        raise ValueError(
            f"cox_split: no cut-point leaves at least {min_prop:.0%} of the {len(score)} patients in each group; "
            "lower min_prop or use cutpoint='median'."
        )
    stats = logrank_scan(time, event, score, cuts)
    best = int(np.argmax(stats))
    return float(cuts[best]), float(stats[best])


def cox_split(
    time: Any,
    event: Any,
    score: Any,
    *,
    cutpoint: Literal["median", "maxstat"] | float = "median",
    train_mask: Any = None,
    min_prop: float = 0.1,
    ci: float = 0.95,
) -> dict[str, Any]:
    """Split patients into high and low score at a cut-point and compare their survival (Cox HR and log-rank).

    The cut-point is chosen on training patients only: with ``train_mask``, it is computed on the rows where the
    mask is ``True`` and the HR is reported for the held-out rows; without it, on all patients, and the HR is
    then reported on the data the cut was chosen from.

    Parameters
    ----------
    time, event
        Follow-up time and event flag (1 observed, 0 censored) per patient.
    score
        One numeric score per patient; high = score > cut-point.
    cutpoint
        ``"median"`` (of the training scores), a number, or ``"maxstat"``: the cut maximising the two-group
        log-rank statistic over cut-points that leave at least ``min_prop`` of the training patients in each
        group (maximally selected rank statistics; Lausen & Schumacher 1992, as R's ``maxstat``).
    train_mask
        Boolean per patient: ``True`` for the rows the cut-point is chosen on; the HR and log-rank test are computed
        on the others. ``None``: choose and evaluate on all patients.
    min_prop
        Smallest share of patients in either group for ``"maxstat"`` (R ``maxstat``'s default 0.1).
    ci
        Confidence level of the HR interval.

    Returns
    -------
    A dict: ``cutpoint`` (value), ``method``, ``evaluated_on`` (``"held-out"`` or ``"all"``), ``n``,
    ``n_events``, ``n_high``, ``n_low``, ``events_high``, ``events_low`` (patients evaluated), ``hr``, ``ci_low``,
    ``ci_high``, ``p`` (Cox Wald test, high vs low), ``logrank_stat``, ``logrank_p`` (lifelines ``logrank_test``),
    and ``groups``: a categorical Series (``low``/``high``, missing where the score is) for every input patient,
    indexed like the first pandas input.

    Raises
    ------
    ValueError
        No events among the training or the evaluated patients, a cut-point that leaves a group empty, a mask that
        selects all or no patient, or the errors of :func:`cox_hr`.

    Warns
    -----
    ClinicalDataWarning
        ``"maxstat"`` chosen and evaluated on the same patients: its p-value is too small (the search is not
        corrected for; Altman et al. 1994); patients with missing values dropped; a group without events (HR not
        estimable, reported as NaN; the log-rank test still is).

    References
    ----------
    Lausen B, Schumacher M. Maximally selected rank statistics. Biometrics 48, 73-85 (1992).
    Altman DG et al. Dangers of using "optimal" cutpoints in the evaluation of prognostic factors. J Natl Cancer
    Inst 86, 829-835 (1994).
    """
    from lifelines.statistics import logrank_test

    check_aligned({"time": time, "event": event, "score": score}, context="cox_split")
    t_all, e_all, s_all = numeric(time, "time"), numeric(event, "event"), numeric(score, "score")
    n_input = len(t_all)
    keep = drop_missing({"time": t_all, "event": e_all, "score": s_all}, context="cox_split")
    if train_mask is None:
        train = evaluate = keep
    else:
        mask = np.asarray(train_mask).ravel()
        if mask.dtype != bool or len(mask) != n_input:
            raise ValueError(f"train_mask must be a boolean array with one value per patient ({n_input}).")
        if mask.all() or not mask.any():
            raise ValueError("train_mask must select some patients for training and leave some held out.")
        train, evaluate = keep & mask, keep & ~mask
    if not train.any():
        raise ValueError("cox_split: no training patient has a complete time, event and score.")

    if isinstance(cutpoint, str):
        if cutpoint == "median":
            cut = float(np.median(s_all[train]))
        elif cutpoint == "maxstat":
            t, e = check_survival(t_all[train], e_all[train], context="cox_split (training patients)")
            cut, _ = _maxstat_cut(t, e, s_all[train], min_prop)
            if train_mask is None:
                warn(
                    "cox_split: the maxstat cut-point was chosen and evaluated on the same patients, so its p-value "
                    "is too small (not corrected for the search); pass train_mask to evaluate on held-out patients."
                )
        else:
            raise ValueError(f"cutpoint must be 'median', 'maxstat' or a number, got {cutpoint!r}.")
        method = cutpoint
    else:
        cut, method = float(cutpoint), "given"

    groups = pd.Series(
        pd.Categorical(np.where(s_all > cut, "high", "low"), categories=["low", "high"]),
        index=index_of(time, event, score, n=n_input),
    )
    groups[np.isnan(s_all)] = np.nan

    context = "cox_split (held-out patients)" if train_mask is not None else "cox_split"
    t, e = check_survival(t_all[evaluate], e_all[evaluate], context=context)
    high = s_all[evaluate] > cut
    if high.all() or not high.any():
        side = "high" if high.all() else "low"
        raise ValueError(f"{context}: the cut-point {cut:.4g} puts all {len(high)} patients in the {side!r} group.")
    logrank = logrank_test(t[high], t[~high], e[high], e[~high])
    result: dict[str, Any] = {
        "cutpoint": cut,
        "method": method,
        "evaluated_on": "held-out" if train_mask is not None else "all",
        "n": len(t),
        "n_events": int(e.sum()),
        "n_high": int(high.sum()),
        "n_low": int((~high).sum()),
        "events_high": int(e[high].sum()),
        "events_low": int(e[~high].sum()),
    }
    if result["events_high"] == 0 or result["events_low"] == 0:
        warn(f"{context}: one group has no events, so its hazard ratio is not estimable (reported as NaN).")
        hr = {"hr": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan}
    else:
        frame = pd.DataFrame({_T: t, _E: e.astype(int), "high": high.astype(float)})
        summary = _fit_cox(frame, penalizer=0.0, ci=ci, context=context).summary.loc["high"]
        hr = {"hr": float(summary["exp(coef)"]), **_hr_interval(summary), "p": float(summary["p"])}
    result.update(hr)
    result.update(logrank_stat=float(logrank.test_statistic), logrank_p=float(logrank.p_value), groups=groups)
    return result
