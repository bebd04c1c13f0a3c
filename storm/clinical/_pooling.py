"""Random-effects meta-analysis across cohorts: DerSimonian–Laird pooling of log hazard ratios and logit AUCs."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import stats

from storm._logging import logger


def pool_random_effects(
    estimates: Any,
    standard_errors: Any,
    *,
    labels: Any = None,
    method: Literal["DL", "FE"] = "DL",
    ci: float = 0.95,
) -> dict[str, Any]:
    r"""Pool per-study estimates with a random-effects model (DerSimonian–Laird) or a fixed-effect model.

    With study estimates :math:`y_i`, variances :math:`v_i = se_i^2` and fixed-effect weights :math:`w_i = 1/v_i`:
    :math:`\\hat\\mu_{FE} = \\sum w_i y_i / \\sum w_i`, Cochran's :math:`Q = \\sum w_i (y_i - \\hat\\mu_{FE})^2`
    on :math:`k - 1` degrees of freedom, the method-of-moments between-study variance
    :math:`\\tau^2 = \\max\\{0, (Q - (k - 1)) / (\\sum w_i - \\sum w_i^2 / \\sum w_i)\\}`, random-effects weights
    :math:`w_i^* = 1/(v_i + \\tau^2)`, pooled :math:`\\hat\\mu = \\sum w_i^* y_i / \\sum w_i^*` with
    :math:`se = (\\sum w_i^*)^{-1/2}`, a normal (Wald) interval and p, and
    :math:`I^2 = \\max\\{0, (Q - (k - 1)) / Q\\}` (Higgins & Thompson 2002).

    Pool on a scale where the estimate is roughly normal: log hazard ratios (:func:`pool_hazard_ratios`), logit
    AUCs (:func:`pool_aucs`).

    Parameters
    ----------
    estimates
        One estimate per study.
    standard_errors
        Their standard errors (positive, finite).
    labels
        Study names (index of ``weights``); default ``0..k-1``.
    method
        ``"DL"``: DerSimonian–Laird random effects; ``"FE"``: fixed (common) effect, inverse-variance weights
        (``tau2`` is then reported as 0; ``q`` and ``i2`` still describe the heterogeneity).
    ci
        Confidence level.

    Returns
    -------
    A dict: ``estimate``, ``se``, ``ci_low``, ``ci_high``, ``z``, ``p`` (pooled effect, Wald test of 0), ``tau2``,
    ``i2`` (share of variation due to heterogeneity, 0-1), ``q``, ``q_df``, ``q_p`` (Cochran's Q test),
    ``weights`` (Series of normalised weights, summing to 1), ``k``, ``method``.

    Raises
    ------
    ValueError
        Fewer than two studies, lengths that differ, non-finite estimates, non-positive or non-finite SEs.

    References
    ----------
    DerSimonian R, Laird N. Meta-analysis in clinical trials. Control Clin Trials 7, 177-188 (1986).
    Higgins JPT, Thompson SG. Quantifying heterogeneity in a meta-analysis. Stat Med 21, 1539-1558 (2002).
    """
    y = np.asarray(estimates, dtype=float).ravel()
    se = np.asarray(standard_errors, dtype=float).ravel()
    if len(y) != len(se):
        raise ValueError(f"{len(y)} estimates but {len(se)} standard errors.")
    if len(y) < 2:
        raise ValueError(f"Pooling needs at least two studies, got {len(y)}; report the single study instead.")
    if not np.isfinite(y).all():
        raise ValueError(f"Estimates must be finite, got {y.tolist()}.")
    if not (np.isfinite(se).all() and (se > 0).all()):
        raise ValueError(f"Standard errors must be positive and finite, got {se.tolist()}.")
    if method not in ("DL", "FE"):
        raise ValueError(f"method must be 'DL' (DerSimonian–Laird) or 'FE' (fixed effect), got {method!r}.")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}.")
    index = pd.Index(labels if labels is not None else range(len(y)))
    if len(index) != len(y):
        raise ValueError(f"{len(index)} labels for {len(y)} studies.")

    k = len(y)
    w = 1 / se**2
    fixed = np.sum(w * y) / np.sum(w)
    q = float(np.sum(w * (y - fixed) ** 2))
    df = k - 1
    c = np.sum(w) - np.sum(w**2) / np.sum(w)
    tau2 = max(0.0, (q - df) / c) if method == "DL" else 0.0
    w_star = 1 / (se**2 + tau2)
    estimate = float(np.sum(w_star * y) / np.sum(w_star))
    pooled_se = float(np.sqrt(1 / np.sum(w_star)))
    z_crit = stats.norm.ppf(0.5 + ci / 2)
    z = estimate / pooled_se
    return {
        "estimate": estimate,
        "se": pooled_se,
        "ci_low": estimate - z_crit * pooled_se,
        "ci_high": estimate + z_crit * pooled_se,
        "z": float(z),
        "p": float(2 * stats.norm.sf(abs(z))),
        "tau2": float(tau2),
        "i2": max(0.0, (q - df) / q) if q > 0 else 0.0,
        "q": q,
        "q_df": df,
        "q_p": float(stats.chi2.sf(q, df)),
        "weights": pd.Series(w_star / w_star.sum(), index=index, name="weight"),
        "k": k,
        "method": method,
    }


def _labels(table: pd.DataFrame) -> pd.Index:
    return pd.Index(table["cohort"]) if "cohort" in table.columns else table.index


def _z(ci: float) -> float:
    return float(stats.norm.ppf(0.5 + ci / 2))


def pool_hazard_ratios(table: pd.DataFrame, *, method: Literal["DL", "FE"] = "DL", ci: float = 0.95) -> dict:
    """Pool per-cohort hazard ratios on the log scale (DerSimonian–Laird random effects by default).

    Parameters
    ----------
    table
        One row per cohort (labels: a ``cohort`` column or the index) with either ``coef`` (log HR) and ``se`` (as
        :func:`cox_hr` returns; ``log_hr`` is accepted for ``coef``), or ``hr``, ``ci_low``, ``ci_high`` (a 95%
        Wald interval, from which ``se = (log ci_high - log ci_low) / (2 × 1.96)``).
    method
        ``"DL"`` or ``"FE"``; see :func:`pool_random_effects`.
    ci
        Confidence level of the pooled interval.

    Returns
    -------
    :func:`pool_random_effects`'s dict with ``estimate``, ``ci_low``, ``ci_high`` on the HR scale, plus
    ``log_estimate`` and ``se`` (log scale) and ``scale = "hr"``.

    Raises
    ------
    ValueError
        Missing columns, non-positive HRs, and the errors of :func:`pool_random_effects`.
    """
    table = pd.DataFrame(table)
    if "se" in table.columns and ("coef" in table.columns or "log_hr" in table.columns):
        log_hr = table["coef"] if "coef" in table.columns else table["log_hr"]
        se = table["se"]
    elif {"hr", "ci_low", "ci_high"} <= set(table.columns):
        if (table[["hr", "ci_low", "ci_high"]] <= 0).any().any():
            raise ValueError("Hazard ratios and their interval bounds must be positive.")
        log_hr = np.log(table["hr"])
        se = (np.log(table["ci_high"]) - np.log(table["ci_low"])) / (2 * _z(0.95))
    else:
        raise ValueError("The table needs columns 'coef' (log HR) and 'se', or 'hr', 'ci_low' and 'ci_high'.")
    pooled = pool_random_effects(log_hr, se, labels=_labels(table), method=method, ci=ci)
    pooled["log_estimate"] = pooled["estimate"]
    for key in ("estimate", "ci_low", "ci_high"):
        pooled[key] = float(np.exp(pooled[key]))
    pooled["scale"] = "hr"
    logger.info(
        "Pooled HR %.3f (%.3f-%.3f), p = %.3g, I² = %.0f%%, τ² = %.3g over %d cohorts (%s)",
        pooled["estimate"], pooled["ci_low"], pooled["ci_high"], pooled["p"], 100 * pooled["i2"], pooled["tau2"],
        pooled["k"], method,
    )  # fmt: skip
    return pooled


def hanley_mcneil_se(auc: Any, n_pos: Any, n_neg: Any) -> np.ndarray:
    """Return the standard error of an AUC from its value and class sizes (Hanley & McNeil 1982, eq. 2).

    Parameters
    ----------
    auc
        AUC(s), scalar or array.
    n_pos, n_neg
        Number of positive and negative cases, broadcast against ``auc``.

    Returns
    -------
    numpy.ndarray
        The standard error(s), shaped as the broadcast inputs.
    """
    a, n1, n2 = (np.asarray(x, dtype=float) for x in (auc, n_pos, n_neg))
    q1, q2 = a / (2 - a), 2 * a**2 / (1 + a)
    variance = (a * (1 - a) + (n1 - 1) * (q1 - a**2) + (n2 - 1) * (q2 - a**2)) / (n1 * n2)
    return np.sqrt(variance)


def pool_aucs(table: pd.DataFrame, *, method: Literal["DL", "FE"] = "DL", ci: float = 0.95) -> dict:
    r"""Pool per-cohort AUCs on the logit scale (DerSimonian–Laird random effects by default).

    AUCs are bounded and their sampling distribution is skewed near 1, so they are pooled as
    :math:`\\mathrm{logit}(AUC)` with the delta-method SE :math:`se_{AUC} / (AUC (1 - AUC))`, and the pooled value
    and interval are transformed back (Qin & Hotilovac 2008). ``p`` tests AUC = 0.5 (logit 0).

    Parameters
    ----------
    table
        One row per cohort (labels: a ``cohort`` column or the index) with ``auc`` and, in order of preference:
        ``se`` (of the AUC, e.g. DeLong or bootstrap), or ``n_pos`` and ``n_neg`` (responders, non-responders:
        Hanley–McNeil SE), or ``ci_low`` and ``ci_high`` (a 95% interval, e.g. from :func:`response_auc`; the SE
        is read off it on the logit scale).
    method
        ``"DL"`` or ``"FE"``; see :func:`pool_random_effects`.
    ci
        Confidence level of the pooled interval.

    Returns
    -------
    :func:`pool_random_effects`'s dict with ``estimate``, ``ci_low``, ``ci_high`` as AUCs, plus
    ``logit_estimate`` and ``se`` (logit scale), ``se_source`` and ``scale = "auc"``.

    Raises
    ------
    ValueError
        An AUC of 0 or 1 (logit infinite: a cohort that small or separable cannot be pooled this way), missing
        columns, and the errors of :func:`pool_random_effects`.

    References
    ----------
    Hanley JA, McNeil BJ. The meaning and use of the area under a receiver operating characteristic (ROC) curve.
    Radiology 143, 29-36 (1982).
    Qin G, Hotilovac L. Comparison of non-parametric confidence intervals for the area under the ROC curve of a
    continuous-scale diagnostic test. Stat Methods Med Res 17, 207-221 (2008).
    """
    table = pd.DataFrame(table)
    if "auc" not in table.columns:
        raise ValueError("The table needs an 'auc' column.")
    auc = table["auc"].astype(float).to_numpy()
    if not ((auc > 0) & (auc < 1)).all():
        raise ValueError(f"AUCs must lie strictly between 0 and 1 to be pooled on the logit scale, got {auc.tolist()}.")
    logit = np.log(auc / (1 - auc))
    if "se" in table.columns:
        se, source = table["se"].astype(float).to_numpy() / (auc * (1 - auc)), "se"
    elif {"n_pos", "n_neg"} <= set(table.columns):
        se = hanley_mcneil_se(auc, table["n_pos"], table["n_neg"]) / (auc * (1 - auc))
        source = "hanley-mcneil"
    elif {"ci_low", "ci_high"} <= set(table.columns):
        low, high = table["ci_low"].astype(float).to_numpy(), table["ci_high"].astype(float).to_numpy()
        if not ((low > 0) & (high < 1) & (low < high)).all():
            raise ValueError("AUC interval bounds must satisfy 0 < ci_low < ci_high < 1 to give a logit SE.")
        se, source = (np.log(high / (1 - high)) - np.log(low / (1 - low))) / (2 * _z(0.95)), "interval"
    else:
        raise ValueError("The table needs 'se', or 'n_pos' and 'n_neg', or 'ci_low' and 'ci_high' besides 'auc'.")
    pooled = pool_random_effects(logit, se, labels=_labels(table), method=method, ci=ci)
    pooled["logit_estimate"] = pooled["estimate"]
    for key in ("estimate", "ci_low", "ci_high"):
        pooled[key] = float(1 / (1 + np.exp(-pooled[key])))
    pooled.update(se_source=source, scale="auc")
    logger.info(
        "Pooled AUC %.3f (%.3f-%.3f), p = %.3g, I² = %.0f%% over %d cohorts (%s, logit scale, SE from %s)",
        pooled["estimate"], pooled["ci_low"], pooled["ci_high"], pooled["p"], 100 * pooled["i2"], pooled["k"],
        method, source,
    )  # fmt: skip
    return pooled
