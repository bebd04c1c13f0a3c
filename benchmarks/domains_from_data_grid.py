"""Domains from ``from_data``, a wider grid: more initialisations, concatenating them, smoothing before clustering.

``domains_from_data.py`` chose ``n_models = 5`` from {1, 5}. This script asks whether more of the same helps, on the
same seven labelled sections and three seed sets: ``n_models`` in :data:`N_MODELS`, the members' niche embeddings
averaged (``DataEnsemble.embed``, the package's) or concatenated side by side, then ``storm.tl.domains`` (defaults,
true K) with ``smooth`` in :data:`SMOOTH` spot pitches. Member ``j`` is ``StormModel.setup(section,
n_top_genes=3000, random_state=j)``, as in :func:`storm.models.from_data`; seed set ``s`` of ``n`` members uses
``j = s·n … s·n + n - 1``, so each section's 60 members are embedded once and shared by every cell of the grid.

The choice follows the rule of ``domains_folds.py``: the DLPFC sections' setting is the one with the highest mean ARI
on the HER2ST sections, and the reverse, so no section picks its own setting.

Usage: python benchmarks/domains_from_data_grid.py   # writes logs/domains_from_data_grid.{log,csv}; ~15 min here
"""

from __future__ import annotations

import csv
import itertools
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _folds import SEEDS  # noqa: E402
from _harness import print_table  # noqa: E402
from domains import SECTIONS, Tee, load_section, n_classes, score  # noqa: E402

N_MODELS = (1, 5, 10, 20)
COMBINE = ("mean", "concat")
SMOOTH = (0.0, 1.0, 2.0)
N_GENES = 3000


def member_niches(adata, n_members: int) -> tuple[list[np.ndarray], float]:
    """Niche embedding of members ``0 … n_members - 1`` and the seconds per member (setup + embed)."""
    from storm.models import StormModel

    niches = []
    start = time.perf_counter()
    for j in range(n_members):
        model = StormModel.setup(adata.copy(), n_top_genes=N_GENES, random_state=j)
        _, niche = model.embed(adata.copy(), mode="expression", niche=True, progress=False)
        niches.append(niche)
    return niches, (time.perf_counter() - start) / n_members


def ari_of(adata, truth, rep: np.ndarray, smooth: float) -> float:
    import anndata as ad

    import storm

    a = ad.AnnData(np.zeros((adata.n_obs, 1), np.float32), obs=adata.obs[[]].copy())
    a.obsm["spatial"] = adata.obsm["spatial"]
    a.obsm["X_storm_niche"] = rep
    storm.tl.domains(a, n_classes(truth), smooth=smooth)
    return score(a.obs["storm_domains"].to_numpy(), truth, adata.obsm["spatial"])["ari"]


def settings() -> list[tuple[int, str, float]]:
    grid = itertools.product(N_MODELS, COMBINE, SMOOTH)
    return [(n, c, s) for n, c, s in grid if n > 1 or c == "mean"]  # one member: mean and concat are the same


def main() -> None:
    out = Tee(sys.stdout, (HERE / "logs" / "domains_from_data_grid.log").open("w"))
    rows = []
    for section in SECTIONS:
        adata, truth, _ = load_section(section)
        niches, per_member = member_niches(adata, max(N_MODELS) * len(SEEDS))
        print(f"{section}: {len(niches)} members, {per_member:.1f} s each (setup + embed)", file=out, flush=True)
        for (n, combine, smooth), seed in itertools.product(settings(), SEEDS):
            members = niches[seed * n : (seed + 1) * n]
            rep = np.mean(members, axis=0) if combine == "mean" else np.concatenate(members, axis=1)
            ari = ari_of(adata, truth, rep, smooth)
            rows.append(
                {"section": section, "n_models": n, "combine": combine, "smooth": smooth, "seed": seed, "ari": ari}
            )
            print(f"{section} | n_models {n}, {combine}, smooth {smooth}, seed {seed}: ARI {ari:.3f}", file=out)
    with (HERE / "logs" / "domains_from_data_grid.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def is_dlpfc(section: str) -> bool:
        return section.isdigit()

    def mean(setting, sections) -> float:
        return float(
            np.mean(
                [
                    r["ari"]
                    for r in rows
                    if (r["n_models"], r["combine"], r["smooth"]) == setting and r["section"] in sections
                ]
            )
        )

    dlpfc = [s for s in SECTIONS if is_dlpfc(s)]
    her2st = [s for s in SECTIONS if not is_dlpfc(s)]
    # each data set's setting is the best on the other data set (ties: the earlier, i.e. simpler, setting)
    chosen = {
        True: max(settings(), key=lambda x: mean(x, her2st)),
        False: max(settings(), key=lambda x: mean(x, dlpfc)),
    }
    table = []
    for label in [*settings(), "chosen on the other data set"]:
        cells = {"setting": label if isinstance(label, str) else f"{label[0]} {label[1]}, smooth {label[2]:g}"}
        per_section = {}
        for section in SECTIONS:
            setting = chosen[is_dlpfc(section)] if isinstance(label, str) else label
            values = [
                r["ari"]
                for r in rows
                if (r["n_models"], r["combine"], r["smooth"]) == setting and r["section"] == section
            ]
            per_section[section] = np.mean(values)
            cells[section] = f"{np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]"
        cells["mean"] = f"{np.mean(list(per_section.values())):.3f}"
        cells["DLPFC mean"] = f"{np.mean([per_section[s] for s in dlpfc]):.3f}"
        cells["HER2ST mean"] = f"{np.mean([per_section[s] for s in her2st]):.3f}"
        table.append(cells)
    print(f"\nchosen: DLPFC {chosen[True]} (on HER2ST), HER2ST {chosen[False]} (on DLPFC)", file=out)
    print("ARI per section, mean [lowest, highest] over 3 seed sets; from_data members + domains, true K", file=out)
    print_table(table, ["setting", *SECTIONS, "mean", "DLPFC mean", "HER2ST mean"], file=out)


if __name__ == "__main__":
    main()
