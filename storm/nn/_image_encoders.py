"""Spot-level image encoders behind one interface, and the compact CNN that is storm's offline default."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HE_MEAN", "HE_STD", "ConvImageEncoder", "ImageEncoder", "to_unit_float"]

#: Per-channel RGB mean and std of H&E tiles (Bioptimus H-optimus-0/H0-mini model cards, computed on pathology
#: tiles); closer to H&E colour statistics than ImageNet's, so from-scratch CNNs start near unit variance.
HE_MEAN: tuple[float, float, float] = (0.707223, 0.578729, 0.703617)
HE_STD: tuple[float, float, float] = (0.211883, 0.230117, 0.177517)


def to_unit_float(patches: torch.Tensor) -> torch.Tensor:
    """Return RGB patches as float in ``[0, 1]``.

    Parameters
    ----------
    patches
        ``(N, 3, H, W)`` uint8 in ``[0, 255]`` or float already in ``[0, 1]``.

    Returns
    -------
    torch.Tensor
        Float32 (or the input's floating dtype) in ``[0, 1]``.
    """
    if patches.ndim != 4 or patches.shape[1] != 3:
        raise ValueError(f"Expected RGB patches of shape (N, 3, H, W), got {tuple(patches.shape)}.")
    if patches.dtype == torch.uint8:
        return patches.float().div_(255.0)
    if not patches.is_floating_point():
        raise TypeError(f"Patches must be uint8 or float in [0, 1], got {patches.dtype}.")
    return patches


class ImageEncoder(nn.Module):
    """Base class: ``forward(patches (N, 3, H, W) uint8 or float in [0, 1]) -> (N, out_dim)``.

    Subclasses do their own normalisation (uint8 → [0, 1] → mean/std), so callers hand over raw RGB. Attributes
    ``out_dim`` (feature width) and ``trainable`` (whether pretraining may update it) describe the encoder.
    """

    out_dim: int
    trainable: bool = True

    def forward(self, patches: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Encode ``(N, 3, H, W)`` patches into ``(N, out_dim)`` features."""
        raise NotImplementedError


class _BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016) with GroupNorm; the last norm starts at 0 so the block starts as identity."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(channels, groups), channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(channels, groups), channels)
        # Zero-init of the residual branch's last scale (Goyal et al. 2017) keeps from-scratch training stable.
        nn.init.zeros_(self.norm2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(x + self.norm2(self.conv2(h)))


def _groups(channels: int, groups: int) -> int:
    """Largest group count ≤ ``groups`` that divides ``channels`` (GroupNorm needs a divisor)."""
    return math.gcd(channels, groups)


def _stage(c_in: int, c_out: int, stride: int, blocks: int, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    if stride != 1 or c_in != c_out:
        layers += [
            nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.GroupNorm(_groups(c_out, groups), c_out),
            nn.ReLU(),
        ]
    layers += [_BasicBlock(c_out, groups) for _ in range(blocks)]
    return nn.Sequential(*layers)


class ConvImageEncoder(ImageEncoder):
    """Compact ResNet-style CNN trained from scratch: storm's offline default image encoder.

    A stride-4 stem (two stride-2 3×3 convolutions) is followed by one stage per width, each halving the
    resolution, of ``blocks_per_stage`` basic residual blocks; GroupNorm throughout, so a spot's features do not
    depend on the other patches of its batch (embeddings are reproducible at any batch size, and padded patches
    never need to be encoded). Global average and standard-deviation pooling (a cheap texture statistic) feed a
    linear layer to ``out_dim``. Any input size ≥ 16 px works; 64–112 px keep CPU pretraining practical, 224 px
    matches the paper's patches.

    Parameters
    ----------
    out_dim
        Output feature width.
    widths
        Channels of the stages (the stem has ``widths[0]``).
    blocks_per_stage
        Residual blocks per stage.
    groups
        GroupNorm groups (reduced to a divisor of each channel count).
    mean, std
        RGB normalisation applied after scaling to ``[0, 1]``.
    """

    def __init__(
        self,
        out_dim: int = 256,
        *,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks_per_stage: int = 1,
        groups: int = 8,
        mean: Sequence[float] = HE_MEAN,
        std: Sequence[float] = HE_STD,
    ) -> None:
        super().__init__()
        if not widths:
            raise ValueError("widths must not be empty.")
        self.out_dim = out_dim
        c0 = widths[0]
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.stem = nn.Sequential(
            nn.Conv2d(3, c0 // 2, 3, stride=2, padding=1, bias=False),
            nn.GroupNorm(_groups(c0 // 2, groups), c0 // 2),
            nn.ReLU(),
            nn.Conv2d(c0 // 2, c0, 3, stride=2, padding=1, bias=False),
            nn.GroupNorm(_groups(c0, groups), c0),
            nn.ReLU(),
        )
        stages = []
        c_in = c0
        for i, c in enumerate(widths):
            stages.append(_stage(c_in, c, 1 if i == 0 else 2, blocks_per_stage, groups))
            c_in = c
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(2 * c_in, out_dim)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Encode ``(N, 3, H, W)`` uint8 or ``[0, 1]`` float patches into ``(N, out_dim)``."""
        x = (to_unit_float(patches) - self.mean) / self.std
        x = self.stages(self.stem(x))
        # sqrt(var + eps), not .std(): the gradient of std is NaN where a map is constant (e.g. 1×1 at small inputs).
        std = (x.var(dim=(2, 3), correction=0) + 1e-5).sqrt()
        pooled = torch.cat([x.mean(dim=(2, 3)), std], dim=1)
        return self.head(pooled)
