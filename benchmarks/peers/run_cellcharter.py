"""CellCharter on one section: scVI latent space, neighbourhood aggregation, Gaussian mixture with K components.

Run with ``.peers/cellcharter/bin/python``. CellCharter's standard spatial-transcriptomics pipeline: an scVI model
(scvi-tools defaults, zero-inflated negative binomial, 10 latent dimensions, trained with early stopping) on the raw
counts of all genes; squidpy's spatial graph on the spot lattice (``coord_type='grid'``, 6 neighbours on Visium's
hexagonal lattice, 4 on legacy ST's square one); ``cc.gr.aggregate_neighbors`` (3 layers, mean) of the scVI
representation; ``cc.tl.Cluster`` (GMM, full covariance) with the asked K. Seeds: ``scvi.settings.seed`` and the
GMM's ``random_state`` are ``--seed``.
"""

from __future__ import annotations

import _runner


def fit(adata, n_domains: int, seed: int, notes: list[str]):
    import cellcharter as cc
    import numpy as np
    import scvi
    import squidpy as sq
    import torch

    torch.set_num_threads(int(_runner.os.environ["OMP_NUM_THREADS"]))
    scvi.settings.seed = seed
    adata.layers["counts"] = adata.X.copy()
    scvi.model.SCVI.setup_anndata(adata, layer="counts")
    model = scvi.model.SCVI(adata)
    model.train(early_stopping=True, enable_progress_bar=False, accelerator="cpu")
    adata.obsm["X_scVI"] = model.get_latent_representation(adata).astype(np.float32)
    epochs = len(model.history["elbo_train"])
    n_neighs = 6 if adata.uns.get("platform") == "visium" else 4
    sq.gr.spatial_neighbors(adata, coord_type="grid", n_neighs=n_neighs, spatial_key="spatial")
    cc.gr.aggregate_neighbors(adata, n_layers=3, aggregations="mean", use_rep="X_scVI", out_key="X_cellcharter")
    gmm = cc.tl.Cluster(n_clusters=n_domains, random_state=seed)
    gmm.fit(adata, use_rep="X_cellcharter")
    labels = np.asarray(gmm.predict(adata, use_rep="X_cellcharter"))
    notes.append(
        f"scVI {epochs} epochs (early stopping), grid graph n_neighs={n_neighs}, 3 aggregation layers,"
        f" GMM K={n_domains}"
    )
    return labels


if __name__ == "__main__":
    _runner.run("CellCharter", "cellcharter", fit, _runner.parse_args())
