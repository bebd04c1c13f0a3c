"""Cross-platform cells: storm zero-shot and after self-supervised adaptation, against a PCA of the same cells.

Per data set with cell types (MERFISH mouse preoptic area, 6,509 cells × 155 genes; Xenium breast crop,
2,189 cells × 313 genes) and per method, on this CPU:

- ``knn_acc``: :func:`storm.metrics.knn_accuracy` of the cell types (15-NN, 5-fold stratified; classes with
  fewer than 10 cells and the data set's "unassigned" class left out) from ``obsm['X_storm']`` or the PCA;
- ``chaos``: :func:`storm.metrics.chaos` of K domains (``storm.tl.domains`` defaults for storm, K-means with
  ``n_init=10`` on the PCA), lower = more spatially continuous;
- ``genes_read``: panel genes the embedding reads; ``seconds``: adaptation + embedding (or the PCA).

Methods: ``pca50`` (scanpy's defaults: ``sc.pp.normalize_total(adata)``, whose target is the median total count
per cell, then ``log1p`` and a 50-component PCA; normalising to 10⁴ instead, as this benchmark did before, lowers
the PCA on MERFISH's volume-normalised values), ``storm zero-shot`` (the shipped storm-mini, expression mode),
``storm adapted`` (:func:`storm.train.adapt` on the same cells, default settings: the panel's new genes appended,
800 steps; no labels used), ``storm adapted, no new genes`` (adaptation on the known genes only: what the extra
genes add), ``storm from_data`` (``storm.tl.embed(adata, "from_data")``: the network set up on the cells' own
genes, untrained), ``storm from_data, cell alone`` (the same with ``context=False``: a cell type is a property of
the cell, so its readout need not mix in the neighbours' expression), and the peer ``Novae (from scratch)``
(``benchmarks/peers/run_novae.py`` in its own environment: Delaunay graph pruned at 100 µm, its default training,
``novae_latent`` for the k-NN probe and ``assign_domains`` for CHAOS; skipped, with a message, when ``.peers/novae``
is missing).

Usage: python benchmarks/cross_platform.py [--datasets merfish xenium] [--steps 800] [--seeds 0] [--methods ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
NOVAE_PYTHON = ROOT / ".peers" / "novae" / "bin" / "python"  # built by benchmarks/peers/setup_envs.sh
if "STORM_DATA_MIRROR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["STORM_DATA_MIRROR"] = str(ROOT.parent / "shared" / "data")

#: loader, label column, class to leave out, number of domains
DATASETS = {
    "merfish": ("merfish_preoptic", "celltype", "Ambiguous", 8),
    "xenium": ("xenium_breast", "celltype", "Low Count Cells", 8),
}


def pca50(adata):
    """50-component PCA of log-normalised expression, each step at scanpy's defaults (median total as target)."""
    import scanpy as sc

    a = adata.copy()
    sc.pp.normalize_total(a)
    sc.pp.log1p(a)
    sc.pp.pca(a, n_comps=min(50, a.n_vars - 1), random_state=0)
    return a.obsm["X_pca"]


VARIANTS = {
    "storm zero-shot": None,
    "storm adapted": {"new_genes": True},
    "storm adapted, no new genes": {"new_genes": False},
    "storm from_data": "from_data",  # storm.tl.embed(adata, "from_data"): set up on the cells, untrained
    "storm from_data, cell alone": "from_data",  # the same, each cell's window holding only the cell (context=False)
}
PEER = "Novae (from scratch)"


