"""Does more pretraining give better domains? storm-mini's recipe at several step budgets and seeds, scored on domains.

Each run is ``storm pretrain storm/train/configs/storm_mini.yaml --max-steps S --seed R`` (the shipped recipe, only
the step budget and the seed changed; the learning-rate schedule follows the budget) into
``runs/pretraining_steps/<S>_seed<R>`` (git-ignored; a run whose model exists is reused). Every model, and the
shipped storm-mini, is then scored exactly like storm's row of ``benchmarks/domains.py``: ``storm.tl.embed`` and
``storm.tl.domains`` with every default, true K, ARI on the labelled spots of the seven sections.

It answers two questions a maintainer asks before pretraining a bigger model on this recipe: how far apart are
runs that differ only in their seed, and does a lower validation loss buy better domains.

Usage (from the repository root, with the package's environment; about 0.4 s per step on 2 CPU cores)::

    STORM_DATA_MIRROR=../shared/data .venv/bin/python benchmarks/pretraining_steps.py
    .venv/bin/python benchmarks/pretraining_steps.py --runs 600:0 600:1 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _harness import print_table  # noqa: E402
from domains import DLPFC, SECTIONS, Tee, load_section, n_classes, score  # noqa: E402

CONFIG = ROOT / "storm" / "train" / "configs" / "storm_mini.yaml"
RUNS = ROOT / "runs" / "pretraining_steps"
LOGS = HERE / "logs"
SHIPPED = "storm-mini (shipped)"
# three seeds untrained and at the shipped budget (600 steps), two at twice it, one each at half and four times it
DEFAULT_RUNS = [(0, 0), (0, 1), (0, 2), (300, 0), (600, 0), (600, 1), (600, 2), (1200, 0), (1200, 1), (2500, 0)]


def parse_run(text: str) -> tuple[int, int]:
    """``"600:1"`` → (600 steps, seed 1); 0 steps is the initialised model, untrained."""
    try:
        steps, seed = (int(x) for x in text.split(":"))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"a run is STEPS:SEED, e.g. 600:0; got {text!r}") from err
    if steps < 0:
        raise argparse.ArgumentTypeError(f"steps must be ≥ 0, got {steps}")
    return steps, seed


def pretrain(steps: int, seed: int, threads: int, out) -> Path:
    """Train one run unless its model exists; return the model folder."""
    folder = RUNS / f"{steps}_seed{seed}"
    if (folder / "model" / "config.json").is_file():
        print(f"[reuse] {folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder}", file=out)
        return folder / "model"
    cmd = [sys.executable, "-m", "storm", "pretrain", str(CONFIG), "--output", str(folder),
           "--max-steps", str(steps), "--seed", str(seed), "--quiet"]  # fmt: skip
    if steps == 0:  # the gene embeddings initialised from PCA loadings, every other weight at random
        cmd[cmd.index("--max-steps") : cmd.index("--seed")] = ["--no-pretraining"]
    print(f"[train] {steps} steps, seed {seed} ...", file=out, flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, cwd=ROOT)
    return folder / "model"


def training_record(model_dir: Path) -> dict[str, Any]:
    """Steps, training seconds and final validation loss, as the run saved them in ``config.json``."""
    record = json.loads((model_dir / "config.json").read_text()).get("training", {})
    return {
        "steps": record.get("steps"),
        "train_s": record.get("seconds"),
        "val_loss": (record.get("final_metrics") or {}).get("val/loss"),
    }


def domain_aris(model: Any) -> dict[str, float]:
    """ARI of storm's default pipeline with ``model`` on every section (as ``domains.py``'s storm row)."""
    import storm

    aris = {}
    for section in SECTIONS:
        adata, truth, _ = load_section(section)
        adata = adata.copy()
        storm.tl.embed(adata, model)
        storm.tl.domains(adata, n_classes(truth))
        aris[section] = score(adata.obs["storm_domains"].to_numpy(), truth, adata.obsm["spatial"])["ari"]
    return aris


def cell(column: str, value: Any) -> str:
    """A table cell: blank for no value (an untrained run has no loss), seconds as integers, scores to 3 decimals."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if column == "train_s":
        return f"{float(value):.0f}"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def by_budget(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """One row per step budget: the mean ARI and DLPFC ARI averaged over its seeds, with their range."""
    table = []
    for steps in sorted({r["steps"] for r in rows}):
        runs = [r for r in rows if r["steps"] == steps]
        summary = {"steps": str(steps), "seeds": str(len(runs))}
        for key in ("mean", "DLPFC"):
            values = [r[key] for r in runs]
            summary[key] = f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"
        table.append(summary)
    return table


def main(argv: list[str] | None = None) -> None:
    default_runs = " ".join(f"{steps}:{seed}" for steps, seed in DEFAULT_RUNS)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=parse_run, metavar="STEPS:SEED", default=DEFAULT_RUNS,
                        help=f"pretraining runs; 0 steps: not pretrained (default: {default_runs})")  # fmt: skip
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training and scoring (default 2)")
    parser.add_argument("--log", type=Path, default=LOGS / "pretraining_steps.log")
    parser.add_argument("--csv", type=Path, default=LOGS / "pretraining_steps.csv")
    args = parser.parse_args(argv)
    os.environ.setdefault("STORM_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))

    import torch

    from storm.models import StormModel
    from storm.models._checkpoint import resolve_pretrained

    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    with open(args.log, "w") as log_file:
        out = Tee(sys.stdout, log_file)
        print(f"# pretraining steps vs domains {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {args.threads} threads",
              file=out)  # fmt: skip
        models = [(SHIPPED, 0, resolve_pretrained(None))]  # storm_mini.yaml's seed is 0
        for steps, seed in args.runs:
            models.append((f"{steps} steps, seed {seed}", seed, pretrain(steps, seed, args.threads, out)))
        for name, seed, folder in models:
            aris = domain_aris(StormModel.load(folder))
            rows.append({
                "run": name, "seed": seed, **training_record(folder), **aris,
                "mean": float(np.mean(list(aris.values()))), "DLPFC": float(np.mean([aris[s] for s in DLPFC])),
            })  # fmt: skip
            print(f"[scored] {name}: mean ARI {rows[-1]['mean']:.3f}, DLPFC {rows[-1]['DLPFC']:.3f}", file=out)
        print("\nARI of storm's default pipeline (embed + domains, true K) with each pretrained model", file=out)
        shown = [{k: cell(k, v) for k, v in r.items()} for r in rows]
        print_table(shown, ["run", "train_s", "val_loss", *SECTIONS, "mean", "DLPFC"], file=out)
        print("\nBy step budget: mean over the seeds [lowest, highest]", file=out)
        print_table(by_budget([r for r in rows if r["run"] != SHIPPED]), ["steps", "seeds", "mean", "DLPFC"], file=out)
        with open(args.csv, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"\nwrote {args.csv.relative_to(ROOT)}", file=out)


if __name__ == "__main__":
    main()
