"""SpaGCN on one section, as its tutorial's "ez mode" pipeline, without histology (``histology=False``).

Run with ``.peers/spagcn/bin/python``. Steps (SpaGCN's documented defaults): adjacency from the spot positions in
full-resolution pixels; ``prefilter_genes(min_cells=3)``, ``prefilter_specialgenes``, ``normalize_per_cell``,
``log1p``; ``search_l(p=0.5)``; ``search_res`` for K clusters (start 0.7, step 0.1, 20 epochs); training with
Louvain initialisation (``res`` found, lr 0.05, 200 epochs, tol 5e-3); then SpaGCN's ``refine`` on the array grid
(``hexagon`` for Visium, ``square`` for legacy ST), which its tutorial reports as the final domains. Seeds 100 for
``r_seed``/``t_seed``/``n_seed`` as in the tutorial, offset by ``--seed``.
"""

from __future__ import annotations

import _runner


def fit(adata, n_domains: int, seed: int, notes: list[str]):
    import random

    import numpy as np
    import scanpy as sc
    import SpaGCN as spg
    import torch

    torch.set_num_threads(int(_runner.os.environ["OMP_NUM_THREADS"]))
    r_seed = t_seed = n_seed = 100 + seed
    xy = np.asarray(adata.obsm["spatial"], dtype=float)
    x_pixel, y_pixel = xy[:, 1].astype(int).tolist(), xy[:, 0].astype(int).tolist()
    adj = spg.calculate_adj_matrix(x=x_pixel, y=y_pixel, histology=False)
    spg.prefilter_genes(adata, min_cells=3)
    spg.prefilter_specialgenes(adata)
    sc.pp.normalize_per_cell(adata)
    sc.pp.log1p(adata)
    ell = spg.search_l(0.5, adj, start=0.01, end=1000, tol=0.01, max_run=100)
    res = spg.search_res(
        adata, adj, ell, n_domains, start=0.7, step=0.1, tol=5e-3, lr=0.05, max_epochs=20,
        r_seed=r_seed, t_seed=t_seed, n_seed=n_seed,
    )  # fmt: skip
    clf = spg.SpaGCN()
    clf.set_l(ell)
    random.seed(r_seed)
    torch.manual_seed(t_seed)
    np.random.seed(n_seed)  # noqa: NPY002 (SpaGCN draws from the global generator)
    clf.train(adata, adj, init_spa=True, init="louvain", res=res, tol=5e-3, lr=0.05, max_epochs=200)
    y_pred, _ = clf.predict()
    shape = "hexagon" if adata.uns.get("platform") == "visium" else "square"
    adj_2d = spg.calculate_adj_matrix(
        x=adata.obs["array_row"].tolist(), y=adata.obs["array_col"].tolist(), histology=False
    )
    refined = spg.refine(sample_id=adata.obs_names.tolist(), pred=y_pred.tolist(), dis=adj_2d, shape=shape)
    notes.append(
        f"histology=False, l={ell:.3g}, louvain res={res:.2f}, {len(set(y_pred))} clusters before and"
        f" {len(set(refined))} after refine(shape={shape})"
    )
    return np.asarray(refined)


if __name__ == "__main__":
    _runner.run("SpaGCN", "SpaGCN", fit, _runner.parse_args())
