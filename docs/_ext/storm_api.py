"""API reference pages written from each module's ``__all__`` at build time, grouped as scanpy groups its API.

Every public name gets an autosummary entry, so autosummary writes one page per function, class and constant; a
name added to an ``__all__`` appears without editing the docs. Names are grouped by the private module that
defines them (read from the ``from ._x import ...`` lines of the package's ``__init__.py``); :data:`SECTIONS` gives
the groups their titles and order, and a private module missing from it gets a group titled by its own docstring.
"""

from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import storm

ROOT = Path(storm.__file__).resolve().parent

#: Public module → (page title, [(group title, [private modules])]), in the order of the API index.
SECTIONS: dict[str, tuple[str, list[tuple[str, list[str]]]]] = {
    "pp": (
        "Preprocessing",
        [
            ("Quality control", ["_qc", "_filter"]),
            ("Normalisation and gene panels", ["_normalize", "_harmonize"]),
            ("Patches in µm", ["_scale", "_patches"]),
            ("Stain normalisation", ["_stain", "_stain_profile"]),
            ("Spatial windows", ["_windows"]),
            ("Transcripts into bins", ["_binning"]),
        ],
    ),
    "tl": (
        "Tools",
        [
            ("Embeddings", ["_embed"]),
            ("Spatial domains", ["_domains", "_markers", "_enrichment"]),
            (
                "Virtual spatial transcriptomics",
                ["_expression_head", "_predict_expression", "_virtual_st", "_expression_features"],
            ),
            ("Slide-level clinical prediction", ["_slide", "storm.clinical._signatures"]),
        ],
    ),
    "pl": (
        "Plotting",
        [
            ("Spatial maps", ["_spatial", "_domains", "_markers", "_embedding"]),
            ("Virtual spatial transcriptomics", ["_expression", "_risk_map"]),
            ("Clinical", ["_clinical"]),
        ],
    ),
    "io": (
        "Reading",
        [
            ("Spot platforms", ["_visium", "_visium_hd", "_legacy_st"]),
            ("Single-cell platforms", ["_xenium", "_cosmx", "_merscope"]),
            ("Images", ["_image"]),
            ("R data files", ["_rdata"]),
        ],
    ),
    "datasets": (
        "Datasets",
        [
            ("Spot data sets", ["_dlpfc", "_her2st"]),
            ("Single-cell data sets", ["_single_cell"]),
            ("Clinical cohorts", ["_icb"]),
            ("Small fixtures", ["_fixtures"]),
            ("Genes", ["_genes"]),
            ("Registry and download", ["_registry", "_fetch"]),
        ],
    ),
    "models": (
        "Models",
        [
            ("The STORM model", ["_model", "_config", "_checkpoint"]),
            ("Genes and data preparation", ["_prepare", "_adapt"]),
        ],
    ),
    "train": (
        "Training",
        [
            ("Pretraining", ["_pretrain", "_config", "_probe"]),
            ("Lightning modules and data", ["_module", "_datamodule", "_dataset", "_data", "_patches", "_store"]),
            ("Slide-level risk model", ["_slide"]),
        ],
    ),
    "clinical": (
        "Clinical statistics",
        [
            ("Survival", ["_survival", "_cox"]),
            ("Response", ["_response"]),
            ("Pooling across cohorts", ["_pooling", "_table"]),
            ("Biomarkers and signatures", ["_biomarkers", "_signatures"]),
            ("Input checks", ["_validate"]),
        ],
    ),
    "metrics": (
        "Metrics",
        [
            ("Spatial domains", ["_clustering", "_spatial"]),
            ("Embeddings", ["_knn"]),
            ("Virtual spatial transcriptomics", ["_pearson"]),
        ],
    ),
    "nn": (
        "Neural network modules",
        [
            ("The STORM network", ["_pretrain_model", "_config", "_spatial_encoder", "_multiway", "_attention"]),
            ("Spatial attention bias", ["_alibi"]),
            ("Image encoders", ["_image_encoders", "_timm_encoder", "_stain_features"]),
            ("Expression encoders", ["_expression_encoder", "_novae"]),
            ("Pretraining objective", ["_masking", "_decoders", "_losses", "_ema", "_llrd", "_batch"]),
            ("Heads", ["_heads"]),
            ("Slide-level risk model", ["_slide_model"]),
        ],
    ),
}


@dataclass(frozen=True)
class Group:
    """One titled group of public names of a module."""

    title: str
    names: list[str]


def defining_modules(module: str) -> dict[str, str]:
    """Map each name imported in ``storm/<module>/__init__.py`` to the module it is imported from.

    Parameters
    ----------
    module
        Public module name, e.g. ``"pp"``.

    Returns
    -------
    ``{name: source}``; ``source`` is relative (``"_qc"``) for the package's own private modules and absolute
    (``"storm.clinical._signatures"``) otherwise.
    """
    tree = ast.parse((ROOT / module / "__init__.py").read_text())
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            source = node.module if node.level == 0 else node.module.split(".")[0]
            for alias in node.names:
                found[alias.asname or alias.name] = source
    return found


def _module_summary(module: str, source: str) -> str:
    name = source if source.startswith("storm.") else f"storm.{module}.{source}"
    doc = importlib.import_module(name).__doc__ or name
    return doc.strip().splitlines()[0].rstrip(".").replace("``", "")


