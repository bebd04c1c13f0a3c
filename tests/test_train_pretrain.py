"""storm.train: Lightning module, exact resume, ablations, pretrain(), the CLI (and DDP, GPU)."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _data import TINY_NET, real
from lightning.pytorch import Callback

from storm.models import StormModel
from storm.train import (
    PretrainConfig,
    StormDataModule,
    StormLightningModule,
    WarmupCosine,
    build_trainer,
    pretrain,
    step_seed,
)
from storm.train._pretrain import _EXPECTED_WARNINGS, _RESUME_WARNINGS

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "storm" / "train" / "configs"
NET = TINY_NET


@pytest.fixture(scope="module")
def adata():
    return real("visium_fixture")


def _slides_and_model(adata, **net):
    model = StormModel.setup(adata, genes=list(adata.var_names[:50]), net=NET | net, random_state=0)
    return model, model.prepare(adata)


class Losses(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def _fit(trainer, module, datamodule, ckpt_path=None) -> None:
    with warnings.catch_warnings():
        for pattern in _EXPECTED_WARNINGS + (_RESUME_WARNINGS if ckpt_path else ()):
            warnings.filterwarnings("ignore", message=pattern)
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)


def _run(adata, out: Path, *, max_steps: int, ckpt_path=None, every=None, accumulate=1):
    model, slides = _slides_and_model(adata)
    dm = StormDataModule(slides, patch_px=16, batch_size=4, val_fraction=0.0, seed=0)
    module = StormLightningModule(model.module, warmup_steps=2, total_steps=10, lr=1e-3, seed=0)
    config = PretrainConfig.from_dict(
        {
            "output": str(out),
            "trainer": {
                "max_steps": max_steps,
                "accelerator": "cpu",
                "checkpoint_every_n_steps": every,
                "progress_bar": False,
                "log_every_n_steps": 1,
                "accumulate_grad_batches": accumulate,
                "resume_from": ckpt_path,
            },
        }
    )
    trainer = build_trainer(config, has_validation=False)
    losses = Losses()
    trainer.callbacks.append(losses)
    _fit(trainer, module, dm, ckpt_path)
    return losses.losses, trainer, module


# ---------------------------------------------------------------------------- pieces
def test_warmup_cosine_and_step_seed():
    f = WarmupCosine(4, 14, min_ratio=0.1)
    assert [round(f(s), 3) for s in (0, 3, 4)] == [0.25, 1.0, 1.0]
    assert f(9) == pytest.approx(0.55)
    assert f(14) == pytest.approx(0.1)
    assert f(100) == pytest.approx(0.1)
    assert step_seed(0, 5) == step_seed(0, 5)
    assert step_seed(0, 5) != step_seed(0, 6)
    assert len({step_seed(0, 5, b, r) for b in range(3) for r in range(2)}) == 6
    assert 0 <= step_seed(2**40, 10**9) < 2**63


def test_config_from_yaml_and_unknown_keys(tmp_path):
    mini = PretrainConfig.from_yaml(CONFIGS / "storm_mini.yaml")
    assert mini.genes.include_hist2st
    assert mini.data.datasets["dlpfc"] == ["151673", "151674"]
    assert mini.trainer.max_steps > 0
    assert mini.net == {}
    smoke = PretrainConfig.from_yaml(CONFIGS / "smoke.yaml")
    assert smoke.trainer.max_steps <= 10
    assert PretrainConfig.from_dict(smoke.to_dict()) == smoke
    with pytest.raises(ValueError, match="Unknown keys \\['max_step'\\] in `trainer`"):
        PretrainConfig.from_dict({"trainer": {"max_step": 3}})
    with pytest.raises(ValueError, match="Unknown sections"):
        PretrainConfig.from_dict({"model": {}})


# ---------------------------------------------------------------------------- resume
def test_resume_reproduces_the_next_step_exactly(adata, tmp_path):
    """Train 2 steps → checkpoint (mid-epoch) → resume: step 3's loss equals that of an uninterrupted run."""
    full, _, full_module = _run(adata, tmp_path / "full", max_steps=3)
    first, trainer, _ = _run(adata, tmp_path / "part", max_steps=2, every=2)
    assert first == full[:2]
    ckpt = tmp_path / "part" / "checkpoints" / "storm-epoch=0-step=2.ckpt"
    assert ckpt.is_file()
    assert trainer.global_step == 2
    resumed, trainer, module = _run(adata, tmp_path / "part", max_steps=3, ckpt_path=str(ckpt), every=2)
    assert trainer.global_step == 3
    assert len(resumed) == 1
    assert resumed[0] == full[2]  # bit-identical: same windows, masks, weights, optimiser and teacher state
    for (name, a), b in zip(full_module.state_dict().items(), module.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # the first part's losses are kept; the resumed part logs beside them
    assert (tmp_path / "part" / "logs" / "metrics.csv").is_file()
    assert (tmp_path / "part" / "logs" / "resume-1" / "metrics.csv").is_file()


def test_teacher_steps_with_the_optimiser(adata, tmp_path, monkeypatch):
    from storm.nn import StormPretrainModel

    calls = []
    original = StormPretrainModel.update_teacher

    def counted(self, momentum=None):
        calls.append(momentum)
        return original(self, momentum)

    monkeypatch.setattr(StormPretrainModel, "update_teacher", counted)
    _, trainer, _ = _run(adata, tmp_path, max_steps=2, accumulate=3)
    # 6 batches, 2 optimiser steps, 2 EMA steps (setup's momentum-0 copy after the PCA initialisation aside)
    assert trainer.global_step == 2
    assert calls.count(None) == 2


# ---------------------------------------------------------------------------- pretrain() and ablations
def _config(tmp_path, **over):
    base = {
        "data": {"datasets": {"visium_fixture": []}, "val_fraction": 0.1},
        "genes": {"n_top_genes": 40},
        "net": dict(NET),
        "optim": {"warmup_steps": 1},
        "trainer": {"max_steps": 1, "batch_size": 8, "accelerator": "cpu", "progress_bar": False},
        "output": str(tmp_path / "run"),
    }
    for key, value in over.items():
        if isinstance(value, dict):
            base[key] = base.get(key, {}) | value
        else:
            base[key] = value
    return base


@pytest.mark.parametrize(
    "ablation",
    [
        {"net": {"window_size": 1}},
        {"net": {"expression_encoder": "raw"}},
        {"net": {"freeze_image_encoder": True}},
        {"no_pretraining": True},
    ],
    ids=["window1", "raw_expression", "frozen_image", "no_pretraining"],
)
def test_ablations_build_and_run(adata, tmp_path, ablation):
    model, trainer = pretrain(_config(tmp_path, **ablation))
    saved = StormModel.load(tmp_path / "run" / "model")
    assert saved.config.to_dict() == model.config.to_dict()
    if ablation.get("no_pretraining"):
        assert trainer is None
    else:
        assert trainer.global_step == 1
        assert np.isfinite(float(trainer.callback_metrics["train/loss_step"]))
    if ablation.get("net", {}).get("window_size") == 1:
        assert saved.config.window == 1
    if ablation.get("net", {}).get("freeze_image_encoder"):
        assert model.module.teacher is None
    assert saved.embed(adata, progress=False).shape == (49, 16)


def test_pretrain_writes_model_checkpoints_and_metrics(adata, tmp_path):
    model, _trainer = pretrain(_config(tmp_path, trainer={"max_steps": 3, "log_every_n_steps": 1}))
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    steps = [r for r in rows if r.get("train/loss_step")]
    assert len(steps) == 3
    assert all(np.isfinite(float(r["train/loss_step"])) for r in steps)
    assert {"train/loss_expr_step", "train/loss_img_step", "train/lr"} <= set(rows[0])
    loaded = StormModel.load(run / "model")
    np.testing.assert_array_equal(loaded.embed(adata, progress=False), model.embed(adata, progress=False))
    import json

    training = json.loads((run / "model" / "config.json").read_text())["training"]
    assert training["steps"] == 3
    assert training["n_spots"] == 49


@pytest.mark.parametrize("niche_loss", ["prototype", "contrastive"])
def test_pretrain_adds_a_niche_objective(adata, tmp_path, niche_loss):
    """objective.niche_loss adds a logged, recorded term whose head trains with the network (not saved with it)."""
    config = _config(tmp_path, objective={"niche_loss": niche_loss, "niche_weight": 0.5},
                     trainer={"max_steps": 2, "log_every_n_steps": 1})  # fmt: skip
    _model, trainer = pretrain(config)
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "metrics.csv").open()))
    niche = [float(r["train/loss_niche_step"]) for r in rows if r.get("train/loss_niche_step")]
    assert len(niche) == 2
    assert all(np.isfinite(niche))
    optimiser = trainer.optimizers[0]
    for p in trainer.lightning_module.niche_objective.parameters():  # stepped by the optimiser with the network
        assert int(optimiser.state[p]["step"]) == 2
    import json

    training = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["training"]
    assert training["objective"] == {"niche_loss": niche_loss, "niche_weight": 0.5}
    saved = StormModel.load(tmp_path / "run" / "model")  # the saved model is the network alone
    assert not any("niche" in k for k in saved.module.state_dict())
    assert saved.embed(adata, progress=False).shape == (49, 16)


