"""Ensembl gene id → HGNC symbol, from the GENCODE v50 + HGNC table shipped in the ``tmeimmune`` wheel."""

from __future__ import annotations

from collections.abc import Iterable
from functools import cache

import numpy as np
import pandas as pd

from ._fetch import fetch

GENE_ANNOTATION = "tmeimmune/TMEImmune/data/gene_annotation.npz"


@cache
def _ensembl_symbol_table() -> pd.Series:
    with np.load(fetch(GENE_ANNOTATION), allow_pickle=False) as npz:
        table = pd.DataFrame({"ensembl": npz["ensembl"], "symbol": npz["symbol"], "length": npz["length"]})
    table = table[(table["ensembl"] != "") & (table["symbol"] != "") & (table["symbol"] != table["ensembl"])]
    # 702 ids have two symbols: the GENCODE row (with a transcript length) and a newer HGNC name (without one, e.g.
    # IL1RL2 → IL36R). Keep the GENCODE name: it is the one older data sets and published gene panels use.
    table = table.assign(newer=table["length"].isna()).sort_values(["ensembl", "newer"], kind="stable")
    table = table.drop_duplicates("ensembl")
    return pd.Series(table["symbol"].to_numpy(), index=pd.Index(table["ensembl"].to_numpy()), name="symbol")


def ensembl_to_symbol(ids: Iterable[str], *, keep_unmapped: bool = True) -> np.ndarray:
    """Map human Ensembl gene ids to HGNC symbols.

    Parameters
    ----------
    ids
        Ensembl gene ids (``ENSG…``), with or without a version suffix (``.13``).
    keep_unmapped
        Where no symbol is known, return the id itself (version stripped); otherwise ``None``.

    Returns
    -------
    An object array of symbols, one per id (not made unique: two ids can share a symbol).

    Notes
    -----
    The table is ``gene_annotation.npz`` of the ``tmeimmune`` 2.0.0 wheel (GENCODE v50 + HGNC). Where an id has
    both its GENCODE name and a newer HGNC name, the GENCODE name is used. About 95% of DLPFC's genes map.
    """
    table = _ensembl_symbol_table()
    stripped = pd.Index([str(i).split(".", 1)[0] for i in ids])
    symbols = stripped.map(table).to_numpy(dtype=object)
    missing = pd.isna(symbols)
    symbols[missing] = stripped[missing] if keep_unmapped else None
    return symbols
