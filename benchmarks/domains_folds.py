"""storm's domains on sections its model never saw: each section scored only by models of its held-out fold.

The folds (``benchmarks/_folds.py``): ``dlpfc-out`` models are storm-mini's recipe pretrained on HER2ST alone and score
DLPFC 151673/151674; ``her2st-out`` models are pretrained on DLPFC alone and score the five labelled HER2ST sections
(patients B–F). Every trained seed of a fold is scored (mean and range over the seeds), with storm's default
pipeline (``storm.tl.embed`` + ``storm.tl.domains``, true K) and with ``embed(panel="data")`` (the section's other
genes read zero-shot). The shipped storm-mini, pretrained on all seven sections, is scored beside them as the
contaminated ablation it is.

Spatial smoothing of the niche embedding before clustering (``storm.tl.domains(smooth=σ)``, σ in spot pitches) is
chosen without looking at the scored sections: each fold's models also embed the labelled sections of their own
corpus (the *probe* sections: HER2ST for ``dlpfc-out``, DLPFC for ``her2st-out``), and the σ of the grid with the
highest mean ARI on a fold's probe sections is the σ its held-out sections are scored with. Every σ of the grid is
logged for every section, so the choice can be checked.

Usage::

    python benchmarks/_folds.py 1          # pretrain every fold × seed (runs/domain_folds, git-ignored)
    python benchmarks/domains_folds.py     # score whatever models exist; writes logs/domains_folds.{log,csv}
    python benchmarks/domains_folds.py --tables   # the tables again, from the CSV
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _folds import FOLDS, RUNS, SEEDS, fold_of  # noqa: E402
from _harness import print_table  # noqa: E402
from domains import SECTIONS, Tee, load_section, n_classes, score  # noqa: E402

PIPELINES = {"default": {}, "panel='data'": {"panel": "data"}}
SMOOTH_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)
OWN_GENES = 3000  # the section-own ablation reads the section's 3,000 most variable genes (panel='data' default)


def aris(model, section: str, embed_kwargs: dict, own_seed: int | None = None) -> tuple[dict[float, float], float]:
    """ARI of ``embed`` + ``domains(smooth=σ)`` on ``section`` for each σ of the grid, and the seconds of one run.

    ``own_seed``: instead of ``model``, a model of the recipe's architecture set up on the section itself
    (``StormModel.setup`` with storm-mini's network and window, which are setup's defaults: the section's own 3,000
    most variable genes, gene embeddings from its PCA loadings) and not trained.
    """
    import storm

    adata, truth, _ = load_section(section)
    adata = adata.copy()
    t = time.perf_counter()
    if own_seed is not None:
        model = storm.models.StormModel.setup(adata, n_top_genes=OWN_GENES, random_state=own_seed)
    storm.tl.embed(adata, model, **embed_kwargs)
    embed_seconds = time.perf_counter() - t
    out, seconds = {}, embed_seconds
    for smooth in SMOOTH_GRID:
        t = time.perf_counter()
        storm.tl.domains(adata, n_classes(truth), smooth=smooth)
        if smooth == 0:
            seconds = embed_seconds + time.perf_counter() - t
        out[smooth] = score(adata.obs["storm_domains"].to_numpy(), truth, adata.obsm["spatial"])["ari"]
    return out, seconds


def role(fold, section: str) -> str:
    """``held-out`` (the fold scores it), ``probe`` (a labelled section of the fold's corpus) or ``contaminated``."""
    if fold is None:
        return "contaminated"
    return "held-out" if section in fold.evaluates else "probe"


def chosen_smooth(rows: list[dict], fold_name: str, pipeline: str) -> float:
    """The σ of the grid with the highest mean ARI over the fold's probe rows (all its seeds and probe sections)."""
    probe = [r for r in rows if r["fold"] == fold_name and r["pipeline"] == pipeline and r["role"] == "probe"]
    means = {s: np.mean([r["ari"] for r in probe if r["smooth"] == s]) for s in SMOOTH_GRID}
    return max(SMOOTH_GRID, key=lambda s: (means[s], -s))  # ties: the smaller σ


def summary(picked: list[dict], **label: str) -> dict:
    """One table row (``label`` first): mean [range] ARI per section over the ``picked`` rows (one per seed)."""
    cells = dict(label)
    means = {}
    for section in SECTIONS:
        values = [r["ari"] for r in picked if r["section"] == section]
        if values:
            means[section] = np.mean(values)
            cells[section] = f"{means[section]:.3f} [{min(values):.3f}, {max(values):.3f}] n={len(values)}"
    cells["mean"] = f"{np.mean(list(means.values())):.3f}" if means else ""
    dlpfc = [v for k, v in means.items() if k.startswith("15")]
    cells["DLPFC mean"] = f"{np.mean(dlpfc):.3f}" if dlpfc else ""
    return cells


def main() -> None:
    import storm

    log_path = HERE / "logs" / "domains_folds.log"
    out = Tee(sys.stdout, log_path.open("w"))
    rows = []
    models = [("storm-mini (shipped; trained on every section: contaminated)", None, None)]
    for fold in FOLDS:
        for seed in SEEDS:
            folder = RUNS / fold.name / f"seed{seed}" / "model"
            if (folder / "config.json").is_file():
                models.append((f"{fold.name}, seed {seed}", fold, folder))
    for name, fold, folder in models:
        model = storm.models.StormModel.from_pretrained(folder)
        for section in SECTIONS:
            if fold is not None and section in fold.evaluates:
                assert fold_of(section) is fold  # never scored by a model of another fold's corpus
            for pipeline, kwargs in PIPELINES.items():
                by_smooth, seconds = aris(model, section, kwargs)
                for smooth, ari in by_smooth.items():
                    rows.append({"model": name, "fold": fold.name if fold else "none", "role": role(fold, section),
                                 "pipeline": pipeline, "section": section, "smooth": smooth, "ari": ari,
                                 "seconds": seconds})  # fmt: skip
                grid = " ".join(f"{s:g}:{a:.3f}" for s, a in by_smooth.items())
                print(f"{name} | {role(fold, section)} | {pipeline} | {section}: ARI by smooth {grid} "
                      f"({seconds:.0f} s at smooth 0)", file=out, flush=True)  # fmt: skip
    # ablation: no pretraining at all, a model set up on each section itself; its σ is chosen the way a fold's is,
    # on the other data set's sections (DLPFC's σ from the HER2ST sections, and the reverse)
    for seed in SEEDS:
        name = f"untrained, set up on the section, seed {seed}"
        for section in SECTIONS:
            by_smooth, seconds = aris(None, section, {"mode": "expression"}, own_seed=seed)
            for fold in FOLDS:
                for smooth, ari in by_smooth.items():
                    rows.append({"model": name, "fold": f"{fold.name} (section-own)", "role": role(fold, section),
                                 "pipeline": "section-own", "section": section, "smooth": smooth, "ari": ari,
                                 "seconds": seconds})  # fmt: skip
            grid = " ".join(f"{s:g}:{a:.3f}" for s, a in by_smooth.items())
            print(f"{name} | {section}: ARI by smooth {grid} ({seconds:.0f} s at smooth 0)", file=out, flush=True)
    with (HERE / "logs" / "domains_folds.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    report(rows, out)


def report(rows: list[dict], out) -> None:
    """The two tables: σ by probe sections, then held-out ARI per section without and with the probe-chosen σ."""
    pipelines = [*PIPELINES, "section-own"]
    print("\nMean ARI on each fold's probe sections (its own corpus' labelled sections), by smooth:", file=out)
    probe_table = []
    for fold in sorted({r["fold"] for r in rows if r["role"] == "probe"}):
        for pipeline in pipelines:
            probe = [r for r in rows if r["fold"] == fold and r["pipeline"] == pipeline and r["role"] == "probe"]
            if probe:
                cells = {"fold": fold, "pipeline": pipeline}
                for smooth in SMOOTH_GRID:
                    cells[f"{smooth:g}"] = f"{np.mean([r['ari'] for r in probe if r['smooth'] == smooth]):.3f}"
                cells["chosen"] = f"{chosen_smooth(rows, fold, pipeline):g}"
                probe_table.append(cells)
    print_table(probe_table, ["fold", "pipeline", *(f"{s:g}" for s in SMOOTH_GRID), "chosen"], file=out)

    print("\nARI per section: mean [lowest, highest] over the models that may score it (n = seeds)", file=out)
    table = []
    for pipeline in pipelines:
        shipped = [r for r in rows if r["role"] == "contaminated" and r["pipeline"] == pipeline and r["smooth"] == 0]
        if shipped:
            table.append(summary(shipped, pipeline=pipeline, models="shipped (contaminated)", smooth="0"))
        models = "untrained, set up on the section" if pipeline == "section-own" else "held-out folds"
        for label in ("0", "chosen on probe"):
            picked = []
            for fold in sorted({r["fold"] for r in rows if r["role"] == "held-out" and r["pipeline"] == pipeline}):
                smooth = 0.0 if label == "0" else chosen_smooth(rows, fold, pipeline)
                picked += [r for r in rows if r["fold"] == fold and r["role"] == "held-out"
                           and r["pipeline"] == pipeline and r["smooth"] == smooth]  # fmt: skip
            table.append(summary(picked, pipeline=pipeline, models=models, smooth=label))
    print_table(table, ["pipeline", "models", "smooth", *SECTIONS, "mean", "DLPFC mean"], file=out)


def report_from_csv() -> None:
    """Append the tables to the log again, from the CSV (``--tables``: after changing them, without re-running)."""
    with (HERE / "logs" / "domains_folds.csv").open() as fh:
        rows = [
            {**r, "smooth": float(r["smooth"]), "ari": float(r["ari"]), "seconds": float(r["seconds"])}
            for r in csv.DictReader(fh)
        ]
    with (HERE / "logs" / "domains_folds.log").open("a") as log:
        report(rows, Tee(sys.stdout, log))


if __name__ == "__main__":
    report_from_csv() if "--tables" in sys.argv else main()
