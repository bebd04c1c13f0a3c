"""GPU check: one-GPU bf16 pretraining for a fixed number of steps, printing windows/s, peak GPU memory and the loss.

Two stages, because the GPU node has torch and Lightning but no AnnData/scanpy:

    # here (CPU, with the data mirror): prepare real slides into a folder the device run carries (< 64 MiB)
    python benchmarks/gpu_check.py prepare --out .carry/gpu
    # on the GPU node (see benchmarks/gpu_check.sh): train from the prepared slides
    python benchmarks/gpu_check.py run --data .carry/gpu --steps 300 --batch-size 128

The slides: HER2ST C2–C6 with their full-resolution H&E (copied into the folder), three expression-only HER2ST
sections and DLPFC 151673 with its 600-px image, on the storm-mini gene list and network (64-px patches).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def prepare(out: Path) -> None:
    if "STORM_DATA_MIRROR" not in os.environ and (ROOT.parent / "shared" / "data").is_dir():
        os.environ["STORM_DATA_MIRROR"] = str(ROOT.parent / "shared" / "data")
    import storm
    from storm.models import StormModel
    from storm.train._store import save_slides

    sections = ["C2", "C3", "C4", "C5", "C6", "B1", "D1", "E1"]
    adatas = [storm.datasets.her2st(s) for s in sections] + [storm.datasets.dlpfc("151673")]
    model = StormModel.setup(
        [adatas[:-1], adatas[-1:]], n_top_genes=700, include_genes=storm.datasets.hist2st_genes(), net={}
    )
    slides = [s for a in adatas for s in model.prepare(a)]
    save_slides(slides, out / "slides", genes=model.genes)
    (out / "net.json").write_text(json.dumps(model.config.net.to_dict()))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"prepared {len(slides)} slides, {sum(s.n_obs for s in slides)} windows, {size / 2**20:.1f} MiB → {out}")


def run(data: Path, steps: int, batch_size: int, workers: int, precision: str) -> None:
    import numpy as np
    import torch
    from lightning.pytorch import Callback, Trainer

    from storm.nn import StormNetConfig, StormPretrainModel
    from storm.train import StormDataModule, StormLightningModule
    from storm.train._store import load_slides

    assert sys.modules.get("anndata") is None, "the training path must not import AnnData"
    slides, genes = load_slides(data / "slides")
    config = StormNetConfig.from_dict(json.loads((data / "net.json").read_text()))
    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    print(f"device: {torch.cuda.get_device_name(0) if accelerator == 'gpu' else 'cpu'}; torch {torch.__version__}")
    print(f"{len(slides)} slides, {sum(s.n_obs for s in slides)} windows, {len(genes)} genes, precision {precision}")

    class Clock(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.losses: list[float] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            if accelerator == "gpu":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())
            self.losses.append(float(outputs["loss"]))

    torch.manual_seed(0)
    net = StormPretrainModel(config)
    module = StormLightningModule(net, lr=5e-4, warmup_steps=20, total_steps=steps)
    dm = StormDataModule(slides, patch_px=config.patch_px, batch_size=batch_size, num_workers=workers, val_fraction=0)
    clock = Clock()
    trainer = Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision if accelerator == "gpu" else "32-true",
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        use_distributed_sampler=False,
    )
    if accelerator == "gpu":
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=dm)
    warm = min(20, len(clock.times) // 4)
    dt = np.diff(clock.times[warm:])
    print(f"pretraining: {len(clock.times)} steps of {batch_size} windows")
    step = float(np.median(dt))
    print(f"  windows/s: {batch_size / step:.0f} (median step {step * 1e3:.1f} ms, after {warm} warm-up steps)")
    if accelerator == "gpu":
        print(f"  peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    k = max(1, len(clock.losses) // 10)
    print(f"  loss: first {k} steps {np.mean(clock.losses[:k]):.4f} → last {k} steps {np.mean(clock.losses[-k:]):.4f}")

    # Inference throughput: centre embeddings of whole windows (patches encoded inside, as a cold start does).
    net.eval().to(trainer.strategy.root_device)
    loader = torch.utils.data.DataLoader(dm.train_set, batch_size=256, num_workers=workers)
    n, start = 0, None
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if accelerator == "gpu" else torch.autocast("cpu", enabled=False)
    )
    with torch.inference_mode(), autocast:
        for i, batch in enumerate(loader):
            batch = {k: v.to(trainer.strategy.root_device, non_blocking=True) for k, v in batch.items()}
            if i == 2:
                if accelerator == "gpu":
                    torch.cuda.synchronize()
                start, n = time.perf_counter(), 0
            net.embed(batch)
            n += len(batch["offsets_um"])
            if i >= 40:
                break
    if accelerator == "gpu":
        torch.cuda.synchronize()
    print(f"embedding: {n / (time.perf_counter() - start):.0f} windows/s (batch 256, patches encoded in the window)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, default=ROOT / ".carry" / "gpu")
    r = sub.add_parser("run")
    r.add_argument("--data", type=Path, default=ROOT / ".carry" / "gpu")
    r.add_argument("--steps", type=int, default=300)
    r.add_argument("--batch-size", type=int, default=128)
    r.add_argument("--workers", type=int, default=8)
    r.add_argument("--precision", default="bf16-mixed")
    args = parser.parse_args()
    if args.stage == "prepare":
        prepare(args.out)
    else:
        run(args.data, args.steps, args.batch_size, args.workers, args.precision)


if __name__ == "__main__":
    main()
