"""Plots (:mod:`storm.pl`): spatial maps over the H&E, embeddings, expression, clinical."""

from ._clinical import biomarker_comparison, forest, km, roc
from ._domains import domains
from ._embedding import embedding
from ._markers import domain_markers
from ._risk_map import risk_map
from ._spatial import spatial

__all__ = [
    "biomarker_comparison",
    "domain_markers",
    "domains",
    "embedding",
    "forest",
    "km",
    "risk_map",
    "roc",
    "spatial",
]
