"""Established immunotherapy biomarkers from expression: PD-L1 (CD274), cytolytic activity, T-cell-inflamed GEP, TMB.

These are what STORM's clinical scores are compared against (DESIGN.md §2). Each is computed on log2 TPM; the
pseudo-count each publication used is restored from the stored values when the assay says which offset they
carry (PredictioR cohorts store ``log2(TPM + 0.001)``, in ``uns['icb']['assay']``). The offset matters: with
0.001, an unexpressed gene sits at -10, ten log units below a barely expressed one, and dominates any average.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from storm._logging import logger
from storm.clinical._signatures import expression_frame, match_genes, signature_score

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

#: Rooney et al. 2015: cytolytic activity, the geometric mean of granzyme A and perforin expression.
CYT_GENES: tuple[str, ...] = ("GZMA", "PRF1")

#: Ayers et al. 2017: the 18-gene T-cell-inflamed gene-expression profile (GEP).
GEP_GENES: tuple[str, ...] = (
    "CCL5", "CD27", "CD274", "CD276", "CD8A", "CMKLR1", "CXCL9", "CXCR6", "HLA-DQA1",
    "HLA-DRB1", "HLA-E", "IDO1", "LAG3", "NKG7", "PDCD1LG2", "PSMB10", "STAT1", "TIGIT",
)  # fmt: skip

#: Per-gene weights of the GEP's clinical-trial algorithm (Cristescu et al. 2018, Science, supplementary
#: materials; on housekeeping-normalised log10 NanoString counts), as implemented in the Bioconductor package
#: easier (Lapuente-Santana et al. 2021). CD276 is the only negative weight.
GEP_WEIGHTS: dict[str, float] = {
    "CCL5": 0.008346, "CD27": 0.072293, "CD274": 0.042853, "CD276": -0.0239, "CD8A": 0.031021,
    "CMKLR1": 0.151253, "CXCL9": 0.074135, "CXCR6": 0.004313, "HLA-DQA1": 0.020091, "HLA-DRB1": 0.058806,
    "HLA-E": 0.07175, "IDO1": 0.060679, "LAG3": 0.123895, "NKG7": 0.075524, "PDCD1LG2": 0.003734,
    "PSMB10": 0.032999, "STAT1": 0.250229, "TIGIT": 0.084767,
}  # fmt: skip

#: The 11 housekeeping genes of the GEP's NanoString assay (C14orf102 is now NRDE2).
GEP_HOUSEKEEPING: tuple[str, ...] = (
    "STK11IP", "ZBTB34", "TBC1D10B", "OAZ1", "POLR2A", "G6PD", "ABCF1", "NRDE2", "UBB", "TBP", "SDHA",
)  # fmt: skip

_ASSAY = re.compile(r"log2\(\s*TPM\s*\+\s*([0-9.eE+-]+)\s*\)")


def _input_offset(data: AnnData | pd.DataFrame, offset: float | None) -> float | None:
    """Return the pseudo-count of the input's log2(TPM + offset): given, or read from ``uns['icb']['assay']``."""
    if offset is not None or isinstance(data, pd.DataFrame):
        return offset
    match = _ASSAY.fullmatch(str(data.uns.get("icb", {}).get("assay", "")).strip())
    return float(match.group(1)) if match else None


