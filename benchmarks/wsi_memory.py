"""Whole-slide memory: peak resident memory of read_wsi and virtual_st on a pyramidal TIFF and on one `--factor`× wider.

Two pyramidal TIFFs (256-px JPEG tiles, µm per pixel in the resolution tags) are written with tifffile
(``storm.io.write_pyramid``) from HER2ST C6's full-resolution H&E (9,288 × 9,907 px): the section itself, and the
section upsampled ``--factor`` times in each direction (nearest neighbour, the same µm per pixel: a slide
``factor²`` times larger, with ``factor²`` times more tissue tiles). Each step runs in a fresh process
(``_harness.measure``: wall seconds and the process's own peak resident memory, VmHWM): the imports alone, then for
each slide ``storm.io.read_wsi`` alone and ``read_wsi`` + ``storm.tl.virtual_st`` (storm-mini, 55-µm tiles, a head
trained on HER2ST C2 through ``storm.tl.train_expression_head``). It prints the table, the ratio of the two slides'
peaks and the seconds per 1,000 tiles, and writes ``logs/wsi_memory_x<factor>.csv`` (and the printout to ``.log``).

Usage: python benchmarks/wsi_memory.py [--factor 2] [--threads 2] [--out benchmarks/logs]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import measure, print_table

ROOT = Path(__file__).resolve().parents[1]
if "STORM_DATA_MIRROR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
    os.environ["STORM_DATA_MIRROR"] = str(ROOT.parent / "shared" / "data")


class Upsampled:
    """An RGB image repeated ``factor`` times along each axis, computed per region (never held whole)."""

    def __init__(self, image: np.ndarray, factor: int) -> None:
        self.image, self.factor = image, int(factor)
        self.shape = (image.shape[0] * self.factor, image.shape[1] * self.factor, 3)
        self.dtype = np.dtype(np.uint8)

    def __getitem__(self, key: tuple[slice, slice]) -> np.ndarray:
        f = self.factor
        (y0, y1, _), (x0, x1, _) = (k.indices(n) for k, n in zip(key, self.shape[:2], strict=True))
        src = self.image[y0 // f : -(-y1 // f), x0 // f : -(-x1 // f)]
        big = np.repeat(np.repeat(src, f, axis=0), f, axis=1)
        return big[y0 - y0 // f * f : y1 - y0 // f * f, x0 - x0 // f * f : x1 - x0 // f * f]


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _imports_only(threads: int) -> dict:
    _threads(threads)
    import storm  # noqa: F401

    return {"tiles": 0}


def _read_only(path: str, threads: int) -> dict:
    _threads(threads)
    import storm

    slide = storm.io.read_wsi(path)
    return {"tiles": 0, "levels": len(next(iter(slide.uns["spatial"].values()))["metadata"]["wsi"]["level_shapes"])}


def _read_and_virtual_st(path: str, head_dir: str, threads: int) -> dict:
    _threads(threads)
    import storm

    head = storm.nn.ExpressionHead.load(head_dir)
    slide = storm.io.read_wsi(path)
    tiles = storm.tl.virtual_st(slide, head, progress=False)
    return {"tiles": tiles.n_obs, "level_downsample": tiles.uns["virtual_st"]["params"]["level_downsample"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--factor", type=int, default=2, help="upsampling of the larger slide, per side (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every step (default 2)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "logs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    log = io.StringIO()

    import storm

    c6 = storm.datasets.her2st("C6")
    entry = c6.uns["spatial"]["C6"]
    mpp = float(entry["scalefactors"]["microns_per_pixel"])
    pixels = storm.io.LazyImage(entry["metadata"]["fullres_path"]).load()
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        head = storm.tl.train_expression_head(
            storm.datasets.her2st("C2"), n_top_genes=250, val_groups=(), progress=False
        )
        head_dir = str(head.save(tmp / "head"))
        slides = {
            "C6": storm.io.write_pyramid(tmp / "C6.tif", pixels, microns_per_pixel=mpp, levels=4),
            f"C6 ×{args.factor}": storm.io.write_pyramid(
                tmp / "C6_up.tif", Upsampled(pixels, args.factor), microns_per_pixel=mpp, levels=4 + args.factor // 2
            ),
        }
        del pixels
        rows.append({"step": "imports only (baseline)", **measure(_imports_only, args.threads)})
        for name, path in slides.items():
            from storm.io import WholeSlideImage

            with WholeSlideImage(path) as wsi:
                h, w = wsi.shape
            size = {"slide": name, "megapixels": w * h / 1e6, "file_mb": path.stat().st_size / 2**20}
            rows.append(
                {"step": f"read_wsi {name} ({w}×{h} px)", **size, **measure(_read_only, str(path), args.threads)}
            )
            r = measure(_read_and_virtual_st, str(path), head_dir, args.threads)
            rows.append({"step": f"read_wsi + virtual_st {name}", **size, **r})
    df = pd.DataFrame(rows)
    df["s_per_1000_tiles"] = np.where(df["tiles"] > 0, df["seconds"] / df["tiles"].clip(lower=1) * 1000, np.nan)
    df.to_csv(args.out / f"wsi_memory_x{args.factor}.csv", index=False)

    with contextlib.redirect_stdout(log):
        print(
            f"read_wsi + virtual_st on pyramidal TIFFs of HER2ST C6 (storm-mini, 55-µm tiles, {args.threads} torch "
            "threads); each row a fresh process, peak = its peak resident memory (VmHWM)"
        )
        shown = df.copy()
        for c in ("megapixels", "file_mb", "seconds", "peak_mb", "s_per_1000_tiles"):
            shown[c] = shown[c].map(lambda v: "" if not np.isfinite(v) else f"{v:.1f}")
        cols = ["step", "megapixels", "file_mb", "tiles", "level_downsample", "seconds", "peak_mb", "s_per_1000_tiles"]
        print_table(shown.fillna("").to_dict("records"), cols, file=log)
        vst = df[df["step"].str.startswith("read_wsi + virtual_st")]
        small, large = vst["peak_mb"].to_numpy()
        print(
            f"\npeak memory, larger slide / smaller slide: {large / small:.2f} ({large:.0f} / {small:.0f} MB) for "
            f"{vst['megapixels'].iloc[1] / vst['megapixels'].iloc[0]:.0f}× the pixels and "
            f"{vst['tiles'].iloc[1] / vst['tiles'].iloc[0]:.1f}× the tiles"
        )
    print(log.getvalue(), end="")
    (args.out / f"wsi_memory_x{args.factor}.log").write_text(log.getvalue())


if __name__ == "__main__":
    main()
