"""Plots (:mod:`storm.pl`): spatial maps over the H&E, embeddings, expression, clinical."""

from ._clinical import biomarker_comparison, forest, km, roc
from ._domains import domains
from ._embedding import embedding
from ._expression import expression_maps, gene_correlations
from ._markers import domain_markers
from ._risk_map import risk_map
from ._spatial import spatial

__all__ = [
    "biomarker_comparison",
    "domain_markers",
    "domains",
    "embedding",
    "expression_maps",
    "forest",
    "gene_correlations",
    "km",
    "risk_map",
    "roc",
    "spatial",
]
