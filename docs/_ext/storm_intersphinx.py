"""Intersphinx that links online and still builds with ``-W`` on a machine without internet.

For each project of :data:`INVENTORIES` the inventory (``objects.inv``) is taken from, in order: a copy downloaded
within the last week into ``docs/_build/inventories/``, a fresh download, an older downloaded copy, then copies that
ship with the system (Debian's ``python3.11-doc``). Sphinx's ``intersphinx_mapping`` then points at the local file,
with the project's site as the link target, so a build online links exactly like a plain intersphinx set-up.

A project whose inventory cannot be had at all is left out of the mapping, and references to its modules are
rendered as plain code (``nitpick_ignore_regex``) instead of failing the build; the build says which ones. Set
``STORM_DOCS_REQUIRE_INVENTORIES=1`` (e.g. on a documentation host with internet) to make that a warning, which
``-W`` turns into an error.

Before intersphinx looks a reference up, :func:`canonical_target` writes it as the inventories name it: the short
names of the annotations (``np.ndarray``, ``AnnData``, ``Path``) and storm's objects under their private module
(``storm.datasets._registry.RegistryEntry`` is documented as ``storm.datasets.RegistryEntry``).
"""

from __future__ import annotations

import builtins
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

from sphinx.util import logging

logger = logging.getLogger(__name__)

REQUIRE_ENV = "STORM_DOCS_REQUIRE_INVENTORIES"
MAX_AGE_S = 7 * 24 * 3600
TIMEOUT_S = 10

#: name → (documentation site, module prefixes its references use, inventories that ship with the system).
INVENTORIES: dict[str, tuple[str, list[str], list[str]]] = {
    "python": ("https://docs.python.org/3/", [], ["/usr/share/doc/python3.11/html/objects.inv"]),
    "numpy": ("https://numpy.org/doc/stable/", ["numpy"], []),
    "scipy": ("https://docs.scipy.org/doc/scipy/", ["scipy"], []),
    "pandas": ("https://pandas.pydata.org/docs/", ["pandas"], []),
    "matplotlib": ("https://matplotlib.org/stable/", ["matplotlib", "mpl_toolkits"], []),
    "sklearn": ("https://scikit-learn.org/stable/", ["sklearn"], []),
    "anndata": ("https://anndata.readthedocs.io/en/stable/", ["anndata"], []),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable/", ["scanpy"], []),
    "squidpy": ("https://squidpy.readthedocs.io/en/stable/", ["squidpy"], []),
    "torch": ("https://docs.pytorch.org/docs/stable/", ["torch"], []),
    "lightning": ("https://lightning.ai/docs/pytorch/stable/", ["lightning", "pytorch_lightning"], []),
    "lifelines": ("https://lifelines.readthedocs.io/en/stable/", ["lifelines"], []),
    "spatialdata": ("https://spatialdata.scverse.org/en/stable/", ["spatialdata"], []),
}


#: Short names of the annotations (``from __future__ import annotations`` keeps them unevaluated) → full names.
ALIASES = {
    "np": "numpy",
    "pd": "pandas",
    "sp": "scipy.sparse",
    "nn": "torch.nn",
    "AnnData": "anndata.AnnData",
    "Path": "pathlib.Path",
    "PathLike": "os.PathLike",
    "Figure": "matplotlib.figure.Figure",
    "Axes": "matplotlib.axes.Axes",
}
_PRIVATE = re.compile(r"\._[a-z]\w*")  # a private module of a dotted name: storm.tl._embed.embed


def canonical_target(target: str) -> str:
    """Return ``target`` with its alias expanded (:data:`ALIASES`) and, for storm's objects, no private module.

    Parameters
    ----------
    target
        The target of a reference that did not resolve.

    Returns
    -------
    The full name.
    """
    head, dot, rest = target.partition(".")
    if head in ALIASES:
        target = ALIASES[head] + dot + rest
    return _PRIVATE.sub("", target) if target.startswith("storm.") else target


def _on_missing_reference(app, env, node, contnode):
    if node.get("refdomain") != "py":
        return None
    target = canonical_target(node["reftarget"])
    if target == node["reftarget"]:
        return None
    if target.startswith("storm."):  # storm's own: documented under its public name, or not at all
        py = env.domains["py"]
        return py.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], target, node, contnode)
    node["reftarget"] = target  # what intersphinx, and the nitpicky check after it, then look up
    return None


def _python_prefixes() -> list[str]:
    # Without Python's own inventory, the standard library and the builtins are the names to let through.
    return sorted({*sys.stdlib_module_names, *(n for n in dir(builtins) if not n.startswith("_"))})


def _download(url: str, path: Path) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            data = response.read()
    except OSError:
        return False
    if not data.startswith(b"# Sphinx inventory version"):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True


def find_inventory(name: str, cache: Path) -> Path | None:
    """Return a local inventory of project ``name``, downloading it when the cached copy is missing or old.

    Parameters
    ----------
    name
        Key of :data:`INVENTORIES`.
    cache
        Folder of the downloaded inventories.

    Returns
    -------
    The inventory file, or ``None`` where none can be had.
    """
    site, _, system = INVENTORIES[name]
    cached = cache / f"{name}.inv"
    if cached.is_file() and time.time() - cached.stat().st_mtime < MAX_AGE_S:
        return cached
    if _download(site + "objects.inv", cached) or cached.is_file():
        return cached
    return next((Path(p) for p in system if Path(p).is_file()), None)


def _on_config_inited(app, config) -> None:
    cache = Path(app.outdir).parent / "inventories"
    mapping, missing = {}, []
    for name, (site, prefixes, _) in INVENTORIES.items():
        local = find_inventory(name, cache)
        if local is not None:
            mapping[name] = (site, str(local))
            continue
        missing.append(name)
        for prefix in prefixes or _python_prefixes():
            config.nitpick_ignore_regex.append((r"py:.*", rf"{re.escape(prefix)}(\..*)?"))
    config.intersphinx_mapping = mapping
    if missing:
        message = (
            f"no intersphinx inventory could be had for {', '.join(missing)} (offline?): references to them are "
            "plain text in this build, links in a build with internet"
        )
        (logger.warning if os.environ.get(REQUIRE_ENV) else logger.info)(message)


def setup(app):
    """Register the mapping (before intersphinx reads it at ``builder-inited``)."""
    app.connect("config-inited", _on_config_inited, priority=400)
    app.connect("missing-reference", _on_missing_reference, priority=400)  # before intersphinx (500)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
