"""Domains from ``storm.tl.embed(adata, "from_data")``: how many untrained initialisations to average.

``from_data`` builds storm-mini's network on each section itself and does not train it
(:func:`storm.models.from_data`), so no section is ever scored by a model trained on it. One initialisation is a
random feature map whose domains vary with its seed; the mean embedding of ``n_models`` of them varies less. Each
``n_models`` of :data:`N_MODELS` is run with three disjoint seed sets (seed ``s`` uses initialisations
``s·n … s·n + n - 1``) on the seven labelled sections, then ``storm.tl.domains`` (defaults, true K).

The choice of ``n_models`` follows the rule of ``domains_folds.py``: the DLPFC sections' value is the one with the
higher mean ARI on the HER2ST sections, and the reverse, so no section picks its own setting.

Usage: python benchmarks/domains_from_data.py      # writes logs/domains_from_data.{log,csv}
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
from domains import SECTIONS, Tee, load_section, n_classes, score  # noqa: E402

N_MODELS = (1, 5)
N_GENES = 3000


def run(section: str, n_models: int, seed: int) -> tuple[float, float]:
    """ARI of ``from_data`` (``n_models`` initialisations, seed set ``seed``) + ``domains`` and its seconds."""
    import storm

    adata, truth, _ = load_section(section)
    adata = adata.copy()
    start = time.perf_counter()
    model = storm.models.from_data(adata, n_top_genes=N_GENES, n_models=n_models, random_state=seed * n_models)
    storm.tl.embed(adata, model, mode="expression")
    storm.tl.domains(adata, n_classes(truth))
    seconds = time.perf_counter() - start
    return score(adata.obs["storm_domains"].to_numpy(), truth, adata.obsm["spatial"])["ari"], seconds


def is_dlpfc(section: str) -> bool:
    return section.isdigit()


def main() -> None:
    out = Tee(sys.stdout, (HERE / "logs" / "domains_from_data.log").open("w"))
    rows = []
    for n_models in N_MODELS:
        for seed in SEEDS:
            for section in SECTIONS:
                ari, seconds = run(section, n_models, seed)
                rows.append({"n_models": n_models, "seed": seed, "section": section, "ari": ari, "seconds": seconds})
                line = f"n_models {n_models}, seed {seed} | {section}: ARI {ari:.3f} ({seconds:.0f} s)"
                print(line, file=out, flush=True)
    with (HERE / "logs" / "domains_from_data.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def mean(n: int, dlpfc: bool) -> float:
        return float(np.mean([r["ari"] for r in rows if r["n_models"] == n and is_dlpfc(r["section"]) == dlpfc]))

    # each data set's n_models is the one that scores best on the other data set (ties: fewer models)
    chosen = {dlpfc: max(N_MODELS, key=lambda n: (mean(n, not dlpfc), -n)) for dlpfc in (True, False)}
    table = []
    for label in [*(f"{n}" for n in N_MODELS), "chosen on the other data set"]:
        cells = {"n_models": label}
        per_section = {}
        for section in SECTIONS:
            n = chosen[is_dlpfc(section)] if label.startswith("chosen") else int(label)
            values = [r["ari"] for r in rows if r["n_models"] == n and r["section"] == section]
            per_section[section] = np.mean(values)
            cells[section] = f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"
        cells["mean"] = f"{np.mean(list(per_section.values())):.3f}"
        cells["DLPFC mean"] = f"{np.mean([v for s, v in per_section.items() if is_dlpfc(s)]):.3f}"
        n_for_seconds = chosen[True] if label.startswith("chosen") else int(label)
        dlpfc_seconds = [r["seconds"] for r in rows if r["n_models"] == n_for_seconds and is_dlpfc(r["section"])]
        cells["s per DLPFC section"] = f"{np.mean(dlpfc_seconds):.0f}"
        table.append(cells)
    print(f"\nchosen n_models: DLPFC {chosen[True]} (on HER2ST), HER2ST {chosen[False]} (on DLPFC)", file=out)
    print("ARI per section, mean [lowest, highest] over 3 seed sets; from_data + domains, true K", file=out)
    print_table(table, ["n_models", *SECTIONS, "mean", "DLPFC mean", "s per DLPFC section"], file=out)


if __name__ == "__main__":
    main()
