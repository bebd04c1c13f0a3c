"""What ``from_data`` reads: how many genes, and the counts each spot is scaled to before ``log1p``.

:func:`storm.models.from_data` sets storm-mini's network up, untrained, on the data it embeds: the slides'
``n_top_genes`` most variable genes, counts scaled to ``target_sum`` per spot. Both were fixed (3,000 genes, 10⁴, as
storm-mini) when it became the default for expression data. This script measures the alternatives, five
initialisations and three seed sets each (seed set ``s`` uses initialisations ``5s … 5s + 4``, as
``domains_from_data.py``):

- **Domains** on the seven labelled sections (``storm.tl.embed`` + ``storm.tl.domains`` defaults, true K): the
  settings of :data:`DOMAIN_SETTINGS`: genes 1,000 / 3,000 / 5,000 at 10⁴, and 3,000 at the median total
  (scanpy's ``normalize_total`` default). Each data set's setting is chosen on the other data set (the rule of
  ``domains_folds.py``).
- **Cell types** on the two labelled single-cell sets of ``cross_platform.py`` (15-NN accuracy of
  ``obsm['X_storm']``, 5-fold stratified): ``target_sum`` 10⁴ or the median, with the neighbours' context or each
  cell alone. MERFISH's setting is chosen on Xenium and the reverse.

Usage: python benchmarks/from_data_inputs.py   # writes logs/from_data_inputs.{log,csv}; ~20 min here
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _folds import SEEDS  # noqa: E402
from _harness import print_table  # noqa: E402
from cross_platform import DATASETS  # noqa: E402
from domains import SECTIONS, Tee, load_section, n_classes, score  # noqa: E402

N_MODELS = 5
#: (target_sum, n_top_genes); the first is the shipped default
DOMAIN_SETTINGS = ((1e4, 3000), ("median", 3000), (1e4, 1000), (1e4, 5000))
#: (target_sum, context); the first is the shipped default
CELL_SETTINGS = ((1e4, True), ("median", True), (1e4, False), ("median", False))


def label(target, other) -> str:
    name = "median total" if target == "median" else f"{target:.0e}".replace("+0", "")
    if isinstance(other, bool):
        return f"{name}, {'context' if other else 'cell alone'}"
    return f"{name}, {other} genes"


def domains_ari(section: str, target, n_genes: int, seed: int) -> tuple[float, float]:
    import storm

    adata, truth, _ = load_section(section)
    adata = adata.copy()
    start = time.perf_counter()
    model = storm.models.from_data(
        adata, n_top_genes=n_genes, n_models=N_MODELS, target_sum=target, random_state=seed * N_MODELS
    )
    storm.tl.embed(adata, model, mode="expression")
    storm.tl.domains(adata, n_classes(truth))
    seconds = time.perf_counter() - start
    return score(adata.obs["storm_domains"].to_numpy(), truth, adata.obsm["spatial"])["ari"], seconds


def cell_accuracy(name: str, target, context: bool, seed: int) -> tuple[float, float]:
    import storm

    loader, column, drop, _ = DATASETS[name]
    adata = getattr(storm.datasets, loader)()
    labels = adata.obs[column].astype(object).where(adata.obs[column].astype(object) != drop)
    start = time.perf_counter()
    model = storm.models.from_data(adata, n_models=N_MODELS, target_sum=target, random_state=seed * N_MODELS)
    storm.tl.embed(adata, model, mode="expression", context=context)
    seconds = time.perf_counter() - start
    return storm.metrics.knn_accuracy(adata.obsm["X_storm"], labels), seconds


def chosen_on_other(rows: list[dict], groups: dict[str, list[str]]) -> dict[str, str]:
    """Each of the two groups' setting: the best mean on the other group (ties: the earlier, the shipped default)."""
    settings = list(dict.fromkeys(r["setting"] for r in rows))

    def mean(setting: str, members: list[str]) -> float:
        return float(np.mean([r["score"] for r in rows if r["setting"] == setting and r["unit"] in members]))

    best = {g: max(settings, key=lambda s, m=m: (mean(s, m), -settings.index(s))) for g, m in groups.items()}
    first, second = groups
    return {first: best[second], second: best[first]}


def summary(rows: list[dict], units: list[str], groups: dict[str, list[str]], out) -> None:
    """Print each setting's score per unit (section or data set), per group, and the other-group choice."""
    chosen = chosen_on_other(rows, groups)
    group_of = {u: g for g, members in groups.items() for u in members}
    table = []
    for setting in [*dict.fromkeys(r["setting"] for r in rows), "chosen on the other data set"]:
        cells, means = {"setting": setting}, {}
        for u in units:
            s = chosen[group_of[u]] if setting.startswith("chosen") else setting
            values = [r["score"] for r in rows if r["setting"] == s and r["unit"] == u]
            means[u] = float(np.mean(values))
            cells[u] = f"{means[u]:.3f} [{min(values):.3f}, {max(values):.3f}]"
        for g, members in groups.items():
            cells[f"{g} mean"] = f"{np.mean([means[u] for u in members]):.3f}"
        if len(units) > len(groups):
            cells["mean"] = f"{np.mean(list(means.values())):.3f}"
        table.append(cells)
    print(", ".join(f"{g}'s setting (chosen on the other): {s}" for g, s in chosen.items()), file=out)
    columns = ["setting", *units, *(f"{g} mean" for g in groups)] + (["mean"] if len(units) > len(groups) else [])
    print_table(table, columns, file=out)


def main() -> None:
    out = Tee(sys.stdout, (HERE / "logs" / "from_data_inputs.log").open("w"))
    rows: list[dict] = []

    def record(task: str, setting: str, seed: int, unit: str, score: float, seconds: float, metric: str) -> None:
        rows.append({"task": task, "setting": setting, "seed": seed, "unit": unit, "score": score, "seconds": seconds})
        print(f"{task} | {setting}, seed {seed} | {unit}: {metric} {score:.3f} ({seconds:.0f} s)", file=out, flush=True)

    for target, n_genes in DOMAIN_SETTINGS:
        for seed in SEEDS:
            for section in SECTIONS:
                score, seconds = domains_ari(section, target, n_genes, seed)
                record("domains", label(target, n_genes), seed, section, score, seconds, "ARI")
    for target, context in CELL_SETTINGS:
        for seed in SEEDS:
            for name in DATASETS:
                score, seconds = cell_accuracy(name, target, context, seed)
                record("cells", label(target, context), seed, name, score, seconds, "15-NN accuracy")
    with (HERE / "logs" / "from_data_inputs.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    domain_rows = [r for r in rows if r["task"] == "domains"]
    dlpfc = [s for s in SECTIONS if s.isdigit()]
    groups = {"DLPFC": dlpfc, "HER2ST": [s for s in SECTIONS if s not in dlpfc]}
    print(
        "\nDomains: ARI per section, mean [lowest, highest] over 3 seed sets; from_data (5 initialisations) + "
        "domains, true K",
        file=out,
    )
    summary(domain_rows, list(SECTIONS), groups, out)
    cell_rows = [r for r in rows if r["task"] == "cells"]
    print(
        "\nCell types: 15-NN accuracy of X_storm, mean [lowest, highest] over 3 seed sets (PCA-50 at scanpy's "
        "defaults: cross_platform.py)",
        file=out,
    )
    summary(cell_rows, list(DATASETS), {name: [name] for name in DATASETS}, out)


if __name__ == "__main__":
    main()
