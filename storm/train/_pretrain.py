"""``pretrain(config)``: load slides, set up a model, train it with Lightning, save it."""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from storm._logging import logger
from storm.train._config import DataConfig, PretrainConfig, ProbeConfig
from storm.train._datamodule import StormDataModule
from storm.train._module import StormLightningModule

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData
    from lightning.pytorch import Trainer

    from storm.models import StormModel
    from storm.train._probe import DomainProbe

__all__ = ["build_probe", "build_trainer", "load_datasets", "pretrain"]

#: Lightning warnings that pretraining triggers on purpose (matched as regular expressions on the message).
_EXPECTED_WARNINGS = (
    # the EMA teacher stays in eval mode by design (storm.nn.EMATeacher.train)
    r".*module\(s\) in eval mode.*",
    # the data module restores the position in the epoch itself (StormDataModule.load_state_dict)
    r".*your dataloader is not resumable.*",
    # short runs log rarely; not a problem
    r".*smaller than the logging interval.*",
)
#: … and when resuming into the run's own folder.
_RESUME_WARNINGS = (r".*Checkpoint directory .* exists and is not empty.*",)


def _loader(name: str):
    from storm import datasets

    loaders = {
        "her2st": (datasets.her2st, datasets.her2st_sections),
        "dlpfc": (datasets.dlpfc, datasets.dlpfc_sections),
        "visium_fixture": (lambda _section=None: datasets.visium_fixture(), lambda: []),
    }
    if name not in loaders:
        raise ValueError(
            f"Unknown data set loader {name!r}; known: {sorted(loaders)} (or list .h5ad files under h5ad)."
        )
    return loaders[name]


def _load_hest(entry: Any, i: int) -> list[AnnData]:
    """Read the samples of one ``data.hest`` entry (a :class:`HestConfig` or its dict)."""
    from storm._dataclasses import strict_from_dict
    from storm.io import hest_samples, read_hest
    from storm.train._config import HestConfig

    if isinstance(entry, str):
        entry = {"folder": entry}
    if not isinstance(entry, HestConfig):
        entry = strict_from_dict(HestConfig, entry, label="keys", where=f" in `data.hest[{i}]`")
    if not entry.folder:
        raise ValueError(f"`data.hest[{i}]` needs a `folder` (a HEST-1k folder with st/, wsis/, metadata/).")
    folder = Path(entry.folder).expanduser()
    samples = entry.samples
    if samples == "all":
        samples = hest_samples(folder, st_technology=entry.st_technology, species=entry.species, organ=entry.organ)
    elif isinstance(samples, str):
        samples = [samples]
    if not samples:
        raise ValueError(f"`data.hest[{i}]`: no sample in {folder} passes the filters.")
    logger.info(f"pretrain: {len(samples)} HEST sample(s) from {folder}")
    return [read_hest(folder, str(s), image=entry.image) for s in samples]


def load_datasets(data: Any) -> list[list[AnnData]]:
    """Load the slides a :class:`DataConfig` names: one list of AnnData per data set (loader or h5ad file).

    Parameters
    ----------
    data
        A :class:`~storm.train.DataConfig`.

    Returns
    -------
    list[list[AnnData]]
    """
    out: list[list[AnnData]] = []
    for name, sections in data.datasets.items():
        load, available = _loader(name)
        if sections == "all":
            sections = available()
        if not sections and name == "visium_fixture":
            out.append([load()])
            continue
        if isinstance(sections, str):
            sections = [sections]
        out.append([load(str(s)) for s in sections])
    for path in data.h5ad:
        import anndata as ad

        path = Path(path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"No h5ad file at {path}.")
        out.append([ad.read_h5ad(path)])
    for i, entry in enumerate(data.hest):
        out.append(_load_hest(entry, i))
    if not out:
        raise ValueError(
            "The configuration names no data: set `data.datasets` (loader: sections), `data.h5ad` or `data.hest`."
        )
    return out


