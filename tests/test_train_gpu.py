"""storm.train on a CUDA GPU: bf16 mixed-precision steps (no AnnData needed: runs on a bare torch + Lightning node)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from lightning.pytorch import Callback

from storm.nn import StormNetConfig, StormPretrainModel
from storm.train import (
    PatchSource,
    PretrainConfig,
    SlideArrays,
    StormDataModule,
    StormLightningModule,
    build_trainer,
)
from storm.train._pretrain import _EXPECTED_WARNINGS


def synthetic_slides(n_slides: int = 2, n: int = 60, genes: int = 40, seed: int = 0) -> list[SlideArrays]:
    """Slides on a 5×5 square grid with an in-memory image, random counts-like expression."""
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    rc = np.array([(i // side, i % side) for i in range(n)])
    xy = rc[:, ::-1] * 20.0 + 30.0
    offsets = np.array([(dr, dc) for dr in range(-2, 3) for dc in range(-2, 3)])
    offsets = offsets[np.argsort(np.abs(offsets).sum(1), kind="stable")]
    key = {tuple(p): i for i, p in enumerate(rc)}
    slides = []
    for s in range(n_slides):
        index = np.array([[key.get((r + dr, c + dc), -1) for dr, dc in offsets] for r, c in rc])
        off = np.where((index >= 0)[..., None], offsets[None, :, ::-1] * 100.0, 0).astype(np.float32)
        image = rng.integers(0, 255, size=(side * 20 + 60, side * 20 + 60, 3), dtype=np.uint8)
        expr = np.log1p(rng.poisson(1.0, size=(n, genes))).astype(np.float32)
        slides.append(
            SlideArrays(f"s{s}", index, off, expr=expr, patches=PatchSource(xy + 0.5, 16.0, array=image, name="hires"))
        )
    return slides


@pytest.mark.gpu
def test_bf16_steps_on_gpu(tmp_path):
    config = StormNetConfig(n_genes=40, dim=64, depth=2, heads=4, patch_px=32, decoder_dim=64)
    model = StormPretrainModel(config)
    dm = StormDataModule(synthetic_slides(), patch_px=32, batch_size=16, val_fraction=0.0, num_workers=2)
    module = StormLightningModule(model, warmup_steps=1, total_steps=10, lr=1e-3)
    run = PretrainConfig.from_dict(
        {"output": str(tmp_path), "trainer": {"max_steps": 3, "accelerator": "gpu", "progress_bar": False}}
    )
    trainer = build_trainer(run, has_validation=False)
    devices = []

    class Where(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            devices.append((next(pl_module.parameters()).device.type, batch["image"].device.type))

    trainer.callbacks.append(Where())
    teacher_before = [p.detach().cpu().clone() for p in model.teacher.parameters()]
    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, datamodule=dm)
    assert trainer.precision == "bf16-mixed"
    assert trainer.global_step == 3
    assert np.isfinite(float(trainer.callback_metrics["train/loss_step"]))
    assert devices == [("cuda", "cuda")] * 3  # (Lightning moves the module back to the CPU after fit)
    after = [p.detach().cpu() for p in model.teacher.parameters()]
    moved = [not torch.equal(a, b) for a, b in zip(teacher_before, after, strict=True)]
    assert any(moved)  # the EMA teacher followed the student


def test_synthetic_slides_run_on_cpu(tmp_path):
    """The same path on CPU (32-true), so the GPU test's set-up is checked everywhere."""
    config = StormNetConfig(n_genes=40, dim=16, depth=1, heads=2, patch_px=16, conv_widths=(8,), image_feature_dim=8,
                            gene_dim=8, decoder_dim=16, decoder_depth=1, decoder_heads=2)  # fmt: skip
    dm = StormDataModule(synthetic_slides(), patch_px=16, batch_size=8, val_fraction=0.0)
    module = StormLightningModule(StormPretrainModel(config), warmup_steps=1, total_steps=10)
    run = PretrainConfig.from_dict(
        {"output": str(tmp_path), "trainer": {"max_steps": 1, "accelerator": "cpu", "progress_bar": False}}
    )
    trainer = build_trainer(run, has_validation=False)
    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, datamodule=dm)
    assert trainer.precision == "32-true"
    assert trainer.global_step == 1
