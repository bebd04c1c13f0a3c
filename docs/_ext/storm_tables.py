"""Tables read from the repository when the docs are built: benchmark results and the data sets' citations.

``.. storm-benchmark:: NAME`` renders ``benchmarks/logs/NAME.csv``: no number of the "How storm measures up" page is
typed by hand, each table is computed here from the CSV that the benchmark script wrote. Logs with a summary of
their own are listed in :data:`TABLES`; ``.. storm-benchmark:: *`` shows every other CSV of the folder as it is
(under a heading of its own, when there is one), so a new benchmark appears without editing the docs.

``.. storm-data-citations::`` renders ``data/registry.tsv``: one row per data set, its licences and citations.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

REPO = Path(__file__).resolve().parents[2]
LOGS = REPO / "benchmarks" / "logs"
REGISTRY = REPO / "data" / "registry.tsv"
PRETRAINED_ON = "storm-mini's pretraining corpus includes these sections (self-supervised, without their labels)"


def _domains(log: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    ok = log[log["status"] == "ok"]
    dlpfc = ok["section"].astype(str).str.isdigit()
    grouped = ok.groupby("method")
    table = pd.DataFrame(
        {
            "mean ARI": grouped["ari"].mean(),
            "DLPFC ARI": ok[dlpfc].groupby("method")["ari"].mean(),
            "HER2ST ARI": ok[~dlpfc].groupby("method")["ari"].mean(),
            "mean NMI": grouped["nmi"].mean(),
            "mean CHAOS": grouped["chaos"].mean(),
            "sections": grouped.size().astype(str) + f"/{log['section'].nunique()}",
            "total s": grouped["seconds"].sum(),
            "peak MB": grouped["peak_mb"].max(),
        }
    ).sort_values("mean ARI", ascending=False)
    sections = ", ".join(map(str, log["section"].unique()))
    title = (
        f"Spatial domains, true K, sections {sections}, one run each. storm: storm.tl.embed's default, which for "
        "expression sets the network up on each section, untrained (model='from_data'). storm-mini rows: "
        f"{PRETRAINED_ON}."
    )
    return title, table.rename_axis("method").reset_index()


def _domains_folds(log: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    scored = log[log["role"].isin(["held-out", "contaminated"]) & (log["smooth"] == 0)].copy()
    # rows logged before the objective column are the recipe's objective (masked modelling)
    objective = scored["objective"].fillna("masked") if "objective" in scored else pd.Series("masked", scored.index)
    scored["models"] = [
        "shipped storm-mini (pretrained on every section)"
        if fold == "none"
        else "untrained, set up on the section"
        if fold.endswith("(section-own)")
        else f"pretrained on the other data set (held-out fold), {obj}"
        for fold, obj in zip(scored["fold"], objective, strict=True)
    ]
    scored["section"] = scored["section"].astype(str)
    table = scored.pivot_table(index=["models", "pipeline"], columns="section", values="ari", aggfunc="mean")
    table = table[[s for s in map(str, log["section"].unique()) if s in table.columns]]
    table["mean"] = table.mean(axis=1)
    table["DLPFC mean"] = table[[c for c in table.columns if c.isdigit()]].mean(axis=1)
    seeds = scored.groupby(["models", "pipeline", "section"])["model"].nunique().groupby(level=[0, 1]).max()
    table.insert(0, "seeds", seeds.reindex(table.index).astype(str))
    title = (
        "Spatial domains (ARI, true K, mean over seeds) on sections each model never saw, without smoothing; the "
        "shipped storm-mini row is its own pretraining data. Per-σ and per-seed figures: benchmarks/logs/"
        "domains_folds.log"
    )
    return title, table.reset_index()


def _ari_by_section(log: pd.DataFrame, index: str | list[str]) -> pd.DataFrame:
    """Mean ARI per setting (rows ``index``) and section, in the log's order, then the all-section and DLPFC means."""
    log = log.assign(section=log["section"].astype(str))
    table = log.pivot_table(index=index, columns="section", values="ari", aggfunc="mean", sort=False)
    sections = [s for s in log["section"].unique() if s in table.columns]
    table = table[sections]
    table["mean"] = table.mean(axis=1)
    table["DLPFC mean"] = table[[s for s in sections if s.isdigit()]].mean(axis=1)
    return table


