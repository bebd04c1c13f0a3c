"""storm's domains on sections its model never saw: each section scored only by models of its held-out fold.

The folds (``benchmarks/_folds.py``): ``dlpfc-out`` models are storm-mini's recipe pretrained on HER2ST alone and score
DLPFC 151673/151674; ``her2st-out`` models are pretrained on DLPFC alone and score the five labelled HER2ST sections
(patients B–F). Every trained seed of a fold is scored (mean and range over the seeds), with storm's default
pipeline (``storm.tl.embed`` + ``storm.tl.domains``, true K) and with ``embed(panel="data")`` (the section's other
genes read zero-shot). The shipped storm-mini, pretrained on all seven sections, is scored beside them as the
contaminated ablation it is. Each fold is pretrained with the recipe's objective (``masked``) and with Novae's
prototype objective added to it (``masked + prototype``, ``_folds.OBJECTIVES``): one row of the tables each.

Spatial smoothing of the niche embedding before clustering (``storm.tl.domains(smooth=σ)``, σ in spot pitches) is
chosen without looking at the scored sections: each fold's models also embed the labelled sections of their own
corpus (the *probe* sections: HER2ST for ``dlpfc-out``, DLPFC for ``her2st-out``), and the σ of the grid with the
highest mean ARI on a fold's probe sections is the σ its held-out sections are scored with. Every σ of the grid is
logged for every section, so the choice can be checked.

The CSV is a cache: a model scored again replaces its rows, and the rows of models no longer on disk (the runs
folder is git-ignored) stay as they were measured; the log is written from the whole CSV.

Usage::

    python benchmarks/_folds.py 1                        # pretrain every fold × seed (runs/domain_folds, ignored)
    python benchmarks/_folds.py 2 "masked + prototype"   # the same with the prototype objective added
    python benchmarks/domains_folds.py     # score whatever models exist; writes logs/domains_folds.{log,csv}
    python benchmarks/domains_folds.py --only "masked + prototype"   # score only that objective's fold models
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

from _folds import FOLDS, OBJECTIVES, SEEDS, fold_of, model_folder, run_name  # noqa: E402
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


def chosen_smooth(rows: list[dict], fold_name: str, pipeline: str, objective: str = "masked") -> float:
    """The σ of the grid with the highest mean ARI over the fold's probe rows (all its seeds and probe sections)."""
    probe = [r for r in rows if r["fold"] == fold_name and r["pipeline"] == pipeline and r["role"] == "probe"
             and r["objective"] == objective]  # fmt: skip
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


CSV = HERE / "logs" / "domains_folds.csv"
FIELDS = ("model", "objective", "fold", "role", "pipeline", "section", "smooth", "ari", "seconds")
SHIPPED = "storm-mini (shipped; trained on every section: contaminated)"


def main(only: str | None = None) -> None:
    """Score the models on disk (``only``: that objective's fold models alone), merge into the CSV, write the log."""
    import storm

    models = [] if only else [(SHIPPED, "masked", None, None)]
    for objective in [only] if only else OBJECTIVES:
        for fold in FOLDS:
            for seed in SEEDS:
                folder = model_folder(fold, seed, objective)
                if (folder / "config.json").is_file():
                    models.append((f"{run_name(fold, objective)}, seed {seed}", objective, fold, folder))
    rows = []
    for name, objective, fold, folder in models:
        model = storm.models.StormModel.from_pretrained(folder)
        for section in SECTIONS:
            if fold is not None and section in fold.evaluates:
                assert fold_of(section) is fold  # never scored by a model of another fold's corpus
            for pipeline, kwargs in PIPELINES.items():
                by_smooth, seconds = aris(model, section, kwargs)
                rows += [{"model": name, "objective": objective, "fold": fold.name if fold else "none",
                          "role": role(fold, section), "pipeline": pipeline, "section": section, "smooth": smooth,
                          "ari": ari, "seconds": seconds} for smooth, ari in by_smooth.items()]  # fmt: skip
                print(run_line(rows[-len(SMOOTH_GRID) :]), flush=True)
    # ablation: no pretraining at all, a model set up on each section itself; its σ is chosen the way a fold's is,
    # on the other data set's sections (DLPFC's σ from the HER2ST sections, and the reverse)
    for seed in [] if only else SEEDS:
        name = f"untrained, set up on the section, seed {seed}"
        for section in SECTIONS:
            by_smooth, seconds = aris(None, section, {"mode": "expression"}, own_seed=seed)
            for fold in FOLDS:
                rows += [{"model": name, "objective": "untrained", "fold": f"{fold.name} (section-own)",
                          "role": role(fold, section), "pipeline": "section-own", "section": section,
                          "smooth": smooth, "ari": ari, "seconds": seconds}
                         for smooth, ari in by_smooth.items()]  # fmt: skip
            print(run_line(rows[-len(SMOOTH_GRID) :]), flush=True)
    scored = {r["model"] for r in rows}
    rows = [r for r in read_rows() if r["model"] not in scored] + rows
    with CSV.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    write_log(rows)


