"""``storm.tl.enrichment``: over-representation of gene sets among each domain's markers (Fisher's exact test)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from importlib import resources
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import stats

from storm._logging import logger
from storm.tl._utils import elapsed, start_timer

COLUMNS = [
    "domain",
    "gene_set",
    "overlap",
    "set_size",
    "n_markers",
    "n_background",
    "odds_ratio",
    "pval",
    "fdr",
    "genes",
]
_QUERY = "query"


#: Collections resolved through storm's data registry (cache → mirror → verified download), not shipped in the repo.
REGISTRY_COLLECTIONS = {"msigdb_c2": "tmeimmune/TMEImmune/data/c2.all.v7.2.symbols.gmt"}


def _shipped_collections() -> list[str]:
    folder = resources.files("storm.tl") / "genesets"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def gene_set_collections() -> list[str]:
    """Name the gene-set collections usable as ``gene_sets=`` of :func:`enrichment`.

    Returns
    -------
    Sorted names: ``"msigdb_c2"`` (MSigDB C2 v7.2 curated sets: 5,500+ Reactome, WikiPathways, BioCarta, PID, KEGG
    and published signatures; fetched once through the data registry and cached, verified by sha256),
    ``"celltype"`` (brain and breast cell-type markers) and ``"signatures"`` (published immune and cell-cycle
    signatures), both shipped with storm. Each shipped file holds its sources, licence and provenance: see
    :func:`load_gene_sets` with ``with_metadata=True``.
    """
    return sorted([*_shipped_collections(), *REGISTRY_COLLECTIONS])


def _read_gmt(path: Path) -> dict[str, list[str]]:
    """GMT: one set per line, ``name <TAB> description <TAB> gene <TAB> gene …`` (MSigDB, Enrichr)."""
    sets: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            fields = [f.strip() for f in line.rstrip("\n\r").split("\t")]
            if not fields or not fields[0] or fields[0].startswith("#"):
                continue
            if len(fields) < 3:
                raise ValueError(f"{path}, line {number}: a GMT line needs a name, a description and genes.")
            sets[fields[0]] = [g for g in fields[2:] if g]
    if not sets:
        raise ValueError(f"{path} holds no gene set; expected GMT lines `name<TAB>description<TAB>genes…`.")
    return sets


def load_gene_sets(name_or_path: str | PathLike, *, with_metadata: bool = False) -> dict[str, list[str]] | dict:
    """Load a gene-set collection: one shipped with storm by name, or a GMT / JSON file.

    Parameters
    ----------
    name_or_path
        A name of :func:`gene_set_collections`, or a path to a ``.gmt`` file or a JSON file mapping set names to gene
        lists (or in storm's layout, ``{"sets": {name: {"genes": [...]}}}``).
    with_metadata
        Return the whole record of a shipped collection (``title``, ``source``, ``references``, ``license``,
        ``provenance``, ``sets``) instead of ``{set name: genes}``.

    Returns
    -------
    ``{set name: [gene symbols]}``, or the collection's record with ``with_metadata=True``.
    """
    shipped = gene_set_collections()
    if isinstance(name_or_path, str) and name_or_path in REGISTRY_COLLECTIONS:
        from storm.datasets import fetch, registry

        entry = registry()[REGISTRY_COLLECTIONS[name_or_path]]
        sets = _read_gmt(fetch(entry.name))
        if not with_metadata:
            return sets
        return {
            "title": name_or_path,
            "source": entry.url,
            "references": [entry.citation],
            "license": entry.license,
            "provenance": f"data registry entry {entry.name} (sha256 {entry.sha256})",
            "sets": {k: {"genes": v} for k, v in sets.items()},
        }
    if isinstance(name_or_path, str) and name_or_path in shipped:
        record = json.loads((resources.files("storm.tl") / "genesets" / f"{name_or_path}.json").read_text("utf-8"))
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise FileNotFoundError(
                f"No gene-set collection {str(name_or_path)!r}: use one of {shipped} or a path to a .gmt/.json file."
            )
        if path.suffix.lower() != ".json":
            sets = _read_gmt(path)
            return {"source": str(path), "sets": {k: {"genes": v} for k, v in sets.items()}} if with_metadata else sets
        record = json.loads(path.read_text("utf-8"))
        if "sets" not in record:
            record = {"source": str(path), "sets": record}
    if with_metadata:
        return record
    return {k: list(v["genes"] if isinstance(v, Mapping) else v) for k, v in record["sets"].items()}


def _queries(markers_or_genes) -> tuple[dict[str, list[str]], tuple[str, ...] | None, list[str]]:
    """Split the input into {domain: genes}, the background it carries (if any) and the domain order."""
    if isinstance(markers_or_genes, pd.DataFrame):
        missing = {"domain", "gene"} - set(markers_or_genes.columns)
        if missing:
            raise ValueError(
                f"The markers table lacks column(s) {sorted(missing)}; pass the output of storm.tl.domain_markers, "
                "a {domain: genes} dict or a list of genes."
            )
        domain = markers_or_genes["domain"]
        order = (
            [str(c) for c in domain.cat.categories]
            if isinstance(domain.dtype, pd.CategoricalDtype)
            else [str(d) for d in pd.unique(domain)]
        )
        groups = {d: [] for d in order}
        for d, g in zip(domain.astype(str), markers_or_genes["gene"].astype(str), strict=True):
            groups[d].append(g)
        background = markers_or_genes.attrs.get("background")
        return groups, (tuple(background) if background is not None else None), order
    if isinstance(markers_or_genes, Mapping):
        groups = {str(k): [str(g) for g in v] for k, v in markers_or_genes.items()}
        return groups, None, list(groups)
    if isinstance(markers_or_genes, Iterable) and not isinstance(markers_or_genes, str):
        return {_QUERY: [str(g) for g in markers_or_genes]}, None, [_QUERY]
    raise ValueError(
        "Expected a markers DataFrame (storm.tl.domain_markers), a {domain: genes} dict or a list of genes, got "
        f"{type(markers_or_genes).__name__}."
    )


def _background(background, carried: tuple[str, ...] | None, groups, sets) -> pd.Index:
    if background is None and carried is not None:
        return pd.Index(carried).unique()
    if background is None:
        genes = {g for v in groups.values() for g in v} | {g for v in sets.values() for g in v}
        logger.warning(
            "enrichment: no background given; using the union of the query genes and the gene sets "
            f"({len(genes)} genes). Pass `background=adata` (the genes tested) for a fair test."
        )
        return pd.Index(sorted(genes))
    if isinstance(background, AnnData):
        return pd.Index(background.var_names.astype(str)).unique()
    if isinstance(background, str) or not isinstance(background, Iterable):
        raise ValueError("`background` must be an AnnData (its var_names) or a list of gene symbols.")
    return pd.Index([str(g) for g in background]).unique()


def fisher_greater(overlap: int, n_markers: int, set_size: int, n_background: int) -> tuple[float, float]:
    """One-sided Fisher's exact test of over-representation, and the sample odds ratio.

    The 2×2 table counts background genes by (marker or not) × (in the set or not).
    """
    table = np.array(
        [
            [overlap, n_markers - overlap],
            [set_size - overlap, n_background - n_markers - set_size + overlap],
        ]
    )
    res = stats.fisher_exact(table, alternative="greater")
    return float(res.statistic), float(res.pvalue)


def enrichment(
    markers_or_genes: pd.DataFrame | Mapping[str, Iterable[str]] | Iterable[str],
    *,
    gene_sets: str | PathLike | Mapping[str, Iterable[str]] = "msigdb_c2",
    background: AnnData | Iterable[str] | None = None,
    fdr: float = 0.05,
    min_size: int = 5,
    max_size: int | None = None,
) -> pd.DataFrame:
    """Test which gene sets are over-represented among each domain's marker genes (paper: Fisher's exact, FDR < 0.05).

    For every (domain, gene set) pair, a one-sided Fisher's exact test on the background genes: markers of the domain
    vs. the rest, in the set vs. not. Gene sets are restricted to the background first (sizes count only genes that
    could have been found), and p-values are corrected by Benjamini–Hochberg over all pairs tested.

    Kept rather than decoupler's over-representation analysis, which gives the same p-values on real markers
    (``tests/test_tl_enrichment_decoupler.py``) but neither restricts the sets to the background nor corrects over
    every domain (``mt.query_set``), or reports two-sided p-values of each observation's top-scored features
    (``mt.ora``).

    Parameters
    ----------
    markers_or_genes
        The table of :func:`storm.tl.domain_markers` (columns ``domain``, ``gene``), a ``{domain: genes}`` mapping, or
        one list of genes (reported as domain ``"query"``).
    gene_sets
        ``"msigdb_c2"`` (the default: MSigDB C2 v7.2 curated pathways and signatures, fetched once through the data
        registry), ``"celltype"`` or ``"signatures"`` (shipped with storm; see :func:`storm.tl.gene_set_collections`),
        a path to a GMT (or JSON) file such as MSigDB's ``h.all.*.symbols.gmt``, or a ``{name: genes}`` mapping.
    background
        The genes that could have been markers: an AnnData (its ``var_names``) or a list. Default: the genes tested
        by :func:`storm.tl.domain_markers` (carried in the table's ``attrs``); for a plain list, the union of the
        query and the gene sets, with a warning.
    fdr
        Keep results with Benjamini–Hochberg FDR ≤ this (``1`` keeps every pair with at least one gene in common).
    min_size, max_size
        Test only gene sets with at least ``min_size`` (at most ``max_size``) genes in the background.

    Returns
    -------
    DataFrame, one row per significant (domain, gene set), sorted by domain then p-value, with columns ``domain``,
    ``gene_set``, ``overlap`` (markers in the set), ``set_size`` (set ∩ background), ``n_markers`` (markers in the
    background), ``n_background``, ``odds_ratio`` (sample odds ratio, ``inf`` when every marker is in the set),
    ``pval`` (one-sided Fisher), ``fdr`` (Benjamini–Hochberg) and ``genes`` (the overlapping genes, ``;``-joined).
    ``attrs['n_tests']`` is the number of tests corrected for.

    Raises
    ------
    ValueError
        An input of the wrong kind, an empty background, no gene set of the allowed size, bad thresholds.
    FileNotFoundError
        ``gene_sets`` names neither a shipped collection nor a file.
    """
    start = start_timer()
    if not 0 < fdr <= 1:
        raise ValueError(f"`fdr` must be in (0, 1], got {fdr!r}.")
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"`min_size` must be a positive integer, got {min_size!r}.")
    if max_size is not None and max_size < min_size:
        raise ValueError(f"`max_size` ({max_size}) must be at least `min_size` ({min_size}).")

    groups, carried, order = _queries(markers_or_genes)
    if isinstance(gene_sets, Mapping):
        sets = {str(k): [str(g) for g in v] for k, v in gene_sets.items()}
    else:
        sets = load_gene_sets(gene_sets)
    universe = _background(background, carried, groups, sets)
    if len(universe) == 0:
        raise ValueError("The background is empty.")
    in_universe = set(universe)
    n_background = len(universe)

    restricted = {name: sorted(set(genes) & in_universe) for name, genes in sets.items()}
    restricted = {
        name: genes
        for name, genes in restricted.items()
        if len(genes) >= min_size and (max_size is None or len(genes) <= max_size)
    }
    if not restricted:
        raise ValueError(
            f"No gene set has {min_size}{f'–{max_size}' if max_size else '+'} genes in the background of "
            f"{n_background} genes. Check the gene symbols (human HGNC) or lower `min_size`."
        )

    rows = []
    for domain in order:
        query = set(groups[domain])
        markers = query & in_universe
        dropped = len(query) - len(markers)
        if dropped:
            logger.info(f"enrichment: {dropped} marker(s) of {domain!r} are not in the background and are ignored.")
        if not markers:
            continue
        for name, genes in restricted.items():
            hits = sorted(markers.intersection(genes))
            odds, pval = fisher_greater(len(hits), len(markers), len(genes), n_background)
            rows.append((domain, name, len(hits), len(genes), len(markers), n_background, odds, pval, ";".join(hits)))
    table = pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "fdr"])
    n_tests = len(table)
    table["fdr"] = stats.false_discovery_control(table["pval"].to_numpy(), method="bh") if n_tests else []
    keep = (table["fdr"] <= fdr) & (table["overlap"] > 0)
    table = table[keep].copy()
    table["domain"] = pd.Categorical(table["domain"], categories=order)
    table = table.sort_values(["domain", "pval", "gene_set"], kind="stable")[COLUMNS].reset_index(drop=True)
    table.attrs = {"n_tests": n_tests, "fdr": fdr}
    logger.info(
        f"enrichment: finished ({elapsed(start)}): {len(table)} of {n_tests} (domain, gene set) pairs at FDR ≤ {fdr} "
        f"({len(order)} domain(s) × {len(restricted)} sets, background {n_background} genes)"
    )
    return table
