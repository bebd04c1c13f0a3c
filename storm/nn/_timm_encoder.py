"""Pathology foundation models (H0-mini, UNI, Virchow, …) from timm / the Hugging Face Hub as image encoders."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ._image_encoders import ImageEncoder, to_unit_float
from ._llrd import parameter_layer_ids

__all__ = ["KNOWN_TIMM_KWARGS", "TimmImageEncoder", "WeightsUnavailableError"]

_TIMM_HINT = (
    "TimmImageEncoder needs the optional extra `timm`: `pip install storm-st[timm]` (install the torch build for "
    "your machine first: timm pulls torchvision, which otherwise pulls a CUDA torch). Without it, use storm's "
    "offline default image encoder, ConvImageEncoder (StormNetConfig(image_encoder='conv'))."
)

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _swiglu_silu(timm: Any) -> dict[str, Any]:
    return {"mlp_layer": timm.layers.SwiGLUPacked, "act_layer": torch.nn.SiLU}


#: Keyword arguments that the model cards of common pathology backbones require on top of the Hub config (they
#: are code, not config, so timm cannot read them from the Hub). Keys are lower-case model names.
KNOWN_TIMM_KWARGS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "hf-hub:bioptimus/h0-mini": _swiglu_silu,
    "hf-hub:bioptimus/h-optimus-0": lambda timm: {"init_values": 1e-5, "dynamic_img_size": False},
    "hf-hub:bioptimus/h-optimus-1": lambda timm: {"init_values": 1e-5, "dynamic_img_size": False},
    "hf-hub:paige-ai/virchow": _swiglu_silu,
    "hf-hub:paige-ai/virchow2": _swiglu_silu,
    "hf-hub:mahmoodlab/uni": lambda timm: {"init_values": 1e-5, "dynamic_img_size": True},
}


class WeightsUnavailableError(OSError):
    """Pretrained weights could not be fetched (offline machine, gated model, missing file)."""


def _import_timm() -> Any:
    try:
        import timm
    except ImportError as err:
        raise ImportError(_TIMM_HINT) from err
    return timm


_NETWORK_MODULES = ("huggingface_hub", "requests", "httpx", "urllib3", "urllib", "http", "socket", "ssl")


def _is_unreachable(err: BaseException) -> bool:
    """Whether an exception (or one it wraps) comes from the network, the Hub or a missing file."""
    seen = 0
    while err is not None and seen < 5:
        if isinstance(err, OSError | TimeoutError | ConnectionError):
            return True
        if any(cls.__module__.split(".")[0] in _NETWORK_MODULES for cls in type(err).__mro__):
            return True
        err = err.__cause__ or err.__context__
        seen += 1
    return False


def _unavailable_message(name: str, err: BaseException, weights_path: str | None) -> str:
    repo = name.removeprefix("hf-hub:")
    return (
        f"Could not load pretrained weights for the timm model {name!r} ({type(err).__name__}: {err}).\n"
        "This machine may be offline, or the model may be gated on the Hugging Face Hub. Options:\n"
        f"  - where the Hub is reachable: accept the model's terms on https://huggingface.co/{repo}, run "
        f"`huggingface-cli login`, then `huggingface-cli download {repo}` to fill the cache; afterwards set "
        "HF_HUB_OFFLINE=1 so the cache is used without a network (offline, it also skips the Hub's retries);\n"
        "  - or pass weights_path='/path/to/model.safetensors' (for an 'hf-hub:' name its config.json must be "
        "cached too; otherwise give a timm architecture name);\n"
        "  - or use storm's offline default image encoder, ConvImageEncoder (StormNetConfig(image_encoder='conv'))."
        + (f"\n(weights_path was {weights_path!r}.)" if weights_path else "")
    )


class TimmImageEncoder(ImageEncoder):
    """Any timm backbone (incl. ``"hf-hub:…"`` pathology models) as a spot-level image encoder.

    timm is imported lazily: without it construction raises an :class:`ImportError` that says how to install the
    extra. Patches are scaled to ``[0, 1]``, resized to the model's input size and normalised with the model's
    own mean/std (from its pretrained config unless given). Token outputs are pooled by ``pool``.

    Parameters
    ----------
    name
        timm model name, e.g. ``"hf-hub:bioptimus/H0-mini"`` (the paper's encoder), ``"hf-hub:MahmoodLab/UNI"``
        or ``"vit_small_patch16_224"``.
    pretrained
        Load pretrained weights (from the Hub/cache, or ``weights_path``).
    weights_path
        Local weight file (``.safetensors``/``.bin``/``.pth``), used instead of downloading.
    pool
        How a token sequence becomes one vector: ``"cls"`` (the paper: H0-mini's 768-d class token),
        ``"cls+mean"`` (class token and mean patch token concatenated, H0-mini's card) or ``"mean"``. Models
        that already return pooled features are used as they are.
    input_size
        Side in pixels the patches are resized to (default: the model's).
    mean, std
        Normalisation (default: the model's pretrained config, else ImageNet's).
    freeze
        Keep the backbone fixed (``trainable = False``).
    grad_checkpointing
        Trade compute for memory when fine-tuning (if the model supports it).
    model_kwargs
        Extra arguments for ``timm.create_model``; merged over :data:`KNOWN_TIMM_KWARGS` for known names.

    Raises
    ------
    ImportError
        timm is not installed.
    WeightsUnavailableError
        Pretrained weights cannot be reached (offline, gated, missing file); the message says what to do.
    """

    def __init__(
        self,
        name: str = "hf-hub:bioptimus/H0-mini",
        *,
        pretrained: bool = True,
        weights_path: str | Path | None = None,
        pool: str = "cls",
        input_size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        freeze: bool = False,
        grad_checkpointing: bool = False,
        model_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if pool not in ("cls", "cls+mean", "mean"):
            raise ValueError(f"pool must be 'cls', 'cls+mean' or 'mean', got {pool!r}.")
        timm = _import_timm()
        kwargs: dict[str, Any] = {}
        known = KNOWN_TIMM_KWARGS.get(name.lower())
        if known is not None:
            kwargs.update(known(timm))
        kwargs.update(model_kwargs or {})
        kwargs.setdefault("num_classes", 0)
        path = None if weights_path is None else str(Path(weights_path).expanduser())
        if path is not None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"weights_path {path!r} does not exist.")
            kwargs["pretrained_cfg_overlay"] = {"file": path}
        try:
            backbone = timm.create_model(name, pretrained=pretrained or path is not None, **kwargs)
        except Exception as err:
            if "Unknown model" in str(err):
                raise ValueError(f"timm knows no model {name!r} ({err}); see `timm.list_models()`.") from err
            if _is_unreachable(err):
                raise WeightsUnavailableError(_unavailable_message(name, err, path)) from err
            raise
        self.backbone = backbone
        self.name = name
        self.pool = pool
        self.trainable = not freeze
        if freeze:
            self.backbone.requires_grad_(False)
        if grad_checkpointing and hasattr(backbone, "set_grad_checkpointing"):
            backbone.set_grad_checkpointing(True)

        data_cfg: dict[str, Any] = {}
        try:
            data_cfg = dict(timm.data.resolve_model_data_config(backbone))
        except Exception:
            data_cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
        size = input_size or (data_cfg.get("input_size") or (3, 224, 224))[-1]
        self.input_size = int(size)
        mean = mean or data_cfg.get("mean") or _IMAGENET_MEAN
        std = std or data_cfg.get("std") or _IMAGENET_STD
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.num_prefix_tokens = int(getattr(backbone, "num_prefix_tokens", 1))
        self.out_dim = self._infer_out_dim()

    def _infer_out_dim(self) -> int:
        width = getattr(self.backbone, "num_features", None)
        if isinstance(width, int) and width > 0:
            return 2 * width if self.pool == "cls+mean" else width
        was_training = self.backbone.training
        self.backbone.eval()
        with torch.no_grad():
            out = self.forward(torch.zeros(1, 3, self.input_size, self.input_size))
        self.backbone.train(was_training)
        return int(out.shape[-1])

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        """Encode ``(N, 3, H, W)`` uint8 or ``[0, 1]`` float patches into ``(N, out_dim)``."""
        x = to_unit_float(patches)
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = self.backbone(x)
        if out.ndim == 2:
            return out
        if out.ndim != 3:
            raise RuntimeError(
                f"Backbone {self.name!r} returned shape {tuple(out.shape)}; expected (N, D) or (N, T, D)."
            )
        cls, patch_tokens = out[:, 0], out[:, self.num_prefix_tokens :]
        if self.pool == "cls":
            return cls
        if self.pool == "mean":
            return patch_tokens.mean(1)
        return torch.cat([cls, patch_tokens.mean(1)], dim=-1)

    def group_matcher(self, coarse: bool = False) -> Callable[[str], tuple[int]]:
        """Layer ordinal per parameter name, for :func:`~storm.nn.layerwise_lr_groups` (timm's grouping inside)."""
        inner = parameter_layer_ids(self.backbone)
        top = max(inner.values(), default=0) + 1
        prefix = "backbone."

        def ordinal(name: str) -> tuple[int]:
            if name.startswith(prefix) and name[len(prefix) :] in inner:
                return (inner[name[len(prefix) :]],)
            return (top,)

        return ordinal
