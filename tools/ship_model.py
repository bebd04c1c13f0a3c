"""Copy a finished `storm pretrain` run into the package as an embedded model, with its model card.

    python tools/ship_model.py runs/storm-mini --name storm-mini --config storm/train/configs/storm_mini.yaml

Writes storm/models/weights/<name>/: model.safetensors, config.json and SHA256SUMS (as saved by the run),
training_metrics.csv (the run's loss log) and MODEL_CARD.md, whose figures are all read from those files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]


def _loss_table(log: pd.DataFrame, every: int) -> str:
    train = log[["step", "train/loss_step", "train/loss_expr_step", "train/loss_img_step"]].dropna(
        subset=["train/loss_step"]
    )
    train = train.assign(bucket=(train["step"] // every) * every).groupby("bucket").mean(numeric_only=True)
    lines = ["| steps | loss | expression loss | image loss |", "|---|---|---|---|"]
    for bucket, row in train.iterrows():
        lines.append(
            f"| {bucket}–{bucket + every - 1} | {row['train/loss_step']:.4f} | {row['train/loss_expr_step']:.4f} "
            f"| {row['train/loss_img_step']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Copy the run and write the card."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--name", default="storm-mini")
    parser.add_argument("--config", type=Path, required=True)
    args = parser.parse_args()

    target = ROOT / "storm" / "models" / "weights" / args.name
    target.mkdir(parents=True, exist_ok=True)
    for file in ("model.safetensors", "config.json", "SHA256SUMS"):
        shutil.copyfile(args.run / "model" / file, target / file)
    log = pd.read_csv(args.run / "logs" / "metrics.csv")
    log.to_csv(target / "training_metrics.csv", index=False)

    cfg = json.loads((target / "config.json").read_text())
    training, weights, net = cfg.get("training", {}), cfg["weights"], cfg["net"]
    window = f"{cfg['setup']['window']}×{cfg['setup']['window']}"
    hardware = f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}, torch {torch.__version__})"
    size_mb = (target / "model.safetensors").stat().st_size / 1e6
    steps = training.get("steps", 0)
    val = log.dropna(subset=["val/loss"]) if "val/loss" in log else pd.DataFrame()
    if len(val) > 1:
        first, last = val.iloc[0], val.iloc[-1]
        val_line = (
            f"Validation loss (held-out windows): {first['val/loss']:.4f} at step {int(first['step'])} → "
            f"{last['val/loss']:.4f} at step {int(last['step'])}."
        )
    elif len(val):
        only = val.iloc[0]
        val_line = f"Validation loss (held-out windows): {only['val/loss']:.4f} at step {int(only['step'])}."
    else:
        val_line = "No validation loss was logged."
    card = f"""# {args.name}

The small STORM model that ships with `storm` and that `StormModel.from_pretrained()` loads offline.

## What it is
The STORM architecture (arXiv 2604.03630) at small width: a {len(net.get("conv_widths", []))}-stage CNN on
{cfg["setup"]["size_um"]:.0f} µm H&E patches resized to {net["patch_px"]} px, the panel-agnostic expression encoder
over {len(cfg["genes"]):,} genes, and a {net["depth"]}-block multiway spatial transformer of width {net["dim"]}
({net["heads"]} heads, 2-D ALiBi, one feed-forward expert per modality) over {window} windows.
Pretrained by masked multimodal spatial modelling (about {net["n_visible"]} visible positions per modality;
expression reconstructed on the union gene list with per-sample gene masks; image tokens against an EMA teacher).

- weights: `model.safetensors`, {weights["n_parameters"]:,} parameters, {size_mb:.1f} MB,
  sha256 `{weights["sha256"]}` (checked on every load)
- why it is in the repository: `from_pretrained()` must work offline and in CI, where no model hub can be reached;
  its float32 parameters are {size_mb:.1f} MB, the small width that pretrains on a CPU (one copy, no checkpoints)
- configuration: `config.json` (network, gene list, setup arguments, training record); the run's configuration is
  `{args.config.as_posix()}`

## Data
{json.dumps(training.get("data", {}))}: {training.get("n_slides", "?")} slides, {training.get("n_spots", 0):,} spots,
{training.get("n_slides_with_image", "?")} with an image. HER2ST (Andersson et al. 2021, legacy ST, HER2+ breast
cancer; full-resolution H&E for C2–C6 only, the other sections expression-only) and DLPFC (Maynard et al. 2021,
Visium, human cortex; only the 600-px image, so patch morphology is coarse there). Files and checksums:
`data/registry.tsv`.

## Training
{steps} optimiser steps of {training.get("batch_size", "?")} windows ({training.get("epochs", "?")} full epochs
completed) in {training.get("seconds", 0) / 60:.1f} min on {hardware},
AdamW (lr {{lr}}, weight decay 0.05), warm-up then cosine. Reproduce with
`storm pretrain {args.config.as_posix()} --output runs/{args.name}`.

Training losses (mean per block of steps; `training_metrics.csv` holds every logged step):

{_loss_table(log, max(10, steps // 6 // 10 * 10))}

{val_line}

## What it is good for, and what not
- Good for: trying the whole `storm` journey offline (embed → domains, virtual ST heads, slide features) on Visium,
  legacy ST and, in expression mode, other panels (genes outside its list are ignored and the coverage reported).
- Not a substitute for the paper's model: it saw {training.get("n_spots", 0):,} spots of two tissues (the paper:
  1.2 M spots, 18 organs), trained {steps} steps on a CPU, and its image encoder learned from five H&E sections of
  one patient plus coarse Visium thumbnails. Expect weak H&E-only embeddings on other tissues, scanners and stains;
  use a pathology foundation model backbone (`image_encoder: timm`) and your own pretraining for serious H&E work.
- Its spatial domains owe little to its pretraining: on the domain benchmark's sections, models of the same recipe
  score as well untrained as after 600 steps, runs that differ only in their seed differ by up to 0.09 mean ARI, and
  longer runs lower the validation loss and the ARI (`benchmarks/pretraining_steps.py`, log in
  `benchmarks/logs/pretraining_steps.log`). Choose a checkpoint by a downstream probe, not by its validation loss.
- Its pretraining corpus holds every labelled section of the domain benchmark (`benchmarks/domains.py`), so its
  scores there are on its own training slides. Pretrained without the scored data set (`benchmarks/domains_folds.py`,
  3 seeds) the recipe scores a mean ARI of 0.153 over those sections; `storm.tl.embed(adata, "from_data")`, which
  trains nothing, scores 0.309 (`benchmarks/domains_from_data.py`), and is what `storm.tl.embed(adata)` uses
  when it reads expression alone; storm-mini is its default only where an H&E image is read.
"""
    lr = None
    try:
        import yaml

        lr = yaml.safe_load(args.config.read_text()).get("optim", {}).get("lr")
    except Exception:  # the card is still useful without it
        pass
    (target / "MODEL_CARD.md").write_text(card.replace("{lr}", str(lr)))
    print(f"shipped {args.name}: {size_mb:.1f} MB, sha256 {weights['sha256'][:16]}… → {target}")


if __name__ == "__main__":
    main()
