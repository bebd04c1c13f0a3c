"""Evaluation metrics of the STORM protocols (DESIGN.md §2), on plain arrays: no AnnData needed.

Spatial domains: agreement with an annotation (:func:`nmi`, :func:`ari`, :func:`fmi`, :func:`homogeneity`,
:func:`completeness`), embedding separation (:func:`asw`), spatial continuity (:func:`chaos`, :func:`pas`), all
at once with :func:`clustering_scores`. Cell identity kept by an embedding: :func:`knn_accuracy`. Virtual ST:
:func:`gene_pearson` and :func:`pearson_summary`.
"""

from ._clustering import ari, asw, clustering_scores, completeness, fmi, homogeneity, nmi
from ._knn import knn_accuracy
from ._pearson import gene_pearson, pearson_summary
from ._spatial import chaos, pas

__all__ = [
    "ari",
    "asw",
    "chaos",
    "clustering_scores",
    "completeness",
    "fmi",
    "gene_pearson",
    "homogeneity",
    "knn_accuracy",
    "nmi",
    "pas",
    "pearson_summary",
]
