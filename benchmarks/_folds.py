"""Held-out folds for storm's domain benchmark: every storm row scores a slide with a model that never saw it.

Each fold pretrains storm-mini's recipe (``storm/train/configs/storm_mini.yaml``, only ``data.datasets`` and the
seed changed) on a corpus that leaves out every slide of the sections it evaluates, and of their donor or patient:

- ``dlpfc-out``: pretrained on every HER2ST section of the mirror (patients B–F), scores DLPFC 151673 and 151674
  (donor Br8100, whose two sections are all the DLPFC the mirror has);
- ``her2st-out``: pretrained on DLPFC 151673/151674, scores the five labelled HER2ST sections B1, C1, D1, E1, F1
  (patients B–F, every HER2ST patient in the mirror).

Leaving a whole data set out is stricter than leaving one donor or patient out: the model has seen no slide of the
evaluated cohort, so gene embeddings, which start from PCA loadings of the corpus, carry nothing from it either.
``fold_of`` and ``corpus_slides`` are what the tests check (``tests/test_benchmark_folds.py``).

Each fold is pretrained with the recipe's objective (masked multimodal modelling, the paper's) and, as the
structure-aware ablation, with Novae's swapped prototype assignment of two views of each window added to it
(``objective.niche_loss: prototype``, weight 1; :class:`storm.nn.NichePrototypeLoss`).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "storm" / "train" / "configs" / "storm_mini.yaml"
RUNS = ROOT / "runs" / "domain_folds"
SEEDS = (0, 1, 2)
#: objective label -> the recipe's ``objective`` section (``None``: the recipe's own, masked modelling alone)
OBJECTIVES = {"masked": None, "masked + prototype": {"niche_loss": "prototype", "niche_weight": 1.0}}

DLPFC_SECTIONS = ("151673", "151674")


@dataclasses.dataclass(frozen=True)
class Fold:
    """A corpus (data sets as ``data.datasets`` of a pretraining config) and the sections its models may score."""

    name: str
    datasets: dict
    evaluates: tuple[str, ...]

    def corpus_slides(self) -> set[str]:
        """Every slide id the fold's models are pretrained on."""
        import storm

        slides: set[str] = set()
        for kind, which in self.datasets.items():
            if kind == "her2st":
                slides |= set(storm.datasets.her2st_sections() if which == "all" else which)
            elif kind == "dlpfc":
                slides |= set(which)
            else:
                raise ValueError(f"unknown data set {kind!r} in fold {self.name}")
        return slides


FOLDS = (
    Fold("dlpfc-out", {"her2st": "all"}, DLPFC_SECTIONS),
    Fold("her2st-out", {"dlpfc": list(DLPFC_SECTIONS)}, ("B1", "C1", "D1", "E1", "F1")),
)


def patient_of(section: str) -> str:
    """Donor or patient of a section: DLPFC sections are all donor Br8100 here; HER2ST ``C3`` is patient C."""
    return "Br8100" if section in DLPFC_SECTIONS else section[0]


def fold_of(section: str) -> Fold:
    """The fold whose models score ``section``; raises when none does or its corpus holds the section's patient."""
    (fold,) = [f for f in FOLDS if section in f.evaluates] or [None]
    if fold is None:
        raise KeyError(f"no fold evaluates section {section!r}")
    seen = {patient_of(s) for s in fold.corpus_slides()}
    if patient_of(section) in seen:
        raise AssertionError(f"fold {fold.name} was pretrained on patient {patient_of(section)} of {section}")
    return fold


def run_name(fold: Fold, objective: str = "masked") -> str:
    """Folder of a fold's runs under ``runs/domain_folds``: the fold's name, suffixed with a niche objective's."""
    extra = OBJECTIVES[objective]
    return fold.name if extra is None else f"{fold.name}-{extra['niche_loss']}"


def fold_config(fold: Fold, objective: str = "masked") -> Path:
    """storm-mini's recipe with the fold's corpus (and objective), written under ``runs/domain_folds/<run>/``."""
    import yaml

    config = yaml.safe_load(RECIPE.read_text())
    config["data"]["datasets"] = fold.datasets
    if OBJECTIVES[objective] is not None:
        config["objective"] = dict(OBJECTIVES[objective])
    path = RUNS / run_name(fold, objective) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def model_folder(fold: Fold, seed: int, objective: str = "masked") -> Path:
    """Where the fold's model of ``seed`` (and ``objective``) is saved."""
    return RUNS / run_name(fold, objective) / f"seed{seed}" / "model"


def pretrain_fold(fold: Fold, seed: int, *, objective: str = "masked", threads: int = 2, log=sys.stdout) -> Path:
    """Pretrain the fold's model for ``seed`` and ``objective`` unless it exists; return its model folder."""
    folder = model_folder(fold, seed, objective).parent
    name = f"{run_name(fold, objective)} seed {seed}"
    if (folder / "model" / "config.json").is_file():
        print(f"[reuse] {name}", file=log, flush=True)
        return folder / "model"
    cmd = [sys.executable, "-m", "storm", "pretrain", str(fold_config(fold, objective)), "--output", str(folder),
           "--seed", str(seed), "--quiet"]  # fmt: skip
    print(f"[train] {name} ...", file=log, flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)}, cwd=ROOT)
    return folder / "model"


if __name__ == "__main__":  # pretrain every fold and seed: python benchmarks/_folds.py [THREADS] [OBJECTIVE]
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    objective = sys.argv[2] if len(sys.argv) > 2 else "masked"
    for f in FOLDS:
        for s in SEEDS:
            pretrain_fold(f, s, objective=objective, threads=threads)
