"""Gene-signature scores per sample (patient, spot or cell) that tolerate genes missing from a panel."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse
from scipy.stats import rankdata

from storm._logging import logger

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

_RANK_CHUNK = 2048  # samples ranked at a time: bounds the dense copy on spot- or cell-level data


def match_genes(
    available: pd.Index, genes: Sequence[str], *, min_coverage: float, what: str
) -> tuple[list[str], list[str]]:
    """Split a signature into genes present and missing; log the coverage, raise below ``min_coverage``."""
    if isinstance(genes, str):
        raise ValueError(f"{what}: pass the genes as a list, not one string ({genes!r}).")
    requested = list(dict.fromkeys(str(gene) for gene in genes))  # de-duplicated, order kept
    if not requested:
        raise ValueError(f"{what}: the gene list is empty.")
    if not 0 <= min_coverage <= 1:
        raise ValueError(f"min_coverage must be in [0, 1], got {min_coverage}.")
    present = [gene for gene in requested if gene in available]
    missing = [gene for gene in requested if gene not in available]
    coverage = f"{len(present)}/{len(requested)} genes found"
    if not present:
        raise ValueError(
            f"{what}: none of the {len(requested)} genes is in the data ({', '.join(requested[:8])}"
            f"{', …' if len(requested) > 8 else ''}); check gene symbols (case, aliases) or var_names."
        )
    if len(present) / len(requested) < min_coverage:
        raise ValueError(
            f"{what}: {coverage}, below min_coverage={min_coverage:.0%}; missing: {', '.join(missing)}. The score "
            "would not measure the signature; lower min_coverage only if you know the missing genes do not matter."
        )
    if missing:
        logger.warning("%s: %s; missing: %s", what, coverage, ", ".join(missing))
    return present, missing


def expression_frame(data: AnnData | pd.DataFrame, genes: Sequence[str] | None = None, layer: str | None = None):
    """Return a samples × genes DataFrame (all genes, or the listed ones) of an AnnData layer or a DataFrame."""
    if isinstance(data, pd.DataFrame):
        if layer is not None:
            raise ValueError("layer= applies to an AnnData; a DataFrame is used as it is.")
        frame = data if genes is None else data.loc[:, list(genes)]
        return frame.apply(pd.to_numeric, errors="raise").astype(float)
    view = data if genes is None else data[:, list(genes)]
    matrix = view.X if layer is None else view.layers[layer]
    matrix = matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)
    return pd.DataFrame(matrix.astype(float), index=data.obs_names, columns=view.var_names)


def _var_names(data: AnnData | pd.DataFrame, layer: str | None) -> pd.Index:
    if isinstance(data, pd.DataFrame):
        return pd.Index(data.columns.astype(str))
    if layer is not None and layer not in data.layers:
        raise ValueError(f"Layer {layer!r} not found; adata has layers {list(data.layers)}.")
    return data.var_names


def _row_mean(values: np.ndarray) -> np.ndarray:
    """Mean of each row over its non-missing entries; NaN (without numpy's empty-slice warning) where none is."""
    finite = np.isfinite(values)
    total = np.where(finite, values, 0.0).sum(axis=1)
    count = finite.sum(axis=1)
    return np.divide(total, count, out=np.full(len(values), np.nan), where=count > 0)


def _zscore(values: pd.DataFrame) -> pd.DataFrame:
    """Per-gene z-scores across samples; genes constant across samples are dropped (they carry no information)."""
    sd = values.std(axis=0, ddof=0)
    constant = sd.index[~(sd > 0)].tolist()
    if constant:
        logger.warning("signature_score: %d gene(s) constant across samples, left out: %s", len(constant), constant)
    keep = sd.index[sd > 0]
    if len(keep) == 0:
        raise ValueError("signature_score: every signature gene is constant across samples; z-scores are undefined.")
    return (values[keep] - values[keep].mean(axis=0)) / sd[keep]


def _rank_score(data: AnnData | pd.DataFrame, present: list[str], layer: str | None) -> np.ndarray:
    """singscore-like score: mean within-sample rank of the signature genes, scaled to [0, 1]."""
    n_genes = len(_var_names(data, layer))
    is_signature = np.asarray(_var_names(data, layer).isin(present))
    if is_signature.sum() == n_genes:
        raise ValueError("signature_score(method='rank'): the signature covers every gene; ranks cannot score it.")
    out = np.empty(data.shape[0])
    for start in range(0, data.shape[0], _RANK_CHUNK):
        rows = slice(start, start + _RANK_CHUNK)
        chunk = expression_frame(data.iloc[rows] if isinstance(data, pd.DataFrame) else data[rows], layer=layer)
        values = chunk.to_numpy()
        # Missing values are left out of the ranking: each sample is ranked among the genes it has.
        ranks = rankdata(values, axis=1, nan_policy="omit")
        n = np.isfinite(values).sum(1)
        k = np.isfinite(values[:, is_signature]).sum(1)
        mean_rank = _row_mean(np.where(is_signature[None, :], ranks, np.nan))
        # Foroutan et al. 2018: (S - S_min) / (S_max - S_min), S_min = (k + 1)/2, S_max = (2n - k + 1)/2.
        with np.errstate(invalid="ignore", divide="ignore"):
            out[rows] = (mean_rank - (k + 1) / 2) / (n - k)
    return out


def signature_score(
    adata_or_df: AnnData | pd.DataFrame,
    genes: Sequence[str],
    *,
    method: Literal["zscore", "rank", "mean"] = "zscore",
    layer: str | None = None,
    key_added: str | None = None,
    min_coverage: float = 0.5,
) -> pd.Series:
    """Score each sample for a gene signature, using the genes the data have and saying which are missing.

    Parameters
    ----------
    adata_or_df
        An AnnData (samples × genes; ``.X`` or ``layer``) or a DataFrame (samples × genes). Use log-scale
        expression (e.g. log2 TPM, log1p-normalised counts) for ``"zscore"`` and ``"mean"``; ``"rank"`` only
        needs the order within a sample.
    genes
        Gene symbols, matched exactly to ``var_names`` (or the DataFrame's columns); duplicates are ignored.
    method
        ``"zscore"``: each gene z-scored across samples, then averaged per sample (a cohort-relative score: the
        same patient scores differently in another cohort). ``"rank"``: singscore-like (Foroutan et al. 2018):
        the mean rank of the signature genes among all genes within each sample, scaled to [0, 1] by its smallest
        and largest possible values (a single-sample score, comparable across cohorts; unidirectional, no
        dispersion term). ``"mean"``: mean of the genes' values.
    layer
        AnnData layer to read instead of ``.X``.
    key_added
        With an AnnData, write the score to ``obs[key_added]`` and the parameters to ``uns[key_added]['params']``.
    min_coverage
        Smallest share of the signature's genes that must be present.

    Returns
    -------
    The score per sample (a float Series indexed by ``obs_names`` or the DataFrame's index, named ``key_added`` or
    ``"signature_score"``), with ``attrs['coverage']`` (``n_found``, ``n_requested``, ``genes_used``,
    ``genes_missing``). With ``key_added`` and an AnnData, also:

    - ``adata.obs[key_added]``: the score;
    - ``adata.uns[key_added]['params']``: ``method``, ``layer``, ``genes_used``, ``genes_missing``, ``n_found``,
      ``n_requested``, ``coverage`` (share found), ``min_coverage``.

    Raises
    ------
    ValueError
        No signature gene present, coverage below ``min_coverage``, an unknown method or layer, every signature gene
        constant (``"zscore"``), or ``key_added`` with a DataFrame.

    Notes
    -----
    Missing genes are logged as a warning (``"12/15 genes found; missing: ..."``). Values missing for single
    samples (NaN) are skipped in that sample's mean.

    References
    ----------
    Foroutan M et al. Single sample scoring of molecular phenotypes. BMC Bioinformatics 19, 404 (2018).
    """
    if method not in ("zscore", "rank", "mean"):
        raise ValueError(f"method must be 'zscore', 'rank' or 'mean', got {method!r}.")
    is_frame = isinstance(adata_or_df, pd.DataFrame)
    if key_added is not None and is_frame:
        raise ValueError("key_added needs an AnnData to write to; with a DataFrame use the returned Series.")
    present, missing = match_genes(
        _var_names(adata_or_df, layer), genes, min_coverage=min_coverage, what="signature_score"
    )
    if method == "rank":
        values = _rank_score(adata_or_df, present, layer)
    else:
        frame = expression_frame(adata_or_df, present, layer)
        if method == "zscore":
            frame = _zscore(frame)
        values = _row_mean(frame.to_numpy())
    index = adata_or_df.index if is_frame else adata_or_df.obs_names
    score = pd.Series(values, index=index, name=key_added or "signature_score", dtype=float)
    coverage = {
        "n_found": len(present),
        "n_requested": len(present) + len(missing),
        "genes_used": present,
        "genes_missing": missing,
    }
    score.attrs["coverage"] = coverage
    if score.isna().any():
        logger.warning("signature_score: %d samples have no value for any signature gene (NaN).", score.isna().sum())
    if key_added is not None:
        adata_or_df.obs[key_added] = score.to_numpy()
        adata_or_df.uns[key_added] = {
            "params": {
                "method": method,
                "layer": layer,
                **coverage,
                "coverage": len(present) / coverage["n_requested"],
                "min_coverage": min_coverage,
            }
        }
        logger.info("signature_score: %s; added adata.obs[%r] and adata.uns[%r]", method, key_added, key_added)
    return score
