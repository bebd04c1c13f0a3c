"""File helpers shared by the data registry, model checkpoints and expression heads (no AnnData, no torch)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in ``chunk_size`` blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def read_saved_folder(
    path: str | os.PathLike,
    config_name: str,
    weights_name: str,
    *,
    fmt: str,
    format_version: int,
    known_keys: frozenset[str] | set[str],
    what: str,
    saved_by: str,
) -> tuple[dict, Path, Path]:
    """Locate and verify a saved folder: a JSON description beside a weights file whose sha256 it records.

    The checks that every storm artefact on disk (models, expression heads) gets before its weights are read: both
    files exist, the JSON parses and carries ``"format": fmt``, no key is unknown, its ``format_version`` is not newer
    than this storm's, and the weights file's sha256 equals the recorded one.

    Parameters
    ----------
    path
        The folder (or a file inside it).
    config_name, weights_name
        File names of the description and the weights.
    fmt, format_version
        The format tag and the newest version this storm reads.
    known_keys
        Keys the description may hold.
    what, saved_by
        Words for the messages: what the folder is (e.g. ``"storm model"``) and what writes it.

    Returns
    -------
    tuple
        The parsed description, the path of the description and the path of the weights.

    Raises
    ------
    FileNotFoundError
        A file is missing.
    ValueError
        Invalid JSON, another format, unknown keys, a newer format version, or weights whose sha256 differs from the
        one recorded (or none recorded): the file was modified or corrupted, and is refused.
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    config_path, weights_path = folder / config_name, folder / weights_name
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"No {p.name} in {folder}: a saved {what} is a folder with {config_name} and {weights_name} (written "
                f"by {saved_by})."
            )
    try:
        body = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}).") from err
    if not isinstance(body, dict) or body.get("format") != fmt:
        raise ValueError(f'{config_path} is not a {what} description (no "format": "{fmt}").')
    unknown = sorted(set(body) - set(known_keys))
    if unknown:
        written = f" ({body['storm_version']!r})" if "storm_version" in body else ""
        raise ValueError(f"{config_path} has unknown keys {unknown}; it was written by another storm version{written}.")
    if int(body.get("format_version", 0)) > format_version:
        raise ValueError(
            f"{config_path} has format_version {body['format_version']}; this storm reads up to {format_version}. "
            "Upgrade storm."
        )
    expected = (body.get("weights") or {}).get("sha256")
    if not expected:
        raise ValueError(
            f"{config_path} records no sha256 of {weights_name}; refused (the weights cannot be verified)."
        )
    actual = file_sha256(weights_path)
    if actual != expected:
        raise ValueError(
            f"{weights_path} is refused: its sha256 ({actual[:12]}…) differs from the one recorded in {config_name} "
            f"({expected[:12]}…). The file was modified or corrupted; save or copy it again."
        )
    return body, config_path, weights_path