def build_probe(model: StormModel, probe: ProbeConfig, *, library_key: str, layer: str | None) -> DomainProbe:
    """Build the :class:`~storm.train.DomainProbe` of a run: its slides, prepared like the training slides.

    Parameters
    ----------
    model
        The :class:`~storm.models.StormModel` being trained.
    probe
        Which labelled slides, and how their labels are read.
    library_key, layer
        As for the training slides.

    Returns
    -------
    DomainProbe

    Raises
    ------
    ValueError
        A probe slide without the label column, or with fewer than two labels.
    """
    from storm.models._modes import auto_mode
    from storm.train._probe import DomainProbe

    excluded = {str(x) for x in probe.exclude_labels}
    slides, labels = [], []
    for data in load_datasets(DataConfig(datasets=probe.datasets)):
        for adata in data:
            if probe.label_key not in adata.obs:
                raise ValueError(
                    f"A probe slide has no obs[{probe.label_key!r}] (its columns: {list(adata.obs.columns)}); set "
                    "probe.label_key to the column of its labels."
                )
            values = adata.obs[probe.label_key].astype(object).to_numpy()
            values = np.array(
                [None if v is None or v != v or str(v) in excluded else str(v) for v in values], dtype=object
            )
            # the mode storm.tl.embed would use, so the probe scores what a user of the model gets
            mode = auto_mode(adata, model, library_key=library_key)
            for slide in model.prepare(adata, mode=mode, library_key=library_key, layer=layer):
                slides.append(slide)
                labels.append(values[slide.obs_rows])
    names = [s.library_id for s in slides]
    return DomainProbe(model, slides, labels, names=names, every_n_steps=probe.every_n_steps)


def _read_genes(genes: list[str] | str) -> list[str]:
    if isinstance(genes, str):
        path = Path(genes).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"No gene list file at {path} (one gene per line).")
        return [g.strip() for g in path.read_text().splitlines() if g.strip() and not g.startswith("#")]
    return [str(g) for g in genes]


def _gpu(accelerator: str) -> bool:
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def build_trainer(config: PretrainConfig, *, has_validation: bool = True) -> Trainer:
    """Build the Lightning trainer of a run: CSV logger, checkpoints, default precision, DDP that splits the windows.

    Parameters
    ----------
    config
        The run's configuration (``trainer`` and ``output`` are read).
    has_validation
        Whether the data module has a validation set (otherwise validation is switched off).

    Returns
    -------
    lightning.pytorch.Trainer
    """
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.strategies import DDPStrategy

    tc = config.trainer
    output = Path(config.output)
    ckpt_dir = Path(tc.ckpt_dir) if tc.ckpt_dir else output / "checkpoints"
    log_dir = Path(tc.log_dir) if tc.log_dir else output / "logs"
    precision = tc.precision or ("bf16-mixed" if _gpu(tc.accelerator) else "32-true")
    strategy: Any = tc.strategy
    if strategy == "ddp":
        # Some batches lack a modality (slides without an image come in blocks), leaving its encoder and decoder
        # without gradients: DDP must be told to expect unused parameters.
        strategy = DDPStrategy(find_unused_parameters=True)
    checkpoint = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="storm-{epoch}-{step}",
        every_n_train_steps=tc.checkpoint_every_n_steps,
        save_top_k=-1 if tc.keep_checkpoints else 1,
        save_last=True,
        monitor=None,
    )
    version = ""
    if tc.resume_from and (log_dir / "metrics.csv").is_file():
        # Lightning's CSV logger would delete the earlier run's metrics.csv: a resumed run logs beside it instead.
        n = 1
        while (log_dir / f"resume-{n}").exists():
            n += 1
        version = f"resume-{n}"
    kwargs: dict[str, Any] = {}
    if tc.val_check_interval is not None:
        kwargs["val_check_interval"] = tc.val_check_interval
    return Trainer(
        accelerator=tc.accelerator,
        devices=tc.devices,
        strategy=strategy,
        precision=precision,
        max_steps=tc.max_steps,
        max_epochs=tc.max_epochs if tc.max_epochs is not None else (-1 if tc.max_steps > 0 else None),
        accumulate_grad_batches=tc.accumulate_grad_batches,
        gradient_clip_val=tc.gradient_clip_val,
        logger=CSVLogger(save_dir=str(log_dir), name="", version=version),
        callbacks=[checkpoint],
        log_every_n_steps=tc.log_every_n_steps,
        limit_val_batches=tc.limit_val_batches if has_validation else 0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # StormDataModule's samplers split the windows across devices themselves
        enable_progress_bar=tc.progress_bar,
        enable_model_summary=False,
        deterministic=False,
        default_root_dir=str(output),
        **kwargs,
    )