def test_niche_objective_bad_config_fails_before_reading_data():
    with pytest.raises(ValueError, match=r"objective\.niche_loss must be one of"):
        PretrainConfig.from_dict({"objective": {"niche_loss": "swav"}})
    with pytest.raises(ValueError, match=r"objective\.niche_weight must be > 0"):
        PretrainConfig.from_dict({"objective": {"niche_loss": "prototype", "niche_weight": 0}})
    with pytest.raises(ValueError, match="`niche_loss` must be one of"):
        StormLightningModule(NET | {"n_genes": 10}, niche_loss="swav")


@pytest.mark.slow
def test_pretraining_lowers_the_loss_on_her2st(tmp_path):
    """40 steps on HER2ST C2 (full-resolution H&E, 187 spots) lower the masked-reconstruction loss."""
    real("her2st", "C2")
    config = {
        "data": {"datasets": {"her2st": ["C2"]}, "val_fraction": 0.0},
        "genes": {"n_top_genes": 200},
        "net": NET | {"dim": 32, "patch_px": 32, "conv_widths": [8, 16], "image_feature_dim": 16},
        "optim": {"lr": 2e-3, "warmup_steps": 5},
        "trainer": {"max_steps": 40, "batch_size": 16, "accelerator": "cpu", "progress_bar": False},
        "output": str(tmp_path / "run"),
    }
    model, _ = pretrain(config)
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "metrics.csv").open()))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    first, last = np.mean(losses[:2]), np.mean(losses[-2:])
    assert last < 0.8 * first, (first, last)
    # and on fixed windows with fixed masks, the trained network beats its initialisation
    fresh = StormModel.setup(
        real("her2st", "C2"), genes=model.genes, net=config["net"], random_state=0
    )  # same init as pretrain's (seed 0)
    slides = model.prepare(real("her2st", "C2"))
    from storm.train import WindowDataset

    ds = WindowDataset(slides, patch_px=32)
    batch = torch.utils.data.default_collate([ds[i] for i in range(64)])

    def loss(m):
        with torch.no_grad():
            return float(m.module.eval()(batch, generator=torch.Generator().manual_seed(1))["loss"])

    assert loss(model) < 0.8 * loss(fresh)


