"""Per-section self-supervised adaptation with a structure-aware objective, from the ``from_data`` initialisation.

For each labelled section and seed, storm-mini's network is set up on the section (``StormModel.setup``, 3,000 genes,
``random_state=seed``: one ``from_data`` initialisation, untrained) and trained on that section alone with an objective
on the niche embeddings of two views of each window: ``neighbour`` (the second view is the window centred on a nearest
neighbour of its centre) or ``window`` (the same window), both views with gene and spot dropout. The objective is
contrastive (:class:`storm.nn.NicheContrastiveLoss`, the other windows of the batch as negatives: ``neighbour``,
``window``) or Novae's swapped prototype assignment (:class:`storm.nn.NichePrototypeLoss`, 256 prototypes,
Sinkhorn-Knopp codes with 3 iterations and epsilon 0.05: ``prototype-neighbour``, ``prototype-window``). No label is
used. After ``steps`` optimiser steps the section is embedded (``storm.tl.embed``, expression) and clustered
(``storm.tl.domains``, defaults, true K); ``steps = 0`` (``none``) is the untrained initialisation itself. The learning
rate is constant after a short warm-up, so the runs at 30 and 100 steps of one (objective, lr, seed) are one trajectory
evaluated twice; ``seconds`` of a run is setup + its steps + embed + domains. Every parameter of the network, of a
projection head and of the prototypes is trained (AdamW, weight decay 0.05), 32 windows a step (two views each),
temperature 0.1, 30 % of genes and 20 % of spots dropped.

The batch was set by a pilot (F1, seed 0, batch 64, lr 1e-4 and 1e-3; not in the logs), which at 0.4-1.5 s a step on
the shared machine would not fit 100 steps of a DLPFC section into 60 s.

Settings are chosen by the cross-dataset rule of ``domains_folds.py``: the DLPFC sections' setting is the one with
the highest mean ARI on the HER2ST sections and the reverse, so no section picks its own setting. The choice is
over every setting measured on all sections and seeds (every objective, step budget and learning rate).

Usage::

    STORM_DATA_MIRROR=../shared/data nice -n 10 .venv/bin/python benchmarks/domains_objectives.py
    # every objective at every step budget of STEPS, 3 seeds, the 7 sections: logs/domains_objectives.{log,csv}.
    # The csv is a cache: each run is appended as it is measured, runs found there are not repeated, so a run cut
    # short resumes. --objectives / --lrs add settings to it; --sections / --seeds run a subset (nothing written).
    .venv/bin/python benchmarks/domains_objectives.py --summary-only   # the tables of the csv
"""

from __future__ import annotations

import argparse
import copy
import csv
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _folds import SEEDS  # noqa: E402
from _harness import print_table  # noqa: E402
from domains import SECTIONS, Tee, load_section, n_classes, score  # noqa: E402

N_GENES = 3000
CONTRASTIVE = ("neighbour", "window")
PROTOTYPE = tuple(f"prototype-{views}" for views in CONTRASTIVE)
OBJECTIVES = CONTRASTIVE + PROTOTYPE
LRS = (1e-4,)  # the paper's pretraining rate; 1e-3 only in the pilot (module docstring)
STEPS = (30, 100)
BATCH = 32
WARMUP = 5
TEMPERATURE = 0.1


def is_dlpfc(section: str) -> bool:
    return section.isdigit()


def domains_ari(adata, model, truth) -> tuple[float, float]:
    """Embed (expression, niche) and cluster with the true K; the ARI and the seconds taken."""
    import storm

    start = time.perf_counter()
    storm.tl.embed(adata, model, mode="expression")
    storm.tl.domains(adata, n_classes(truth))
    ari = score(adata.obs["storm_domains"].to_numpy(), truth, adata.obsm["spatial"])["ari"]
    return ari, time.perf_counter() - start