def _domains_from_data(log: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    title = (
        'storm.tl.embed(adata, "from_data"): ARI (true K, mean over 3 seed sets) by the number of untrained '
        "initialisations averaged; no model is trained on any section"
    )
    return title, _ari_by_section(log, "n_models").reset_index()


def _domains_from_data_grid(log: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    table = _ari_by_section(log, ["n_models", "combine", "smooth"])
    her2st = [s for s in table.columns[:-2] if not s.isdigit()]
    table["HER2ST mean"] = table[her2st].mean(axis=1)
    title = (
        "from_data members averaged (mean) or side by side (concat), then domains(smooth=σ): ARI (true K, mean over "
        "3 seed sets). Each data set's setting is chosen on the other's sections: see "
        "benchmarks/logs/domains_from_data_grid.log"
    )
    return title, table.reset_index()


def _domains_objectives(log: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    title = (
        "One from_data initialisation trained on each section with NicheContrastiveLoss (neighbour, window) or "
        "NichePrototypeLoss (prototype-…), lr 1e-4, batch 32: ARI (true K, mean over 3 seeds); steps 0 is the "
        "untrained initialisation. The setting each data set gets from the other: benchmarks/logs/"
        "domains_objectives.log"
    )
    return title, _ari_by_section(log, ["objective", "steps"]).reset_index()


def _from_data_inputs(log: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    table = log.pivot_table(index=["task", "setting"], columns="unit", values="score", sort=False)
    title = (
        "from_data's inputs: counts scaled to 10^4 or to the median total, genes kept, the cell's window or the cell "
        "alone. Domains: ARI (true K); cells: 15-NN accuracy; mean over 3 seed sets. Per-seed figures and the "
        "setting chosen on the other data set: benchmarks/logs/from_data_inputs.log"
    )
    return title, table.reset_index()


def _pretraining_steps(log: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    cols = ["run", "steps", "train_s", "val_loss", "mean", "DLPFC"]
    title = f"storm-mini's recipe at other step budgets and seeds: ARI of the domain benchmark. {PRETRAINED_ON}."
    return title, log[cols].rename(columns={"mean": "mean ARI", "DLPFC": "DLPFC ARI", "train_s": "train s"})


def _cross_platform(log: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    cols = ["dataset", "method", "n_cells", "genes_read", "knn_acc", "chaos", "seconds"]
    title = "Cell types on panels storm-mini was not pretrained on: 15-NN accuracy (5-fold) and CHAOS of 8 domains."
    return title, log[cols].rename(columns={"knn_acc": "15-NN accuracy", "genes_read": "genes read"})


def _virtual_st(log: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    title = (
        "H&E → expression, leave one HER2ST section out (C2–C6), gene-wise Pearson r over the 785 Hist2ST genes. "
        f"{PRETRAINED_ON.replace('these sections', 'these five sections')}."
    )
    return title, log.rename(columns={"mean_r": "mean r", "median_r": "median r", "top50_r": "top-50 r"})


def _virtual_st_folds(log: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    table = log.pivot_table(index="method", columns="test_section", values="mean_r", sort=False)
    return "Mean gene-wise r per held-out section.", table.reset_index()


def _virtual_st_wsi(log: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    cols = ["input", "seconds", "peak_mb", "tiles", "megapixels"]
    return "storm.tl.virtual_st on a whole slide, each input in a fresh process.", log[cols]


#: Log name → summary: (table title, table).
TABLES: dict[str, Callable[[pd.DataFrame], tuple[str, pd.DataFrame]]] = {
    "domains": _domains,
    "domains_folds": _domains_folds,
    "domains_from_data": _domains_from_data,
    "domains_from_data_grid": _domains_from_data_grid,
    "domains_objectives": _domains_objectives,
    "from_data_inputs": _from_data_inputs,
    "pretraining_steps": _pretraining_steps,
    "cross_platform": _cross_platform,
    "virtual_st": _virtual_st,
    "virtual_st_folds": _virtual_st_folds,
    "virtual_st_wsi": _virtual_st_wsi,
}


def _cell(value) -> str:
    if isinstance(value, float):
        if pd.isna(value):
            return "–"
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"
    text = str(value)
    return text.replace("*", r"\*").replace("|", r"\|") or "–"


def list_table(title: str, table: pd.DataFrame, source: str | None = None) -> list[str]:
    """Return a reStructuredText ``list-table`` of ``table``.

    Parameters
    ----------
    title
        Caption of the table.
    table
        The rows.
    source
        The file it was read from (relative to the repository), named under the table.

    Returns
    -------
    The lines.
    """
    lines = [f".. list-table:: {title}", "   :header-rows: 1", "   :class: storm-benchmark", ""]
    for row in [list(table.columns), *table.itertuples(index=False)]:
        lines += [f"   * - {_cell(row[0])}"] + [f"     - {_cell(v)}" for v in row[1:]]
    return [*lines, "", f"*Read from* ``{source}``.", ""] if source else [*lines, ""]


class BenchmarkTable(SphinxDirective):
    """``.. storm-benchmark:: NAME`` (one log) or ``*`` (every log without a summary of its own)."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        """Parse the generated table(s) into the page."""
        name = self.arguments[0]
        names = [p.stem for p in sorted(LOGS.glob("*.csv")) if p.stem not in TABLES] if name == "*" else [name]
        lines: list[str] = []
        for stem in names:
            path = LOGS / f"{stem}.csv"
            if not path.is_file():
                raise self.error(f"no benchmark log {path}")
            self.env.note_dependency(str(path))
            log = pd.read_csv(path)
            title, table = TABLES[stem](log) if stem in TABLES else (f"``{path.name}``", log)
            lines += list_table(title, table, str(path.relative_to(REPO)))
        if name == "*" and names:
            lines = [".. rubric:: Other benchmark logs", "", *lines]
        return _parse(self, lines, LOGS)


def _parse(directive: SphinxDirective, lines: list[str], source: Path) -> list[nodes.Node]:
    container = nodes.container()
    directive.state.nested_parse(StringList(lines, source=str(source)), directive.content_offset, container)
    return container.children


class DataCitations(SphinxDirective):
    """``.. storm-data-citations::``: the data sets of ``data/registry.tsv`` with their licences and citations."""

    def run(self) -> list[nodes.Node]:
        """Parse the table into the page."""
        self.env.note_dependency(str(REGISTRY))
        registry = pd.read_csv(REGISTRY, sep="\t", dtype=str).fillna("")
        rows = [
            (dataset, len(files), "; ".join(files["license"].unique()), " ".join(files["citation"].unique()))
            for dataset, files in registry.groupby("dataset", sort=True)
        ]
        table = pd.DataFrame(rows, columns=["data set", "files", "licence", "citation"])
        return _parse(self, list_table("The registered data sets", table), REGISTRY)


def setup(app):
    """Register the directives."""
    app.add_directive("storm-benchmark", BenchmarkTable)
    app.add_directive("storm-data-citations", DataCitations)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
