"""CPU speed of the STORM model: pretraining windows/s, embedding spots/s, and the size of storm-mini.

Each measurement runs in a fresh process (benchmarks/_harness.py), so peak memory is its own.

Usage: python benchmarks/model_speed.py [--steps 60] [--out results/benchmarks/model_speed.csv]
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


def pretrain_speed(steps: int, batch_size: int, image: bool):
    """Time the optimiser steps (data set-up excluded) of the storm-mini network on real slides."""
    import time

    import torch
    from lightning.pytorch import Callback, Trainer

    import storm
    from storm.models import StormModel
    from storm.train import StormDataModule, StormLightningModule

    sections = ["C2", "C3"] if image else ["B1", "B2"]
    adatas = [storm.datasets.her2st(s) for s in sections]
    model = StormModel.setup([adatas], n_top_genes=700, include_genes=storm.datasets.hist2st_genes(), net={})
    slides = [s for a in adatas for s in model.prepare(a)]

    class Clock(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_train_batch_end(self, *args) -> None:
            self.times.append(time.perf_counter())

    clock = Clock()
    dm = StormDataModule(slides, patch_px=64, batch_size=batch_size, val_fraction=0)
    trainer = Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        use_distributed_sampler=False,
    )
    trainer.fit(StormLightningModule(model.module, warmup_steps=5, total_steps=steps), datamodule=dm)
    warm = 5  # the first steps cut and cache the slides' patches
    seconds = clock.times[-1] - clock.times[warm]
    return {"windows_per_s": batch_size * (len(clock.times) - 1 - warm) / seconds, "threads": torch.get_num_threads()}


def embed_speed(loader: str, section: str, mode: str):
    import time

    import storm
    from storm.models import StormModel

    adata = getattr(storm.datasets, loader)(section)
    model = StormModel.from_pretrained()
    start = time.perf_counter()
    model.embed(adata, mode=mode, progress=False)
    seconds = time.perf_counter() - start
    return {"n_spots": adata.n_obs, "spots_per_s": adata.n_obs / seconds, "embed_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "model_speed.csv"))
    args = parser.parse_args()

    from storm.models import EMBEDDED_MODELS

    weights = EMBEDDED_MODELS["storm-mini"] / "model.safetensors"
    print(f"storm-mini: {weights.stat().st_size / 1e6:.1f} MB ({weights})\n")

    rows = []
    for image in (True, False):
        name = f"pretrain {'H&E + expression (HER2ST C2, C3)' if image else 'expression only (HER2ST B1, B2)'}"
        rows.append({"step": name, **measure(pretrain_speed, args.steps, args.batch_size, image)})
    for loader, section, mode in [
        ("dlpfc", "151673", "expression"),
        ("dlpfc", "151673", "joint"),
        ("her2st", "C2", "joint"),
        ("her2st", "C2", "image"),
    ]:
        rows.append({"step": f"embed {loader} {section} ({mode})", **measure(embed_speed, loader, section, mode)})
    print_table(rows, ["step", "windows_per_s", "n_spots", "spots_per_s", "seconds", "peak_mb"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out, index=False)
    print(f"\nwritten: {out}")


if __name__ == "__main__":
    main()