def run_line(grid_rows: list[dict]) -> str:
    """One model × pipeline × section, as the log prints it: the ARI at every σ of the grid."""
    r = grid_rows[0]
    grid = " ".join(f"{g['smooth']:g}:{g['ari']:.3f}" for g in grid_rows)
    # the section-own ablation's run is one per section, whichever fold's role it plays
    where = "" if r["objective"] == "untrained" else f" | {r['role']} | {r['pipeline']}"
    return f"{r['model']}{where} | {r['section']}: ARI by smooth {grid} ({r['seconds']:.0f} s at smooth 0)"


def read_rows() -> list[dict]:
    """Rows of the CSV; those logged before the objective column was added are the recipe's (masked) models."""
    if not CSV.exists():
        return []
    with CSV.open() as fh:
        rows = [
            {**r, "smooth": float(r["smooth"]), "ari": float(r["ari"]), "seconds": float(r["seconds"])}
            for r in csv.DictReader(fh)
        ]
    for r in rows:
        r.setdefault("objective", None)
        r["objective"] = r["objective"] or ("untrained" if r["pipeline"] == "section-own" else "masked")
    return rows


def write_log(rows: list[dict]) -> None:
    """``logs/domains_folds.log``: every measured line of the CSV, then the tables."""
    with (HERE / "logs" / "domains_folds.log").open("w") as log:
        grouped: dict[tuple, list[dict]] = {}
        for r in rows:
            grouped.setdefault((r["model"], r["role"], r["pipeline"], r["section"]), []).append(r)
        seen = set()
        for (model, _role, _pipeline, section), grid_rows in grouped.items():
            if model.startswith("untrained") and (model, section) in seen:
                continue  # the section-own ablation's rows repeat per fold: log each run once
            seen.add((model, section))
            print(run_line(grid_rows), file=log)
        report(rows, Tee(sys.stdout, log))


def report(rows: list[dict], out) -> None:
    """The two tables: σ by probe sections, then held-out ARI per section without and with the probe-chosen σ."""
    pipelines = [*PIPELINES, "section-own"]
    print("\nMean ARI on each fold's probe sections (its own corpus' labelled sections), by smooth:", file=out)
    probe_table = []
    objectives = [*OBJECTIVES, "untrained"]
    for fold in sorted({r["fold"] for r in rows if r["role"] == "probe"}):
        for objective in objectives:
            for pipeline in pipelines:
                probe = [r for r in rows if r["fold"] == fold and r["pipeline"] == pipeline and r["role"] == "probe"
                         and r["objective"] == objective]  # fmt: skip
                if probe:
                    cells = {"fold": fold, "objective": objective, "pipeline": pipeline}
                    for smooth in SMOOTH_GRID:
                        cells[f"{smooth:g}"] = f"{np.mean([r['ari'] for r in probe if r['smooth'] == smooth]):.3f}"
                    cells["chosen"] = f"{chosen_smooth(rows, fold, pipeline, objective):g}"
                    probe_table.append(cells)
    columns = ["fold", "objective", "pipeline", *(f"{s:g}" for s in SMOOTH_GRID), "chosen"]
    print_table(probe_table, columns, file=out)

    print("\nARI per section: mean [lowest, highest] over the models that may score it (n = seeds)", file=out)
    table = []
    for pipeline in pipelines:
        shipped = [r for r in rows if r["role"] == "contaminated" and r["pipeline"] == pipeline and r["smooth"] == 0]
        if shipped:
            table.append(summary(shipped, pipeline=pipeline, models="shipped (contaminated)", smooth="0"))
        for objective in ["untrained"] if pipeline == "section-own" else list(OBJECTIVES):
            held_out = [r for r in rows if r["role"] == "held-out" and r["pipeline"] == pipeline
                        and r["objective"] == objective]  # fmt: skip
            if not held_out:
                continue
            models = "untrained, set up on the section" if objective == "untrained" else f"held-out folds, {objective}"
            for label in ("0", "chosen on probe"):
                picked = []
                for fold in sorted({r["fold"] for r in held_out}):
                    smooth = 0.0 if label == "0" else chosen_smooth(rows, fold, pipeline, objective)
                    picked += [r for r in held_out if r["fold"] == fold and r["smooth"] == smooth]
                table.append(summary(picked, pipeline=pipeline, models=models, smooth=label))
    print_table(table, ["pipeline", "models", "smooth", *SECTIONS, "mean", "DLPFC mean"], file=out)


def report_from_csv() -> None:
    """Write the log again from the CSV (``--tables``: after changing the tables, without re-running)."""
    write_log(read_rows())


if __name__ == "__main__":
    if "--tables" in sys.argv:
        report_from_csv()
    else:
        main(sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None)
