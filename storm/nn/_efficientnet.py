"""EfficientNet-Lite (Tan & Le 2019; the "Lite" variants of the TensorFlow model garden) as a spot image encoder.

EfficientNet-Lite drops the squeeze-and-excitation blocks, uses ReLU6 instead of swish and keeps the stem (32
channels) and the head (1280 channels) at a fixed width: cheap on CPUs. The network here follows the TensorFlow
reference layer for layer ("same" padding, batch-norm eps 1e-3), so that the ImageNet weights published in the
EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N._depthwise_conv``, …) load unchanged
(:mod:`storm.nn._efficientnet_weights` converts them). Only the feature extractor is built: the ImageNet classifier
is not part of a spot encoder.

For fine-tuning on a CPU the tower splits at a block: :meth:`EfficientNetLite.bottom` runs the frozen blocks (their
output can be cached per patch) and :meth:`EfficientNetLite.top` the trainable ones and the pooled head.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ._image_encoders import ImageEncoder, to_unit_float

__all__ = ["EFFICIENTNET_LITE_VARIANTS", "IMAGENET_MEAN", "IMAGENET_STD", "EfficientNetLite", "EfficientNetLiteEncoder"]

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # TensorFlow's 0.99


@dataclass(frozen=True)
class _Stage:
    repeats: int
    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int


#: The seven stages of EfficientNet-B0/Lite0 (TensorFlow's ``efficientnet_lite_builder``).
_LITE0_STAGES = (
    _Stage(1, 3, 1, 1, 32, 16),
    _Stage(2, 3, 2, 6, 16, 24),
    _Stage(2, 5, 2, 6, 24, 40),
    _Stage(3, 3, 2, 6, 40, 80),
    _Stage(3, 5, 1, 6, 80, 112),
    _Stage(4, 5, 2, 6, 112, 192),
    _Stage(1, 3, 1, 6, 192, 320),
)

#: Width and depth multipliers and native resolution of the Lite variants (lite0–lite4).
EFFICIENTNET_LITE_VARIANTS: dict[str, tuple[float, float, int]] = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
    "efficientnet_lite3": (1.2, 1.4, 280),
    "efficientnet_lite4": (1.4, 1.8, 300),
}


def _round_filters(c: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return c
    c *= width
    new = max(divisor, int(c + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * c else new


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's "same" padding, computed for each input size (asymmetric when strided)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s, d in zip(x.shape[-2:], self.kernel_size, self.stride, self.dilation, strict=True):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top == bottom and left == right:  # symmetric (every unstrided layer): the convolution pads, no copy
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv_bn(
    c_in: int, c_out: int, kernel: int = 1, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        SameConv2d(c_in, c_out, kernel, stride=stride, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=_BN_EPS, momentum=_BN_MOMENTUM),
    ]
    if act:
        layers.append(nn.ReLU6())
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Mobile inverted bottleneck (MobileNet-v2): 1×1 expansion, depthwise k×k, 1×1 projection; no SE (Lite)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = _conv_bn(c_in, hidden) if expand != 1 else None
        self.depthwise = _conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = _conv_bn(hidden, c_out, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        h = self.project(self.depthwise(h))
        return x + h if self.residual else h


class EfficientNetLite(nn.Module):
    """The EfficientNet-Lite feature extractor: stem, 16 (lite0) MBConv blocks, 1×1 head to 1280 channels.

    Parameters
    ----------
    variant
        ``"efficientnet_lite0"`` … ``"efficientnet_lite4"`` (:data:`EFFICIENTNET_LITE_VARIANTS`).

    Notes
    -----
    Parameter names: ``stem``, ``blocks.N.{expand,depthwise,project}.{0 conv, 1 batch norm}``, ``head``.
    """

    def __init__(self, variant: str = "efficientnet_lite0") -> None:
        super().__init__()
        if variant not in EFFICIENTNET_LITE_VARIANTS:
            raise ValueError(
                f"Unknown EfficientNet-Lite variant {variant!r}; one of {list(EFFICIENTNET_LITE_VARIANTS)}."
            )
        width, depth, self.native_px = EFFICIENTNET_LITE_VARIANTS[variant]
        self.variant = variant
        self.stem = _conv_bn(3, 32, 3, 2)  # the Lite stem is not scaled
        blocks = []
        last = len(_LITE0_STAGES) - 1
        for i, st in enumerate(_LITE0_STAGES):
            c_in = 32 if i == 0 else _round_filters(st.c_in, width)
            c_out = _round_filters(st.c_out, width)
            # Lite keeps the first and the last stage's repeats fixed
            repeats = st.repeats if i in (0, last) else math.ceil(depth * st.repeats)
            for r in range(repeats):
                blocks.append(
                    MBConv(c_in if r == 0 else c_out, c_out, st.kernel, st.stride if r == 0 else 1, st.expand)
                )
        self.blocks = nn.ModuleList(blocks)
        self.head = _conv_bn(c_out, 1280)  # the Lite head is not scaled
        self.out_dim = 1280

    @property
    def n_blocks(self) -> int:
        """Number of MBConv blocks (16 for lite0)."""
        return len(self.blocks)

    def bottom(self, x: torch.Tensor, stop: int) -> torch.Tensor:
        """Run the stem and blocks ``[0, stop)`` on ImageNet-normalised input ``(N, 3, H, W)``: a feature map."""
        x = self.stem(x)
        for block in self.blocks[:stop]:
            x = block(x)
        return x

    def top(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """Blocks ``[start, n_blocks)``, the head and global average pooling of a :meth:`bottom` map: ``(N, 1280)``."""
        for block in self.blocks[start:]:
            x = block(x)
        return self.head(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled 1280-d features of ImageNet-normalised input ``(N, 3, H, W)``."""
        return self.top(self.bottom(x, self.n_blocks), self.n_blocks)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm-style layer groups for layer-wise learning-rate decay: stem, each block, head."""
        return {"stem": r"^stem", "blocks": r"^blocks\.(\d+)", "head": r"^head"}


class EfficientNetLiteEncoder(ImageEncoder):
    """EfficientNet-Lite as a spot image encoder: RGB patches → ``(N, 1280)`` pooled features.

    Patches (uint8 or float in ``[0, 1]``) are resized to ``input_px`` when they differ, then normalised with the
    ImageNet mean and std the published weights were trained with.

    Parameters
    ----------
    variant
        See :class:`EfficientNetLite`.
    input_px
        Side the patches are resized to; ``None``: used as they come.
    freeze
        Keep the backbone fixed (``trainable = False``).
    mean, std
        RGB normalisation after scaling to ``[0, 1]``.
    """

    def __init__(
        self,
        variant: str = "efficientnet_lite0",
        *,
        input_px: int | None = None,
        freeze: bool = False,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.backbone = EfficientNetLite(variant)
        self.variant = variant
        self.input_px = input_px
        self.out_dim = self.backbone.out_dim
        self.trainable = not freeze
        if freeze:
            self.backbone.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalize(self, patches: torch.Tensor) -> torch.Tensor:
        """Scale, resize and normalise ``(N, 3, H, W)`` patches to the network's input."""
        x = to_unit_float(patches)
        px = self.input_px
        if px is not None and (x.shape[-1] != px or x.shape[-2] != px):
            x = F.interpolate(x, size=(px, px), mode="bilinear", antialias=True, align_corners=False)
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Encode ``(N, 3, H, W)`` uint8 or ``[0, 1]`` float patches into ``(N, 1280)``."""
        return self.backbone(self.normalize(patches))

    def group_matcher(self, coarse: bool = False) -> dict:
        """Layer groups for :func:`~storm.nn.layerwise_lr_groups` (the backbone's)."""
        return {
            "stem": r"^backbone\.stem",
            "blocks": r"^backbone\.blocks\.(\d+)",
            "head": r"^backbone\.head",
        }
