"""Time loading a section and extracting every patch of a HER2ST full-resolution section.

Each step runs in a fresh process (benchmarks/_harness.py) so its peak resident memory is its own; the import
of storm (anndata, scanpy, torch) is measured separately as the baseline every step pays.

Usage: python benchmarks/io_patches.py [--section C2] [--out results/benchmarks/io_patches.csv]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import measure, print_table

ROOT = Path(__file__).resolve().parents[1]
if "STORM_DATA_MIRROR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["STORM_DATA_MIRROR"] = str(ROOT.parent / "shared" / "data")


def import_only():
    import storm.datasets
    import storm.pp  # noqa: F401


def load_dlpfc(section):
    import storm

    adata = storm.datasets.dlpfc(section)
    return {"n_spots": adata.n_obs}


def load_her2st(section):
    import storm

    adata = storm.datasets.her2st(section)
    return {"n_spots": adata.n_obs}


def patches_her2st(section, out_px):
    import storm

    adata = storm.datasets.her2st(section)
    n = 0
    for batch in storm.pp.extract_patches(adata, size_um=55, out_px=out_px, batch_size=256):
        n += len(batch)
    assert n == adata.n_obs
    return {"n_spots": n}


def patches_dlpfc(section, out_px):
    import storm

    adata = storm.datasets.dlpfc(section)
    n = sum(len(b) for b in storm.pp.extract_patches(adata, size_um=55, out_px=out_px, batch_size=256))
    return {"n_spots": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", default="C2", help="HER2ST section with a full-resolution image (C2–C6)")
    parser.add_argument("--dlpfc", default="151673")
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "io_patches.csv"))
    args = parser.parse_args()

    steps = [
        ("import storm", import_only, ()),
        (f"load dlpfc {args.dlpfc}", load_dlpfc, (args.dlpfc,)),
        (f"load her2st {args.section}", load_her2st, (args.section,)),
        (f"patches her2st {args.section} 224px (full-res)", patches_her2st, (args.section, 224)),
        (f"patches her2st {args.section} 64px (full-res)", patches_her2st, (args.section, 64)),
        (f"patches dlpfc {args.dlpfc} 224px (lowres)", patches_dlpfc, (args.dlpfc, 224)),
    ]
    rows = []
    for name, fn, fn_args in steps:
        result = measure(fn, *fn_args)
        rows.append({"step": name, **result})
        if "n_spots" in result:
            rows[-1]["spots_per_s"] = result["n_spots"] / result["seconds"]
    print_table(rows, ["step", "n_spots", "seconds", "spots_per_s", "peak_mb"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
