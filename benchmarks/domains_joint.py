"""Joint spatial domains over several slides: one label set, with and without batch correction, against one by one.

Groups (``benchmarks/domains.py``'s labelled sections, loaded and scored the same way):

- ``her2st``: the five pathologist-labelled HER2ST sections B1, C1, D1, E1, F1, one per patient;
  ``batch_key="patient"``; K = number of classes other than ``undetermined`` (one by one: those of the section;
  jointly: those of the five);
- ``dlpfc``: DLPFC 151673 and 151674, two adjacent sections of one donor, K = 7 layers; ``batch_key="library_id"``
  (the slide).

Each section is embedded once by storm's default :func:`storm.tl.embed` (the shipped model), then clustered by
:func:`storm.tl.domains` (defaults) in four ways:

- ``one by one``: each section alone with its own K (its labels mean nothing on another section);
- ``joint``: all sections of the group in one call (a list of AnnData), no correction;
- ``joint + batch_key``: the same with ``batch_key`` (Harmony, storm's ``sigma=1.0``);
- ``joint + batch_key, sigma 0.1``: harmonypy's own kernel width (``harmony_kwargs={"sigma": 0.1}``).

Scores: ARI, NMI on the scored spots of each section, CHAOS of its predicted map, and ``pooled ARI``: one ARI over
the scored spots of all sections of the group, which is high only when a label means the same class on every
section. Then, for ``joint + batch_key``, the domains with their spots per section, the pathologist class or
layer most of their scored spots have, and the top 5 markers of :func:`storm.tl.domain_markers` (Wilcoxon on
log-normalised counts of the genes all sections share).

The model's pretraining corpus is read from its ``config.json`` and printed: storm-mini's holds every section of
both groups, so these are scores on slides the model was trained on (the tables say so).

With ``--model from_data`` the group's sections are embedded together by ``storm.tl.embed(sections, "from_data")``
(one untrained model set up on all of them: no pretraining corpus, nothing seen before) instead.

Usage: python benchmarks/domains_joint.py [--groups her2st dlpfc] [--model shipped|from_data] [--out CSV]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if "STORM_DATA_MIRROR" not in os.environ and (HERE.parents[1] / "shared" / "data").is_dir():
    os.environ["STORM_DATA_MIRROR"] = str(HERE.parents[1] / "shared" / "data")

from domains import DLPFC, HER2ST, load_section, n_classes, score  # noqa: E402

#: sections, batch column, dataset name in a model's corpus
GROUPS = {"her2st": (HER2ST, "patient", "her2st"), "dlpfc": (DLPFC, "library_id", "dlpfc")}
JOINT_MODES = {
    "joint": {},
    "joint + batch_key": {"batch_key": True},
    "joint + batch_key, sigma 0.1": {"batch_key": True, "harmony_kwargs": {"sigma": 0.1}},
}
MARKER_MODE = "joint + batch_key"
N_MARKERS = 5


def model_corpus() -> dict:
    """The pretraining data of the shipped model, as its ``config.json`` records it."""
    from storm.models._checkpoint import resolve_pretrained

    return json.loads((resolve_pretrained(None) / "config.json").read_text())["training"]["data"]


def in_corpus(corpus: dict, dataset: str, section: str) -> bool:
    chosen = corpus.get(dataset)
    return chosen == "all" or (isinstance(chosen, list) and section in chosen)


def embedded(sections: tuple[str, ...], model: str) -> tuple[list, list[np.ndarray], float]:
    """The sections' AnnData embedded by ``storm.tl.embed``, their scoring labels, and the seconds.

    ``model="shipped"``: each section by storm-mini (``embed``'s default); ``"from_data"``: the group's sections in one
    call, so one untrained model set up on all of them embeds them in one space.
    """
    import storm

    adatas, truths = [], []
    for section in sections:
        adata, truth, _ = load_section(section)
        adatas.append(adata.copy())  # load_section's result is cached
        truths.append(truth)
    start = time.perf_counter()
    if model == "from_data":
        storm.tl.embed(adatas, "from_data")
    else:  # the shipped storm-mini, named: embed's default for expression alone is "from_data"
        model = storm.models.StormModel.from_pretrained()
        for adata in adatas:
            storm.tl.embed(adata, model)
    return adatas, truths, time.perf_counter() - start


def pooled_ari(labels: list[np.ndarray], truths: list[np.ndarray]) -> float:
    import storm

    pred = np.concatenate([np.asarray(p).astype(str) for p in labels])
    truth = np.concatenate(truths)
    keep = np.array([t is not None for t in truth])
    return storm.metrics.ari(truth[keep].astype(str), pred[keep])


def cluster(group: str, adatas: list, truths: list[np.ndarray]) -> tuple[list[dict], dict[str, list[np.ndarray]]]:
    """Rows of every (mode, section) and the labels of each mode."""
    import storm

    sections, batch_key, _ = GROUPS[group]
    k_joint = len({t for truth in truths for t in truth if t is not None})
    labels: dict[str, list[np.ndarray]] = {"one by one": []}
    ks = {"one by one": [n_classes(t) for t in truths]}
    for adata, k in zip(adatas, ks["one by one"], strict=True):
        storm.tl.domains(adata, k, key_added="one_by_one")
        labels["one by one"].append(adata.obs["one_by_one"].to_numpy())
    for mode, options in JOINT_MODES.items():
        kwargs = {"harmony_kwargs": options["harmony_kwargs"]} if "harmony_kwargs" in options else {}
        if options.get("batch_key"):
            kwargs["batch_key"] = batch_key
        storm.tl.domains(adatas, k_joint, key_added="joint", **kwargs)
        labels[mode] = [a.obs["joint"].to_numpy() for a in adatas]
        ks[mode] = [k_joint] * len(adatas)
        if mode == MARKER_MODE:
            for a in adatas:
                a.obs["joint_domain"] = a.obs["joint"]
    rows = []
    for mode, per_section in labels.items():
        for section, adata, truth, pred, k in zip(sections, adatas, truths, per_section, ks[mode], strict=True):
            rows.append(
                {"group": group, "mode": mode, "section": section, "k": k}
                | score(pred, truth, np.asarray(adata.obsm["spatial"]))
            )
        rows.append({"group": group, "mode": mode, "section": "pooled", "ari": pooled_ari(per_section, truths)})
    return rows, labels


def marker_table(group: str, adatas: list, truths: list[np.ndarray]) -> pd.DataFrame:
    """Per joint domain (``MARKER_MODE``): spots per section, the majority reference class, the top markers."""
    import anndata as ad

    import storm

    sections = GROUPS[group][0]
    both = ad.concat(
        [ad.AnnData(X=a.X, obs=a.obs[["joint_domain"]], var=pd.DataFrame(index=a.var_names)) for a in adatas],
        join="inner",
        label="section",
        keys=list(sections),
        index_unique="-",
    )
    both.obs["truth"] = pd.Series(np.concatenate(truths), index=both.obs_names, dtype=object)
    markers = storm.tl.domain_markers(both, groupby="joint_domain", layer="lognorm", n_genes=N_MARKERS)
    counts = pd.crosstab(both.obs["joint_domain"], both.obs["section"]).reindex(columns=list(sections))
    rows = []
    for domain, spots in counts.iterrows():
        scored = both.obs.loc[(both.obs["joint_domain"] == domain) & both.obs["truth"].notna(), "truth"]
        top = scored.value_counts()
        genes = markers.loc[markers["domain"] == domain, "gene"].tolist()
        rows.append(
            {
                "domain": domain,
                **{f"spots {s}": int(n) for s, n in spots.items()},
                "majority class": f"{top.index[0]} ({top.iloc[0] / top.sum():.0%})" if len(top) else "",
                f"top {N_MARKERS} markers": ", ".join(genes) if genes else "(none significant)",
            }
        )
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument("--model", choices=["shipped", "from_data"], default="shipped")
    parser.add_argument("--out", default=None, help="default: logs/domains_joint.csv (shipped), _from_data.csv")
    args = parser.parse_args()
    suffix = "" if args.model == "shipped" else f"_{args.model}"
    args.out = args.out or str(HERE / "logs" / f"domains_joint{suffix}.csv")

    import torch

    from storm.models import StormModel

    corpus = model_corpus()
    print(f"load average {os.getloadavg()[0]:.1f}, torch threads {torch.get_num_threads()}")
    if args.model == "shipped":
        print(f"model: {StormModel.from_pretrained()!r} (storm.tl.embed's default, the shipped storm-mini)")
        print(f"its pretraining corpus (config.json): {corpus}")
    else:
        corpus = {}
        print("model: storm.tl.embed(sections, 'from_data'): set up on each group's sections, untrained (no corpus)")
    rows = []
    for group in args.groups:
        sections, batch_key, dataset = GROUPS[group]
        seen = [s for s in sections if in_corpus(corpus, dataset, s)]
        adatas, truths, seconds = embedded(sections, args.model)
        group_rows, _ = cluster(group, adatas, truths)
        rows += group_rows
        table = pd.DataFrame(group_rows)
        wide = table.pivot(index="section", columns="mode", values="ari").reindex([*sections, "pooled"])
        wide = wide[["one by one", *JOINT_MODES]]
        flag = (
            f"CONTAMINATED: {len(seen)} of the {len(sections)} sections ({', '.join(seen)}) are in the model's "
            "pretraining corpus"
            if seen
            else "no section is in the model's pretraining corpus"
        )
        print(f"\n## {group}: ARI per section, batch_key={batch_key!r} ({flag}); embedding {seconds:.0f} s")
        print(wide.round(3).to_string())
        markers = marker_table(group, adatas, truths)
        print(f"\n{group}, domains of '{MARKER_MODE}' ({flag}):")
        print(markers.to_string(index=False))
        pd.DataFrame(rows).to_csv(args.out, index=False)


if __name__ == "__main__":
    main()