def api_groups(module: str) -> list[Group]:
    """Group the ``__all__`` of ``storm.<module>`` by :data:`SECTIONS`, in ``__all__`` order within a group.

    Parameters
    ----------
    module
        Public module name, e.g. ``"pp"``.

    Returns
    -------
    The groups; every name of ``__all__`` is in exactly one.
    """
    public = importlib.import_module(f"storm.{module}").__all__
    sources = defining_modules(module)
    _, spec = SECTIONS[module]
    groups = [Group(title, [n for n in public if sources.get(n) in members]) for title, members in spec]
    placed = {n for g in groups for n in g.names}
    extra: dict[str, list[str]] = {}
    for name in public:
        if name not in placed:
            extra.setdefault(sources.get(name, ""), []).append(name)
    groups += [Group(_module_summary(module, src) if src else "Other", names) for src, names in extra.items()]
    return [g for g in groups if g.names]


def module_page(module: str) -> str:
    """Return the reStructuredText of the API page of ``storm.<module>``.

    Parameters
    ----------
    module
        Public module name, e.g. ``"pp"``.

    Returns
    -------
    The page: the module docstring, then one autosummary table per group.
    """
    title = f"{SECTIONS[module][0]}: ``storm.{module}``"
    lines = [f".. _api-{module}:", "", title, "=" * len(title), "", f".. automodule:: storm.{module}", ""]
    lines += [f".. currentmodule:: storm.{module}", ""]  # the summaries' short references resolve in the module
    for group in api_groups(module):
        lines += [group.title, "-" * len(group.title), "", ".. autosummary::", "   :toctree: generated/", ""]
        lines += [f"   {name}" for name in group.names]
        lines += [""]
    return "\n".join(lines)


def index_page() -> str:
    """Return the reStructuredText of the API index: one entry per public module.

    Returns
    -------
    The page.
    """
    lines = [".. _api:", "", "API reference", "=============", ""]
    lines += ["Import as ``import storm``; the modules follow scanpy's ``pp`` / ``tl`` / ``pl`` split.", ""]
    lines += [".. toctree::", "   :maxdepth: 1", ""] + [f"   {m}" for m in SECTIONS] + [""]
    return "\n".join(lines)


def write_api_pages(outdir: Path) -> list[Path]:
    """Write the API index and one page per module into ``outdir``, rewriting a file only when it changed.

    Parameters
    ----------
    outdir
        Folder of the pages (``docs/api``).

    Returns
    -------
    The page files.
    """
    outdir.mkdir(parents=True, exist_ok=True)
    pages = {"index": index_page(), **{m: module_page(m) for m in SECTIONS}}
    paths = []
    for name, text in pages.items():
        path = outdir / f"{name}.rst"
        if not path.exists() or path.read_text() != text:  # unchanged pages keep Sphinx's incremental build
            path.write_text(text)
        paths.append(path)
    return paths


def constant_doc(fullname: str) -> list[str] | None:
    """Return the ``#:`` comment of a constant re-exported by a public module, read where the constant is defined.

    autodoc looks for the comment in ``storm/<module>/__init__.py``, finds none there, and would fall back on the
    docstring of the constant's type (``dict``'s, say).

    Parameters
    ----------
    fullname
        ``storm.<module>.<NAME>``.

    Returns
    -------
    The comment's lines, or ``None`` where the name is not a constant with one.
    """
    from sphinx.pycode import ModuleAnalyzer

    _, module, name = fullname.split(".", 2)
    source = defining_modules(module).get(name)
    if source is None:
        return None
    defined_in = source if source.startswith("storm.") else f"storm.{module}.{source}"
    docs = ModuleAnalyzer.for_module(defined_in).find_attr_docs()
    return list(docs[("", name)]) if ("", name) in docs else None


def split_ivars(lines: list[str]) -> list[str]:
    """Return napoleon's ``:ivar a, b: text`` fields as one field per attribute, each with the text.

    numpydoc lets ``a, b`` share an entry of Attributes; as one ``:ivar:`` field Sphinx would read ``a,`` as a type.

    Parameters
    ----------
    lines
        The docstring after napoleon.

    Returns
    -------
    The lines, with each shared field written once per name (its continuation lines repeated too).
    """
    out, i = [], 0
    while i < len(lines):
        match = _SHARED_IVAR.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].startswith(" "):
            end += 1
        for attr in match["names"].split(","):
            out += [f":ivar {attr.strip()}: {match['text']}", *lines[i + 1 : end]]
        i = end
    return out


_SHARED_IVAR = re.compile(r"^:ivar (?P<names>\w+(?:, *\w+)+): ?(?P<text>.*)$")


def _on_process_docstring(app, what, name, obj, options, lines) -> None:
    if what == "data" and name.count(".") == 2 and name.split(".")[1] in SECTIONS:
        doc = constant_doc(name)
        if doc is not None:
            lines[:] = doc
    lines[:] = split_ivars(lines)


def _on_config_inited(app, config) -> None:
    write_api_pages(Path(app.srcdir) / "api")


def _on_collect_pages(app):
    # viewcode links each object of a module's source page back to the page that documented it last, but under
    # the anchor of the module that documented the first object (one per module): a name documented twice
    # (storm.clinical.signature_score, re-exported as storm.tl.signature_score) gets a link to a missing anchor.
    # Point each object back to its page under that module, which holds the anchor.
    for entry in getattr(app.env, "_viewcode_modules", {}).values():
        if entry:
            _code, _tags, used, refname = entry
            for fullname, docname in used.items():
                own = f"api/generated/{refname}.{fullname.split('.')[0]}"
                if docname != own and own in app.env.all_docs:
                    used[fullname] = own
    return []


def setup(app):
    """Register the page generation (before autosummary reads the sources) and the constants' documentation."""
    app.connect("config-inited", _on_config_inited)
    app.connect("autodoc-process-docstring", _on_process_docstring)
    app.connect("html-collect-pages", _on_collect_pages, priority=400)  # before viewcode writes its pages (500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
