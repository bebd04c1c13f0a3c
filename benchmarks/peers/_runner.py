"""What every peer runner shares: arguments, thread limits, reading the section, writing labels and a result JSON.

A runner is started by ``benchmarks/domains.py`` with the peer's own interpreter (``.peers/<name>/bin/python``), so
this module uses only the standard library, numpy, pandas and anndata, which every peer environment has.

Protocol. Input: an ``.h5ad`` with raw counts in ``.X``, ``obsm['spatial']``, ``obs['array_row']``/``['array_col']``
and ``uns['platform']`` (``visium``, ``st`` or ``cells``). Output, in ``--out-dir``: ``labels.csv`` (spot, label) and
``embedding.npy`` where the peer has a per-spot embedding, and ``result.json`` with ``seconds`` (from the loaded
AnnData to the labels, imports and reading excluded), ``peak_mb`` (this process's peak resident memory, see
:func:`peak_rss_mb`), ``n_domains`` (the number of distinct labels produced), ``notes`` and the peer's version.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

#: ``obsm`` key under which a runner's ``fit`` may leave a per-spot embedding; it is written to ``embedding.npy``
EMBEDDING_KEY = "peer_embedding"


def parse_args() -> argparse.Namespace:
    """Parse the arguments every runner takes and cap the BLAS/OpenMP threads before numpy or torch load."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True, type=Path, help="section .h5ad (raw counts in X)")
    parser.add_argument("--n-domains", required=True, type=int, help="number of domains asked for")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = parser.parse_args()
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
        os.environ[var] = str(args.threads)
    return args


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: ``VmHWM`` of ``/proc/self/status``.

    Not ``getrusage``: on Linux a child's ``ru_maxrss`` starts from its parent's resident memory at fork/exec, so a
    small child of a large parent would report the parent's size. ``VmHWM`` belongs to the address space that
    ``exec`` created.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux: an upper bound


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and (if loaded) torch's generators."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (the peers draw from the global generator)
    if "torch" in sys.modules:
        import torch

        torch.manual_seed(seed)


def read_section(path: Path):
    """Read the section's AnnData (``X`` raw counts as float32 CSR)."""
    import anndata as ad
    from scipy import sparse

    adata = ad.read_h5ad(path)
    adata.X = sparse.csr_matrix(adata.X, dtype="float32")
    return adata


def run(
    peer: str,
    distribution: str,
    fit: Callable[[Any, int, int, list[str]], Any],
    args: argparse.Namespace,
) -> None:
    """Read the section, call ``fit(adata, n_domains, seed, notes) -> labels`` timed, write the outputs."""
    import numpy as np
    import pandas as pd

    args.out_dir.mkdir(parents=True, exist_ok=True)
    adata = read_section(args.input)
    notes: list[str] = []
    seed_everything(args.seed)
    start = time.perf_counter()
    labels = fit(adata, args.n_domains, args.seed, notes)
    seconds = time.perf_counter() - start
    labels = np.asarray(labels).astype(str)
    if labels.shape[0] != adata.n_obs:
        raise RuntimeError(f"{peer} returned {labels.shape[0]} labels for {adata.n_obs} spots")
    pd.DataFrame({"spot": adata.obs_names, "label": labels}).to_csv(args.out_dir / "labels.csv", index=False)
    if EMBEDDING_KEY in adata.obsm:
        np.save(args.out_dir / "embedding.npy", np.asarray(adata.obsm[EMBEDDING_KEY], dtype=np.float32))
    result = {
        "peer": peer,
        "version": metadata.version(distribution),
        "seconds": seconds,
        "peak_mb": peak_rss_mb(),
        "peak_source": "VmHWM",
        "n_domains": len(set(labels)),
        "threads": args.threads,
        "notes": notes,
    }
    (args.out_dir / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result))
