"""Tools (:mod:`storm.tl`): embed spots with STORM, find spatial domains, their marker genes and enriched gene sets.

The usual path: :func:`embed` → :func:`domains` → :func:`domain_markers` → :func:`enrichment`, then
:func:`storm.pl.domains` and :func:`storm.pl.domain_markers`.
"""

from storm.clinical._signatures import signature_score

from ._cohort import cohort_features, read_cohort, read_cohort_features
from ._domains import domains
from ._embed import embed
from ._enrichment import enrichment, gene_set_collections, load_gene_sets
from ._expression_features import encoder_identity
from ._expression_head import train_expression_head
from ._markers import domain_markers
from ._predict_expression import predict_expression
from ._slide import SlideRiskPrediction, fit_slide_model, predict_slide_risk, slide_features, tile_attributions
from ._virtual_st import virtual_st

__all__ = [
    "SlideRiskPrediction",
    "cohort_features",
    "domain_markers",
    "domains",
    "embed",
    "encoder_identity",
    "enrichment",
    "fit_slide_model",
    "gene_set_collections",
    "load_gene_sets",
    "predict_expression",
    "predict_slide_risk",
    "read_cohort",
    "read_cohort_features",
    "signature_score",
    "slide_features",
    "tile_attributions",
    "train_expression_head",
    "virtual_st",
]
