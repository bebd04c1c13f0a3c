"""Pretraining with Lightning: data sets of spatial windows, the data module, the Lightning module, ``pretrain``.

Imports torch, lightning and numpy only (AnnData is read by :mod:`storm.models`, called lazily by
:func:`pretrain`), so that training nodes need no single-cell stack to import it.
"""

from storm._patch_crop import crop_patches, decode_image
from storm._slide_data import PatchCache, PatchSource, SlideArrays

from ._adapt import adapt
from ._config import (
    DataConfig,
    GenesConfig,
    HestConfig,
    ObjectiveConfig,
    OptimConfig,
    PretrainConfig,
    ProbeConfig,
    SetupConfig,
    TrainerConfig,
)
from ._datamodule import StormDataModule
from ._dataset import SlideBlockSampler, WindowDataset
from ._module import StormLightningModule, WarmupCosine, step_seed
from ._pretrain import build_probe, build_trainer, load_datasets, pretrain
from ._probe import DomainProbe
from ._slide import BagDataset, SlideCVResult, SlideRiskModule, collate_bags, fit_slide_model_cv, predict_bags
from ._store import load_slides, save_slides

__all__ = [
    "BagDataset",
    "DataConfig",
    "DomainProbe",
    "GenesConfig",
    "HestConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "PatchCache",
    "PatchSource",
    "PretrainConfig",
    "ProbeConfig",
    "SetupConfig",
    "SlideArrays",
    "SlideBlockSampler",
    "SlideCVResult",
    "SlideRiskModule",
    "StormDataModule",
    "StormLightningModule",
    "TrainerConfig",
    "WarmupCosine",
    "WindowDataset",
    "adapt",
    "build_probe",
    "build_trainer",
    "collate_bags",
    "crop_patches",
    "decode_image",
    "fit_slide_model_cv",
    "load_datasets",
    "load_slides",
    "predict_bags",
    "pretrain",
    "save_slides",
    "step_seed",
]