def train(model, slide, objective: str, lr: float, seed: int, checkpoints, evaluate):
    """Train ``model`` in place on one prepared slide; call ``evaluate(step, train_seconds)`` at each checkpoint."""
    from storm.nn import NicheContrastiveLoss, NichePrototypeLoss, sample_neighbours

    net = model.module
    loss_class = NichePrototypeLoss if objective in PROTOTYPE else NicheContrastiveLoss
    criterion = loss_class(net.config.dim, temperature=TEMPERATURE)
    views_of = objective.removeprefix("prototype-")
    params = [p for p in net.parameters() if p.requires_grad] + list(criterion.parameters())
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: min(1.0, (s + 1) / WARMUP))
    expr_all = torch.from_numpy(slide.expression(np.arange(slide.n_obs)))
    gene_mask = torch.from_numpy(slide.gene_mask)
    index_all = torch.from_numpy(slide.index)
    offsets_all = torch.from_numpy(slide.offsets_um)
    elapsed, losses = 0.0, []
    for step in range(1, max(checkpoints) + 1):
        start = time.perf_counter()
        gen = torch.Generator().manual_seed(seed * 100_003 + step)
        centres = torch.randperm(slide.n_obs, generator=gen)[:BATCH]
        index_a, offsets_a = index_all[centres], offsets_all[centres]
        other = sample_neighbours(index_a, offsets_a, gen) if views_of == "neighbour" else centres
        index_b, offsets_b = index_all[other], offsets_all[other]
        both = torch.cat([index_a, index_b])
        rows = torch.unique(both[both >= 0])
        local = torch.where(both >= 0, torch.searchsorted(rows, both.clamp_min(0)), -1)
        views = ((local[:BATCH], offsets_a), (local[BATCH:], offsets_b))
        loss = criterion(net, expr_all[rows], gene_mask, views, gen)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        losses.append(loss.detach().item())
        elapsed += time.perf_counter() - start
        if step in checkpoints:
            evaluate(step, elapsed, float(np.mean(losses[-10:])))
    net.eval()


CSV = HERE / "logs" / "domains_objectives.csv"
FIELDS = ("section", "seed", "objective", "lr", "steps", "ari", "seconds", "loss")


def run_line(r: dict) -> str:
    """One measured run, as the log prints it."""
    loss = "" if np.isnan(r["loss"]) else f", loss {r['loss']:.3f}"
    return (f"{r['section']} seed {r['seed']} | {r['objective']} lr {r['lr']:g} steps {r['steps']}: "
            f"ARI {r['ari']:.3f} ({r['seconds']:.0f} s{loss})")  # fmt: skip


def main() -> None:
    import storm

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", nargs="*", default=list(SECTIONS))
    parser.add_argument("--seeds", nargs="*", type=int, default=list(SEEDS))
    parser.add_argument("--lrs", nargs="*", type=float, default=list(LRS))
    parser.add_argument("--objectives", nargs="*", choices=OBJECTIVES, default=list(OBJECTIVES))
    parser.add_argument("--summary-only", action="store_true", help="print the tables of the csv, run nothing")
    args = parser.parse_args()
    if args.summary_only:
        summarise(read_logs(), sys.stdout)
        return
    full = args.sections == list(SECTIONS) and args.seeds == list(SEEDS)
    torch.set_num_threads(1)
    # the csv is a cache: a full run appends each run as it is measured and skips those found there
    cached = {key(r) for r in read_logs()} if full else set()
    if full and not CSV.exists():
        CSV.write_text(",".join(FIELDS) + "\n")

    def record(section, seed, objective, lr, steps, ari, seconds, loss=float("nan")):
        row = dict(zip(FIELDS, (section, seed, objective, lr, steps, ari, seconds, loss), strict=True))
        print(run_line(row), flush=True)
        if full:
            with CSV.open("a", newline="") as fh:
                csv.DictWriter(fh, fieldnames=FIELDS).writerow(row)

    for seed in args.seeds:
        for section in args.sections:
            todo = [(o, lr) for o in args.objectives for lr in args.lrs
                    if any((section, seed, o, lr, s) not in cached for s in STEPS)]  # fmt: skip
            untrained_cached = (section, seed, "none", 0.0, 0) in cached
            if not todo and untrained_cached:
                continue
            adata, truth, _ = load_section(section)
            adata = adata.copy()
            start = time.perf_counter()
            base = storm.models.StormModel.setup(adata, n_top_genes=N_GENES, random_state=seed)
            setup_s = time.perf_counter() - start
            (slide,) = base.prepare(adata, mode="expression")
            if not untrained_cached:
                ari, embed_s = domains_ari(adata, base, truth)
                record(section, seed, "none", 0.0, 0, ari, setup_s + embed_s)
            for objective, lr in todo:
                torch.manual_seed(seed)  # the projection head's (and prototypes') initialisation
                model = copy.deepcopy(base)
                run = (section, seed, objective, lr)

                def evaluate(step, train_s, loss, model=model, run=run, adata=adata, truth=truth, setup_s=setup_s):
                    ari, embed_s = domains_ari(adata, model, truth)
                    record(*run, step, ari, setup_s + train_s + embed_s, loss)

                train(model, slide, objective, lr, seed, STEPS, evaluate)
    if not full:
        return
    rows = read_logs()
    with CSV.with_suffix(".log").open("w") as log:
        order = {name: i for i, name in enumerate(("none", *OBJECTIVES))}
        for r in sorted(rows, key=lambda r: (r["seed"], SECTIONS.index(r["section"]), order[r["objective"]],
                                             r["lr"], r["steps"])):  # fmt: skip
            print(run_line(r), file=log)
        summarise(rows, Tee(sys.stdout, log))