# ---------------------------------------------------------------------------- command line
def _cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "storm", *args], capture_output=True, text=True, timeout=timeout, env=env, check=False
    )


def test_cli_in_process(tmp_path):
    from storm.__main__ import main

    real("visium_fixture")
    out = tmp_path / "smoke"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*smaller than the logging interval.*")
        assert main(["pretrain", str(CONFIGS / "smoke.yaml"), "--max-steps", "1", "--output", str(out), "--quiet"]) == 0
    assert StormModel.load(out / "model").config.net.patch_px == 32


@pytest.mark.slow
def test_cli_runs_smoke_config(tmp_path):
    real("visium_fixture")
    out = tmp_path / "smoke"
    result = _cli("pretrain", str(CONFIGS / "smoke.yaml"), "--max-steps", "2", "--output", str(out), "--quiet")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model" / "model.safetensors").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader((out / "logs" / "metrics.csv").open()))
    assert len([r for r in rows if r.get("train/loss_step")]) == 2
    assert StormModel.load(out / "model").config.net.patch_px == 32


def test_cli_errors(tmp_path, capsys):
    from storm.__main__ import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_step: 3\n")
    assert main(["pretrain", str(bad)]) == 2
    assert "Unknown keys ['max_step']" in capsys.readouterr().err
    assert main(["pretrain", str(tmp_path / "missing.yaml")]) == 2
    with pytest.raises(SystemExit):
        main(["--version"])


@pytest.mark.slow
def test_cli_ddp_two_cpu_processes(tmp_path):
    """The same entry point trains with DDP (two gloo processes on CPU); rank 0 writes the model."""
    real("visium_fixture")
    out = tmp_path / "ddp"
    result = _cli(
        "pretrain",
        str(CONFIGS / "smoke.yaml"),
        *("--max-steps", "2", "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu"),
        *("--output", str(out), "--quiet"),
        timeout=400,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model" / "config.json").is_file()
    import json

    training = json.loads((out / "model" / "config.json").read_text())["training"]
    assert training["steps"] == 2
    assert training["devices"] == "2"


@pytest.mark.gpu
def test_gpu_bf16_step_and_embedding(adata, tmp_path):
    model, trainer = pretrain(_config(tmp_path, trainer={"accelerator": "gpu", "max_steps": 2}))
    assert trainer.precision == "bf16-mixed"
    assert trainer.global_step == 2
    assert np.isfinite(float(trainer.callback_metrics["train/loss_step"]))
    cpu = model.embed(adata, accelerator="cpu", progress=False)
    gpu = model.embed(adata, accelerator="cuda", progress=False)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-3)
