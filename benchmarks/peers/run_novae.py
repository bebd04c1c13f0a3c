"""Novae trained from scratch on one section (no pretrained weights can be fetched offline), K domains.

Run with ``.peers/novae/bin/python``. Novae's defaults throughout: ``novae.spatial_neighbors`` with
``technology='visium'`` on DLPFC (6-neighbour grid) and a 4-neighbour grid on the legacy-ST square lattice of
HER2ST; on single cells (``uns['platform'] == 'cells'``, µm coordinates) its default Delaunay graph pruned at
100 µm, and the latent is written too (``embedding.npy``); ``novae.Novae(adata)`` with its default architecture
(its own normalise + log1p and gene selection) and batch size 256, except on a section of fewer spots (HER2ST C1),
where half the spots make a batch (its loader drops an incomplete batch, so the default would train on nothing);
``fit`` with its defaults (at most 20 epochs, early stopping, lr 5e-4); ``compute_representations``;
``assign_domains(n_domains=K)``. Training from scratch on one section says little about the pretrained Novae.
"""

from __future__ import annotations

import _runner

#: Delaunay edges longer than this are pruned on single-cell data (Novae's tutorials prune at 80–100 µm)
CELL_RADIUS_UM = 100.0


def fit(adata, n_domains: int, seed: int, notes: list[str]):
    import lightning
    import novae
    import torch

    torch.set_num_threads(int(_runner.os.environ["OMP_NUM_THREADS"]))
    lightning.seed_everything(seed)
    if adata.uns.get("platform") == "visium":
        novae.spatial_neighbors(adata, technology="visium")
    elif adata.uns.get("platform") == "cells":  # single cells, µm coordinates: Novae's default Delaunay graph
        novae.spatial_neighbors(adata, radius=CELL_RADIUS_UM)
    else:
        novae.spatial_neighbors(adata, coord_type="grid", n_neighs=4)
    # Novae's data loader drops an incomplete batch: below 256 spots (HER2ST C1 has 176) its default batch size would
    # leave no training batch at all, and the "trained" model would be its random initialisation.
    batch_size = 256 if adata.n_obs >= 256 else adata.n_obs // 2
    if batch_size != 256:
        notes.append(f"batch_size={batch_size} instead of 256: {adata.n_obs} spots are fewer than one default batch")
    model = novae.Novae(adata, batch_size=batch_size)
    model.fit(adata, accelerator="cpu", num_workers=0)
    model.compute_representations(adata, accelerator="cpu", num_workers=0)
    key = model.assign_domains(adata, n_domains=n_domains)
    adata.obsm[_runner.EMBEDDING_KEY] = adata.obsm["novae_latent"]
    try:  # a LightningModule's `trainer` raises when detached
        epochs = model.trainer.current_epoch
    except Exception:
        epochs = "?"
    notes.append(f"from scratch, {epochs} epochs (early stopping, max 20), assign_domains(n_domains={n_domains})")
    return adata.obs[key].astype(str).to_numpy()


if __name__ == "__main__":
    _runner.run("Novae (from scratch)", "novae", fit, _runner.parse_args())
