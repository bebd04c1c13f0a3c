"""Clinical statistics and biomarkers (:mod:`storm.clinical`): survival, response, pooling across cohorts.

The statistics of STORM's clinical protocol (DESIGN.md §2) on plain arrays, built on lifelines and
scikit-survival: hazard ratios (:func:`cox_hr`, :func:`cox_split`), Harrell's C with a bootstrap interval
(:func:`c_index`), Kaplan–Meier and log-rank (:func:`km`, :func:`logrank`), time-dependent AUC
(:func:`time_dependent_auc`), response AUC (:func:`response_auc`), paired comparison of two scores
(:func:`compare_scores`), random-effects pooling across cohorts (:func:`pool_random_effects`,
:func:`pool_hazard_ratios`, :func:`pool_aucs`), and all of it per cohort and biomarker in one table with pooled rows
(:func:`cohort_table`). Established biomarkers from expression (:func:`cd274`,
:func:`cytolytic_activity`, :func:`tcell_inflamed_gep`, :func:`tmb`, :func:`biomarker_table`) and gene-signature
scores (:func:`signature_score`). Imports without torch.

Per-patient inputs are paired by position (pandas inputs indexed by different patients, or in another order, are
refused). Missing values are dropped with a :class:`ClinicalDataWarning` that says how many; no events, one class
only or too few patients for a bootstrap raise ``ValueError``.
"""

from ._biomarkers import (
    CYT_GENES,
    GEP_GENES,
    GEP_WEIGHTS,
    biomarker_table,
    cd274,
    cytolytic_activity,
    log2_tpm,
    tcell_inflamed_gep,
    tmb,
)
from ._cox import cox_hr, cox_split
from ._pooling import hanley_mcneil_se, pool_aucs, pool_hazard_ratios, pool_random_effects
from ._response import compare_scores, response_auc
from ._signatures import signature_score
from ._survival import TimeDependentAUC, c_index, check_events, km, logrank, time_dependent_auc
from ._table import COHORT_TABLE_COLUMNS, cohort_table
from ._validate import ClinicalDataWarning, Interval

__all__ = [
    "COHORT_TABLE_COLUMNS",
    "CYT_GENES",
    "GEP_GENES",
    "GEP_WEIGHTS",
    "ClinicalDataWarning",
    "Interval",
    "TimeDependentAUC",
    "biomarker_table",
    "c_index",
    "cd274",
    "check_events",
    "cohort_table",
    "compare_scores",
    "cox_hr",
    "cox_split",
    "cytolytic_activity",
    "hanley_mcneil_se",
    "km",
    "log2_tpm",
    "logrank",
    "pool_aucs",
    "pool_hazard_ratios",
    "pool_random_effects",
    "response_auc",
    "signature_score",
    "tcell_inflamed_gep",
    "time_dependent_auc",
    "tmb",
]
