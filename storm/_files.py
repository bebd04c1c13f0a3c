"""File helpers shared by the data registry, model checkpoints and expression heads (no AnnData, no torch)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

#: Checksums of a saved folder's files, in ``sha256sum`` format (``sha256sum -c SHA256SUMS`` checks it by hand).
MANIFEST_FILE = "SHA256SUMS"


def file_sha256(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Return the hex sha256 of a file, read in ``chunk_size`` blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: str | os.PathLike, names: Sequence[str]) -> Path:
    """Write ``folder/SHA256SUMS``: the sha256 of each named file of ``folder`` (written last, after the files)."""
    folder = Path(folder)
    lines = [f"{file_sha256(folder / name)}  {name}\n" for name in sorted(names)]
    path = folder / MANIFEST_FILE
    path.write_text("".join(lines))
    return path


def verify_manifest(folder: Path, names: Sequence[str]) -> None:
    """Check every file of ``names`` against ``folder/SHA256SUMS``, and every other file listed there that exists.

    Raises
    ------
    ValueError
        No manifest, a file of ``names`` not listed, or a file whose sha256 differs from the listed one.
    """
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(
            f"{folder} has no {MANIFEST_FILE}, so {', '.join(names)} cannot be verified (saved by an older storm, or "
            f"the file was removed); refused. Save it again with this storm, or, if you trust the folder, write the "
            f"checksums inside it with `sha256sum {' '.join(names)} > {MANIFEST_FILE}`."
        )
    listed: dict[str, str] = {}
    for line in path.read_text().splitlines():
        digest, sep, name = line.partition("  ")
        if not sep or len(digest) != 64:
            raise ValueError(f"{path} is not in `sha256sum` format (line {line!r}); save the folder again.")
        listed[name.strip()] = digest.lower()
    missing = [name for name in names if name not in listed]
    if missing:
        raise ValueError(f"{path} lists no checksum of {missing}; refused (the files cannot be verified).")
    for name, expected in listed.items():
        if (folder / name).is_file() and (actual := file_sha256(folder / name)) != expected:
            raise ValueError(
                f"{folder / name} is refused: its sha256 ({actual[:12]}…) differs from the one in {MANIFEST_FILE} "
                f"({expected[:12]}…). The file was modified or corrupted; save or copy the folder again."
            )


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
    files exist and match their sha256 in the folder's ``SHA256SUMS`` (:func:`verify_manifest`: a reordered gene
    list in the description is as wrong as flipped weights), the JSON parses and carries ``"format": fmt``, no key
    is unknown, its ``format_version`` is not newer than this storm's, and the weights file's sha256 equals the
    recorded one.

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
    verify_manifest(folder, (config_name, weights_name))
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
