"""Saved models: ``model.safetensors`` (inference weights) + ``config.json``, validated on load; hub look-up."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from storm._files import MANIFEST_FILE, file_sha256, read_saved_folder, write_manifest
from storm._logging import logger
from storm._version import __version__

__all__ = [
    "CONFIG_FILE",
    "EMBEDDED_MODELS",
    "WEIGHTS_FILE",
    "file_sha256",
    "read_checkpoint",
    "resolve_pretrained",
    "write_checkpoint",
]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "storm-model"
FORMAT_VERSION = 1
#: Top-level keys of ``config.json``; anything else is refused (a file of another storm version or not storm's).
CONFIG_KEYS = frozenset({"format", "format_version", "storm_version", "net", "genes", "setup", "weights", "training"})
#: Models that ship inside the package, by name.
EMBEDDED_MODELS = {"storm-mini": Path(__file__).parent / "weights" / "storm-mini"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def write_checkpoint(
    folder: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    config: dict[str, Any],
    *,
    training: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and their checksums (``SHA256SUMS``) into ``folder``.

    Parameters
    ----------
    folder
        Output folder (created).
    state_dict
        Inference weights.
    config
        :meth:`StormModelConfig.to_dict` output.
    training
        Optional provenance (data, steps, final loss) stored under ``"training"``.
    overwrite
        Replace an existing saved model.

    Returns
    -------
    Path
        The folder.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if (folder / CONFIG_FILE).exists() and not overwrite:
        raise FileExistsError(f"{folder} already holds a saved model; pass overwrite=True to replace it.")
    folder.mkdir(parents=True, exist_ok=True)
    # clone: safetensors refuses tensors that share storage, and views must be contiguous
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    weights = folder / WEIGHTS_FILE
    save_file(tensors, str(weights), metadata={"format": "pt", "storm_version": __version__})
    body = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "storm_version": config.get("version", __version__),
        "net": config["net"],
        "genes": config["genes"],
        "setup": config["setup"],
        "weights": {
            "file": WEIGHTS_FILE,
            "sha256": file_sha256(weights),
            "n_tensors": len(tensors),
            "n_parameters": int(sum(t.numel() for t in tensors.values() if t.is_floating_point())),
        },
    }
    if training:
        body["training"] = training
    (folder / CONFIG_FILE).write_text(json.dumps(body, indent=1) + "\n")
    write_manifest(folder, (CONFIG_FILE, WEIGHTS_FILE))
    logger.info(f"Saved the model to {folder} ({body['weights']['n_parameters']:,} parameters)")
    return folder


def read_checkpoint(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read and validate a saved model: its config dict (``StormModelConfig.from_dict`` input) and its weights.

    Raises
    ------
    FileNotFoundError
        No ``config.json`` or ``model.safetensors`` in ``folder``.
    ValueError
        Not a storm model, unknown keys, or weights whose sha256 differs from the one recorded (refused: the file
        was modified or corrupted).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    body, _, weights_path = read_saved_folder(
        folder,
        CONFIG_FILE,
        WEIGHTS_FILE,
        fmt=FORMAT,
        format_version=FORMAT_VERSION,
        known_keys=CONFIG_KEYS,
        what="storm model",
        saved_by="StormModel.save",
    )
    try:
        state = load_file(str(weights_path))
    except SafetensorError as err:  # pragma: no cover - a matching sha256 makes this unlikely
        raise ValueError(f"{weights_path} is not a readable safetensors file ({err}).") from err
    config = {"version": body.get("storm_version", __version__), **{k: body[k] for k in ("net", "genes", "setup")}}
    return config, state


def resolve_pretrained(name_or_path: str | os.PathLike | None, *, revision: str | None = None) -> Path:
    """Folder of a pretrained model: an embedded model, a local folder, or a Hugging Face Hub snapshot.

    Parameters
    ----------
    name_or_path
        ``None`` or ``"storm-mini"``: the model shipped in the package; an existing folder; else a Hub repository
        id (``"owner/name"``), of which only ``model.safetensors`` and ``config.json`` are downloaded.
    revision
        Hub branch, tag or commit.

    Returns
    -------
    Path
        A folder for :func:`read_checkpoint`.

    Raises
    ------
    FileNotFoundError
        The embedded weights are not shipped, the folder does not exist, or the Hub files cannot be had (offline
        with ``HF_HUB_OFFLINE=1`` and not cached, or unreachable).
    """
    name = "storm-mini" if name_or_path is None else name_or_path
    if isinstance(name, str) and name in EMBEDDED_MODELS:
        folder = EMBEDDED_MODELS[name]
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"The {name} weights are not shipped with this storm version yet ({folder} is empty). Pretrain a model "
                "with `storm pretrain storm/train/configs/storm_mini.yaml --output DIR` and load it with "
                "`StormModel.load('DIR/model')`, or pass a Hugging Face repository id."
            )
        return folder
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    text = str(name)
    if not _REPO_ID.match(text) or text.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"No model folder at {text!r} (and it is not a Hugging Face repository id 'owner/name')."
        )
    owner = path.parts[0]
    if Path(owner).is_dir():  # e.g. 'runs/storm-mini' with ./runs present: a mistyped local path, not a Hub id
        raise FileNotFoundError(
            f"No model folder at {text!r}: the folder {owner!r} exists (in {Path.cwd()}) but holds no "
            f"{path.name!r}. Check the path (a saved model is the folder with config.json); to load the Hugging "
            f"Face repository {text!r} instead, run from another directory."
        )
    return _snapshot(text, revision)


def _snapshot(repo_id: str, revision: str | None) -> Path:
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=[WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE],
            local_files_only=offline,
        )
    except RepositoryNotFoundError as err:
        raise FileNotFoundError(
            f"No local folder {repo_id!r} exists (in {Path.cwd()}), and no Hugging Face repository {repo_id!r} (or "
            "it is private/gated: log in with `hf auth login`). "
            "For a local model, pass the folder that holds config.json."
        ) from err
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        why = "HF_HUB_OFFLINE is set and the files are not in the local cache" if offline else "the Hub is unreachable"
        raise FileNotFoundError(
            f"No local folder {repo_id!r} exists (in {Path.cwd()}), and {repo_id!r} cannot be had from the Hugging "
            f"Face Hub: {why} ({type(err).__name__}). For a local model, check the path. Download it where the "
            f"Hub is reachable (`hf download {repo_id} {WEIGHTS_FILE} {CONFIG_FILE} {MANIFEST_FILE} --local-dir DIR`), "
            "copy DIR here and pass its path; or use the embedded model (`StormModel.from_pretrained()`)."
        ) from err
    return Path(folder)
