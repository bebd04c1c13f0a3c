"""Lightning data module: train/validation split of the windows, loaders, and an exactly resumable position."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader

from storm._logging import logger
from storm._slide_data import SlideArrays
from storm.train._dataset import SlideBlockSampler, WindowDataset

__all__ = ["StormDataModule"]


class StormDataModule(LightningDataModule):
    """Windows of many slides for pretraining: split, shuffled in slide blocks, streamed by workers.

    Parameters
    ----------
    slides
        Per-slide arrays (:meth:`storm.models.StormModel.prepare`).
    patch_px
        Patch side in pixels (the network's ``patch_px``).
    window_size
        Positions per window (the network's ``window_size``); default the slides' own.
    batch_size
        Windows per batch (per device).
    num_workers
        Data-loader worker processes (0: load in the training process).
    val_fraction
        Share of windows (``split="window"``) or slides (``split="slide"``) held out for validation; 0 disables
        validation.
    split
        ``"window"``: a random share of all windows (neighbouring windows of the training set overlap them: a
        monitor of fit, not of generalisation); ``"slide"``: whole slides held out.
    val_slides
        Library ids to hold out (implies ``split="slide"``; overrides ``val_fraction``).
    block_size
        Windows per slide block of :class:`SlideBlockSampler`; default ``8 × batch_size``.
    seed
        Seed of the split and of the shuffles (with the epoch).
    persistent_workers
        Keep workers (and their decoded images) alive between epochs.
    pin_memory
        Pin host memory; default: when CUDA is available.
    cache_slides
        Decoded full-resolution images kept per worker.
    cache_patches_mb
        Megabytes of cut patches remembered per worker (see :class:`storm.train.PatchCache`).
    use_image, use_expression
        Serve the modality where slides have it.

    Notes
    -----
    With several devices the samplers split the windows themselves (``num_replicas``/``rank`` from the trainer):
    build the trainer with ``use_distributed_sampler=False`` (as :func:`storm.train.pretrain` does). The position
    in the current epoch is saved in checkpoints (:meth:`state_dict`) and restored, so a run resumed mid-epoch
    sees the same windows in the same order as an uninterrupted one.
    """

    def __init__(
        self,
        slides: Sequence[SlideArrays],
        *,
        patch_px: int = 64,
        window_size: int | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        split: Literal["window", "slide"] = "window",
        val_slides: Sequence[str] | None = None,
        block_size: int | None = None,
        seed: int = 0,
        persistent_workers: bool = True,
        pin_memory: bool | None = None,
        cache_slides: int = 2,
        cache_patches_mb: float = 512,
        use_image: bool = True,
        use_expression: bool = True,
    ) -> None:
        super().__init__()
        if split not in ("window", "slide"):
            raise ValueError(f"split must be 'window' or 'slide', got {split!r}.")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
        self.slides = list(slides)
        self.patch_px = int(patch_px)
        self.window_size = window_size
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.val_fraction = float(val_fraction)
        self.split = "slide" if val_slides else split
        self.val_slides = list(val_slides) if val_slides else None
        self.block_size = int(block_size or 8 * batch_size)
        self.seed = int(seed)
        self.persistent_workers = bool(persistent_workers)
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else bool(pin_memory)
        self.cache_slides = int(cache_slides)
        self.cache_patches_mb = float(cache_patches_mb)
        self.use_image = bool(use_image)
        self.use_expression = bool(use_expression)
        self.train_windows, self.val_windows = self._split()
        self.train_set: WindowDataset | None = None
        self.val_set: WindowDataset | None = None
        self._resume: dict[str, int] | None = None

    # ------------------------------------------------------------------ split
    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        counts = np.array([s.n_obs for s in self.slides], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        n = int(starts[-1])
        rng = np.random.default_rng(self.seed)
        if self.split == "window":
            n_val = round(self.val_fraction * n)
            val = np.sort(rng.choice(n, size=n_val, replace=False)) if n_val else np.zeros(0, dtype=np.int64)
        else:
            ids = [s.library_id for s in self.slides]
            if self.val_slides is not None:
                unknown = sorted(set(self.val_slides) - set(ids))
                if unknown:
                    raise ValueError(f"val_slides {unknown} are not among the slides ({ids[:6]}…).")
                held = [i for i, lib in enumerate(ids) if lib in set(self.val_slides)]
            else:
                n_val = round(self.val_fraction * len(ids))
                if self.val_fraction > 0 and len(ids) > 1:
                    n_val = max(n_val, 1)
                held = sorted(rng.choice(len(ids), size=min(n_val, len(ids) - 1), replace=False).tolist())
            val = (
                np.concatenate([np.arange(starts[i], starts[i + 1]) for i in held])
                if held
                else np.zeros(0, dtype=np.int64)
            )
        train = np.setdiff1d(np.arange(n), val)
        if len(train) == 0:
            raise ValueError("No training windows left after the validation split.")
        return train, val.astype(np.int64)

    @property
    def has_validation(self) -> bool:
        """Whether a validation set exists."""
        return len(self.val_windows) > 0

    # ------------------------------------------------------------------ Lightning hooks
    def _dataset(self, windows: np.ndarray) -> WindowDataset:
        return WindowDataset(
            self.slides,
            windows=windows,
            patch_px=self.patch_px,
            window_size=self.window_size,
            use_image=self.use_image,
            use_expression=self.use_expression,
            cache_slides=self.cache_slides,
            cache_patches_mb=self.cache_patches_mb,
        )

    def setup(self, stage: str | None = None) -> None:
        """Build the data sets (no data is read here: images are decoded by the workers)."""
        if self.train_set is None:
            self.train_set = self._dataset(self.train_windows)
            if self.has_validation:
                self.val_set = self._dataset(self.val_windows)
            logger.info(
                f"StormDataModule: {len(self.train_windows):,} training and {len(self.val_windows):,} validation "
                f"windows from {len(self.slides)} slides ({sum(s.has_image for s in self.slides)} with an image)"
            )

    def _replicas(self) -> tuple[int, int]:
        trainer = self.trainer
        if trainer is None:
            return 1, 0
        return int(trainer.world_size), int(trainer.global_rank)

    def _loader(self, dataset: WindowDataset, sampler: SlideBlockSampler, *, train: bool) -> DataLoader:
        workers = self.num_workers
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=self.persistent_workers and workers > 0,
            pin_memory=self.pin_memory,
            drop_last=train and len(sampler) >= self.batch_size,
        )

    def train_dataloader(self) -> DataLoader:
        """Serve the training windows in shuffled slide blocks (order fixed by seed and epoch)."""
        self.setup("fit")
        replicas, rank = self._replicas()
        sampler = SlideBlockSampler(
            self.train_set.item_slides,
            block_size=self.block_size,
            shuffle=True,
            seed=self.seed,
            num_replicas=replicas,
            rank=rank,
            drop_last=True,
        )
        if self.trainer is not None:
            sampler.set_epoch(self.trainer.current_epoch)
        if self._resume is not None:
            # Windows already trained on in the checkpoint's epoch are skipped (applies to that epoch only).
            sampler.skip(self._resume["batches_done"] * self.batch_size, epoch=self._resume["epoch"])
            self._resume = None
        return self._loader(self.train_set, sampler, train=True)

    def val_dataloader(self) -> DataLoader | list:
        """Serve the validation windows in a fixed order (an empty list without validation)."""
        self.setup("fit")
        if self.val_set is None:
            return []
        replicas, rank = self._replicas()
        sampler = SlideBlockSampler(
            self.val_set.item_slides,
            block_size=self.block_size,
            shuffle=False,
            seed=self.seed,
            num_replicas=replicas,
            rank=rank,
        )
        return self._loader(self.val_set, sampler, train=False)

    def state_dict(self) -> dict[str, Any]:
        """Return the position in the training order: epoch and batches done in it (saved in checkpoints)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        return {"epoch": int(trainer.current_epoch), "batches_done": int(progress.processed), "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the position saved by :meth:`state_dict` (used by the next :meth:`train_dataloader`)."""
        if not state_dict:
            return
        if int(state_dict.get("seed", self.seed)) != self.seed:
            logger.warning(
                f"StormDataModule: the checkpoint was written with seed {state_dict['seed']}, this run uses "
                f"{self.seed}; the window order after resuming differs from the original run."
            )
        self._resume = {"epoch": int(state_dict["epoch"]), "batches_done": int(state_dict["batches_done"])}
