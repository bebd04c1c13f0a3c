"""Pretraining with Lightning: data sets of spatial windows, the data module, the Lightning module, ``pretrain``.

Imports torch, lightning and numpy only (AnnData is read by :mod:`storm.models`, called lazily by
:func:`pretrain`), so that training nodes need no single-cell stack to import it.
"""

from ._config import DataConfig, GenesConfig, OptimConfig, PretrainConfig, SetupConfig, TrainerConfig
from ._data import PatchCache, PatchSource, SlideArrays
from ._datamodule import StormDataModule
from ._dataset import SlideBlockSampler, WindowDataset
from ._module import StormLightningModule, WarmupCosine, step_seed
from ._patches import crop_patches, decode_image
from ._pretrain import build_trainer, load_datasets, pretrain

__all__ = [
    "DataConfig",
    "GenesConfig",
    "OptimConfig",
    "PatchCache",
    "PatchSource",
    "PretrainConfig",
    "SetupConfig",
    "SlideArrays",
    "SlideBlockSampler",
    "StormDataModule",
    "StormLightningModule",
    "TrainerConfig",
    "WarmupCosine",
    "WindowDataset",
    "build_trainer",
    "crop_patches",
    "decode_image",
    "load_datasets",
    "pretrain",
    "step_seed",
]
