"""Put an AnnData on a fixed gene panel (the union of all training panels, or a model's panel)."""

from __future__ import annotations

import copy as _copy
from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from storm._logging import logger

from ._validate import check_gene_overlap, check_unique_names, get_matrix


def _on_panel(X, src: np.ndarray, dst: np.ndarray, n_genes: int):
    """Columns ``src`` of X moved to columns ``dst`` of an (n_obs, n_genes) matrix, zeros elsewhere."""
    if sparse.issparse(X):
        # a 0/1 selection matrix moves the columns without densifying
        select = sparse.csr_matrix((np.ones(len(src), dtype=X.dtype), (src, dst)), shape=(X.shape[1], n_genes))
        return sparse.csr_matrix(sparse.csr_matrix(X) @ select)
    X = np.asarray(X)
    out = np.zeros((X.shape[0], n_genes), dtype=X.dtype)
    out[:, dst] = X[:, src]
    return out


def harmonize_genes(adata: AnnData, genes: Sequence[str], *, layer: str | None = None) -> AnnData:
    """Return a new AnnData whose genes are exactly ``genes``, in that order.

    Values are copied where ``adata`` measures the gene and 0 elsewhere; ``var['measured']`` tells the two apart so
    a model can leave unmeasured genes out of its loss (the paper's union-of-panels target).

    Parameters
    ----------
    adata
        Spots × genes; ``var_names`` gene symbols (or whatever ``genes`` uses).
    genes
        The target panel: unique gene names.
    layer
        Take the values from this layer instead of ``.X``.

    Returns
    -------
    A new AnnData (``adata`` is not modified) with

    - ``X``: values of ``adata.X`` (or ``layer``) on the panel, same dtype and sparsity
    - ``layers``: every layer of ``adata``, on the panel the same way
    - ``obs``, ``obsm``, ``obsp``, ``uns``: copies of ``adata``'s (varm/varp are dropped: they are per gene)
    - ``var['measured']``: bool, whether ``adata`` measures the gene
    - ``var['gene_ids']``: carried over where ``adata`` has it ('' for unmeasured genes)
    - ``uns['storm_panel']``: ``n_genes`` (panel size), ``n_measured``, ``coverage`` (fraction of the panel
      measured), ``n_source_genes``, ``source_used`` (fraction of ``adata``'s genes that are on the panel) and
      ``source_layer``

    Raises
    ------
    ValueError
        Duplicated or empty ``genes``, duplicated names in ``adata``, or no gene in common.
    """
    if isinstance(genes, str):
        raise ValueError("`genes` must be a list of gene names, not one string.")
    panel = pd.Index([str(g) for g in genes])
    if len(panel) == 0:
        raise ValueError("`genes` is empty; pass the gene names of the target panel.")
    if not panel.is_unique:
        dup = panel[panel.duplicated()].unique()
        raise ValueError(f"`genes` repeats {len(dup)} names (e.g. {list(dup[:3])}); pass each gene once.")
    check_unique_names(adata)
    X = get_matrix(adata, layer)
    measured = check_gene_overlap(adata.var_names, panel)

    dst = np.flatnonzero(measured)
    src = adata.var_names.get_indexer(panel[dst])
    var = pd.DataFrame(index=panel)
    var["measured"] = measured
    if "gene_ids" in adata.var:
        ids = np.full(len(panel), "", dtype=object)
        ids[dst] = adata.var["gene_ids"].astype(str).to_numpy()[src]
        var["gene_ids"] = ids
    out = AnnData(
        X=_on_panel(X, src, dst, len(panel)),
        obs=adata.obs.copy(),
        var=var,
        obsm={k: v.copy() for k, v in adata.obsm.items()},
        obsp={k: v.copy() for k, v in adata.obsp.items()},
        layers={k: _on_panel(v, src, dst, len(panel)) for k, v in adata.layers.items()},
        uns=_copy.deepcopy(dict(adata.uns)),
    )
    n_measured = int(measured.sum())
    out.uns["storm_panel"] = {
        "n_genes": len(panel),
        "n_measured": n_measured,
        "coverage": n_measured / len(panel),
        "n_source_genes": int(adata.n_vars),
        "source_used": n_measured / adata.n_vars,
        "source_layer": layer,
    }
    logger.info(
        f"harmonize_genes: {n_measured:,} of {len(panel):,} panel genes measured ({n_measured / len(panel):.1%}); "
        f"{n_measured:,} of the data's {adata.n_vars:,} genes used ({n_measured / adata.n_vars:.1%}); "
        "added var['measured'] and uns['storm_panel']"
    )
    return out
