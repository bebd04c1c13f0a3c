"""Gene-wise Pearson correlation of predicted and measured expression, and its per-slide summaries."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import sparse

from ._spatial import _factorize_uniques

__all__ = ["gene_pearson", "pearson_summary"]

# Densify this many matrix elements per chunk (32 MiB of float64 per matrix): sparse or float32 inputs of a
# whole-slide prediction are never copied to float64 in one piece.
_CHUNK_ELEMENTS = 1 << 22
POOLED = "pooled"


@dataclass
class _Moments:
    """Column-wise co-moments of two matrices, mergeable across row chunks.

    Each chunk is centred on its own means (two-pass within the chunk) and chunks are combined with the
    pairwise update of Chan, Golub & LeVeque (1983). Unlike accumulating raw sums Σx, Σx², Σxy, this does not
    lose the correlation to cancellation when a gene's mean is large relative to its spread.
    """

    n: int
    mean_x: np.ndarray
    mean_y: np.ndarray
    m_xx: np.ndarray
    m_yy: np.ndarray
    m_xy: np.ndarray
    # Exact constancy test: a centred sum of squares of identical floats can come out as a tiny non-zero.
    min_x: np.ndarray
    max_x: np.ndarray
    min_y: np.ndarray
    max_y: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> _Moments:
        mx, my = x.mean(axis=0), y.mean(axis=0)
        dx, dy = x - mx, y - my
        return cls(
            n=x.shape[0],
            mean_x=mx,
            mean_y=my,
            m_xx=np.einsum("ij,ij->j", dx, dx),
            m_yy=np.einsum("ij,ij->j", dy, dy),
            m_xy=np.einsum("ij,ij->j", dx, dy),
            min_x=x.min(axis=0),
            max_x=x.max(axis=0),
            min_y=y.min(axis=0),
            max_y=y.max(axis=0),
        )

    def merge(self, other: _Moments | None) -> _Moments:
        if other is None:
            return self
        n = self.n + other.n
        dx, dy = other.mean_x - self.mean_x, other.mean_y - self.mean_y
        w = self.n * other.n / n
        return _Moments(
            n=n,
            mean_x=self.mean_x + dx * (other.n / n),
            mean_y=self.mean_y + dy * (other.n / n),
            m_xx=self.m_xx + other.m_xx + dx * dx * w,
            m_yy=self.m_yy + other.m_yy + dy * dy * w,
            m_xy=self.m_xy + other.m_xy + dx * dy * w,
            min_x=np.minimum(self.min_x, other.min_x),
            max_x=np.maximum(self.max_x, other.max_x),
            min_y=np.minimum(self.min_y, other.min_y),
            max_y=np.maximum(self.max_y, other.max_y),
        )

    def constant(self) -> np.ndarray:
        return (self.max_x == self.min_x) | (self.max_y == self.min_y)

    def pearson(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            r = self.m_xy / np.sqrt(self.m_xx * self.m_yy)
        r = np.clip(r, -1.0, 1.0)  # rounding can overshoot ±1 by an ulp; NaN passes through
        r[self.constant()] = np.nan
        return r


def _as_matrix(x: ArrayLike | sparse.spmatrix | pd.DataFrame, name: str) -> np.ndarray | sparse.csr_matrix:
    if isinstance(x, pd.DataFrame):
        x = x.to_numpy()
    if sparse.issparse(x):
        # CSR rows slice in O(rows) time; COO/CSC would rebuild the matrix at every chunk.
        return sparse.csr_matrix(x)
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D (n_obs, n_genes) matrix, got shape {arr.shape}.")
    return arr


def _dense(x: np.ndarray | sparse.csr_matrix, rows: slice | np.ndarray) -> np.ndarray:
    block = x[rows]
    block = block.toarray() if sparse.issparse(block) else block
    return np.asarray(block, dtype=np.float64)


def _gene_index(genes: Sequence[str] | pd.Index | None, *frames: object, n_genes: int) -> pd.Index:
    if genes is None:
        for f in frames:
            if isinstance(f, pd.DataFrame):
                genes = f.columns
                break
    index = pd.RangeIndex(n_genes) if genes is None else pd.Index(genes)
    if len(index) != n_genes:
        raise ValueError(f"`genes` has {len(index)} names but the matrices have {n_genes} columns.")
    return index.rename("gene")


def _moments_by_group(
    pred: ArrayLike | sparse.spmatrix | pd.DataFrame,
    true: ArrayLike | sparse.spmatrix | pd.DataFrame,
    group_codes: np.ndarray | None,
) -> tuple[dict[int, _Moments], int]:
    """One streaming pass over row chunks, accumulating moments per group code (a single group when None)."""
    x, y = _as_matrix(pred, "pred"), _as_matrix(true, "true")
    if x.shape != y.shape:
        raise ValueError(f"`pred` has shape {x.shape} but `true` has shape {y.shape}.")
    n_obs, n_genes = x.shape
    if n_obs < 2:
        raise ValueError(f"Pearson correlation needs at least 2 observations, got {n_obs}.")
    if group_codes is not None and group_codes.shape[0] != n_obs:
        raise ValueError(f"`groups` has {group_codes.shape[0]} entries but the matrices have {n_obs} rows.")
    codes = np.zeros(n_obs, dtype=np.int64) if group_codes is None else group_codes
    step = max(1, _CHUNK_ELEMENTS // max(1, n_genes))
    acc: dict[int, _Moments] = {}
    for start in range(0, n_obs, step):
        rows = slice(start, min(n_obs, start + step))
        xb, yb, cb = _dense(x, rows), _dense(y, rows), codes[rows]
        for g in np.unique(cb):
            sel = cb == g
            m = _Moments.of(xb[sel], yb[sel]) if not sel.all() else _Moments.of(xb, yb)
            acc[int(g)] = m.merge(acc.get(int(g)))
    return acc, n_genes


def gene_pearson(
    pred: ArrayLike | sparse.spmatrix | pd.DataFrame,
    true: ArrayLike | sparse.spmatrix | pd.DataFrame,
    *,
    genes: Sequence[str] | pd.Index | None = None,
) -> pd.Series:
    r"""Pearson correlation between predicted and measured expression of each gene, across observations.

    For gene :math:`g` over observations (spots, tiles) :math:`i`,
    :math:`r_g = \sum_i (\hat y_{ig}-\bar{\hat y}_g)(y_{ig}-\bar y_g) / \sqrt{\sum_i (\hat y_{ig}-\bar{\hat y}_g)^2
    \sum_i (y_{ig}-\bar y_g)^2}`, the virtual-ST metric of STORM and of HisToGene/DeepPT-style benchmarks
    (whose headline number is the median of :math:`r_g` over genes, see :func:`pearson_summary`).

    The matrices are read in row chunks, densified chunk by chunk and accumulated in float64 with a numerically
    stable pairwise update, so sparse or float32 whole-slide predictions are never copied in one piece.

    Parameters
    ----------
    pred
        Predicted expression, shape ``(n_obs, n_genes)``: numpy array, scipy sparse matrix/array or DataFrame.
    true
        Measured expression on the same scale (e.g. log-normalised), same shape and gene order.
    genes
        Gene names for the result's index; defaults to the columns of a DataFrame input, else ``0..n_genes-1``.

    Returns
    -------
    Series ``pearson_r`` indexed by gene, values in [-1, 1]. A gene that is constant in ``pred`` or in
    ``true`` has no defined correlation and gets NaN; the number of such genes is reported in one
    :class:`UserWarning`. Non-finite inputs give NaN for the affected genes.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.array([[1.0, 0.0], [2.0, 5.0], [3.0, 1.0]])
    >>> gene_pearson(-2 * y + 1, y, genes=["A", "B"]).tolist()
    [-1.0, -1.0]
    """
    acc, n_genes = _moments_by_group(pred, true, None)
    index = _gene_index(genes, pred, true, n_genes=n_genes)
    moments = acc[0]
    n_const = int(moments.constant().sum())
    if n_const:
        warnings.warn(
            f"{n_const} of {n_genes} genes are constant in `pred` or `true`; their Pearson r is NaN.",
            UserWarning,
            stacklevel=2,
        )
    return pd.Series(moments.pearson(), index=index, name="pearson_r")


def _mean_or_nan(values: np.ndarray) -> float:
    # np.nanmean warns on an all-NaN slice; an empty summary is a legitimate NaN here, not a warning.
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else np.nan


def _summarise(r: np.ndarray, n_obs: int, top_k: int, hvg: np.ndarray) -> dict[str, float]:
    finite = np.sort(r[~np.isnan(r)])[::-1]
    return {
        "n_obs": n_obs,
        "n_genes": int(finite.size),
        "mean": float(finite.mean()) if finite.size else np.nan,
        "median": float(np.median(finite)) if finite.size else np.nan,
        "top_k_mean": float(finite[:top_k].mean()) if finite.size else np.nan,
        "hvg_mean": _mean_or_nan(r[hvg]),
    }


def pearson_summary(
    pred: ArrayLike | sparse.spmatrix | pd.DataFrame,
    true: ArrayLike | sparse.spmatrix | pd.DataFrame,
    *,
    genes: Sequence[str] | pd.Index | None = None,
    top_k: int = 50,
    n_hvg: int | None = None,
    groups: ArrayLike | None = None,
) -> pd.DataFrame:
    """Summaries of the gene-wise Pearson r (:func:`gene_pearson`), per group (slide) and pooled.

    The STORM virtual-ST protocol reports the median over genes of the gene-wise Pearson r on held-out slides;
    this also gives the mean, the mean over the best genes and the mean over the most variable genes, the
    forms used by HisToGene/Hist2ST/DeepPT-style benchmarks.

    Parameters
    ----------
    pred
        Predicted expression, shape ``(n_obs, n_genes)``: numpy array, scipy sparse or DataFrame.
    true
        Measured expression on the same scale, same shape and gene order.
    genes
        Gene names; see :func:`gene_pearson`. Not needed for the summary, accepted for symmetry.
    top_k
        Number of best-correlated genes averaged in ``top_k_mean``, chosen separately in each row (fewer when
        fewer genes have a defined r).
    n_hvg
        Number of most variable genes of ``true`` averaged in ``hvg_mean``; defaults to ``top_k``. Variances are
        taken over all observations pooled, so every row averages the same genes.
    groups
        Group per observation (e.g. slide id), length ``n_obs``; every observation needs one.

    Returns
    -------
    DataFrame indexed by group (index name ``group``), one row per group in order of first appearance and a
    last row ``'pooled'`` computed over all observations together (the only row when ``groups`` is None).
    Columns: ``n_obs``; ``n_genes`` (genes with a defined r); ``mean``, ``median``; ``top_k_mean`` (mean r of
    the ``top_k`` best genes); ``hvg_mean`` (mean r over the ``n_hvg`` most variable genes, those with a
    defined r). ``top_k`` and ``n_hvg`` are recorded in ``DataFrame.attrs``. Genes that are constant within
    a row are left out of it, with one :class:`UserWarning` for the whole call. The average of the per-slide
    medians, the usual held-out-slide number, is ``df.drop('pooled')['median'].mean()``.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.normal(size=(40, 5))
    >>> pearson_summary(y, y, top_k=2, groups=np.repeat(["s1", "s2"], 20))["median"].tolist()
    [1.0, 1.0, 1.0]
    """
    if int(top_k) != top_k or top_k < 1:
        raise ValueError(f"`top_k` must be a positive integer, got {top_k!r}.")
    n_hvg = int(top_k) if n_hvg is None else n_hvg
    if int(n_hvg) != n_hvg or n_hvg < 1:
        raise ValueError(f"`n_hvg` must be a positive integer, got {n_hvg!r}.")

    labels: pd.Index | None = None
    codes: np.ndarray | None = None
    if groups is not None:
        codes, labels = _factorize_uniques(groups, "groups")
        if (codes < 0).any():
            raise ValueError("`groups` has missing values; every observation must belong to a group.")
        if POOLED in labels:
            raise ValueError(f"A group is named {POOLED!r}, which is reserved for the pooled row.")

    acc, n_genes = _moments_by_group(pred, true, codes)
    _gene_index(genes, pred, true, n_genes=n_genes)  # validates a given `genes`
    pooled = None
    for m in acc.values():
        pooled = m.merge(pooled)

    # Highest variance first; a stable sort keeps gene order among ties so the set is deterministic.
    hvg = np.argsort(-pooled.m_yy, kind="stable")[: int(n_hvg)]
    rows, index, n_const = [], [], {}
    if labels is not None:
        for g, name in enumerate(labels):
            m = acc[g]
            rows.append(_summarise(m.pearson(), m.n, int(top_k), hvg))
            index.append(name)
            n_const[name] = int(m.constant().sum())
    rows.append(_summarise(pooled.pearson(), pooled.n, int(top_k), hvg))
    index.append(POOLED)
    n_const[POOLED] = int(pooled.constant().sum())

    if any(n_const.values()):
        worst = max(n_const, key=n_const.get)
        warnings.warn(
            f"Genes constant in `pred` or `true` have no Pearson r and are left out: {n_const[POOLED]} of "
            f"{n_genes} pooled, at most {n_const[worst]} in one row ({worst!r}).",
            UserWarning,
            stacklevel=2,
        )
    out = pd.DataFrame(rows, index=pd.Index(index, name="group"))
    out.attrs.update(top_k=int(top_k), n_hvg=int(n_hvg))
    return out
