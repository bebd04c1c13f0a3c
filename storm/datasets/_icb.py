"""Immune-checkpoint-blockade cohorts (PredictioR): bulk RNA-seq with response and survival, patients × genes."""

from __future__ import annotations

import numpy as np
import pandas as pd
from anndata import AnnData

from storm._logging import logger
from storm.io._rdata import read_summarized_experiment

from ._fetch import fetch
from ._registry import registry

_FILE = "PredictioR/data/ICB_small_{name}.rda"
# PredictioR stores log2(TPM + 0.001): every cohort's minimum is exactly log2(0.001) = -9.966.
ASSAY = "log2(TPM + 0.001)"
_MONTHS_PER = {"month": 1.0, "months": 1.0, "day": 12 / 365.25, "days": 12 / 365.25, "year": 12.0, "years": 12.0}

# name: (cancer type, n patients, study citation). n and cancer type are checked against the files by the tests.
COHORTS: dict[str, tuple[str, int, str]] = {
    "Hugo": (
        "Melanoma",
        27,
        "Hugo W et al. Genomic and transcriptomic features of response to anti-PD-1 therapy in metastatic melanoma. "
        "Cell 165, 35-44 (2016)",
    ),
    "Liu": (
        "Melanoma",
        74,
        "Liu D et al. Integrative molecular and clinical modeling of clinical outcomes to PD1 blockade in patients "
        "with metastatic melanoma. Nat Med 25, 1916-1927 (2019)",
    ),
    "Mariathasan": (
        "Bladder",
        195,
        "Mariathasan S et al. TGFβ attenuates tumour response to PD-L1 blockade by contributing to exclusion of "
        "T cells. Nature 554, 544-548 (2018)",
    ),
    "Miao": (
        "Kidney",
        33,
        "Miao D et al. Genomic correlates of response to immune checkpoint therapies in clear cell renal cell "
        "carcinoma. Science 359, 801-806 (2018)",
    ),
    "Nathanson": (
        "Melanoma",
        24,
        "Nathanson T et al. Somatic mutations and neoepitope homology in melanomas treated with CTLA-4 blockade. "
        "Cancer Immunol Res 5, 84-91 (2017)",
    ),
    "Padron": (
        "Pancreas",
        45,
        "Padrón LJ et al. Sotigalimab and/or nivolumab with chemotherapy in first-line metastatic pancreatic cancer: "
        "clinical and immunologic analyses from the randomized phase 2 PRINCE trial. Nat Med 28, 1167-1177 (2022)",
    ),
    "Riaz": (
        "Melanoma",
        23,
        "Riaz N et al. Tumor and microenvironment evolution during immunotherapy with nivolumab. Cell 171, 934-949 "
        "(2017)",
    ),
    "Van_Allen": (
        "Melanoma",
        42,
        "Van Allen EM et al. Genomic correlates of response to CTLA-4 blockade in metastatic melanoma. Science 350, "
        "207-211 (2015)",
    ),
}


def _canonical(name: str) -> str:
    key = str(name).strip().replace(" ", "_").lower()
    for cohort in COHORTS:
        if cohort.lower() == key:
            return cohort
    raise ValueError(f"Unknown ICB cohort {name!r}; storm has {', '.join(COHORTS)} ('Van Allen' also accepted).")


def icb_cohorts() -> pd.DataFrame:
    """List the immune-checkpoint-blockade cohorts :func:`icb_cohort` loads.

    Returns
    -------
    A DataFrame indexed by cohort name with columns ``n`` (patients with expression), ``cancer_type`` and
    ``citation`` (the original study; the data as curated by PredictioR, bhklab).
    """
    rows = {name: {"n": n, "cancer_type": cancer, "citation": cite} for name, (cancer, n, cite) in COHORTS.items()}
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "name"
    return table


def icb_event_check(adata: AnnData) -> pd.DataFrame:
    """Compare event rates of responders and non-responders, to catch event flags coded the wrong way round.

    Responders should die and progress no more often than non-responders. A cohort where they do (Miao: responders
    8/10 deaths against 10/18) most likely has its censoring flags inverted upstream.

    Parameters
    ----------
    adata
        A cohort from :func:`icb_cohort` (columns ``response``, ``os_event``/``pfs_event``).

    Returns
    -------
    One row per endpoint (``os``, ``pfs``) present: ``events_R``, ``n_R``, ``events_NR``, ``n_NR`` (patients with a
    known response and event flag) and ``suspicious`` (responders' event rate above non-responders').
    """
    rows = {}
    for endpoint in ("os", "pfs"):
        key = f"{endpoint}_event"
        if key not in adata.obs:
            continue
        table = adata.obs[["response", key]].dropna()
        row = {}
        for group in ("R", "NR"):
            events = table.loc[table["response"] == group, key]
            row[f"events_{group}"], row[f"n_{group}"] = int(events.sum()), len(events)
        rate = {g: row[f"events_{g}"] / row[f"n_{g}"] if row[f"n_{g}"] else np.nan for g in ("R", "NR")}
        row["suspicious"] = bool(rate["R"] > rate["NR"])
        rows[endpoint] = row
    return pd.DataFrame.from_dict(rows, orient="index")


def _present(column: pd.Series | None) -> bool:
    return column is not None and column.notna().any()