def log2_tpm(
    data: AnnData | pd.DataFrame,
    genes: Sequence[str] | None = None,
    *,
    pseudocount: float = 1.0,
    offset: float | None = None,
    layer: str | None = None,
) -> pd.DataFrame:
    """Expression as ``log2(TPM + pseudocount)``, re-expressed from the input's own offset.

    Parameters
    ----------
    data
        AnnData or DataFrame (samples × genes) of ``log2(TPM + offset)``.
    genes
        Genes to return (must be present); ``None``: all.
    pseudocount
        The pseudo-count wanted.
    offset
        The input's pseudo-count; ``None``: read from ``uns['icb']['assay']`` (``'log2(TPM + 0.001)'`` for
        :func:`storm.datasets.icb_cohort`). If neither says, values are used as they are (logged).
    layer
        AnnData layer to read instead of ``.X``.

    Returns
    -------
    Samples × genes DataFrame.
    """
    frame = expression_frame(data, genes, layer)
    known = _input_offset(data, offset)
    if known is None:
        logger.info("No assay offset known (uns['icb']['assay'] or offset=); expression used as given (log2 scale).")
        return frame
    if known == pseudocount:
        return frame
    # TPM below 0 can only be rounding of the stored values: clip before the new offset.
    tpm = np.clip(np.exp2(frame) - known, 0.0, None)
    return np.log2(tpm + pseudocount)


def cd274(
    data: AnnData | pd.DataFrame, *, pseudocount: float = 1.0, offset: float | None = None, layer: str | None = None
) -> pd.Series:
    """PD-L1 mRNA: ``log2(TPM + 1)`` of CD274, the gene of the protein anti-PD-(L)1 therapy blocks.

    mRNA is not the immunohistochemistry score trials select on (tumour or immune-cell PD-L1 staining), but it
    correlates with it and is the comparator bulk-RNA studies use.

    Parameters
    ----------
    data
        AnnData or DataFrame (samples × genes) of log2 TPM.
    pseudocount, offset, layer
        See :func:`log2_tpm`.

    Returns
    -------
    Series ``CD274`` per sample.

    Raises
    ------
    ValueError
        CD274 absent.

    References
    ----------
    Herbst RS et al. Predictive correlates of response to the anti-PD-L1 antibody MPDL3280A in cancer patients.
    Nature 515, 563-567 (2014).
    """
    match_genes(_names(data), ["CD274"], min_coverage=1.0, what="cd274")
    return log2_tpm(data, ["CD274"], pseudocount=pseudocount, offset=offset, layer=layer)["CD274"].rename("CD274")


def cytolytic_activity(
    data: AnnData | pd.DataFrame, *, pseudocount: float = 0.01, offset: float | None = None, layer: str | None = None
) -> pd.Series:
    """Cytolytic activity (CYT): the geometric mean of GZMA and PRF1 expression, on the log2 scale.

    Rooney et al. defined CYT as the geometric mean of GZMA and PRF1 in TPM with a 0.01 offset. storm returns
    its log2, i.e. the mean of the two genes' ``log2(TPM + 0.01)`` (log2 of a geometric mean is the mean of the
    log2 values), which orders patients identically and behaves better in a Cox model.

    Parameters
    ----------
    data
        AnnData or DataFrame (samples × genes) of log2 TPM.
    pseudocount
        Offset added to TPM (Rooney et al.: 0.01).
    offset, layer
        See :func:`log2_tpm`.

    Returns
    -------
    Series ``CYT`` per sample: ``log2`` of the geometric mean of ``TPM + pseudocount`` of GZMA and PRF1.

    Raises
    ------
    ValueError
        GZMA or PRF1 absent (both are needed).

    References
    ----------
    Rooney MS et al. Molecular and genetic properties of tumors associated with local immune cytolytic activity.
    Cell 160, 48-61 (2015).
    """
    match_genes(_names(data), CYT_GENES, min_coverage=1.0, what="cytolytic_activity")
    values = log2_tpm(data, CYT_GENES, pseudocount=pseudocount, offset=offset, layer=layer)
    return values.mean(axis=1, skipna=False).rename("CYT")


