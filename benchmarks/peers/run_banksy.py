"""BANKSY (pybanksy) on one section: neighbour-augmented expression, PCA 20, Leiden searched for K clusters.

Run with ``.peers/banksy/bin/python``. Settings: BANKSY's documented domain-segmentation values for the older
55 µm Visium technology, ``lambda = 0.2`` and ``k_geom = 18`` (R vignette "Domain segmentation"; used for the
legacy-ST HER2ST sections too, whose spots are larger still), first-order azimuthal Gabor filter (``max_m = 1``),
``scaled_gaussian`` decay, 20 PCs, Leiden partition with the package's resolution search for K clusters
(``find_resolutions``: up to 25 steps of 0.05 from 0.6; it can stop at K ± 1, and the K produced is reported).
Preprocessing: scanpy ``normalize_total``, ``log1p``, 2,000 highly variable genes.
"""

from __future__ import annotations

import _runner

LAMBDA = 0.2
K_GEOM = 18


def fit(adata, n_domains: int, seed: int, notes: list[str]):
    import matplotlib

    matplotlib.use("Agg")
    import scanpy as sc
    from banksy.cluster_methods import run_Leiden_partition
    from banksy.embed_banksy import generate_banksy_matrix
    from banksy.initialize_banksy import initialize_banksy
    from banksy_utils.umap_pca import pca_umap

    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, subset=True)
    adata.obs["x"], adata.obs["y"] = adata.obsm["spatial"][:, 0], adata.obsm["spatial"][:, 1]
    banksy_dict = initialize_banksy(
        adata,
        coord_keys=("x", "y", "spatial"),
        num_neighbours=K_GEOM,
        nbr_weight_decay="scaled_gaussian",
        max_m=1,
        plt_edge_hist=False,
        plt_nbr_weights=False,
        plt_agf_angles=False,
        plt_theta=False,
    )
    banksy_dict, _ = generate_banksy_matrix(adata, banksy_dict, [LAMBDA], max_m=1, verbose=False)
    pca_umap(banksy_dict, pca_dims=[20], plt_remaining_var=False, add_umap=False)
    results, _ = run_Leiden_partition(
        banksy_dict, resolutions=[], max_labels=n_domains, match_labels=False, partition_seed=seed, verbose=False
    )
    row = results.iloc[0]
    notes.append(
        f"lambda={LAMBDA}, k_geom={K_GEOM}, max_m=1, pcs=20, leiden resolution {row['resolution']:.2f}"
        f" -> {row['num_labels']} clusters for K={n_domains}"
    )
    return row["labels"].dense


if __name__ == "__main__":
    _runner.run("BANKSY", "pybanksy", fit, _runner.parse_args())
