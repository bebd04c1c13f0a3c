"""``from_data``: storm-mini's network set up on the slides themselves, untrained, several initialisations averaged.

Measured on sections outside storm-mini's corpus (``benchmarks/domains_folds.py``), the pretrained model finds spatial
domains worse than the same network built on the section and not trained: its gene embeddings start from the
section's own PCA loadings, and the window of each spot is read through a transformer at random initialisation. One
such initialisation is a random feature map, and its domains vary with the seed; the mean embedding of five scores
higher on the DLPFC and the HER2ST sections alike (``benchmarks/domains_from_data.py``: mean ARI over the seven
labelled sections 0.309 against 0.248 for one, three seed sets each; DLPFC 0.499 against 0.431).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from storm._logging import logger
from storm.models._coverage import MIN_GENE_COVERAGE

if TYPE_CHECKING:
    from anndata import AnnData

    from storm.models._model import StormModel

__all__ = ["DataEnsemble", "from_data"]


class DataEnsemble:
    """Untrained STORM networks set up on the same slides: :meth:`~storm.models.DataEnsemble.embed` returns their mean.

    Built by :func:`from_data`; :func:`storm.tl.embed` builds one for ``model="from_data"``.

    Attributes
    ----------
    members
        The :class:`~storm.models.StormModel` of each initialisation (the same genes, gene embeddings from the
        same PCA loadings; the rest of each network at its own random initialisation).
    genes
        The genes they read (the slides' most variable ones).
    name
        ``"from_data"``, recorded by :func:`storm.tl.embed`.
    """

    name = "from_data"

    def __init__(self, members: Sequence[StormModel]) -> None:
        if not members:
            raise ValueError("A DataEnsemble needs at least one model.")
        self.members = list(members)
        self.genes = list(self.members[0].genes)

    @property
    def version(self) -> str:
        """The storm version that set the members up."""
        from storm._version import __version__

        return __version__

    def gene_coverage(self, adata: AnnData) -> dict[str, Any]:
        """Return the members' :meth:`~storm.models.StormModel.gene_coverage` (they read the same genes)."""
        return self.members[0].gene_coverage(adata)

    def embed(
        self,
        adata: AnnData,
        *,
        mode: str = "expression",
        batch_size: int = 256,
        accelerator: str = "auto",
        library_key: str = "library_id",
        context: bool = True,
        niche: bool = False,
        min_gene_coverage: float = MIN_GENE_COVERAGE,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Return the mean of the members' :meth:`~storm.models.StormModel.embed` (and of their niches: ``niche``).

        The slides are prepared once (windows, normalised counts): the members read the same genes with the same
        settings and differ only in their weights.
        """
        from storm.models._coverage import check_gene_coverage

        check_gene_coverage(self.gene_coverage(adata), min_gene_coverage)
        slides = self.members[0].prepare(adata, mode=mode, library_key=library_key)
        total: list[np.ndarray] = []  # a running sum: one member's output in memory at a time, not all of them
        for m in self.members:
            out = m.embed_prepared(
                slides,
                adata.n_obs,
                batch_size=batch_size,
                accelerator=accelerator,
                context=context,
                niche=niche,
                progress=False,
            )
            parts = list(out) if niche else [out]
            total = parts if not total else [t + p for t, p in zip(total, parts, strict=True)]
        means = [t / len(self.members) for t in total]
        return (means[0], means[1]) if niche else means[0]


def from_data(
    adata: AnnData | Sequence[AnnData],
    *,
    n_top_genes: int = 3000,
    n_models: int = 5,
    target_sum: float | Literal["median"] = 1e4,
    library_key: str = "library_id",
    random_state: int = 0,
) -> DataEnsemble:
    """Set storm-mini's network up ``n_models`` times on the slides themselves, untrained (see the module docstring).

    Parameters
    ----------
    adata
        The slides (an AnnData or a list: one gene list and one embedding space for all of them).
    n_top_genes
        The slides' most variable genes each network reads (:meth:`storm.models.StormModel.setup`).
    n_models
        Initialisations averaged; seeds ``random_state``, ``random_state + 1``, ….
    target_sum
        Counts each spot is scaled to before ``log1p``, or ``"median"``: the median total of the slides' spots with
        any count (scanpy's ``normalize_total`` default). 10⁴ finds better domains on the labelled Visium and legacy
        ST sections here; the median gives cell types better separated on the MERFISH cells, whose values are
        counts divided by cell volume, and slightly worse on Xenium's (``benchmarks/from_data_inputs.py``).
    library_key
        Column of ``obs`` with the slide id.
    random_state
        Seed of the first initialisation.

    Returns
    -------
    DataEnsemble
        Its :meth:`~DataEnsemble.embed` is what :func:`storm.tl.embed` calls.

    Raises
    ------
    ValueError
        ``n_models`` or ``n_top_genes`` not a positive integer, ``target_sum`` neither positive nor ``"median"``,
        or data :meth:`~storm.models.StormModel.setup` refuses.
    """
    from storm.models._model import StormModel

    for name, value in (("n_models", n_models), ("n_top_genes", n_top_genes)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    adatas = [adata] if not isinstance(adata, Sequence) else list(adata)
    target = _target_sum(adatas, target_sum)
    common = {"target_sum": target, "library_key": library_key}
    first = StormModel.setup(adatas, n_top_genes=int(n_top_genes), random_state=random_state, **common)
    # the gene choice does not depend on the seed: the other members reuse it instead of choosing it again
    members = [first] + [
        StormModel.setup(adatas, genes=first.genes, random_state=random_state + i, **common)
        for i in range(1, int(n_models))
    ]
    logger.info(
        f"from_data: {n_models} untrained network(s) set up on {len(adatas)} AnnData, {len(members[0].genes):,} genes, "
        f"counts scaled to {target:g} per spot"
    )
    return DataEnsemble(members)


def _target_sum(adatas: list[AnnData], target_sum: float | str) -> float:
    """Return the counts per spot before ``log1p``: ``target_sum``, or the median total of the spots with any count."""
    if isinstance(target_sum, str):
        if target_sum != "median":
            raise ValueError(f"`target_sum` must be a positive number or 'median', got {target_sum!r}.")
        totals = np.concatenate([np.asarray(a.X.sum(axis=1), dtype=np.float64).ravel() for a in adatas])
        totals = totals[totals > 0]
        if totals.size == 0:
            raise ValueError("target_sum='median': no spot has any count; pass raw counts in `.X`.")
        return float(np.median(totals))
    if isinstance(target_sum, bool) or not isinstance(target_sum, int | float | np.number) or not target_sum > 0:
        raise ValueError(f"`target_sum` must be a positive number or 'median', got {target_sum!r}.")
    return float(target_sum)