def tcell_inflamed_gep(
    data: AnnData | pd.DataFrame,
    *,
    method: Literal["weighted", "zscore"] = "weighted",
    housekeeping: bool | None = None,
    pseudocount: float = 1.0,
    offset: float | None = None,
    layer: str | None = None,
    min_coverage: float = 0.5,
) -> pd.Series:
    """T-cell-inflamed gene-expression profile (GEP, Ayers et al. 2017), 18 genes of IFN-γ signalling and T cells.

    Parameters
    ----------
    data
        AnnData or DataFrame (samples × genes) of log2 TPM.
    method
        ``"weighted"``: the published algorithm's weighted sum (:data:`GEP_WEIGHTS`, Cristescu et al. 2018) of
        ``log2(TPM + 1)``, over the genes present (a missing gene contributes nothing, as in easier). The weights
        were fitted on NanoString counts, so on RNA-seq the score's scale differs from the trial assay's and its
        cut-offs do not transfer; its ordering of patients is what it is used for here. ``"zscore"``: unweighted
        mean of the genes' z-scores across samples (:func:`signature_score`), a cohort-relative variant.
    housekeeping
        Subtract each sample's mean of the assay's 11 housekeeping genes (``GEP_HOUSEKEEPING``) first, as the
        published algorithm does. ``None``: when at least 6 of them are present. TPM is already normalised for
        sequencing depth, so the step matters less on RNA-seq; PredictioR's ~1,800-gene panels lack all of them.
    pseudocount, offset, layer
        See :func:`log2_tpm`.
    min_coverage
        Smallest share of the 18 genes that must be present (PredictioR's panels have 16: no CD276, PSMB10).

    Returns
    -------
    Series ``GEP`` per sample; ``attrs['coverage']`` says which genes were used.

    Raises
    ------
    ValueError
        Coverage below ``min_coverage``; ``housekeeping=True`` without any housekeeping gene.

    References
    ----------
    Ayers M et al. IFN-γ-related mRNA profile predicts clinical response to PD-1 blockade. J Clin Invest 127,
    2930-2940 (2017).
    Cristescu R et al. Pan-tumor genomic biomarkers for PD-1 checkpoint blockade-based immunotherapy. Science
    362, eaar3593 (2018).
    Lapuente-Santana Ó et al. Interpretable systems biomarkers predict response to immune-checkpoint inhibitors.
    Patterns 2, 100293 (2021).
    """
    if method not in ("weighted", "zscore"):
        raise ValueError(f"method must be 'weighted' or 'zscore', got {method!r}.")
    names = _names(data)
    present, missing = match_genes(names, GEP_GENES, min_coverage=min_coverage, what="tcell_inflamed_gep")
    values = log2_tpm(data, present, pseudocount=pseudocount, offset=offset, layer=layer)
    hk = [gene for gene in GEP_HOUSEKEEPING if gene in names]
    if housekeeping is None:
        housekeeping = len(hk) >= 6
    if housekeeping:
        if not hk:
            raise ValueError("tcell_inflamed_gep: housekeeping=True but none of the 11 housekeeping genes is present.")
        reference = log2_tpm(data, hk, pseudocount=pseudocount, offset=offset, layer=layer).mean(axis=1)
        values = values.sub(reference, axis=0)
    logger.info(
        "tcell_inflamed_gep (%s): %d/18 genes; housekeeping normalisation %s (%d/11 genes)",
        method, len(present), "on" if housekeeping else "off", len(hk),
    )  # fmt: skip
    if method == "weighted":
        score = (values * pd.Series(GEP_WEIGHTS)[present]).sum(axis=1, skipna=False)
    else:
        score = signature_score(values, present, method="zscore", min_coverage=1.0)
    score = score.rename("GEP")
    score.attrs["coverage"] = {
        "n_found": len(present),
        "n_requested": len(GEP_GENES),
        "genes_used": present,
        "genes_missing": missing,
        "housekeeping": housekeeping,
    }
    return score


