"""GraphST on one section: its graph contrastive encoder (600 epochs, defaults), then its leiden resolution search.

Run with ``.peers/graphst/bin/python``. GraphST's default clustering is mclust through R, which this machine does
not have; its tutorial's alternative is used instead: ``clustering(method="leiden", start=0.1, end=2.0,
increment=0.01, refinement=False)``, which searches resolutions from high to low until exactly K clusters appear.
``torch.set_flush_denormal(True)``: the encoder's activations decay into subnormal floats on CPU, which slows training
several-fold without changing the result. Everything else is GraphST's default (``datatype='10X'``, 3,000 HVGs,
3 spatial neighbours, 64-d output, random seed 41 offset by ``--seed``).
"""

from __future__ import annotations

import _runner


def fit(adata, n_domains: int, seed: int, notes: list[str]):
    import torch
    from GraphST import GraphST
    from GraphST.utils import clustering

    torch.set_num_threads(int(_runner.os.environ["OMP_NUM_THREADS"]))
    torch.set_flush_denormal(True)
    adata.var_names_make_unique()
    model = GraphST.GraphST(adata, device=torch.device("cpu"), random_seed=41 + seed)
    adata = model.train()
    try:
        clustering(adata, n_domains, radius=50, method="leiden", start=0.1, end=2.0, increment=0.01, refinement=False)
    except AssertionError as err:  # no resolution in the range gave exactly K clusters
        notes.append(f"leiden search found no resolution giving K={n_domains} ({err}); widened to 0.01-3.0")
        clustering(adata, n_domains, radius=50, method="leiden", start=0.01, end=3.0, increment=0.01)
    notes.append(f"600 epochs on CPU, flush_denormal, leiden search -> {adata.obs['domain'].nunique()} clusters")
    return adata.obs["domain"].to_numpy()


if __name__ == "__main__":
    _runner.run("GraphST", "GraphST", fit, _runner.parse_args())
