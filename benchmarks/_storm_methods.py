"""In-process rows of the domain benchmark: storm's default pipeline, storm-mini's ablations, and smoothed PCA.

Each method takes one section's AnnData (raw counts in ``.X``, ``obsm['spatial']``, ``uns['spatial']``; a copy the
method may modify) and the number of domains, and returns one label per spot. storm's rows use the public API only.
``benchmarks/domains.py`` imports :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scanpy as sc
from anndata import AnnData
from sklearn.cluster import KMeans
from sklearn.neighbors import NearestNeighbors

import storm


def _domains(adata: AnnData, n_domains: int, **kwargs) -> np.ndarray:
    storm.tl.domains(adata, n_domains, **kwargs)
    return adata.obs["storm_domains"].to_numpy()


def storm_default(adata: AnnData, n_domains: int) -> np.ndarray:
    """The pipeline a user runs: ``storm.tl.embed`` then ``storm.tl.domains``, all defaults.

    With expression alone (no image on these sections is fine enough for the patches) ``embed``'s default model is
    ``"from_data"``: the network set up on the section, untrained; no model trained on the section is involved.
    """
    storm.tl.embed(adata)
    return _domains(adata, n_domains)


def _storm_mini():
    from storm.models import StormModel

    return StormModel.from_pretrained()


def storm_mini(adata: AnnData, n_domains: int) -> np.ndarray:
    """Ablation: the shipped storm-mini, whose pretraining corpus holds these seven sections (not their labels)."""
    storm.tl.embed(adata, _storm_mini())
    return _domains(adata, n_domains)


def storm_mini_paper_readout(adata: AnnData, n_domains: int) -> np.ndarray:
    """storm-mini with the paper's protocol: K-means on the centre-spot embedding (no niche readout, no PCA)."""
    storm.tl.embed(adata, _storm_mini())
    return _domains(adata, n_domains, use_rep="X_storm", method="kmeans", n_pcs=None)


def storm_mini_no_context(adata: AnnData, n_domains: int) -> np.ndarray:
    """storm-mini, each spot's window holding only the spot itself (same weights, no neighbours)."""
    storm.tl.embed(adata, _storm_mini(), context=False)
    return _domains(adata, n_domains)


def smoothed_pca(adata: AnnData, n_domains: int, *, n_neighbors: int = 24) -> np.ndarray:
    """Baseline: log-normalised 2,000 HVGs → PCA 50 → mean over the spot and its 24 nearest spots → K-means.

    24 neighbours is the size of storm's window (5 × 5 minus the centre), so both see the same neighbourhood.
    """
    a = adata.copy()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    sc.pp.highly_variable_genes(a, n_top_genes=2000)
    sc.pp.pca(a, n_comps=50, mask_var="highly_variable", random_state=0)
    _, index = NearestNeighbors(n_neighbors=n_neighbors + 1).fit(a.obsm["spatial"]).kneighbors(a.obsm["spatial"])
    smoothed = a.obsm["X_pca"][index].mean(axis=1)
    return KMeans(n_domains, n_init=10, random_state=0).fit_predict(smoothed).astype(str)


#: Row name → method. The storm-mini rows score sections of its own pretraining corpus; their names say so.
METHODS: dict[str, Callable[[AnnData, int], np.ndarray]] = {
    "storm": storm_default,
    "storm-mini (pretrained on these sections)": storm_mini,
    "storm-mini (pretrained on these sections), paper readout: centre token, K-means": storm_mini_paper_readout,
    "storm-mini (pretrained on these sections), no spatial context": storm_mini_no_context,
    "smoothed PCA (baseline)": smoothed_pca,
}
