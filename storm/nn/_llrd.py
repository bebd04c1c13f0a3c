"""Layer-wise learning-rate decay (LLRD) parameter groups.

LLRD (Clark et al., ELECTRA, 2020; Bao et al., BEiT, 2022) fine-tunes a pretrained backbone with a learning rate
that shrinks geometrically from the top layer down: ``lr_l = base_lr · decay^(L-1-l)`` for layer ``l`` of
``L``, so the generic low-level features move least. The paper fine-tunes H0-mini with decay 0.7.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from typing import Any

from torch import nn

__all__ = ["layerwise_lr_groups", "parameter_layer_ids"]

_TOP = float("inf")


def _matcher_layer_ids(model: nn.Module, matcher: dict | Callable) -> dict[str, int]:
    """Layer id of every parameter from a timm-style ``group_matcher`` (dict of regexes or a callable).

    Same semantics as timm's ``group_with_matcher``: each parameter name maps to a tuple of ordinals (the group's
    order in the dict, then the integers captured by the regex, then an optional suffix); a suffix of
    ``(99999,)`` merges the parameter into the previous group; unmatched names (neck, head) go to the top.
    Re-implemented here so that timm is not needed to read a matcher.
    """
    if isinstance(matcher, dict):
        compiled: list[tuple[re.Pattern, tuple[float, ...], tuple | None]] = []
        for ordinal, spec in enumerate(matcher.values()):
            if spec is None:
                continue
            specs = spec if isinstance(spec, list | tuple) else [(spec, None)]
            for pattern, suffix in specs:
                compiled.append((re.compile(pattern), (float(ordinal),), suffix))

        def key_of(name: str) -> tuple[float, ...]:
            for regex, prefix, suffix in compiled:
                hit = regex.match(name)
                if hit:
                    groups = tuple(float(g) for g in hit.groups() if g is not None)
                    return prefix + groups + tuple(float(s) for s in (suffix or ()))
            return (_TOP,)

    else:

        def key_of(name: str) -> tuple[float, ...]:
            out = matcher(name)
            return tuple(float(v) for v in out) if isinstance(out, Iterable) else (float(out),)

    grouping: dict[tuple[float, ...], list[str]] = defaultdict(list)
    for name, _ in model.named_parameters():
        grouping[key_of(name)].append(name)
    ids: dict[str, int] = {}
    layer = -1
    for key in sorted(grouping):
        if layer < 0 or key[-1] != 99999.0:
            layer += 1
        for name in grouping[key]:
            ids[name] = layer
    return ids


def _depth_layer_ids(model: nn.Module) -> dict[str, int]:
    """Assign layers in registration order, expanding containers of repeated blocks (generic fallback).

    Parameters registered directly on ``model`` (e.g. a class token or position embedding) are layer 0, as the
    embeddings are in BEiT. Then each top-level child is one layer, except ``nn.Sequential``/``nn.ModuleList``
    children, whose own children (blocks or stages) are one layer each.
    """
    units: list[str] = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential | nn.ModuleList) and len(child) > 0:
            units += [f"{name}.{sub}" for sub, _ in child.named_children()]
        else:
            units.append(name)
    has_own = any("." not in n for n, _ in model.named_parameters())
    offset = 1 if has_own else 0
    ids: dict[str, int] = {}
    for name, _ in model.named_parameters():
        if "." not in name:
            ids[name] = 0
            continue
        layer = next((i for i, u in enumerate(units) if name.startswith(u + ".")), len(units) - 1)
        ids[name] = layer + offset
    # Renumber densely: children without parameters (activations, pooling) leave no gaps.
    order = {v: i for i, v in enumerate(sorted(set(ids.values())))}
    return {n: order[v] for n, v in ids.items()}


def parameter_layer_ids(model: nn.Module) -> dict[str, int]:
    """Map every parameter name of ``model`` to its layer index, 0 = closest to the input.

    Uses ``model.group_matcher(coarse=False)`` when the model defines one (every timm model does, e.g. ViT:
    embeddings → 0, block ``i`` → ``i + 1``, final norm/head → top), otherwise ``_depth_layer_ids``.

    Parameters
    ----------
    model
        Any module.

    Returns
    -------
    dict[str, int]
        Layer index per parameter name (dense, starting at 0).
    """
    matcher_fn = getattr(model, "group_matcher", None)
    if callable(matcher_fn):
        return _matcher_layer_ids(model, matcher_fn(coarse=False))
    return _depth_layer_ids(model)


def layerwise_lr_groups(
    model: nn.Module,
    base_lr: float,
    decay: float = 0.7,
    weight_decay: float = 0.05,
    *,
    no_weight_decay: Collection[str] = (),
) -> list[dict[str, Any]]:
    """Optimiser parameter groups with layer-wise learning-rate decay.

    The top layer of ``model`` gets ``base_lr``, the one below ``base_lr · decay``, and so on down to the
    embeddings. To put a backbone under a head that trains at ``lr``, pass ``base_lr=lr · decay``. Biases,
    normalisation scales and other 1-D parameters, the names the model lists in its own ``no_weight_decay()``
    (timm convention: class token, position embeddings) and those in ``no_weight_decay`` get no weight decay.
    Frozen parameters (``requires_grad=False``) are left out.

    Parameters
    ----------
    model
        The module to fine-tune.
    base_lr
        Learning rate of the top layer.
    decay
        Multiplicative decay per layer (1: no decay).
    weight_decay
        Weight decay of matrices and convolution kernels.
    no_weight_decay
        Extra parameter names (or name suffixes) without weight decay (e.g. ``"pos_embed"``).

    Returns
    -------
    list[dict]
        Groups with ``params``, ``lr``, ``weight_decay``, ``layer_id`` and ``lr_scale`` keys, ordered from the
        bottom layer up; ``torch.optim`` ignores the extra keys.
    """
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}.")
    ids = parameter_layer_ids(model)
    top = max(ids.values(), default=0)
    extra = tuple(no_weight_decay)
    own = getattr(model, "no_weight_decay", None)
    if callable(own):
        extra += tuple(own())
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = ids[name]
        no_wd = param.ndim <= 1 or name.endswith(".bias") or any(name == e or name.endswith(e) for e in extra)
        key = (layer, no_wd)
        if key not in groups:
            scale = decay ** (top - layer)
            groups[key] = {
                "params": [],
                "lr": base_lr * scale,
                "lr_scale": scale,
                "weight_decay": 0.0 if no_wd else weight_decay,
                "layer_id": layer,
            }
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]
