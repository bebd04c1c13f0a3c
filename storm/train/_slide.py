"""Training of the slide-level risk model: bags of tiles, the Lightning module, patient-level cross-validation.

Imports torch, lightning, numpy and scikit-learn only; :mod:`storm.clinical` (lifelines, scikit-survival) is
imported when a fold is scored. AnnData is read by :func:`storm.tl.slide_features`, which makes the bags.
"""

from __future__ import annotations

import logging
import time as _time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch.utils.data import DataLoader, Dataset

from storm._logging import logger
from storm.nn._slide_model import (
    SLIDE_MODALITIES,
    SlideModelConfig,
    SlideRiskModel,
    SlideRiskOutput,
    cox_partial_likelihood_loss,
)

__all__ = [
    "BagDataset",
    "SlideCVResult",
    "SlideRiskModule",
    "collate_bags",
    "fit_slide_model_cv",
    "predict_bags",
]

Task = Literal["survival", "response"]


# ---------------------------------------------------------------------------------------------------- bags
def check_bags(bags: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Validate a list of bags and return ``{modality: feature width}`` of the modalities they carry.

    A bag is a mapping with ``"image"`` and/or ``"expression"`` arrays of shape ``(n_tiles, d)`` (other keys, such
    as ``"coords"`` or ``"slide_id"``, are carried along and ignored here). Every bag must carry the same
    modalities with the same widths, at least one tile, and finite values.
    """
    if isinstance(bags, Mapping) or not isinstance(bags, Sequence) or len(bags) == 0:
        raise ValueError("bags must be a non-empty list of bags (dicts with 'image' and/or 'expression' arrays).")
    dims: dict[str, int] | None = None
    for i, bag in enumerate(bags):
        if not isinstance(bag, Mapping):
            raise ValueError(f"Bag {i} is a {type(bag).__name__}; expected a dict with 'image'/'expression' arrays.")
        present = {m: bag[m] for m in SLIDE_MODALITIES if bag.get(m) is not None}
        if not present:
            raise ValueError(f"Bag {i} has neither 'image' nor 'expression' features.")
        widths = {}
        for m, x in present.items():
            shape = tuple(x.shape) if hasattr(x, "shape") else np.shape(x)
            if len(shape) != 2:
                raise ValueError(f"Bag {i}: {m} features must have shape (tiles, features), got {shape}.")
            if shape[0] == 0:
                raise ValueError(f"Bag {i} has no {m} tiles; drop empty slides before building bags.")
            if not bool(torch.isfinite(torch.as_tensor(np.asarray(x, dtype=np.float32))).all()):
                raise ValueError(f"Bag {i}: {m} features contain NaN or infinite values.")
            widths[m] = int(shape[1])
        if dims is None:
            dims = widths
        elif widths != dims:
            raise ValueError(
                f"Bag {i} carries {widths} (modality: width) but bag 0 carries {dims}; all bags need the same "
                "modalities with the same feature widths."
            )
    assert dims is not None
    return dims


class BagDataset(Dataset):
    """Slides as bags of tile features, with optional per-slide targets.

    Parameters
    ----------
    bags
        One mapping per slide with ``"image"`` and/or ``"expression"`` arrays ``(n_tiles, d)`` (see
        :func:`storm.tl.slide_features`).
    time, event
        Survival time and event flag per slide (survival task).
    response
        0/1 response per slide (response task).
    max_tiles
        Draw at most this many tiles per bag each time it is read (a fresh random subset each epoch, from torch's
        global generator): bounds training memory for whole-slide bags and acts as augmentation. ``None``: all.
    """

    def __init__(
        self,
        bags: Sequence[Mapping[str, Any]],
        *,
        time: Any = None,
        event: Any = None,
        response: Any = None,
        max_tiles: int | None = None,
    ) -> None:
        self.dims = check_bags(bags)
        self.modalities = tuple(self.dims)
        if max_tiles is not None and max_tiles < 1:
            raise ValueError(f"max_tiles must be ≥ 1 or None, got {max_tiles}.")
        self.max_tiles = max_tiles
        # as_tensor shares memory with float32 arrays: no copy of large bags.
        self.features = [
            {m: torch.as_tensor(np.asarray(bag[m], dtype=np.float32)) for m in self.modalities} for bag in bags
        ]
        self.targets: dict[str, torch.Tensor] = {}
        for name, values in (("time", time), ("event", event), ("response", response)):
            if values is not None:
                arr = np.asarray(values, dtype=np.float32).reshape(-1)
                if len(arr) != len(bags):
                    raise ValueError(f"{name} has {len(arr)} values for {len(bags)} bags.")
                self.targets[name] = torch.as_tensor(arr)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item: dict[str, Any] = {"index": i}
        for m, x in self.features[i].items():
            if self.max_tiles is not None and len(x) > self.max_tiles:
                x = x[torch.randperm(len(x))[: self.max_tiles]]
            item[m] = x
        for name, values in self.targets.items():
            item[name] = values[i]
        return item


def collate_bags(items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
    """Pad a list of bags to the largest bag of the batch.

    Parameters
    ----------
    items
        The items of a slide-bag dataset: ``{modality: (N, d)}`` tile features, the targets present and
        ``index``.

    Returns
    -------
    dict
        ``{modality: (B, N_max, d)}`` zero-padded features, ``{modality}_mask`` ``(B, N_max)`` (``True`` = real
        tile), the stacked targets present (``time``, ``event``, ``response``) and ``index`` ``(B,)``.
    """
    batch: dict[str, torch.Tensor] = {"index": torch.as_tensor([int(it["index"]) for it in items])}
    for m in SLIDE_MODALITIES:
        if m not in items[0]:
            continue
        xs = [it[m] for it in items]
        lengths = torch.as_tensor([len(x) for x in xs])
        padded = torch.zeros(len(xs), int(lengths.max()), xs[0].shape[1], dtype=xs[0].dtype)
        for b, x in enumerate(xs):
            padded[b, : len(x)] = x
        batch[m] = padded
        batch[f"{m}_mask"] = torch.arange(padded.shape[1])[None, :] < lengths[:, None]
    for name in ("time", "event", "response"):
        if name in items[0]:
            batch[name] = torch.stack([torch.as_tensor(it[name]) for it in items])
    return batch


def _model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    keys = [k for m in SLIDE_MODALITIES for k in (m, f"{m}_mask")]
    return {k: batch[k] for k in keys if k in batch}


def feature_stats(dataset: BagDataset, indices: Sequence[int]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-feature mean and standard deviation over all tiles of the bags ``indices`` (float64 running sums)."""
    out = {}
    for m in dataset.modalities:
        total, total_sq, count = 0.0, 0.0, 0
        for i in indices:
            x = dataset.features[i][m].double()
            total = total + x.sum(dim=0)
            total_sq = total_sq + (x * x).sum(dim=0)
            count += len(x)
        mean = total / count
        var = (total_sq / count - mean * mean).clamp_min(0.0)
        out[m] = (mean.float(), var.sqrt().float())
    return out


# ---------------------------------------------------------------------------------------------------- Lightning
class SlideRiskModule(LightningModule):
    """Train a :class:`~storm.nn.SlideRiskModel` with Lightning.

    Survival: negative Cox log partial likelihood over the slides of each mini-batch (Breslow ties; DeepSurv's
    mini-batch approximation of the full-cohort risk sets, so batches should hold several events). Response:
    binary cross-entropy on the risk as a logit. AdamW with a constant learning rate.

    Parameters
    ----------
    config
        A :class:`~storm.nn.SlideModelConfig`, its dict, or a :class:`~storm.nn.SlideRiskModel` to train.
    task
        ``"survival"`` (batches carry ``time`` and ``event``) or ``"response"`` (batches carry ``response``).
    lr
        Learning rate.
    weight_decay
        AdamW weight decay.
    tile_dropout
        During training, hide each real tile with this probability (at least one stays): multiple-instance
        augmentation that stops the model from relying on a few tiles.

    References
    ----------
    Katzman JL et al. DeepSurv: personalized treatment recommender system using a Cox proportional hazards deep
    neural network. BMC Med Res Methodol 18, 24 (2018).
    """

    def __init__(
        self,
        config: SlideModelConfig | dict[str, Any] | SlideRiskModel,
        *,
        task: Task = "survival",
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        tile_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if task not in ("survival", "response"):
            raise ValueError(f"task must be 'survival' or 'response', got {task!r}.")
        if not 0 <= tile_dropout < 1:
            raise ValueError(f"tile_dropout must be in [0, 1), got {tile_dropout}.")
        self.model = config if isinstance(config, SlideRiskModel) else SlideRiskModel(config)
        self.save_hyperparameters(
            {
                "config": self.model.config.to_dict(),
                "task": task,
                "lr": lr,
                "weight_decay": weight_decay,
                "tile_dropout": tile_dropout,
            }
        )

    def forward(self, batch: Mapping[str, torch.Tensor], *, return_attention: bool = False) -> SlideRiskOutput:
        """Score a collated batch (see :func:`collate_bags`)."""
        return self.model(**_model_inputs(batch), return_attention=return_attention)

    def loss(self, risk: torch.Tensor, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Return the task's loss of ``risk`` ``(B,)`` against the batch's targets."""
        if self.hparams.task == "survival":
            return cox_partial_likelihood_loss(risk, batch["time"], batch["event"])
        return F.binary_cross_entropy_with_logits(risk, batch["response"].to(risk.dtype))

    def _drop_tiles(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        p = self.hparams.tile_dropout
        for m in SLIDE_MODALITIES:
            if m not in inputs:
                continue
            mask = inputs.get(f"{m}_mask")
            if mask is None:
                mask = torch.ones(inputs[m].shape[:2], dtype=torch.bool, device=inputs[m].device)
            keep = mask & (torch.rand(mask.shape, device=mask.device) >= p)
            # A bag whose draw hid every tile keeps its full mask rather than becoming empty.
            empty = ~keep.any(dim=1, keepdim=True)
            inputs[f"{m}_mask"] = torch.where(empty, mask, keep)
        return inputs

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """One optimisation step on a collated batch; logs ``train/loss`` per epoch."""
        inputs = _model_inputs(batch)
        if self.hparams.tile_dropout > 0:
            inputs = self._drop_tiles(inputs)
        risk = self.model(**inputs).risk
        loss = self.loss(risk, batch)
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=len(risk))
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """AdamW over all parameters."""
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


# ---------------------------------------------------------------------------------------------------- helpers
def resolve_device(accelerator: str) -> torch.device:
    """``"auto"``: CUDA when available, else CPU (never a silent MPS); ``"gpu"``/``"cuda"``/``"cpu"`` as named."""
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"accelerator={accelerator!r} but no CUDA device is available; use 'cpu' or 'auto'.")
        return torch.device("cuda")
    return torch.device(accelerator)


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-fit banners and the warnings that do not apply to small in-memory bag data sets.

    Restores the loggers' levels afterwards: nothing global changes.
    """
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            # Bags live in memory and are read in the main process: worker processes would only copy them.
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*GPU available but not used.*")
            # Lightning 2.6 on torch ≥ 2.10 builds a pytree LeafSpec per fit; nothing to act on here.
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*", category=FutureWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's generators for a block and restore their previous states after it (nothing global changes)."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.inference_mode()
def predict_bags(
    model: SlideRiskModel,
    bags: Sequence[Mapping[str, Any]] | BagDataset,
    *,
    batch_size: int = 1,
    device: torch.device | str = "cpu",
    return_attention: bool = False,
) -> tuple[np.ndarray, list[dict[str, np.ndarray]] | None]:
    """Risk of every bag (and optionally per-tile attention), in eval mode under ``torch.inference_mode``.

    Parameters
    ----------
    model
        A trained :class:`~storm.nn.SlideRiskModel`.
    bags
        Bags (see :class:`BagDataset`) or a :class:`BagDataset`.
    batch_size
        Bags per forward pass (1 avoids padding; larger batches pad to the largest bag).
    device
        Where to run; the model is moved there and back.
    return_attention
        Also return ``{modality: (n_tiles,)}`` attention per bag (see :class:`~storm.nn.SlideRiskOutput`).

    Returns
    -------
    tuple
        Risks ``(n_bags,)`` and the attention maps (or ``None``).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}.")
    dataset = bags if isinstance(bags, BagDataset) else BagDataset(bags)
    missing = set(dataset.modalities) - set(model.modalities)
    if missing:
        raise ValueError(f"The bags carry {sorted(missing)} features but the model has no such branch.")
    for m in dataset.modalities:
        if dataset.dims[m] != model.config.input_dim(m):
            raise ValueError(
                f"The bags' {m} features have width {dataset.dims[m]}, the model expects {model.config.input_dim(m)}."
            )
    device = torch.device(device)
    previous = next(model.parameters()).device
    was_training = model.training
    model.eval().to(device)
    risks, maps = [], []
    try:
        # A plain loop rather than a DataLoader: an iterator of the latter draws a seed from torch's global generator.
        for start in range(0, len(dataset), batch_size):
            batch = collate_bags([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            inputs = {k: v.to(device) for k, v in _model_inputs(batch).items()}
            out = model(**inputs, return_attention=return_attention)
            risks.append(out.risk.float().cpu())
            if return_attention:
                for b in range(len(out.risk)):
                    maps.append(
                        {m: a[b][batch[f"{m}_mask"][b]].float().cpu().numpy() for m, a in out.tile_attention.items()}
                    )
    finally:
        model.to(previous).train(was_training)
    return torch.cat(risks).numpy().astype(np.float64), (maps if return_attention else None)


# ---------------------------------------------------------------------------------------------------- CV
@dataclass
class SlideCVResult:
    """Result of :func:`fit_slide_model_cv`.

    Attributes
    ----------
    task
        ``"survival"`` or ``"response"``.
    risk
        Out-of-fold risk per bag (log relative hazard, or response log-odds), from the fold that held it out.
    fold
        Test fold of each bag.
    groups
        Patient of each bag.
    metric
        ``"c_index"`` (Harrell's C) or ``"auc"``.
    fold_metrics
        The metric on each test fold (patients' mean risk over their slides); NaN where undefined (a fold
        without an event or without a comparable pair).
    oof_metric
        The metric on all out-of-fold risks pooled (patient level).
    models
        The trained :class:`~storm.nn.SlideRiskModel` of each fold (CPU, eval mode).
    config
        The model configuration.
    train_loss
        Last-epoch training loss of each fold.
    ids
        Bag identifiers (e.g. slide ids) when the caller gave them.
    """

    task: str
    risk: np.ndarray
    fold: np.ndarray
    groups: np.ndarray
    metric: str
    fold_metrics: np.ndarray
    oof_metric: float
    models: list[SlideRiskModel]
    config: SlideModelConfig
    train_loss: np.ndarray
    ids: list[Any] | None = None


def _complete_config(config: SlideModelConfig | dict[str, Any] | None, dims: dict[str, int]) -> SlideModelConfig:
    """Fill the feature widths a config leaves ``None`` from the bags, then require the two to agree."""
    if config is None:
        config = SlideModelConfig()
    elif isinstance(config, dict):
        config = SlideModelConfig.from_dict(config)
    filled = {f"{m}_dim": d for m, d in dims.items() if config.input_dim(m) is None}
    if filled:
        config = replace(config, **filled)
    for m in SLIDE_MODALITIES:
        if dims.get(m) != config.input_dim(m):
            raise ValueError(
                f"config expects {m} features of width {config.input_dim(m)}, the bags carry {dims.get(m)}; "
                "rebuild the bags or the config."
            )
    return config


def _targets(
    n: int, time: Any, event: Any, response: Any
) -> tuple[Task, np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """Parse the targets; return the task and float arrays (None where unused)."""
    if response is not None and (time is not None or event is not None):
        raise ValueError("Pass either time and event (survival) or response, not both.")
    if response is None and (time is None or event is None):
        raise ValueError("Pass time and event (survival) or response (0/1 per bag).")

    def as_float(values: Any, name: str) -> np.ndarray:
        try:
            arr = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numeric.") from None
        if len(arr) != n:
            raise ValueError(f"{name} has {len(arr)} values for {n} bags; pass one per bag, in the bags' order.")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} has {int((~np.isfinite(arr)).sum())} missing or infinite values; drop them.")
        return arr

    if response is not None:
        y = as_float(response, "response")
        if not np.isin(y, (0, 1)).all():
            raise ValueError("response must be 0/1 (1 = responder); map labels first.")
        return "response", None, None, y
    t, e = as_float(time, "time"), as_float(event, "event")
    if (t < 0).any():
        raise ValueError(f"{int((t < 0).sum())} survival times are negative; times count from 0.")
    if not np.isin(e, (0, 1)).all():
        raise ValueError("event must be 0/1 (1 = event observed, 0 = censored).")
    return "survival", t, e, None


def _per_patient(groups: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Patient code of each bag (0..n_patients-1, sorted ids) and each column's first value per patient."""
    _, first, codes = np.unique(groups, return_index=True, return_inverse=True)
    return codes, [c[first] for c in columns]


def _check_patients(groups: np.ndarray, targets: dict[str, np.ndarray]) -> None:
    """Every slide of a patient must carry the patient's outcome."""
    codes, firsts = _per_patient(groups, *targets.values())
    for (name, values), first in zip(targets.items(), firsts, strict=True):
        bad = values != first[codes]
        if bad.any():
            patient = groups[np.flatnonzero(bad)[0]]
            raise ValueError(f"Patient {patient!r} has different {name} values across its slides; fix the table.")


def _score(task: Task, risk: np.ndarray, groups: np.ndarray, targets: dict[str, np.ndarray]) -> float:
    """Patient-level C-index or AUC of ``risk`` (mean over a patient's slides); NaN where undefined."""
    from storm.clinical import c_index, response_auc

    codes, firsts = _per_patient(groups, *targets.values())
    patient_risk = np.bincount(codes, weights=risk) / np.bincount(codes)
    try:
        if task == "survival":
            t, e = firsts
            return float(c_index(t, e, patient_risk, n_boot=0).estimate)
        (y,) = firsts
        return float(response_auc(y.astype(int), patient_risk, positive=1, n_boot=0).estimate)
    except ValueError as err:  # no event, one class or no comparable pair in this fold
        logger.warning(f"A cross-validation fold could not be scored ({err}); its metric is NaN.")
        return float("nan")


def _splits(
    task: Task, groups: np.ndarray, label: np.ndarray, n_splits: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Patient-level folds, stratified by event or response when every class has a patient for every fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    codes, (patient_label,) = _per_patient(groups, label)
    n_patients = len(patient_label)
    if n_splits < 2:
        raise ValueError(f"n_splits must be ≥ 2, got {n_splits}.")
    if n_patients < n_splits:
        raise ValueError(
            f"{n_patients} patients are too few for {n_splits}-fold cross-validation; lower n_splits (every test "
            "fold needs at least one patient)."
        )
    counts = {int(k): int((patient_label == k).sum()) for k in (0, 1)}
    if task == "response" and min(counts.values()) < n_splits:
        raise ValueError(
            f"{counts[1]} responders and {counts[0]} non-responders: every one of the {n_splits} test folds needs "
            "both classes for an AUC; lower n_splits or add patients."
        )
    x = np.zeros((len(groups), 1))
    if min(counts.values()) >= n_splits:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        return list(splitter.split(x, label.astype(int), codes))
    logger.warning(
        f"{counts[1]} patients with an event and {counts[0]} censored: too few to stratify {n_splits} folds; some "
        "test folds will have no event and a NaN C-index."
    )
    # Unstratified: shuffle the patients and deal them into folds of (nearly) equal patient counts.
    patient_fold = np.empty(n_patients, dtype=int)
    patient_fold[np.random.default_rng(seed).permutation(n_patients)] = np.arange(n_patients) % n_splits
    bag_fold = patient_fold[codes]
    return [(np.flatnonzero(bag_fold != k), np.flatnonzero(bag_fold == k)) for k in range(n_splits)]


def fit_slide_model_cv(
    bags: Sequence[Mapping[str, Any]],
    time: Any = None,
    event: Any = None,
    response: Any = None,
    *,
    groups: Any = None,
    n_splits: int = 5,
    config: SlideModelConfig | dict[str, Any] | None = None,
    max_epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    weight_decay: float = 1e-2,
    tile_dropout: float = 0.0,
    max_tiles: int | None = None,
    accelerator: str = "auto",
    seed: int = 0,
    ids: Sequence[Any] | None = None,
) -> SlideCVResult:
    """Train the slide risk model with patient-level cross-validation and return out-of-fold risks.

    Folds are drawn over patients (``groups``), so no patient has slides in both the training and the test part
    of a fold; they are stratified by event (survival) or response when every class has a patient for each fold.
    Per fold: standardise tile features with the training tiles' statistics, train a fresh
    :class:`~storm.nn.SlideRiskModel` with :class:`SlideRiskModule` (Lightning), score the held-out slides. The
    metrics are computed per patient (mean risk over the patient's slides): Harrell's C
    (:func:`storm.clinical.c_index`) or the ROC AUC (:func:`storm.clinical.response_auc`).

    Parameters
    ----------
    bags
        One bag per slide: mappings with ``"image"`` and/or ``"expression"`` arrays ``(n_tiles, d)`` (see
        :func:`storm.tl.slide_features`).
    time, event
        Survival time and event flag (1 = event, 0 = censored) per bag: the survival task (Cox loss).
    response
        0/1 response per bag (1 = responder): the response task (logistic loss). Higher risk = more likely to
        respond.
    groups
        Patient id per bag; ``None``: every bag is its own patient.
    n_splits
        Number of folds.
    config
        :class:`~storm.nn.SlideModelConfig`; feature widths left ``None`` are taken from the bags. ``None``: the
        defaults.
    max_epochs
        Training epochs per fold.
    batch_size
        Slides per mini-batch (the Cox loss sees the risk sets within a batch: keep several events per batch).
    lr, weight_decay, tile_dropout
        See :class:`SlideRiskModule`.
    max_tiles
        Tiles drawn per bag and epoch in training (see :class:`BagDataset`); prediction uses all tiles.
    accelerator
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"gpu"``.
    seed
        Seeds the folds, the initialisation and the batch order: the same seed gives the same result. torch's
        global generator is restored afterwards.
    ids
        Optional bag identifiers, returned in ``SlideCVResult.ids``.

    Returns
    -------
    SlideCVResult

    Raises
    ------
    ValueError
        Malformed or inconsistent bags; targets of the wrong length, missing or non-binary; no events; one
        response class (or fewer patients of a class than folds); fewer patients than folds; a patient whose
        slides carry different outcomes.
    """
    from lightning.pytorch import Trainer

    t0 = _time.perf_counter()
    dims = check_bags(bags)
    n = len(bags)
    task, t, e, y = _targets(n, time, event, response)
    if task == "survival" and not e.any():
        raise ValueError(f"No events among the {n} bags (all censored): a Cox model cannot be fitted.")
    if task == "response" and len(np.unique(y)) < 2:
        raise ValueError(f"All {n} bags have response {int(y[0])}: a response model needs both classes.")
    if max_epochs < 1:
        raise ValueError(f"max_epochs must be ≥ 1, got {max_epochs}.")
    if task == "survival" and batch_size < 2:
        raise ValueError("The Cox loss compares slides within a batch: batch_size must be ≥ 2.")
    groups = np.arange(n) if groups is None else np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups has shape {groups.shape} for {n} bags; pass one patient id per bag.")
    if ids is not None and len(ids) != n:
        raise ValueError(f"ids has {len(ids)} values for {n} bags.")
    targets = {"time": t, "event": e} if task == "survival" else {"response": y}
    _check_patients(groups, targets)

    config = _complete_config(config, dims)
    device = resolve_device(accelerator)
    label = e if task == "survival" else y
    folds = _splits(task, groups, label, n_splits, seed)
    train_ds = BagDataset(bags, time=t, event=e, response=y, max_tiles=max_tiles)
    risk = np.full(n, np.nan)
    fold_of = np.full(n, -1)
    models, fold_metrics, losses = [], [], []
    for k, (train_idx, test_idx) in enumerate(folds):
        fold_seed = int(np.random.SeedSequence([seed, k]).generate_state(1)[0])
        with _seeded(fold_seed, device):
            module = SlideRiskModule(config, task=task, lr=lr, weight_decay=weight_decay, tile_dropout=tile_dropout)
            for m, (mean, std) in feature_stats(train_ds, train_idx).items():
                module.model.set_feature_stats(m, mean, std)
            loader = DataLoader(
                torch.utils.data.Subset(train_ds, train_idx.tolist()),
                batch_size=batch_size,
                shuffle=True,
                collate_fn=collate_bags,
                generator=torch.Generator().manual_seed(fold_seed),
            )
            with _quiet_lightning():
                trainer = Trainer(
                    accelerator=device.type if device.type != "cuda" else "gpu",
                    devices=1,
                    max_epochs=max_epochs,
                    logger=False,
                    enable_checkpointing=False,
                    enable_progress_bar=False,
                    enable_model_summary=False,
                    num_sanity_val_steps=0,
                    log_every_n_steps=1,
                )
                trainer.fit(module, train_dataloaders=loader)
        losses.append(float(trainer.callback_metrics.get("train/loss", torch.tensor(float("nan")))))
        model = module.model.cpu().eval()
        test_risk, _ = predict_bags(model, [bags[i] for i in test_idx], device=device)
        risk[test_idx] = test_risk
        fold_of[test_idx] = k
        fold_metrics.append(_score(task, test_risk, groups[test_idx], {n_: v[test_idx] for n_, v in targets.items()}))
        models.append(model)
    oof = _score(task, risk, groups, targets)
    metric = "c_index" if task == "survival" else "auc"
    scored = np.asarray([v for v in fold_metrics if np.isfinite(v)])
    per_fold = f"{scored.mean():.3f} ± {scored.std():.3f}" if len(scored) else "none scored"
    logger.info(
        f"{len(folds)}-fold patient-level CV of the slide model ({task}): out-of-fold {metric} {oof:.3f}, folds "
        f"{per_fold} ({_time.perf_counter() - t0:.1f} s)"
    )
    return SlideCVResult(
        task=task,
        risk=risk,
        fold=fold_of,
        groups=groups,
        metric=metric,
        fold_metrics=np.asarray(fold_metrics),
        oof_metric=oof,
        models=models,
        config=config,
        train_loss=np.asarray(losses),
        ids=list(ids) if ids is not None else None,
    )
