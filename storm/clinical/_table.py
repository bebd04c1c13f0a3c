"""One table of every biomarker in every cohort: survival and response statistics, then random-effects pooled rows."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from storm._logging import logger
from storm.clinical._cox import cox_hr
from storm.clinical._pooling import pool_aucs, pool_hazard_ratios
from storm.clinical._response import response_auc
from storm.clinical._survival import c_index
from storm.clinical._validate import ClinicalDataWarning, warn

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

#: Columns of :func:`cohort_table`, in order.
COHORT_TABLE_COLUMNS: tuple[str, ...] = (
    "cohort", "biomarker", "pooled", "n", "n_events", "hr", "hr_ci_low", "hr_ci_high", "hr_p", "log_hr",
    "log_hr_se", "c_index", "c_ci_low", "c_ci_high", "n_response", "n_responders", "n_nonresponders", "auc",
    "auc_ci_low", "auc_ci_high", "auc_p", "in_pooled_hr", "in_pooled_auc", "k", "i2", "tau2", "q_p", "auc_k",
    "auc_i2", "auc_tau2", "auc_q_p", "notes",
)  # fmt: skip


def _frame(data: pd.DataFrame | AnnData, name: str) -> pd.DataFrame:
    """Return the per-patient columns of one cohort: a DataFrame as given, an AnnData's ``obs``."""
    if isinstance(data, pd.DataFrame):
        return data
    obs = getattr(data, "obs", None)
    if isinstance(obs, pd.DataFrame):
        return obs
    raise ValueError(
        f"cohort_table: cohort {name!r} is a {type(data).__name__}; pass a DataFrame (one row per patient) or an "
        "AnnData whose obs holds the scores and the clinical columns."
    )


