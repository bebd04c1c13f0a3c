"""Configuration of a pretraining run (a tree of dataclasses, read from YAML)."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storm._dataclasses import strict_from_dict

__all__ = [
    "DataConfig",
    "GenesConfig",
    "HestConfig",
    "ObjectiveConfig",
    "OptimConfig",
    "PretrainConfig",
    "ProbeConfig",
    "SetupConfig",
    "TrainerConfig",
]


def _from_dict(cls, d: dict[str, Any] | None, where: str):
    return strict_from_dict(cls, d, label="keys", where=f" in `{where}` of the pretraining configuration")


@dataclass
class HestConfig:
    """Samples of a HEST-1k folder (``st/``, ``wsis/``, ``metadata/``) read by :func:`storm.io.read_hest`.

    Attributes
    ----------
    folder
        The HEST folder.
    samples
        Sample ids, or ``"all"``: every sample with counts and metadata that passes the filters.
    st_technology, species, organ
        Filters on the samples' metadata (:func:`storm.io.hest_samples`); e.g. ``st_technology: [Visium]``.
    image
        Open each sample's whole-slide image (patches read tile by tile from its pyramid).
    """

    folder: str = ""
    samples: list[str] | str = "all"
    st_technology: list[str] | str | None = None
    species: str | None = None
    organ: str | None = None
    image: bool = True


@dataclass
class DataConfig:
    """Which slides to train on and how to split them.

    Attributes
    ----------
    datasets
        Loader name → section ids, e.g. ``{"her2st": ["C2", "C3"], "dlpfc": ["151673"]}``; ``"all"`` takes every
        section the loader has. Loaders: ``her2st``, ``dlpfc`` (:mod:`storm.datasets`) and ``visium_fixture``
        (no sections: pass ``[]``). Each loader's sections form one data set (for the choice of genes).
    h5ad
        Paths of ``.h5ad`` files in storm's layout (raw counts in ``.X``), each one data set.
    hest
        HEST-1k folders (:class:`HestConfig`: ``folder``, ``samples``, filters), each entry one data set: list one
        entry per technology, as highly variable genes are chosen on the genes all of a data set's samples measure.
    image, expression
        Use the modality where a slide has it.
    val_fraction, split, val_slides
        Validation hold-out (see :class:`storm.train.StormDataModule`).
    library_key
        Column of ``obs`` naming each spot's slide.
    layer
        Read raw counts from this layer instead of ``.X``.
    """

    datasets: dict[str, Any] = field(default_factory=dict)
    h5ad: list[str] = field(default_factory=list)
    hest: list[Any] = field(default_factory=list)
    image: bool = True
    expression: bool = True
    val_fraction: float = 0.05
    split: str = "window"
    val_slides: list[str] | None = None
    library_key: str = "library_id"
    layer: str | None = None


@dataclass
class GenesConfig:
    """The model's gene list.

    Attributes
    ----------
    genes
        An explicit list, or the path of a text file with one gene per line; overrides the rest.
    n_top_genes
        Highly variable genes per data set.
    include_hist2st
        Put the 785 Hist2ST genes of HER2ST (:func:`storm.datasets.hist2st_genes`) first.
    include
        Further genes to include.
    """

    genes: list[str] | str | None = None
    n_top_genes: int = 1000
    include_hist2st: bool = False
    include: list[str] = field(default_factory=list)


@dataclass
class SetupConfig:
    """Data preparation (see :class:`storm.models.StormModelConfig`)."""

    size_um: float = 55.0
    window: int = 5
    window_method: str = "auto"
    k: int = 24
    target_sum: float = 1e4
    image: str = "auto"


@dataclass
class ObjectiveConfig:
    """What pretraining optimises beside masked multimodal modelling (see :class:`storm.train.StormLightningModule`).

    Attributes
    ----------
    niche_loss
        ``None`` (masked modelling alone, the paper), ``"prototype"`` (Novae's swapped prototype assignment of
        two augmented views of each window, :class:`storm.nn.NichePrototypeLoss`) or ``"contrastive"``
        (:class:`storm.nn.NicheContrastiveLoss`).
    niche_weight
        Its weight in the total loss.
    """

    niche_loss: str | None = None
    niche_weight: float = 1.0

    def __post_init__(self) -> None:
        # checked here, not when the module is built: a typo should fail before the data are read
        from storm.train._module import check_niche_objective

        check_niche_objective(
            self.niche_loss, self.niche_weight, names=("objective.niche_loss", "objective.niche_weight")
        )


@dataclass
class OptimConfig:
    """Optimiser and schedule (see :class:`storm.train.StormLightningModule`)."""

    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.0
    total_steps: int | None = None


@dataclass
class TrainerConfig:
    """Lightning trainer and data loading.

    Attributes
    ----------
    max_steps, max_epochs
        Length of the run (optimiser steps, or epochs when ``max_steps`` is -1).
    batch_size
        Windows per batch and device.
    accumulate_grad_batches
        Batches per optimiser step.
    accelerator, devices, strategy
        Lightning's (``strategy: ddp`` for several devices or processes; ``accelerator: auto`` = CUDA if available).
    precision
        Default: ``"bf16-mixed"`` on GPU, ``"32-true"`` on CPU.
    num_workers
        Data-loader workers per device.
    block_size, cache_slides, cache_patches_mb
        Windows per slide block; decoded images and megabytes of cut patches kept per worker.
    seed
        Seed of everything (initialisation, split, order, masks).
    gradient_clip_val
        Gradient-norm clipping (``None``: off).
    log_every_n_steps
        Rows of ``metrics.csv`` every this many steps.
    val_check_interval, limit_val_batches
        Lightning's (validation frequency and size).
    checkpoint_every_n_steps
        Write a checkpoint every this many steps (``None``: at the end of each epoch); ``last.ckpt`` is always kept.
    keep_checkpoints
        Keep every periodic checkpoint (``False``: only the latest and ``last.ckpt``).
    ckpt_dir, log_dir
        Default ``OUTPUT/checkpoints`` and ``OUTPUT/logs`` (``metrics.csv``; a resumed run writes
        ``logs/resume-N/metrics.csv`` beside the first one).
    resume_from
        A Lightning checkpoint to resume from (``"last"``: ``ckpt_dir/last.ckpt``).
    progress_bar
        Show Lightning's progress bar.
    """

    max_steps: int = -1
    max_epochs: int | None = None
    batch_size: int = 32
    accumulate_grad_batches: int = 1
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"
    precision: str | None = None
    num_workers: int = 0
    block_size: int | None = None
    cache_slides: int = 2
    cache_patches_mb: float = 512
    seed: int = 0
    gradient_clip_val: float | None = 1.0
    log_every_n_steps: int = 10
    val_check_interval: Any = None
    limit_val_batches: Any = 1.0
    checkpoint_every_n_steps: int | None = None
    keep_checkpoints: bool = False
    ckpt_dir: str | None = None
    log_dir: str | None = None
    resume_from: str | None = None
    progress_bar: bool = True


@dataclass
class ProbeConfig:
    """Labelled slides scored while training (:class:`storm.train.DomainProbe`): spatial-domain ARI in the logs.

    Attributes
    ----------
    datasets
        Loader name → section ids, as in :class:`DataConfig` (e.g. ``{"dlpfc": ["151673"]}``). Use slides you will
        not evaluate on: a budget chosen by the probe is tuned on its slides.
    label_key
        Column of ``obs`` with the labels (DLPFC: ``"layer"``; HER2ST: ``"label"``); missing values are not scored.
    exclude_labels
        Labels not scored either (HER2ST: ``["undetermined"]``).
    every_n_steps
        Probe every so many optimiser steps (and before the first and after the last).
    """

    datasets: dict[str, Any] = field(default_factory=dict)
    label_key: str = "layer"
    exclude_labels: list[str] = field(default_factory=list)
    every_n_steps: int = 100


@dataclass
class PretrainConfig:
    """A pretraining run: data, genes, network, data preparation, optimiser, trainer, output.

    Attributes
    ----------
    data, genes, setup, objective, optim, trainer
        Sections of the run (see their classes).
    net
        :class:`storm.nn.StormNetConfig` fields (``n_genes`` and ``window_size`` follow from the genes and the
        window). Ablations: ``window_size: 1`` (no spatial context), ``expression_encoder: raw``,
        ``freeze_image_encoder: true``.
    output
        Folder of the run: ``model/`` (the final :class:`storm.models.StormModel`), ``checkpoints/``, ``logs/``.
    no_pretraining
        Ablation: save the initialised model (PCA-initialised gene embeddings, random elsewhere) without training.
    probe
        Labelled slides whose domain ARI is logged while training (:class:`ProbeConfig`); ``None``: no probe.
    """

    data: DataConfig = field(default_factory=DataConfig)
    genes: GenesConfig = field(default_factory=GenesConfig)
    net: dict[str, Any] = field(default_factory=dict)
    setup: SetupConfig = field(default_factory=SetupConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    output: str = "storm-pretrain"
    no_pretraining: bool = False
    probe: ProbeConfig | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PretrainConfig:
        """Build from a nested dict (YAML); unknown keys are an error."""
        d = dict(d or {})
        sections = {"data": DataConfig, "genes": GenesConfig, "setup": SetupConfig, "objective": ObjectiveConfig,
                    "optim": OptimConfig, "trainer": TrainerConfig}  # fmt: skip
        known = set(sections) | {"net", "output", "no_pretraining", "probe"}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Unknown sections {unknown} in the pretraining configuration (known: {sorted(known)}).")
        kwargs: dict[str, Any] = {name: _from_dict(kind, d.get(name), name) for name, kind in sections.items()}
        kwargs["net"] = dict(d.get("net") or {})
        if d.get("probe") is not None:
            kwargs["probe"] = _from_dict(ProbeConfig, d["probe"], "probe")
        for key in ("output", "no_pretraining"):
            if key in d:
                kwargs[key] = d[key]
        return cls(**kwargs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> PretrainConfig:
        """Read a YAML file (see ``storm/train/configs/``)."""
        import yaml

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No pretraining configuration at {path}.")
        with path.open() as fh:
            return cls.from_dict(yaml.safe_load(fh) or {})

    def to_dict(self) -> dict[str, Any]:
        """Nested dict (YAML-serialisable)."""
        return dataclasses.asdict(self)