def _normalised_columns(obs: pd.DataFrame, months: float) -> dict[str, pd.Series | pd.Categorical]:
    out: dict[str, pd.Series | pd.Categorical] = {}
    response = obs["response"].where(obs["response"].isin(["R", "NR"]))
    out["response"] = pd.Categorical(response, categories=["R", "NR"])
    for endpoint in ("os", "pfs"):
        time, event = obs.get(f"survival_time_{endpoint}"), obs.get(f"event_occurred_{endpoint}")
        if _present(time) and _present(event):
            out[f"{endpoint}_time"] = pd.to_numeric(time, errors="coerce").astype(float) * months
            out[f"{endpoint}_event"] = pd.to_numeric(event, errors="coerce").astype(float)
    if _present(obs.get("TMB_perMb")):
        out["tmb"] = pd.to_numeric(obs["TMB_perMb"], errors="coerce").astype(float)
    return out


def icb_cohort(name: str) -> AnnData:
    """Load one immune-checkpoint-blockade cohort: tumour RNA-seq with response, survival and TMB.

    Parameters
    ----------
    name
        One of ``"Mariathasan"`` (IMvigor210, bladder), ``"Hugo"``, ``"Liu"``, ``"Miao"``, ``"Nathanson"``,
        ``"Padron"``, ``"Riaz"``, ``"Van_Allen"`` (``"Van Allen"`` also accepted); see :func:`icb_cohorts`.

    Returns
    -------
    AnnData of patients × genes (23–195 × ~1,750–1,800):

    - ``.X``: expression as stored, ``log2(TPM + 0.001)`` (float64, dense);
    - ``var_names``: gene symbols; ``var['gene_ids']``: Ensembl ids (no version); the other rowData columns of the
      file (``gene_id`` with version, ``gene_type``, ``length``, …) under their R names;
    - ``.obs``: every colData column of the file under its R name (``response``, ``recist``,
      ``survival_time_os``, ``event_occurred_os``, ``TMB_perMb``, …), R's NA kept missing (never ``True``), plus
      normalised columns: ``response`` (categorical ``R``/``NR``, NaN where unknown; replaces the string column of
      the same name), ``os_time``, ``os_event`` and, where the cohort has them, ``pfs_time``, ``pfs_event``
      (float; time in months, event 1.0/0.0/NaN), and ``tmb`` (``TMB_perMb``, mutations per Mb, where measured);
    - ``uns['icb']``: ``cohort``, ``cancer_type``, ``assay`` (``'log2(TPM + 0.001)'``), ``time_unit``
      (``'month'``), ``citation``, ``source``;
    - ``uns['storm_warnings']``: data-quality warnings (also logged), e.g. for Miao, see Notes.

    Raises
    ------
    ValueError
        Unknown cohort name.

    Notes
    -----
    The Miao cohort's event flags look inverted upstream: every progressive-disease patient is censored for PFS,
    and responders die more often than non-responders. storm does not silently fix that: it loads the flags as
    stored, logs a warning, and records it in ``uns['storm_warnings']``; :func:`icb_event_check` shows the counts.
    Check every cohort's events against its response before trusting a hazard ratio. Most cohorts are small
    (n < 50): pool them with a random-effects model rather than trusting one.

    References
    ----------
    Bareche Y et al. PredictioR: immunotherapy response prediction datasets (bhklab,
    https://github.com/bhklab/PredictioR); the original study of each cohort is in :func:`icb_cohorts`.
    """
    cohort = _canonical(name)
    file_name = _FILE.format(name=cohort)
    adata = read_summarized_experiment(fetch(file_name))
    if "gene_id_no_ver" in adata.var:
        adata.var["gene_ids"] = adata.var["gene_id_no_ver"].astype(str)

    obs = adata.obs
    units = set(obs["survival_unit"].dropna()) if "survival_unit" in obs else {"month"}
    if len(units) > 1 or not units <= set(_MONTHS_PER):
        raise ValueError(f"{cohort}: unexpected survival time units {sorted(units)}.")
    months = _MONTHS_PER[units.pop()] if units else 1.0
    for key, value in _normalised_columns(obs, months).items():
        obs[key] = value

    cancer_type, _, citation = COHORTS[cohort]
    adata.uns["icb"] = {
        "cohort": cohort,
        "cancer_type": cancer_type,
        "assay": ASSAY,
        "time_unit": "month",
        "citation": citation,
        "source": registry()[file_name].citation,
    }
    del adata.uns["R_assay"]

    warnings = []
    check = icb_event_check(adata)
    for endpoint, row in check[check["suspicious"]].iterrows() if len(check) else ():
        warnings.append(
            f"{cohort}: {endpoint.upper()} event flags look inverted upstream (responders {row['events_R']}/"
            f"{row['n_R']} events, non-responders {row['events_NR']}/{row['n_NR']}). Loaded as stored, not fixed: "
            f"check obs['event_occurred_{endpoint}'] before any survival analysis; see storm.datasets.icb_event_check."
        )
    if warnings:
        adata.uns["storm_warnings"] = warnings
        for message in warnings:
            logger.warning(message)
    logger.info(
        "Loaded ICB cohort %s (%s): %d patients × %d genes, %s; %d responders, %d non-responders",
        cohort,
        cancer_type,
        adata.n_obs,
        adata.n_vars,
        ASSAY,
        (obs["response"] == "R").sum(),
        (obs["response"] == "NR").sum(),
    )
    return adata
