"""CUDA checks of storm.nn (skipped where no GPU is present)."""

import pytest
import torch

from storm.nn import BatchKeys, StormNetConfig, StormPretrainModel

pytestmark = pytest.mark.gpu

B, W, G = 8, 25, 300


def _batch(device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    pos_mask = torch.rand(B, W, generator=g) > 0.2
    pos_mask[:, 0] = True
    batch = {
        BatchKeys.IMAGE: torch.randint(0, 256, (B, W, 3, 64, 64), dtype=torch.uint8, generator=g),
        BatchKeys.EXPR: torch.rand(B, W, G, generator=g) * 3,
        BatchKeys.GENE_MASK: torch.rand(B, G, generator=g) > 0.3,
        BatchKeys.OFFSETS: torch.randn(B, W, 2, generator=g) * 150,
        BatchKeys.POS_MASK: pos_mask,
    }
    return {k: v.to(device) for k, v in batch.items()}


def test_cuda_bf16_training_steps_and_cpu_parity():
    torch.manual_seed(0)
    model = StormPretrainModel(StormNetConfig(n_genes=G)).cuda()
    batch = _batch("cuda")
    opt = torch.optim.AdamW(model.param_groups(1e-3))
    losses = []
    for step in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(batch, generator=torch.Generator("cuda").manual_seed(step))
        assert torch.isfinite(out["loss"])
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.update_teacher()
        losses.append(float(out["loss"].detach()))
    assert all(p.grad is None for p in model.teacher.parameters())

    model.eval()
    with torch.inference_mode():
        gpu = model.embed(batch)
        cpu = model.cpu().embed(_batch("cpu"))
    assert gpu.shape == (B, 128)
    # cuDNN may use TF32 for convolutions: agreement to ~1e-2, not bitwise
    assert torch.allclose(gpu.cpu(), cpu, atol=5e-2, rtol=5e-2)