def run_novae(adata, n_domains: int, seed: int):
    """Novae in its own environment on ``adata``'s raw counts: (latent, domain labels, seconds), or None if absent."""
    import numpy as np
    from scipy import sparse

    if not NOVAE_PYTHON.exists():
        print(f"{PEER}: {NOVAE_PYTHON} is missing; build it with `bash benchmarks/peers/setup_envs.sh novae`.")
        return None
    import anndata as ad

    with tempfile.TemporaryDirectory() as tmp:
        section = ad.AnnData(X=sparse.csr_matrix(adata.X, dtype=np.float32), obs=adata.obs[[]], var=adata.var[[]])
        section.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        section.uns["platform"] = "cells"
        section.write_h5ad(Path(tmp) / "cells.h5ad")
        runner = ROOT / "benchmarks" / "peers" / "run_novae.py"
        args = ["--input", str(Path(tmp) / "cells.h5ad"), "--n-domains", str(n_domains), "--seed", str(seed)]
        cmd = [str(NOVAE_PYTHON), str(runner), *args, "--out-dir", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{PEER} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
            return None
        labels = pd.read_csv(Path(tmp) / "labels.csv")["label"].to_numpy()
        result = json.loads((Path(tmp) / "result.json").read_text())
        return np.load(Path(tmp) / "embedding.npy"), labels, result["seconds"]


def run(name: str, *, steps: int, seed: int, methods: list[str]) -> list[dict]:
    import numpy as np
    from sklearn.cluster import KMeans

    import storm
    from storm.models import StormModel

    loader, label, drop, k = DATASETS[name]
    adata = getattr(storm.datasets, loader)()
    labels = adata.obs[label].astype(object).where(adata.obs[label].astype(object) != drop)
    xy, lib = adata.obsm["spatial"], adata.obs["library_id"]
    base = StormModel.from_pretrained()
    rows = []

    def score(method: str, emb: np.ndarray, domains, seconds: float, genes_read: str) -> None:
        rows.append(
            {
                "dataset": name,
                "method": method,
                "seed": seed,
                "n_cells": adata.n_obs,
                "genes_read": genes_read,
                "knn_acc": storm.metrics.knn_accuracy(emb, labels),
                "chaos": storm.metrics.chaos(domains, xy, library=lib),
                "seconds": round(seconds, 1),
            }
        )
        print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)

    start = time.perf_counter()
    X = pca50(adata)
    seconds = time.perf_counter() - start
    domains = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(X)
    score("pca50", X, domains, seconds, f"{adata.n_vars} of {adata.n_vars}")

    for method in methods:
        if method == PEER:
            out = run_novae(adata, k, seed)
            if out is not None:
                emb, domains, seconds = out
                score(PEER, emb, domains, seconds, "its own selection")
            continue
        kwargs = VARIANTS[method]
        start = time.perf_counter()
        if kwargs is None:
            model = base
        elif kwargs == "from_data":
            model = kwargs
        else:
            model = storm.train.adapt(base, adata, steps=steps, random_state=seed, progress=False, **kwargs)
        storm.tl.embed(adata, model, mode="expression", context=not method.endswith("cell alone"))
        seconds = time.perf_counter() - start
        storm.tl.domains(adata, n_domains=k, random_state=seed)
        cov = adata.uns["X_storm"]["params"]["gene_coverage"]
        score(
            method, adata.obsm["X_storm"], adata.obs["storm_domains"], seconds, f"{cov['n_used']} of {cov['n_genes']}"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    choices = [*VARIANTS, PEER]
    parser.add_argument("--methods", nargs="+", default=choices, choices=choices, help="rows besides the PCA")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "logs" / "cross_platform.csv"))
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f}, torch threads {__import__('torch').get_num_threads()}")
    print("pca50: sc.pp.normalize_total(adata) (scanpy's default target: the median total per cell), log1p, 50 PCs")
    rows = []
    for seed in args.seeds:
        for name in args.datasets:
            rows += run(name, steps=args.steps, seed=seed, methods=args.methods)
            pd.DataFrame(rows).to_csv(args.out, index=False)  # after each data set: a stopped run keeps its rows
    table = pd.DataFrame(rows)
    summary = table.groupby(["dataset", "method"], sort=False)[["knn_acc", "chaos", "seconds"]].mean()
    print("\nMean over seeds:\n" + summary.round(3).to_string())


if __name__ == "__main__":
    main()
