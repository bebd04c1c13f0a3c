"""Clinical plots: Kaplan–Meier with at-risk counts, forest plots of per-cohort effects, ROC curves, biomarker grids."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from storm import clinical

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.axes import Axes


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _plain_log_ticks(ax: Axes) -> None:
    """Label a logarithmic x-axis with plain numbers (0.5, 1, 2) instead of powers of ten."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    low, high = ax.get_xlim()
    nice = [0.05, 0.1, 0.2, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 10, 20]
    ticks = [tick for tick in nice if low <= tick <= high]
    if len(ticks) >= 2:
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))


def _format_p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def km(
    time: Any,
    event: Any,
    groups: Any = None,
    *,
    ax: Axes | None = None,
    show_logrank: bool = True,
    at_risk: bool = True,
    ci_show: bool = True,
    palette: Mapping[str, Any] | None = None,
    xlabel: str = "Time (months)",
    title: str | None = None,
) -> Axes:
    """Plot Kaplan–Meier curves per group with the log-rank p-value and at-risk counts below the axis.

    Parameters
    ----------
    time, event, groups
        As in :func:`storm.clinical.km` (e.g. ``groups=storm.clinical.cox_split(...)["groups"]``).
    ax
        Axes to draw on; a new figure when ``None``.
    show_logrank
        Write the log-rank p-value (:func:`storm.clinical.logrank`) on the plot (two or more groups).
    at_risk
        Add lifelines' table of patients at risk, censored and with events under the x-axis.
    ci_show
        Draw each curve's 95% pointwise confidence band.
    palette
        Colour per group label.
    xlabel, title
        Axis label and title.

    Returns
    -------
    The Axes.
    """
    from lifelines.plotting import add_at_risk_counts

    ax = _axes(ax, (5.5, 4.5))
    fitters = clinical.km(time, event, groups)
    for label, fitter in fitters.items():
        color = (palette or {}).get(label)
        fitter.plot_survival_function(ax=ax, ci_show=ci_show, color=color, show_censors=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("Survival probability")
    ax.set_ylim(0, 1.05)
    if title:
        ax.set_title(title)
    if show_logrank and len(fitters) > 1:
        test = clinical.logrank(time, event, groups)
        ax.text(0.97, 0.95, f"log-rank {_format_p(test['p'])}", transform=ax.transAxes, ha="right", va="top")
    if at_risk:
        add_at_risk_counts(*fitters.values(), ax=ax)
    return ax


def _estimate_column(table: pd.DataFrame) -> str:
    for column in ("hr", "auc", "estimate"):
        if column in table.columns:
            return column
    raise ValueError("The table needs an estimate column ('hr', 'auc' or 'estimate') with 'ci_low' and 'ci_high'.")


def forest(
    table: pd.DataFrame,
    *,
    pooled: Mapping[str, Any] | None = None,
    ax: Axes | None = None,
    log_scale: bool | None = None,
    reference: float | None = None,
    xlabel: str | None = None,
) -> Axes:
    """Forest plot: one estimate with its confidence interval per cohort, and the pooled estimate as a diamond.

    Parameters
    ----------
    table
        One row per cohort (labels: a ``cohort`` column or the index) with ``hr`` (or ``auc``, or ``estimate``),
        ``ci_low`` and ``ci_high``; e.g. :func:`storm.clinical.cox_hr` rows of several cohorts. An ``n`` column is
        shown beside the label.
    pooled
        The dict of :func:`storm.clinical.pool_hazard_ratios` / :func:`storm.clinical.pool_aucs`: drawn as a
        diamond with its I² and τ²; its weights size the cohort markers.
    ax
        Axes to draw on; a new figure when ``None``.
    log_scale
        Logarithmic x-axis; ``None``: for hazard ratios (an ``hr`` column or a pooled HR), linear otherwise.
    reference
        Vertical line of no effect; default 1 for HRs, 0.5 for AUCs, 0 otherwise.
    xlabel
        Default: "Hazard ratio (95% CI)", "AUC (95% CI)" or "Estimate (95% CI)".

    Returns
    -------
    The Axes.
    """
    table = pd.DataFrame(table)
    column = _estimate_column(table)
    if not {"ci_low", "ci_high"} <= set(table.columns):
        raise ValueError("The table needs 'ci_low' and 'ci_high' columns.")
    is_hr = column == "hr" or (pooled is not None and pooled.get("scale") == "hr")
    is_auc = column == "auc" or (pooled is not None and pooled.get("scale") == "auc")
    log_scale = is_hr if log_scale is None else log_scale
    if reference is None:
        reference = 1.0 if is_hr else 0.5 if is_auc else 0.0
    labels = [str(x) for x in (table["cohort"] if "cohort" in table.columns else table.index)]
    if "n" in table.columns:
        labels = [f"{label} (n={int(n)})" for label, n in zip(labels, table["n"], strict=True)]

    rows = len(table) + (1 if pooled is not None else 0)
    ax = _axes(ax, (6.0, 0.45 * rows + 1.2))
    y = np.arange(len(table))[::-1] + (1 if pooled is not None else 0)
    estimate, low, high = (table[c].astype(float).to_numpy() for c in (column, "ci_low", "ci_high"))
    sizes = np.full(len(table), 40.0)
    if pooled is not None and "weights" in pooled and len(pooled["weights"]) == len(table):
        sizes = 20 + 200 * np.asarray(pooled["weights"], dtype=float)
    ax.hlines(y, low, high, color="0.2", lw=1.2)
    ax.scatter(estimate, y, s=sizes, marker="s", color="0.2", zorder=3)
    texts = [f"{e:.2f} ({lo:.2f}–{hi:.2f})" for e, lo, hi in zip(estimate, low, high, strict=True)]
    ticks, tick_labels = list(y), labels
    if pooled is not None:
        e, lo, hi = pooled["estimate"], pooled["ci_low"], pooled["ci_high"]
        ax.fill([lo, e, hi, e], [0, 0.3, 0, -0.3], color="tab:red", zorder=3)
        heterogeneity = f"I² = {100 * pooled.get('i2', np.nan):.0f}%"
        if "tau2" in pooled:
            heterogeneity += f", τ² = {pooled['tau2']:.2g}"
        method = {"DL": "random effects", "FE": "fixed effect"}.get(pooled.get("method", ""), "pooled")
        ticks, tick_labels = [*ticks, 0], [*labels, f"Pooled, {method}\n({heterogeneity})"]
        texts.append(f"{e:.2f} ({lo:.2f}–{hi:.2f}), {_format_p(pooled['p'])}")
    ax.axvline(reference, color="0.5", ls="--", lw=1)
    if log_scale:
        ax.set_xscale("log")
        _plain_log_ticks(ax)
    ax.set_yticks(ticks, tick_labels)
    ax.set_ylim(-0.8, max(ticks) + 0.8)
    for tick, text in zip(ticks, texts, strict=True):
        ax.annotate(text, (1.02, tick), xycoords=("axes fraction", "data"), va="center", fontsize="small")
    default = "Hazard ratio (95% CI)" if is_hr else "AUC (95% CI)" if is_auc else "Estimate (95% CI)"
    ax.set_xlabel(xlabel or default)
    return ax


def roc(
    response: Any,
    scores: Mapping[str, Any],
    *,
    ax: Axes | None = None,
    positive: Any = "R",
) -> Axes:
    """ROC curves of several scores for response, with each score's AUC in the legend.

    Parameters
    ----------
    response
        Response label per patient. Patients missing it or any score are dropped (one warning says how many), so
        every curve is drawn on the same patients and the AUCs compare like with like.
    scores
        Name → score per patient (higher = more likely ``positive``).
    ax
        Axes to draw on; a new figure when ``None``.
    positive
        The responders' label.

    Returns
    -------
    The Axes.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    from storm.clinical._response import _response_data

    if not scores:
        raise ValueError("roc: pass at least one score, as a dict name → values.")
    y, values, _, _ = _response_data(response, dict(scores), positive, "roc")
    ax = _axes(ax, (4.5, 4.5))
    for name, score in values.items():
        fpr, tpr, _ = roc_curve(y, score)
        ax.plot(fpr, tpr, lw=1.5, label=f"{name} (AUC {roc_auc_score(y, score):.2f})")
    ax.plot([0, 1], [0, 1], color="0.6", ls="--", lw=1)
    ax.set_xlabel("False-positive rate (1 - specificity)")
    ax.set_ylabel("True-positive rate (sensitivity)")
    ax.set_aspect("equal")
    ax.legend(loc="lower right", fontsize="small")
    return ax


def biomarker_comparison(
    table: pd.DataFrame,
    *,
    metric: Literal["auc", "hr"] = "auc",
    ax: Axes | None = None,
) -> Axes:
    """Compare biomarkers across cohorts: grouped points with intervals (long table) or a heatmap (wide table).

    Parameters
    ----------
    table
        Long format: columns ``cohort``, ``biomarker``, ``metric`` (``auc`` or ``hr``) and optionally ``ci_low``,
        ``ci_high``: drawn as points with intervals, one row per cohort, one colour per biomarker. Wide format:
        cohorts × biomarkers of the metric: drawn as an annotated heatmap (HRs coloured on the log scale).
    metric
        ``"auc"`` (reference 0.5) or ``"hr"`` (reference 1, log scale).
    ax
        Axes to draw on; a new figure when ``None``.

    Returns
    -------
    The Axes.
    """
    import seaborn as sns

    if metric not in ("auc", "hr"):
        raise ValueError(f"metric must be 'auc' or 'hr', got {metric!r}.")
    reference = 0.5 if metric == "auc" else 1.0
    label = "AUC" if metric == "auc" else "Hazard ratio"
    table = pd.DataFrame(table)
    if {"cohort", "biomarker", metric} <= set(table.columns):
        cohorts = list(dict.fromkeys(table["cohort"]))
        markers = list(dict.fromkeys(table["biomarker"]))
        ax = _axes(ax, (6.0, 0.5 * len(cohorts) + 1.5))
        colors = dict(zip(markers, sns.color_palette(n_colors=len(markers)), strict=True))
        # First biomarker on top within each cohort's row, matching the legend's order.
        offsets = np.linspace(0.3, -0.3, len(markers)) if len(markers) > 1 else np.zeros(1)
        for offset, marker in zip(offsets, markers, strict=True):
            rows = table[table["biomarker"] == marker]
            y = np.array([len(cohorts) - 1 - cohorts.index(c) for c in rows["cohort"]]) + offset
            ax.scatter(rows[metric], y, color=colors[marker], label=marker, zorder=3, s=25)
            if {"ci_low", "ci_high"} <= set(rows.columns):
                ax.hlines(y, rows["ci_low"], rows["ci_high"], color=colors[marker], lw=1)
        ax.set_yticks(np.arange(len(cohorts))[::-1], cohorts)
        ax.axvline(reference, color="0.5", ls="--", lw=1)
        if metric == "hr":
            ax.set_xscale("log")
            _plain_log_ticks(ax)
        ax.set_xlabel(label)
        ax.legend(title="biomarker", fontsize="small", loc="best")
        return ax
    numeric_table = table.select_dtypes("number")
    if numeric_table.empty:
        raise ValueError(f"Pass a long table (cohort, biomarker, {metric}[, ci_low, ci_high]) or a wide one.")
    ax = _axes(ax, (1.1 * numeric_table.shape[1] + 2, 0.5 * numeric_table.shape[0] + 1.5))
    colour = np.log(numeric_table) if metric == "hr" else numeric_table
    span = np.nanmax(np.abs(colour.to_numpy() - (0 if metric == "hr" else reference)))
    center = 0.0 if metric == "hr" else reference
    sns.heatmap(
        colour,
        annot=numeric_table,
        fmt=".2f",
        cmap="RdBu_r" if metric == "hr" else "RdBu",
        # Limits symmetric about the reference centre the colour map there (seaborn's center= warns on matplotlib 3.10).
        vmin=center - span,
        vmax=center + span,
        cbar_kws={"label": "log HR" if metric == "hr" else label},
        ax=ax,
    )
    ax.set_xlabel("biomarker")
    ax.set_ylabel("cohort")
    return ax