def pretrain(config: PretrainConfig | dict[str, Any] | str | os.PathLike) -> tuple[StormModel, Trainer | None]:
    """Pretrain a STORM model (masked multimodal spatial modelling) and save it.

    Steps: load the slides; choose the gene list (``genes``: explicit, or the highly variable genes of each data
    set ∪ the included genes); :meth:`storm.models.StormModel.setup` (PCA-initialised gene embeddings); turn every
    slide into arrays (:meth:`storm.models.StormModel.prepare`); train with Lightning (:class:`StormDataModule`,
    :class:`StormLightningModule`); save the final model with :meth:`storm.models.StormModel.save` to
    ``OUTPUT/model``.
    Checkpoints go to ``OUTPUT/checkpoints`` (``last.ckpt`` to resume), losses to ``OUTPUT/logs/metrics.csv``.

    Parameters
    ----------
    config
        A :class:`PretrainConfig`, its dict, or a YAML file.

    Returns
    -------
    tuple
        The trained :class:`~storm.models.StormModel` and the Lightning ``Trainer`` (``None`` with
        ``no_pretraining``).
    """
    from lightning.pytorch import seed_everything

    from storm.models import StormModel

    if isinstance(config, str | os.PathLike):
        config = PretrainConfig.from_yaml(config)
    elif isinstance(config, dict):
        config = PretrainConfig.from_dict(config)
    tc = config.trainer
    output = Path(config.output)
    seed_everything(tc.seed, workers=True, verbose=False)
    t0 = time.perf_counter()

    datasets = load_datasets(config.data)
    include = list(config.genes.include)
    if config.genes.include_hist2st:
        from storm.datasets import hist2st_genes

        include = hist2st_genes() + include
    setup = config.setup
    model = StormModel.setup(
        datasets,
        genes=_read_genes(config.genes.genes) if config.genes.genes is not None else None,
        n_top_genes=config.genes.n_top_genes,
        include_genes=include,
        net=config.net,
        size_um=setup.size_um,
        window=setup.window,
        window_method=setup.window_method,
        k=setup.k,
        target_sum=setup.target_sum,
        image=setup.image,
        library_key=config.data.library_key,
        layer=config.data.layer,
        random_state=tc.seed,
    )
    slides = []
    for data in datasets:
        for adata in data:
            for slide in model.prepare(
                adata, mode="auto", library_key=config.data.library_key, layer=config.data.layer
            ):
                if not config.data.image:
                    slide.patches = None
                if not config.data.expression:
                    slide.has_expr = False
                if slide.has_image or slide.has_expr:
                    slides.append(slide)
    n_spots = sum(s.n_obs for s in slides)
    provenance: dict[str, Any] = {
        "data": {k: v for k, v in config.data.datasets.items()}
        | ({"h5ad": config.data.h5ad} if config.data.h5ad else {}),
        "n_slides": len(slides),
        "n_slides_with_image": sum(s.has_image for s in slides),
        "n_spots": n_spots,
    }
    logger.info(
        f"pretrain: {len(slides)} slides, {n_spots:,} spots ({provenance['n_slides_with_image']} slides with an "
        f"image), {len(model.genes):,} genes; data ready in {time.perf_counter() - t0:.0f} s"
    )
    if config.no_pretraining:
        model.save(output / "model", overwrite=True, training=provenance | {"steps": 0, "no_pretraining": True})
        return model, None

    datamodule = StormDataModule(
        slides,
        patch_px=model.config.patch_px,
        window_size=model.config.net.window_size,
        batch_size=tc.batch_size,
        num_workers=tc.num_workers,
        val_fraction=config.data.val_fraction,
        split=config.data.split,
        val_slides=config.data.val_slides,
        block_size=tc.block_size,
        seed=tc.seed,
        cache_slides=tc.cache_slides,
        cache_patches_mb=tc.cache_patches_mb,
    )
    module = StormLightningModule(
        model.module,
        lr=config.optim.lr,
        weight_decay=config.optim.weight_decay,
        warmup_steps=config.optim.warmup_steps,
        total_steps=config.optim.total_steps,
        min_lr_ratio=config.optim.min_lr_ratio,
        seed=tc.seed,
        niche_loss=config.objective.niche_loss,
        niche_weight=config.objective.niche_weight,
    )
    trainer = build_trainer(config, has_validation=datamodule.has_validation)
    probe = None
    if config.probe is not None:
        probe = build_probe(model, config.probe, library_key=config.data.library_key, layer=config.data.layer)
        trainer.callbacks.append(probe)
    ckpt_path = tc.resume_from
    if ckpt_path == "last":
        ckpt_path = str(Path(tc.ckpt_dir or output / "checkpoints") / "last.ckpt")
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS + (_RESUME_WARNINGS if ckpt_path else ()):
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    seconds = time.perf_counter() - t1
    model.module.to("cpu").eval()
    if trainer.is_global_zero:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        provenance |= {
            "steps": int(trainer.global_step),
            "epochs": int(trainer.current_epoch),
            "seconds": round(seconds, 1),
            "batch_size": tc.batch_size,
            "devices": str(tc.devices),
            "objective": dataclasses.asdict(config.objective),
            "final_metrics": metrics,
        }
        if probe is not None:
            provenance["probe"] = {"label_key": config.probe.label_key, "history": probe.history}
        model.save(output / "model", overwrite=True, training=provenance)
        logger.info(
            f"pretrain: {trainer.global_step} steps in {seconds:.0f} s; model saved to {output / 'model'}, "
            f"losses in {Path(trainer.logger.log_dir) / 'metrics.csv'}"
        )
    return model, trainer