def tmb(adata: AnnData, *, key: str = "tmb") -> pd.Series:
    """Tumour mutational burden (mutations per Mb) as the cohort measured it, from ``obs[key]``.

    Parameters
    ----------
    adata
        A cohort with a TMB column (:func:`storm.datasets.icb_cohort` writes ``obs['tmb']`` where measured).
    key
        The ``obs`` column.

    Returns
    -------
    Series ``TMB`` per patient (NaN where not measured).

    Raises
    ------
    ValueError
        No such column or no patient measured.

    References
    ----------
    Samstein RM et al. Tumor mutational load predicts survival after immunotherapy across multiple cancer types.
    Nat Genet 51, 202-206 (2019).
    """
    if isinstance(adata, pd.DataFrame) or key not in adata.obs or adata.obs[key].notna().sum() == 0:
        raise ValueError(f"TMB: no obs[{key!r}] with measured values; this cohort has no mutation data.")
    return pd.to_numeric(adata.obs[key], errors="coerce").astype(float).rename("TMB")


def _names(data: AnnData | pd.DataFrame) -> pd.Index:
    return pd.Index(data.columns.astype(str)) if isinstance(data, pd.DataFrame) else data.var_names


def biomarker_table(
    adata: AnnData,
    *,
    biomarkers: Sequence[str] = ("CD274", "CYT", "GEP", "TMB"),
    gep_method: Literal["weighted", "zscore"] = "weighted",
    layer: str | None = None,
) -> pd.DataFrame:
    """Compute the established biomarkers of every patient: PD-L1 mRNA, cytolytic activity, T-cell-inflamed GEP, TMB.

    Parameters
    ----------
    adata
        Patients × genes of log2 TPM (e.g. :func:`storm.datasets.icb_cohort`); TMB from ``obs['tmb']``.
    biomarkers
        Which of ``"CD274"`` (:func:`cd274`), ``"CYT"`` (:func:`cytolytic_activity`), ``"GEP"``
        (:func:`tcell_inflamed_gep`) and ``"TMB"`` (:func:`tmb`) to compute.
    gep_method
        ``method`` of :func:`tcell_inflamed_gep`.
    layer
        AnnData layer to read instead of ``.X``.

    Returns
    -------
    pandas.DataFrame
        Patients × biomarkers DataFrame. A biomarker the data cannot give (genes or TMB absent) is left out, with a
        logged warning. ``attrs['coverage']``: per requested biomarker, a short text (``"16/18 genes (missing CD276,
        PSMB10)"``, ``"152/195 patients"``, ``"not available: ..."``), also logged.
    """
    unknown = sorted(set(biomarkers) - {"CD274", "CYT", "GEP", "TMB"})
    if unknown:
        raise ValueError(f"Unknown biomarkers {unknown}; choose from CD274, CYT, GEP, TMB.")
    makers: dict[str, Any] = {
        "CD274": lambda: cd274(adata, layer=layer),
        "CYT": lambda: cytolytic_activity(adata, layer=layer),
        "GEP": lambda: tcell_inflamed_gep(adata, method=gep_method, layer=layer),
        "TMB": lambda: tmb(adata),
    }
    columns, coverage = {}, {}
    for name in biomarkers:
        try:
            column = makers[name]()
        except ValueError as err:
            coverage[name] = f"not available: {err}"
            logger.warning("biomarker_table: %s left out (%s)", name, err)
            continue
        columns[name] = column
        if name == "TMB":
            coverage[name] = f"{int(column.notna().sum())}/{len(column)} patients"
        elif "coverage" in column.attrs:
            info = column.attrs["coverage"]
            text = f"{info['n_found']}/{info['n_requested']} genes"
            coverage[name] = text + (f" (missing {', '.join(info['genes_missing'])})" if info["genes_missing"] else "")
        else:
            genes = {"CD274": ["CD274"], "CYT": list(CYT_GENES)}[name]
            coverage[name] = f"{len(genes)}/{len(genes)} genes"
    if not columns:
        raise ValueError(f"biomarker_table: no biomarker could be computed: {coverage}")
    table = pd.DataFrame(columns)
    table.index.name = "patient"
    table.attrs["coverage"] = coverage
    cohort = adata.uns.get("icb", {}).get("cohort", "") if not isinstance(adata, pd.DataFrame) else ""
    logger.info("biomarker_table %s: %s", cohort, "; ".join(f"{k}: {v}" for k, v in coverage.items()))
    return table
