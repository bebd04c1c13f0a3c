"""Read R data files (``.rda``/``.RData``) without R, and Bioconductor SummarizedExperiment objects into AnnData."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from anndata import AnnData

from storm._logging import logger

from ._spatial import require_file

# R's NA_integer_ (and NA of logicals) is the smallest 32-bit integer.
R_NA_INTEGER = np.iinfo(np.int32).min
# Bioconductor S4 containers: their slots are what we need, so keep them as namespaces without a warning.
_S4_CONTAINERS = (
    "SummarizedExperiment",
    "RangedSummarizedExperiment",
    "SimpleAssays",
    "ShallowSimpleListAssays",
    "SimpleList",
    "DFrame",
    "DataFrame",
    "CompressedGRangesList",
)


def _keep_slots(obj: Any, attrs: Mapping[str, Any]) -> Any:
    return obj


def read_rda(path: str | os.PathLike) -> dict[str, Any]:
    """Read an R data file (``save()`` output: ``.rda``, ``.RData``) with the ``rdata`` package; no R needed.

    Parameters
    ----------
    path
        The file (gzip, bzip2 or xz compressed, as R writes them).

    Returns
    -------
    ``{object name: value}``: data frames become :class:`pandas.DataFrame`, matrices with dimnames
    :class:`xarray.DataArray`, vectors numpy arrays (with NA: :class:`numpy.ma.MaskedArray` for logicals and
    integers, NaN for doubles, None for strings), lists dicts, and S4 objects :class:`types.SimpleNamespace` of their
    slots. Use :func:`r_to_pandas` to turn a masked vector into a pandas column that keeps NA missing.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        The file is not an R data file.

    References
    ----------
    Ramos-Carreño C. rdata: read R datasets from Python. https://github.com/vnmabus/rdata
    """
    import rdata

    path = require_file(path, "R data file", "Expected an .rda/.RData file written by R's save().")
    constructors = {**rdata.conversion.DEFAULT_CLASS_MAP, **dict.fromkeys(_S4_CONTAINERS, _keep_slots)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            converted = rdata.read_rda(path, constructor_dict=constructors)
        except (ValueError, NotImplementedError, EOFError, OSError) as err:
            raise ValueError(f"{path} is not an R data file rdata can read ({type(err).__name__}: {err}).") from err
    for w in caught:
        # rdata falls back to the underlying R object for classes it has no constructor for: that is what we want.
        if "Missing constructor for R class" in str(w.message):
            logger.debug("%s: %s", path.name, w.message)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return converted


def r_to_pandas(values: Any) -> pd.Series | pd.Categorical | np.ndarray:
    """Convert one R vector as read by ``rdata`` into a pandas-ready column in which R's NA stays missing.

    - logical: an all-NA vector (R's untyped ``NA``) becomes float NaN; otherwise pandas' nullable ``boolean``, so
      NA is ``<NA>`` and never ``True`` (the masked entries' stored value);
    - integer: nullable ``Int64`` (masked entries, or R's ``NA_integer_`` sentinel, become ``<NA>``);
    - double: float64 with NaN; character: object with NaN for NA; factors stay categorical.

    Parameters
    ----------
    values
        A vector from :func:`read_rda`: numpy array, :class:`numpy.ma.MaskedArray` or categorical.

    Returns
    -------
    An array or pandas extension array of the same length.
    """
    if isinstance(values, pd.Categorical):
        return values
    if isinstance(values, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(values)
        data = np.asarray(values.data)
    else:
        data = np.asarray(values)
        mask = np.zeros(data.shape, dtype=bool)
        if data.dtype.kind in "iu" and data.dtype.itemsize == 4:
            mask = data == R_NA_INTEGER
    if data.dtype == bool:
        if mask.all():
            return np.full(data.shape, np.nan)
        logical = pd.array(data, dtype="boolean")
        logical[mask] = pd.NA
        return logical
    if data.dtype.kind in "iu":
        arr = pd.array(data.astype(np.int64), dtype="Int64")
        arr[mask] = pd.NA
        return arr
    if data.dtype.kind == "f":
        out = data.astype(np.float64, copy=True)
        out[mask] = np.nan
        return out
    out = data.astype(object)
    out[mask | pd.isna(out)] = np.nan
    return out


def _frame(list_data: Mapping[str, Any], index: Any, n: int) -> pd.DataFrame:
    columns = {str(k): r_to_pandas(v) for k, v in list_data.items()}
    idx = pd.Index(np.asarray(index).astype(str)) if index is not None and np.ndim(index) == 1 else pd.RangeIndex(n)
    frame = pd.DataFrame(columns, index=idx) if columns else pd.DataFrame(index=idx)
    frame.index = frame.index.astype(str)
    return frame


def _matrix(value: Any) -> tuple[np.ndarray, pd.Index | None, pd.Index | None]:
    """Features × samples matrix of an assay, with its row and column names where R kept them."""
    if isinstance(value, pd.DataFrame):
        return value.to_numpy(), value.index, value.columns
    if hasattr(value, "dims") and hasattr(value, "coords"):  # xarray.DataArray
        rows, cols = (value.coords[d].values if d in value.coords else None for d in value.dims)
        return np.asarray(value.values), rows, cols
    return np.asarray(value), None, None


def read_summarized_experiment(
    source: str | os.PathLike | SimpleNamespace,
    *,
    name: str | None = None,
    assay: str | None = None,
) -> AnnData:
    """Convert a Bioconductor ``SummarizedExperiment`` (read from an ``.rda`` file by ``rdata``) into AnnData.

    Parameters
    ----------
    source
        An ``.rda``/``.RData`` file holding the object, or the object as returned by :func:`read_rda`.
    name
        Which object of the file; needed only when it holds several.
    assay
        Assay that becomes ``.X``; default: the first. The other assays become layers.

    Returns
    -------
    AnnData with samples as observations (the transpose of R's features × samples):

    - ``.X``: the assay (float64, dense), ``.layers[name]`` the other assays;
    - ``.obs``: ``colData`` (``.colData.listData``), one column per R column under its R name, NA kept missing
      (see :func:`r_to_pandas`);
    - ``.var``: ``rowData`` (``.elementMetadata.listData``) where present, indexed by the row names;
    - ``.uns['R_assay']``: the name of the assay in ``.X``.

    Raises
    ------
    FileNotFoundError
        No file at ``source``.
    ValueError
        The object is not a SummarizedExperiment, or ``name``/``assay`` do not exist.

    References
    ----------
    Morgan M et al. SummarizedExperiment: a container for experiment data (Bioconductor).
    """
    se = source
    if not isinstance(source, SimpleNamespace):
        objects = read_rda(source)
        if name is None:
            if len(objects) != 1:
                raise ValueError(f"{source} holds {len(objects)} objects ({list(objects)}): pass name=.")
            (name,) = objects
        if name not in objects:
            raise ValueError(f"{source} holds no object {name!r}; it holds {list(objects)}.")
        se = objects[name]
    if not (isinstance(se, SimpleNamespace) and hasattr(se, "assays") and hasattr(se, "colData")):
        raise ValueError("Not a SummarizedExperiment: expected an S4 object with `assays` and `colData` slots.")

    assays = se.assays.data.listData
    if not assays:
        raise ValueError("The SummarizedExperiment has no assays.")
    assay_names = [str(a) for a in assays]
    assay = assay if assay is not None else assay_names[0]
    if assay not in assay_names:
        raise ValueError(f"No assay {assay!r}; the SummarizedExperiment has {assay_names}.")
    by_name = dict(zip(assay_names, assays.values(), strict=True))
    matrix, rows, cols = _matrix(by_name[assay])
    n_features, n_samples = matrix.shape

    names = getattr(se, "NAMES", None)
    if rows is None and names is not None and np.ndim(names) == 1:
        rows = names
    col_data = se.colData
    cols = cols if cols is not None else getattr(col_data, "rownames", None)
    obs = _frame(getattr(col_data, "listData", {}) or {}, cols, n_samples)

    row_meta = getattr(se, "elementMetadata", None)
    row_list = getattr(row_meta, "listData", None) or {}
    var = _frame(row_list, rows, n_features) if row_list else _frame({}, rows, n_features)

    adata = AnnData(X=np.asarray(matrix, dtype=np.float64).T, obs=obs, var=var)
    for other in assay_names:
        if other != assay:
            adata.layers[other] = np.asarray(_matrix(by_name[other])[0], dtype=np.float64).T
    adata.uns["R_assay"] = assay
    return adata