def key(r: dict) -> tuple:
    return r["section"], r["seed"], r["objective"], r["lr"], r["steps"]


def read_logs() -> list[dict]:
    """Rows of ``logs/domains_objectives.csv``; a run found twice (a run cut short, then repeated) counted once."""
    rows: dict[tuple, dict] = {}
    if CSV.exists():
        with CSV.open() as fh:
            for r in csv.DictReader(fh):
                r = {**r, **{k: float(r[k]) for k in ("lr", "ari", "seconds", "loss")}, "seed": int(r["seed"]),
                     "steps": int(r["steps"])}  # fmt: skip
                rows.setdefault(key(r), r)
    return list(rows.values())


def summarise(rows: list[dict], out) -> None:
    """Per-setting table, and the setting each data set gets from the other (the cross-dataset rule)."""
    runs: dict[tuple, set] = {}
    for r in rows:
        runs.setdefault((r["objective"], r["lr"], r["steps"]), set()).add((r["section"], r["seed"]))
    every = {(section, seed) for section in SECTIONS for seed in SEEDS}
    incomplete = sorted(setting for setting, done in runs.items() if done != every)
    if incomplete:
        print(f"left out, not measured on every section and seed: {incomplete}", file=out)
    settings = sorted((s for s in runs if s not in incomplete), key=lambda s: (s[2] > 0, s))

    def values(setting, section):
        return [r["ari"] for r in rows if (r["objective"], r["lr"], r["steps"]) == setting and r["section"] == section]

    def mean_on(setting, dlpfc: bool) -> float:
        return float(np.mean([np.mean(values(setting, s)) for s in SECTIONS if is_dlpfc(s) == dlpfc]))

    # ties go to the cheaper setting (fewer steps first)
    chosen = {d: max(settings, key=lambda s: (mean_on(s, not d), -s[2])) for d in (True, False)}
    table = []
    for setting in [*settings, "chosen"]:
        label = "chosen on the other data set" if setting == "chosen" else "{} lr {:g} {}".format(*setting)
        cells, per_section, seconds = {"setting": label}, {}, []
        for section in SECTIONS:
            s = chosen[is_dlpfc(section)] if setting == "chosen" else setting
            v = values(s, section)
            per_section[section] = np.mean(v)
            cells[section] = f"{np.mean(v):.3f} [{min(v):.3f}, {max(v):.3f}]"
            if is_dlpfc(section):
                seconds += [r["seconds"] for r in rows if (r["objective"], r["lr"], r["steps"]) == s
                            and r["section"] == section]  # fmt: skip
        cells["mean"] = f"{np.mean(list(per_section.values())):.3f}"
        cells["DLPFC mean"] = f"{np.mean([v for s, v in per_section.items() if is_dlpfc(s)]):.3f}"
        cells["s per DLPFC section"] = f"{np.mean(seconds):.0f}"
        table.append(cells)
    print(f"\nchosen: DLPFC {chosen[True]} (on HER2ST), HER2ST {chosen[False]} (on DLPFC)", file=out)
    print("ARI per section, mean [lowest, highest] over 3 seeds; one from_data initialisation adapted, domains, true K",
          file=out)  # fmt: skip
    print_table(table, ["setting", *SECTIONS, "mean", "DLPFC mean", "s per DLPFC section"], file=out)


if __name__ == "__main__":
    main()