def _run(call, notes: list[str]) -> Any:
    """Run one statistic; its ClinicalDataWarnings go to ``notes``; a ValueError becomes ``None`` and a note."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ClinicalDataWarning)
        try:
            value = call()
        except ValueError as err:
            notes.append(str(err))
            value = None
    for item in caught:
        if issubclass(item.category, ClinicalDataWarning):
            notes.append(str(item.message))
        else:  # pragma: no cover - re-emit what we did not mean to catch
            warnings.warn_explicit(item.message, item.category, item.filename, item.lineno)
    return value


def _interval(call, point, notes: list[str]) -> tuple[float, float, float]:
    """Point estimate (always tried) and its bootstrap interval (NaN, with the reason in ``notes``, if refused)."""
    estimate = _run(point, notes)
    if estimate is None:
        return np.nan, np.nan, np.nan
    interval = _run(call, notes)
    if interval is None:
        return float(estimate[0]), np.nan, np.nan
    return float(interval[0]), float(interval[1]), float(interval[2])


def _events_suspicious(frame: pd.DataFrame, event_key: str, response_key: str, positive: Any) -> str | None:
    """Return a note when responders have more events than non-responders (event flags probably inverted)."""
    table = frame[[response_key, event_key]].dropna()
    is_pos = table[response_key] == positive
    if is_pos.all() or not is_pos.any():
        return None
    events = pd.to_numeric(table[event_key], errors="coerce")
    rate_pos, rate_neg = events[is_pos].mean(), events[~is_pos].mean()
    if not rate_pos > rate_neg:
        return None
    return (
        f"events look inverted: responders {int(events[is_pos].sum())}/{int(is_pos.sum())} events, non-responders "
        f"{int(events[~is_pos].sum())}/{int((~is_pos).sum())}; left out of the pooled hazard ratio"
    )


def _cohort_rows(
    name: str,
    frame: pd.DataFrame,
    scores: Sequence[str],
    *,
    time_key: str | None,
    event_key: str | None,
    response_key: str | None,
    positive: Any,
    n_boot: int,
    random_state: int | None,
    ci: float,
    exclude: bool,
    check_events: bool,
) -> list[dict[str, Any]]:
    has_survival = time_key is not None and {time_key, event_key} <= set(frame.columns)
    has_response = response_key is not None and response_key in frame.columns
    cohort_notes = []
    if time_key is not None and not has_survival:
        cohort_notes.append(f"no survival columns ({time_key!r}, {event_key!r})")
    if response_key is not None and not has_response:
        cohort_notes.append(f"no response column ({response_key!r})")
    suspicious = None
    if check_events and has_survival and has_response:
        suspicious = _events_suspicious(frame, event_key, response_key, positive)
        if suspicious:
            warn(f"cohort_table: {name}: {suspicious}.")
            cohort_notes.append(suspicious)
    if exclude and has_survival:
        cohort_notes.append("left out of the pooled hazard ratio (exclude_from_pooling)")

    rows = []
    for score in scores:
        notes = list(cohort_notes)
        row: dict[str, Any] = {"cohort": name, "biomarker": score, "pooled": False}
        values = pd.to_numeric(frame[score], errors="coerce") if score in frame.columns else None
        if values is None or values.notna().sum() == 0:
            notes.append(f"{score} not available in this cohort")
            row.update(n=0, in_pooled_hr=False, in_pooled_auc=False, notes=notes)
            rows.append(row)
            continue
        row["n"] = int(values.notna().sum())
        x = values.to_numpy(dtype=float)
        if has_survival:
            t, e = frame[time_key].to_numpy(), frame[event_key].to_numpy()
            cox = _run(lambda t=t, e=e, x=x, s=score: cox_hr(t, e, {s: x}, ci=ci), notes)
            if cox is not None:
                fit = cox.iloc[0]
                row.update(
                    n_events=int(fit["n_events"]), hr=fit["hr"], hr_ci_low=fit["ci_low"], hr_ci_high=fit["ci_high"],
                    hr_p=fit["p"], log_hr=fit["coef"], log_hr_se=fit["se"],
                )  # fmt: skip
            row["c_index"], row["c_ci_low"], row["c_ci_high"] = _interval(
                lambda t=t, e=e, x=x: c_index(t, e, x, n_boot=n_boot, random_state=random_state, ci=ci),
                lambda t=t, e=e, x=x: c_index(t, e, x, n_boot=0),
                notes,
            )
        if has_response:
            y = frame[response_key].to_numpy(dtype=object)
            row["auc"], row["auc_ci_low"], row["auc_ci_high"] = _interval(
                lambda y=y, x=x: response_auc(y, x, positive=positive, n_boot=n_boot, random_state=random_state, ci=ci),
                lambda y=y, x=x: response_auc(y, x, positive=positive, n_boot=0),
                notes,
            )
            if np.isfinite(row["auc"]):
                known = pd.notna(y) & np.isfinite(x)
                row["n_response"] = int(known.sum())
                row["n_responders"] = int((y[known] == positive).sum())
                row["n_nonresponders"] = row["n_response"] - row["n_responders"]
        row["in_pooled_hr"] = bool(np.isfinite(row.get("log_hr", np.nan)) and not exclude and not suspicious)
        row["in_pooled_auc"] = bool(0 < row.get("auc", np.nan) < 1)
        row["notes"] = list(dict.fromkeys(notes))
        rows.append(row)
    return rows


def _pooled_rows(
    table: pd.DataFrame, scores: Sequence[str], method: Literal["DL", "FE"], ci: float
) -> list[dict[str, Any]]:
    rows = []
    for score in scores:
        part = table[table["biomarker"] == score]
        row: dict[str, Any] = {"cohort": f"pooled ({method})", "biomarker": score, "pooled": True}
        notes = []
        hr_rows = part[part["in_pooled_hr"]]
        if len(hr_rows) >= 2:
            p = pool_hazard_ratios(
                hr_rows.rename(columns={"log_hr": "coef", "log_hr_se": "se"})[["cohort", "coef", "se"]],
                method=method,
                ci=ci,
            )
            row.update(
                n=int(hr_rows["n"].sum()), n_events=int(hr_rows["n_events"].sum()), hr=p["estimate"],
                hr_ci_low=p["ci_low"], hr_ci_high=p["ci_high"], hr_p=p["p"], log_hr=p["log_estimate"],
                log_hr_se=p["se"], k=p["k"], i2=p["i2"], tau2=p["tau2"], q_p=p["q_p"],
            )  # fmt: skip
        else:
            notes.append(f"hazard ratio not pooled: {len(hr_rows)} cohort(s) with one")
        auc_rows = part[part["in_pooled_auc"]]
        if len(auc_rows) >= 2:
            p = pool_aucs(
                auc_rows.rename(columns={"n_responders": "n_pos", "n_nonresponders": "n_neg"})[
                    ["cohort", "auc", "n_pos", "n_neg"]
                ],
                method=method,
                ci=ci,
            )
            row.update(
                n_response=int(auc_rows["n_response"].sum()), n_responders=int(auc_rows["n_responders"].sum()),
                n_nonresponders=int(auc_rows["n_nonresponders"].sum()), auc=p["estimate"], auc_ci_low=p["ci_low"],
                auc_ci_high=p["ci_high"], auc_p=p["p"], auc_k=p["k"], auc_i2=p["i2"], auc_tau2=p["tau2"],
                auc_q_p=p["q_p"],
            )  # fmt: skip
        else:
            notes.append(f"AUC not pooled: {len(auc_rows)} cohort(s) with one strictly between 0 and 1")
        row["notes"] = notes
        rows.append(row)
    return rows


def cohort_table(
    cohorts: Mapping[str, pd.DataFrame | AnnData],
    scores: Sequence[str],
    *,
    time_key: str | None = "os_time",
    event_key: str | None = "os_event",
    response_key: str | None = "response",
    positive: Any = "R",
    n_boot: int = 1000,
    random_state: int | None = 0,
    pool: Literal["DL", "FE"] | None = "DL",
    exclude_from_pooling: Sequence[str] = (),
    check_events: bool = True,
    ci: float = 0.95,
) -> pd.DataFrame:
    """Every biomarker in every cohort: hazard ratio, C-index and response AUC, then pooled rows across cohorts.

    For each cohort and score: the Cox hazard ratio per SD (:func:`cox_hr`), Harrell's C with a bootstrap interval
    (:func:`c_index`, the score taken as a risk: C < 0.5 for a protective score, matching HR < 1), and the response
    AUC with a stratified bootstrap interval (:func:`response_auc`). Then, per score, a random-effects
    (DerSimonian–Laird) pooled row: log hazard ratios pooled with their Cox standard errors
    (:func:`pool_hazard_ratios`), AUCs on the logit scale with Hanley–McNeil standard errors (:func:`pool_aucs`),
    each with I², τ² and Cochran's Q p-value.

    A statistic a cohort cannot give (no events, one class only, the score absent, too few patients for a
    bootstrap) is left NaN and the reason is written to ``notes``; nothing is silently filled in. Patients with a
    missing value are dropped per statistic (also noted).

    Parameters
    ----------
    cohorts
        Cohort name → per-patient table: a DataFrame holding the score columns and the clinical columns, or an
        AnnData whose ``obs`` holds them (e.g. :func:`storm.datasets.icb_cohort` with scores added to ``obs``).
    scores
        Score columns (biomarkers) to evaluate; a score absent from a cohort gives a row with ``n = 0`` and a note.
    time_key, event_key
        Follow-up time and event flag columns; ``None``: no survival statistics. A cohort without them gets none.
    response_key
        Response label column; ``None``: no response statistics.
    positive
        The responders' label.
    n_boot
        Bootstrap resamples of the C-index and AUC intervals (0: point estimates only).
    random_state
        Seed of the bootstraps.
    pool
        ``"DL"`` (DerSimonian–Laird random effects), ``"FE"`` (fixed effect) or ``None`` (no pooled rows).
    exclude_from_pooling
        Cohorts whose survival is reported but not pooled (e.g. event flags known to be wrong).
    check_events
        Compare event rates of responders and non-responders where a cohort has both: where responders have more
        events, the flags are probably inverted (PredictioR's Miao cohort); the cohort is then warned about, noted
        and left out of the pooled hazard ratio (its own row is still reported).
    ci
        Confidence level of every interval.

    Returns
    -------
    One row per cohort and score, then (with ``pool``) one pooled row per score (``cohort`` = ``"pooled (DL)"``,
    ``pooled = True``). Columns (:data:`COHORT_TABLE_COLUMNS`):

    - ``cohort``, ``biomarker``, ``pooled``, ``n`` (patients with a score; pooled: summed over the pooled cohorts);
    - survival: ``n_events``, ``hr``, ``hr_ci_low``, ``hr_ci_high``, ``hr_p`` (Wald), ``log_hr``, ``log_hr_se``,
      ``c_index``, ``c_ci_low``, ``c_ci_high`` (percentile bootstrap);
    - response: ``n_response``, ``n_responders``, ``n_nonresponders``, ``auc``, ``auc_ci_low``, ``auc_ci_high``
      (cohorts: stratified bootstrap), ``auc_p`` (pooled rows: test of AUC = 0.5);
    - ``in_pooled_hr``, ``in_pooled_auc``: whether the cohort entered the pooled estimate;
    - pooled rows: ``k``, ``i2``, ``tau2``, ``q_p`` (hazard ratio) and ``auc_k``, ``auc_i2``, ``auc_tau2``,
      ``auc_q_p`` (AUC);
    - ``notes``: why a value is missing, patients dropped, suspect events.

    Raises
    ------
    ValueError
        No cohorts or scores, ``pool`` not ``"DL"``/``"FE"``/``None``, unknown cohorts in ``exclude_from_pooling``,
        a cohort that is neither a DataFrame nor an AnnData, or no cohort with any outcome column.

    Warns
    -----
    ClinicalDataWarning
        Cohorts whose event flags look inverted; one summary per cohort of the statistics left out or patients
        dropped (details in ``notes``).

    References
    ----------
    DerSimonian R, Laird N. Meta-analysis in clinical trials. Control Clin Trials 7, 177-188 (1986).
    """
    if not isinstance(cohorts, Mapping) or not cohorts:
        raise ValueError("cohort_table: pass the cohorts as a non-empty dict {name: DataFrame or AnnData}.")
    if isinstance(scores, str):
        raise ValueError(f"cohort_table: pass the scores as a list of column names, not one string ({scores!r}).")
    scores = list(dict.fromkeys(str(s) for s in scores))
    if not scores:
        raise ValueError("cohort_table: no scores given.")
    if pool not in ("DL", "FE", None):
        raise ValueError(f"pool must be 'DL', 'FE' or None, got {pool!r}.")
    if (time_key is None) != (event_key is None):
        raise ValueError("cohort_table: pass both time_key and event_key, or neither.")
    unknown = sorted(set(exclude_from_pooling) - set(map(str, cohorts)))
    if unknown:
        raise ValueError(f"cohort_table: exclude_from_pooling names unknown cohorts {unknown}.")
    frames = {str(name): _frame(data, str(name)) for name, data in cohorts.items()}
    keys = [k for k in (time_key, response_key) if k is not None]
    if not any(k in frame.columns for frame in frames.values() for k in keys):
        raise ValueError(
            f"cohort_table: no cohort has a survival ({time_key!r}) or response ({response_key!r}) column; "
            "nothing to evaluate."
        )

    rows = []
    for name, frame in frames.items():
        cohort_rows = _cohort_rows(
            name, frame, scores, time_key=time_key, event_key=event_key, response_key=response_key,
            positive=positive, n_boot=n_boot, random_state=random_state, ci=ci,
            exclude=name in exclude_from_pooling, check_events=check_events,
        )  # fmt: skip
        rows.extend(cohort_rows)
        warned = ("events look inverted",)  # already warned about, on its own
        notes = list(dict.fromkeys(n for row in cohort_rows for n in row["notes"] if not n.startswith(warned)))
        if notes:
            warn(f"cohort_table: {name}: {len(notes)} note(s), see the 'notes' column: {notes[0]}")
    table = pd.DataFrame(rows)
    if pool is not None:
        table = pd.concat([table, pd.DataFrame(_pooled_rows(table, scores, pool, ci))], ignore_index=True)
    table = table.reindex(columns=list(COHORT_TABLE_COLUMNS))
    for column in ("n", "n_events", "n_response", "n_responders", "n_nonresponders", "k", "auc_k"):
        table[column] = table[column].astype("Int64")
    table["notes"] = ["; ".join(notes) if isinstance(notes, list) else "" for notes in table["notes"]]
    for column in ("in_pooled_hr", "in_pooled_auc"):
        table[column] = table[column].astype("boolean").fillna(False).astype(bool)
    logger.info(f"cohort_table: {len(frames)} cohorts × {len(scores)} scores" + (f", pooled ({pool})" if pool else ""))
    return table
