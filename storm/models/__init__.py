"""The user-facing STORM model: set up from AnnData, embed, save/load (safetensors), from_pretrained."""

from ._adapt import extend_genes, read_panel
from ._checkpoint import EMBEDDED_MODELS
from ._config import StormModelConfig
from ._from_data import DataEnsemble, from_data
from ._model import StormModel, resolve_device
from ._prepare import lognorm_on_panel, match_genes, panel_coverage, prepare_slides, select_genes

__all__ = [
    "EMBEDDED_MODELS",
    "DataEnsemble",
    "StormModel",
    "StormModelConfig",
    "extend_genes",
    "from_data",
    "lognorm_on_panel",
    "match_genes",
    "panel_coverage",
    "prepare_slides",
    "read_panel",
    "resolve_device",
    "select_genes",
]
