"""STORM: a multimodal foundation model of spatial transcriptomics and H&E histology.

Submodules follow scverse conventions: :mod:`storm.pp` (preprocessing), :mod:`storm.tl` (tools),
:mod:`storm.pl` (plots), :mod:`storm.datasets` (real data sets), :mod:`storm.io` (readers). The torch
layers (:mod:`storm.nn`, :mod:`storm.train`) import without AnnData, so they are loaded lazily here: a GPU
node that has only torch installed can ``import storm.nn``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._logging import logger
from ._version import __version__

_SUBMODULES = ("datasets", "io", "pp", "tl", "pl", "nn", "models", "train", "metrics", "clinical")

if TYPE_CHECKING:  # pragma: no cover
    from . import clinical, datasets, io, metrics, models, nn, pl, pp, tl, train

__all__ = ["__version__", "clinical", "datasets", "io", "logger", "metrics", "models", "nn", "pl", "pp", "tl", "train"]


def __getattr__(name: str):
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'storm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
