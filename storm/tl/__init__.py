"""Tools (:mod:`storm.tl`): embed spots with STORM, find spatial domains, their marker genes and enriched gene sets.

The usual path: :func:`embed` → :func:`domains` → :func:`domain_markers` → :func:`enrichment`, then
:func:`storm.pl.domains` and :func:`storm.pl.domain_markers`.
"""

from storm.clinical._signatures import signature_score

from ._domains import domains
from ._embed import embed
from ._enrichment import enrichment, gene_set_collections, load_gene_sets
from ._markers import domain_markers

__all__ = [
    "domain_markers",
    "domains",
    "embed",
    "enrichment",
    "gene_set_collections",
    "load_gene_sets",
    "signature_score",
]
