"""Scale: storm.tl.embed + storm.tl.domains on tiled real data, seconds and peak memory per size, on this CPU.

``--kind cells`` tiles the MERFISH mouse preoptic area (6,509 real cells, 155 genes, µm coordinates) into offset
copies on one slide, so every cell keeps its real neighbourhood (k = 24 nearest cells), up to 100k, 300k and
1,000,000 cells. ``--kind spots`` tiles DLPFC 151673 (3,639 Visium spots) on the spot array to 10k … 200k spots,
expression mode, and also times the default pipeline (``mode="auto"``: H&E + expression) on the real section.

``--model default`` gives ``storm.tl.embed`` no model, so expression is embedded by its default, ``"from_data"``:
five untrained networks set up on the data (``setup_s``: choosing the genes and the PCA loadings), each run over the
prepared windows; ``--model storm-mini`` (the default of this script) times the pretrained model.

Each size runs in a fresh process (benchmarks/_harness.py), so its peak resident memory is its own. The split:
``setup_s`` (the default model's set-up; 0 for storm-mini), ``prepare_s`` (library-size normalisation, the model's
gene panel, k-NN or grid windows; ``windows_s`` of it is :func:`storm.pp.spatial_windows`), ``inference_s`` (the
network), ``embed_s`` (all of ``storm.tl.embed``) and ``domains_s`` (``storm.tl.domains``). The machine's 1-minute
load average is printed with each size: the CPU is shared, and a loaded machine gives slower numbers.

Usage: python benchmarks/scale.py --kind cells [--sizes 100000 300000 1000000] [--n-domains 8]
       python benchmarks/scale.py --kind spots [--sizes 10000 50000 100000 200000] [--model default]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import measure, print_table

ROOT = Path(__file__).resolve().parents[1]
if "STORM_DATA_MIRROR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["STORM_DATA_MIRROR"] = str(ROOT.parent / "shared" / "data")

SIZES = {"cells": [100_000, 300_000, 1_000_000], "spots": [10_000, 50_000, 100_000, 200_000]}
N_DOMAINS = {"cells": 8, "spots": 7}  # spots: DLPFC's six layers + white matter
LIMITS = {"cells": (1_000_000, 15 * 60, 8 * 1024), "spots": (200_000, 10 * 60, 8 * 1024)}  # size, s, MB


def tile_cells(adata, n: int):
    """``n`` cells: copies of ``adata`` side by side on one slide, each shifted by the section's extent + a gap.

    The gap is ten times the median distance to the 24th nearest cell, so no window reaches into another copy.
    """
    import anndata as ad
    import numpy as np
    from scipy import sparse
    from scipy.spatial import cKDTree

    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    d24 = cKDTree(xy).query(xy, k=25)[0][:, -1]
    step = (xy.max(axis=0) - xy.min(axis=0)) + 10 * float(np.median(d24))
    copies = -(-n // adata.n_obs)
    side = int(np.ceil(np.sqrt(copies)))
    shifts = np.array([(i % side, i // side) for i in range(copies)], dtype=np.float64) * step
    rows = np.arange(n) % adata.n_obs
    copy = np.arange(n) // adata.n_obs
    X = sparse.vstack([adata.X] * copies, format="csr")[:n]
    obs = adata.obs.iloc[rows].reset_index(drop=True)
    obs.index = obs.index.astype(str)
    tiled = ad.AnnData(X=X, obs=obs, var=adata.var.copy(), uns={"spatial": dict(adata.uns["spatial"])})
    tiled.obsm["spatial"] = xy[rows] + shifts[copy]
    return tiled


def tile_spots(adata, n: int):
    """``n`` spots: copies of a Visium section on one larger spot array (rows and columns shifted, parity kept).

    Pixel coordinates move with the array by the section's own fitted array → pixel map, so spot spacing in µm is
    unchanged; ``microns_per_pixel`` is the section's.
    """
    import anndata as ad
    import numpy as np
    from scipy import sparse

    rc = adata.obs[["array_row", "array_col"]].to_numpy(dtype=np.float64)
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    design = np.column_stack([rc, np.ones(len(rc))])
    affine, *_ = np.linalg.lstsq(design, xy, rcond=None)  # (row, col, 1) → (x, y)
    span = rc.max(axis=0) - rc.min(axis=0) + 4
    span += span % 2  # even shifts keep Visium's row/column parity
    copies = -(-n // adata.n_obs)
    side = int(np.ceil(np.sqrt(copies)))
    shift_rc = np.array([(i // side, i % side) for i in range(copies)], dtype=np.float64) * span
    rows = np.arange(n) % adata.n_obs
    copy = np.arange(n) // adata.n_obs
    X = sparse.vstack([adata.X] * copies, format="csr")[:n]
    obs = adata.obs.iloc[rows].reset_index(drop=True)
    obs.index = obs.index.astype(str)
    obs["array_row"] = (rc[rows, 0] + shift_rc[copy, 0]).astype(np.int64)
    obs["array_col"] = (rc[rows, 1] + shift_rc[copy, 1]).astype(np.int64)
    tiled = ad.AnnData(X=X, obs=obs, var=adata.var.copy(), uns={"spatial": dict(adata.uns["spatial"])})
    tiled.obsm["spatial"] = xy[rows] + shift_rc[copy] @ affine[:2]
    return tiled


def run(kind: str, n: int | None, n_domains: int, mode: str, domains_kwargs: dict, model_name: str) -> dict:
    """One measurement (in a fresh process): tile, embed, domains; seconds per step."""
    import functools

    import torch

    import storm
    import storm.models._model as model_module
    import storm.models._prepare as prepare_module
    from storm.models import StormModel

    load0 = os.getloadavg()[0]
    base = storm.datasets.merfish_preoptic() if kind == "cells" else storm.datasets.dlpfc("151673")
    start = time.perf_counter()
    tile = tile_cells if kind == "cells" else tile_spots
    adata = base if n is None else tile(base, n)
    del base
    build_s = time.perf_counter() - start
    if model_name == "storm-mini":
        model = StormModel.from_pretrained()
        model.embed = functools.partial(model.embed, progress=False)  # no progress bar in the log
    else:
        model = None  # embed's default: "from_data" for expression, storm-mini where an image is read

    timings = {"setup_s": 0.0, "prepare_s": 0.0, "windows_s": 0.0}

    def timed(key, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                timings[key] += time.perf_counter() - t0

        return wrapper

    # time the steps inside storm.tl.embed without changing what it runs
    model_module.prepare_slides = timed("prepare_s", model_module.prepare_slides)
    prepare_module.spatial_windows = timed("windows_s", prepare_module.spatial_windows)
    storm.models.from_data = timed("setup_s", storm.models.from_data)  # the default's networks, set up on the data

    t0 = time.perf_counter()
    storm.tl.embed(adata, model, mode=mode)
    embed_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    storm.tl.domains(adata, n_domains=n_domains, **domains_kwargs)
    domains_s = time.perf_counter() - t0
    inference_s = embed_s - timings["prepare_s"] - timings["setup_s"]
    return {
        "n": adata.n_obs,
        "mode": adata.uns["X_storm"]["params"]["mode"],
        "model": adata.uns["X_storm"]["params"]["model"],
        "build_s": build_s,
        **timings,
        "inference_s": inference_s,
        "embed_s": embed_s,
        "domains_s": domains_s,
        "total_s": embed_s + domains_s,
        "per_s": adata.n_obs / inference_s,
        "threads": torch.get_num_threads(),
        "load_start": load0,
        "load_end": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=["cells", "spots"], required=True)
    parser.add_argument("--sizes", type=int, nargs="+", help="numbers of cells or spots (default: the issue's)")
    parser.add_argument("--n-domains", type=int, help="K of storm.tl.domains (default 8 cells, 7 spots)")
    parser.add_argument("--domains-kwargs", default="{}", help='JSON, e.g. \'{"method": "kmeans", "n_init": 1}\'')
    parser.add_argument("--no-real", action="store_true", help="spots: skip the real section")
    parser.add_argument(
        "--model",
        choices=["storm-mini", "default"],
        default="storm-mini",
        help='"default": no model given to storm.tl.embed, i.e. "from_data" for expression (5 networks)',
    )
    parser.add_argument("--out", help="CSV (default results/benchmarks/scale_<kind>.csv)")
    parser.add_argument("--log", help="log file (default benchmarks/logs/scale_<kind>.log)")
    args = parser.parse_args()

    kind = args.kind
    sizes = args.sizes or SIZES[kind]
    n_domains = args.n_domains or N_DOMAINS[kind]
    domains_kwargs = json.loads(args.domains_kwargs)
    log = Path(args.log or ROOT / "benchmarks" / "logs" / f"scale_{kind}.log")
    log.parent.mkdir(parents=True, exist_ok=True)
    out = Path(args.out or ROOT / "results" / "benchmarks" / f"scale_{kind}.csv")
    out.parent.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        print(text, flush=True)
        with log.open("a") as fh:
            fh.write(text + "\n")

    say(f"\n# benchmarks/scale.py --kind {kind} — {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {os.cpu_count()} CPUs")
    domains_args = f"n_domains={n_domains}, {domains_kwargs or 'defaults'}"
    say(f"# storm.tl.embed (expression, model {args.model}) + storm.tl.domains({domains_args})")
    jobs = [(n, "expression") for n in sizes]
    if kind == "spots" and not args.no_real:
        jobs = [(None, "auto"), (None, "expression"), *jobs]
    rows = []
    for n, mode in jobs:
        what = "real DLPFC 151673" if n is None else f"{n:,} {kind}"
        try:
            row = {"data": what, **measure(run, kind, n, n_domains, mode, domains_kwargs, args.model)}
        except RuntimeError as err:
            row = {"data": what, "error": str(err)}
        rows.append(row)
        say(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}))
    columns = [
        "data",
        "mode",
        "model",
        "n",
        "setup_s",
        "prepare_s",
        "windows_s",
        "inference_s",
        "embed_s",
        "domains_s",
        "total_s",
        "per_s",
        "peak_mb",
        "load_start",
        "load_end",
    ]
    import io

    table = io.StringIO()
    print_table(rows, columns, file=table)
    say(table.getvalue().rstrip())
    big, limit_s, limit_mb = LIMITS[kind]
    for row in rows:
        if row.get("n") == big:
            ok = row["total_s"] <= limit_s and row["peak_mb"] <= limit_mb
            say(
                f"{big:,} {kind}: {row['total_s']:.0f} s (limit {limit_s} s), peak {row['peak_mb']:.0f} MB "
                f"(limit {limit_mb} MB): {'within' if ok else 'OVER'} the limits"
            )
    pd.DataFrame(rows).to_csv(out, index=False)
    say(f"written: {out}")


if __name__ == "__main__":
    main()
