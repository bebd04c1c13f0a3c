"""storm's domains on sections its model never saw: each section scored only by models of its held-out fold.

The folds (``benchmarks/_folds.py``): ``dlpfc-out`` models are storm-mini's recipe pretrained on HER2ST alone and score
DLPFC 151673/151674; ``her2st-out`` models are pretrained on DLPFC alone and score the five labelled HER2ST sections
(patients B–F). Every trained seed of a fold is scored (mean and range over the seeds), with storm's default
pipeline (``storm.tl.embed`` + ``storm.tl.domains``, true K) and with ``embed(panel="data")`` (the section's other
genes read zero-shot). The shipped storm-mini, pretrained on all seven sections, is scored beside them as the
contaminated ablation it is.

Usage::

    python benchmarks/_folds.py 1          # pretrain every fold × seed (runs/domain_folds, git-ignored)
    python benchmarks/domains_folds.py     # score whatever models exist; writes logs/domains_folds.{log,csv}
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


def aris(model, section: str, embed_kwargs: dict) -> tuple[float, float]:
    """ARI of ``embed`` + ``domains`` on ``section`` and the seconds it took."""
    import storm

    adata, truth, _ = load_section(section)
    adata = adata.copy()
    t = time.perf_counter()
    storm.tl.embed(adata, model, **embed_kwargs)
    storm.tl.domains(adata, n_classes(truth))
    seconds = time.perf_counter() - t
    return score(adata.obs["storm_domains"].to_numpy(), truth, adata.obsm["spatial"])["ari"], seconds


def main() -> None:
    import storm

    log_path = HERE / "logs" / "domains_folds.log"
    out = Tee(sys.stdout, log_path.open("w"))
    rows = []
    models = [
        (
            "storm-mini (shipped; trained on every section: contaminated)",
            None,
            storm.models.StormModel.from_pretrained(),
        )
    ]
    for fold in FOLDS:
        for seed in SEEDS:
            folder = RUNS / fold.name / f"seed{seed}" / "model"
            if (folder / "config.json").is_file():
                models.append((f"{fold.name}, seed {seed}", fold, storm.models.StormModel.from_pretrained(folder)))
    for name, fold, model in models:
        for section in SECTIONS:
            if fold is not None and fold_of(section) is not fold:
                continue  # a fold's models score only the sections left out of their corpus
            for pipeline, kwargs in PIPELINES.items():
                ari, seconds = aris(model, section, kwargs)
                rows.append({"model": name, "fold": fold.name if fold else "none", "pipeline": pipeline,
                             "section": section, "ari": ari, "seconds": seconds})  # fmt: skip
                print(f"{name} | {pipeline} | {section}: ARI {ari:.3f} ({seconds:.0f} s)", file=out, flush=True)
    with (HERE / "logs" / "domains_folds.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    table = []
    for pipeline in PIPELINES:
        for contaminated in (False, True):
            picked = [r for r in rows if r["pipeline"] == pipeline and (r["fold"] == "none") == contaminated]
            if not picked:
                continue
            cells = {
                "pipeline": pipeline,
                "models": "shipped storm-mini (contaminated)" if contaminated else "held-out folds",
            }
            for section in SECTIONS:
                values = [r["ari"] for r in picked if r["section"] == section]
                cells[section] = (
                    f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}] n={len(values)}" if values else ""
                )
            cells["mean"] = f"{np.mean([r['ari'] for r in picked]):.3f}"
            table.append(cells)
    print("\nARI per section: mean [lowest, highest] over the models that may score it (n = seeds)", file=out)
    print_table(table, ["pipeline", "models", *SECTIONS, "mean"], file=out)


if __name__ == "__main__":
    main()
