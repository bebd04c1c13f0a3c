"""How much of a model's gene list a data set covers, and what an embedding of too little of it is refused for."""

from __future__ import annotations

from storm._logging import logger

#: Shares of the model's gene list (``gene_coverage['fraction_of_model']``) below which :meth:`StormModel.embed`
#: warns and, by default, refuses. Measured with storm-mini (1,974 genes), zero-shot: the HER2ST sections cover 91–93 %,
#: DLPFC 47 %, the squidpy Visium crop 17 % and CosMx NSCLC 11 % (no warning); Xenium breast (313 genes) 3.9 % and
#: MERFISH preoptic (155 genes) 1.6 % are embedded with a warning, as fig. 4 does before adapting the model; 3 genes
#: (0.15 %) are refused. An embedding then rests on one gene in a hundred of those the model was trained to read.
WARN_GENE_COVERAGE = 0.10
MIN_GENE_COVERAGE = 0.01


def check_gene_coverage(coverage: dict, min_gene_coverage: float) -> None:
    """Refuse an embedding from below ``min_gene_coverage`` of the model's genes; warn below :data:`WARN_GENE_COVERAGE`.

    ``coverage``: :func:`storm.models.panel_coverage` of the data against the model's gene list.

    Raises
    ------
    ValueError
        ``min_gene_coverage`` not in [0, 1], or the data cover less than that share of the model's genes.
    """
    if not 0.0 <= min_gene_coverage <= 1.0:
        raise ValueError(
            f"`min_gene_coverage` must lie in [0, 1] (a share of the model's genes), got {min_gene_coverage!r}."
        )
    share, n_used, n_model = coverage["fraction_of_model"], coverage["n_used"], coverage["n_model_genes"]
    if n_used == 0:
        return  # no gene in common at all: storm.models.prepare_slides says so, with examples of both gene lists
    remedy = (
        "adapt the model to this panel (`storm.train.adapt(model, adata)`, self-supervised: it appends the panel's "
        "genes), use mode='image' where the slides have an H&E image"
    )
    if share < min_gene_coverage:
        raise ValueError(
            f"The data hold {n_used:,} of the model's {n_model:,} genes ({share:.2%}), below min_gene_coverage = "
            f"{min_gene_coverage:.2%}: an embedding from so few of the genes it reads says little. Check that "
            f"`adata.var_names` are gene symbols of the model's species; {remedy}, or pass min_gene_coverage=0 to "
            "embed anyway."
        )
    if share < WARN_GENE_COVERAGE:
        logger.warning(
            f"The data hold {n_used:,} of the model's {n_model:,} genes ({share:.1%}, below {WARN_GENE_COVERAGE:.0%}):"
            f" the zero-shot embedding reads only those. To read the whole panel, {remedy.split(', use')[0]}."
        )
