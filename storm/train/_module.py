"""Lightning module of masked multimodal spatial pretraining (optimiser, schedule, EMA teacher, logging)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from lightning.pytorch import LightningModule

from storm.nn import (
    BatchKeys,
    NicheContrastiveLoss,
    NichePrototypeLoss,
    StormNetConfig,
    StormPretrainModel,
    batch_window_views,
)

#: The structure-aware objectives that may be added to masked modelling (``niche_loss``).
NICHE_LOSSES = {"prototype": NichePrototypeLoss, "contrastive": NicheContrastiveLoss}


def check_niche_objective(niche_loss: str | None, niche_weight: float, *, names: tuple[str, str]) -> None:
    """Raise a ``ValueError`` for an unknown ``niche_loss`` or a weight ≤ 0; ``names``: how the caller calls them."""
    if niche_loss is not None and niche_loss not in NICHE_LOSSES:
        raise ValueError(f"{names[0]} must be one of {sorted(NICHE_LOSSES)} or null/None, got {niche_loss!r}.")
    if not niche_weight > 0:
        raise ValueError(f"{names[1]} must be > 0, got {niche_weight}.")


__all__ = ["StormLightningModule", "WarmupCosine", "step_seed"]

#: Stands in for the global step in the seeds of validation masks (fixed across epochs, apart from training's).
_VALIDATION_STEP = 2**62


def step_seed(seed: int, global_step: int, batch_idx: int = 0, rank: int = 0) -> int:
    """Derive a 63-bit seed from ``(seed, global_step, batch_idx, rank)``.

    The masks of a training batch depend only on these numbers, never on how many batches the process has drawn
    before: a run resumed from a checkpoint draws the same masks as an uninterrupted one. ``batch_idx`` tells apart
    the micro-batches of one optimiser step (gradient accumulation), ``rank`` the devices.

    Parameters
    ----------
    seed
        The run's seed.
    global_step
        The optimiser step.
    batch_idx
        The micro-batch within the step.
    rank
        The device's rank.

    Returns
    -------
    int
        A seed in ``[0, 2**63)``.
    """
    state = np.random.SeedSequence([int(seed), int(global_step), int(batch_idx), int(rank)]).generate_state(2)
    return int((int(state[0]) << 31 ^ int(state[1])) & (2**63 - 1))


class WarmupCosine:
    """Learning-rate factor: linear warm-up from 0 to 1 over ``warmup_steps``, then cosine decay to ``min_ratio``.

    Parameters
    ----------
    warmup_steps
        Optimiser steps of linear warm-up.
    total_steps
        Optimiser steps of the whole run (the cosine reaches ``min_ratio`` there).
    min_ratio
        Final factor.
    """

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float = 0.0) -> None:
        self.warmup_steps = max(int(warmup_steps), 0)
        self.total_steps = max(int(total_steps), 1)
        self.min_ratio = float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(self.total_steps - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class StormLightningModule(LightningModule):
    """Pretrain a :class:`~storm.nn.StormPretrainModel` with Lightning.

    AdamW over :meth:`storm.nn.StormPretrainModel.param_groups` (no weight decay on biases and norms, layer-wise
    decay in a pretrained image backbone), linear warm-up then cosine decay per optimiser step, an EMA step of the image
    teacher after every optimiser step, and masks drawn from a generator seeded by ``(seed, global_step,
    batch_idx, rank)`` (see :func:`step_seed`), so a run resumed from a checkpoint reproduces the losses of an
    uninterrupted run.

    Parameters
    ----------
    net
        A network to train, or the :class:`~storm.nn.StormNetConfig` (or its dict) to build one from (as
        ``load_from_checkpoint`` does).
    lr
        Peak learning rate (the paper: 1e-4).
    weight_decay
        AdamW weight decay (the paper: 0.05).
    warmup_steps
        Optimiser steps of linear warm-up.
    total_steps
        Optimiser steps of the cosine schedule; default the trainer's ``estimated_stepping_batches``. Keep it fixed
        when a run is stopped and resumed with a different ``max_steps``.
    min_lr_ratio
        Final learning rate as a share of ``lr``.
    seed
        Base seed of the masks.
    niche_loss
        A structure-aware objective added to masked modelling, on the niche embeddings of two augmented views of
        each window of the batch (:func:`storm.nn.batch_window_views`): ``"prototype"``
        (:class:`storm.nn.NichePrototypeLoss`, Novae's swapped prototype assignment) or ``"contrastive"``
        (:class:`storm.nn.NicheContrastiveLoss`); ``None``: masked modelling alone (the paper).
    niche_weight
        Weight of ``niche_loss`` in the total loss.

    Notes
    -----
    Logged: ``train/loss``, ``train/loss_expr``, ``train/loss_img``, ``train/loss_expr_self`` (and
    ``train/loss_niche`` with a ``niche_loss``) per step and per epoch (``_step``/``_epoch`` suffixes), ``train/lr``
    per step, ``train/teacher_std`` per step where images were reconstructed, and ``val/…`` the same per epoch.
    """

    def __init__(
        self,
        net: StormPretrainModel | StormNetConfig | dict[str, Any],
        *,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        warmup_steps: int = 100,
        total_steps: int | None = None,
        min_lr_ratio: float = 0.0,
        seed: int = 0,
        niche_loss: str | None = None,
        niche_weight: float = 1.0,
    ) -> None:
        super().__init__()
        check_niche_objective(niche_loss, niche_weight, names=("`niche_loss`", "`niche_weight`"))
        if isinstance(net, StormPretrainModel):
            model = net
        else:
            config = net if isinstance(net, StormNetConfig) else StormNetConfig.from_dict(dict(net))
            model = StormPretrainModel(config)
        self.model = model
        # the objective's projection head (and prototypes) train with the network but are not part of the model
        self.niche_objective = None if niche_loss is None else NICHE_LOSSES[niche_loss](model.config.dim)
        # The net config (not the module) is the hyper-parameter: load_from_checkpoint rebuilds the network from it.
        self.save_hyperparameters(
            {
                "net": model.config.to_dict(),
                "lr": lr,
                "weight_decay": weight_decay,
                "warmup_steps": warmup_steps,
                "total_steps": total_steps,
                "min_lr_ratio": min_lr_ratio,
                "seed": seed,
                "niche_loss": niche_loss,
                "niche_weight": niche_weight,
            }
        )

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        """AdamW over the network's parameter groups, with the warm-up + cosine schedule stepped per step."""
        hp = self.hparams
        groups = self.model.param_groups(hp.lr, hp.weight_decay)
        if self.niche_objective is not None:
            groups.insert(0, {"params": list(self.niche_objective.parameters()), "lr": hp.lr,
                              "weight_decay": hp.weight_decay})  # fmt: skip
        optimizer = torch.optim.AdamW(groups, lr=hp.lr)
        total = hp.total_steps or int(self.trainer.estimated_stepping_batches)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(hp.warmup_steps, total, hp.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    def optimizer_step(self, *args, **kwargs) -> None:
        """Step the optimiser, then the EMA teacher.

        Lightning calls this only for batches that step (not for the accumulating micro-batches of
        ``accumulate_grad_batches``), and before any ``on_train_batch_end`` callback such as a checkpoint, so a
        checkpoint written at step ``t`` holds the teacher of step ``t``.
        """
        super().optimizer_step(*args, **kwargs)
        self.model.update_teacher()

    # ------------------------------------------------------------------ steps
    def _generator(self, batch_idx: int) -> torch.Generator:
        seed = step_seed(self.hparams.seed, self.global_step, batch_idx, self.global_rank)
        # Dropout draws from the global generator: reseed it too so that resumed runs match exactly.
        torch.manual_seed(seed ^ 0x5EED)
        return torch.Generator(device=self.device).manual_seed(seed)

    def _log_losses(self, out: dict[str, torch.Tensor], prefix: str, batch_size: int, *, on_step: bool) -> None:
        sync = self.trainer is not None and self.trainer.world_size > 1
        kwargs = {"on_step": on_step, "on_epoch": True, "batch_size": batch_size, "sync_dist": sync}
        self.log(f"{prefix}/loss", out["loss"].detach().float(), prog_bar=True, **kwargs)
        names = ("loss_expr", "loss_img", "loss_expr_self") + (("loss_niche",) if "loss_niche" in out else ())
        self.log_dict({f"{prefix}/{k}": out[k].detach().float() for k in names}, **kwargs)

    def _losses(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Compute the masked-modelling losses, and ``loss_niche`` (added to ``loss``, weighted) where one is set."""
        out = self.model(batch, generator=generator)
        if self.niche_objective is not None and batch.get(BatchKeys.EXPR) is not None:
            expr, gene_mask, views = batch_window_views(batch)
            if expr.shape[0]:
                niche = self.niche_objective(self.model, expr, gene_mask, views, generator)
                out = {**out, "loss_niche": niche, "loss": out["loss"] + self.hparams.niche_weight * niche}
        return out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Masked reconstruction loss of one batch of windows (plus the niche objective where one is set)."""
        out = self._losses(batch, self._generator(batch_idx))
        b = batch[BatchKeys.OFFSETS].shape[0]
        self._log_losses(out, "train", b, on_step=True)
        # the learning rate of the top-level groups (an image backbone's lower layers get less under layer decay)
        self.log("train/lr", self.trainer.optimizers[0].param_groups[-1]["lr"], on_step=True, on_epoch=False,
                 batch_size=b)  # fmt: skip
        std = out["teacher_std"]
        if bool(torch.isfinite(std)):
            self.log("train/teacher_std", std, on_step=True, on_epoch=False, batch_size=b)
        return out["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Masked reconstruction loss with masks fixed per validation batch (comparable across epochs)."""
        seed = step_seed(self.hparams.seed, _VALIDATION_STEP, batch_idx, self.global_rank)
        out = self._losses(batch, torch.Generator(device=self.device).manual_seed(seed))
        self._log_losses(out, "val", batch[BatchKeys.OFFSETS].shape[0], on_step=False)
