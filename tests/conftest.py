"""Shared test set-up: the data mirror beside the checkout, a private cache, a non-interactive plot backend."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_MIRROR = ROOT.parent / "shared" / "data"

os.environ.setdefault("MPLBACKEND", "agg")
if "STORM_DATA_MIRROR" not in os.environ and SHARED_MIRROR.is_dir():
    os.environ["STORM_DATA_MIRROR"] = str(SHARED_MIRROR)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per test: tiny models on a 2-core machine run 10–30× slower with more.

    Per test, not per session: scanpy's numba code resets torch's thread count when it first runs.
    """
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True, scope="session")
def _private_data_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep test downloads out of the user's cache (mirrors are read in place, never copied)."""
    previous = os.environ.get("STORM_DATA_DIR")
    os.environ["STORM_DATA_DIR"] = str(tmp_path_factory.mktemp("storm-cache"))
    yield
    if previous is None:
        os.environ.pop("STORM_DATA_DIR", None)
    else:
        os.environ["STORM_DATA_DIR"] = previous


@pytest.fixture
def storm_log(caplog: pytest.LogCaptureFixture):
    """Let pytest see storm's log records (the package logger does not propagate by default)."""
    from storm._logging import logger

    logger.propagate = True
    caplog.set_level("INFO", logger="storm")
    yield caplog
    logger.propagate = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip GPU tests where no CUDA device exists, and data tests where no mirror or network is available."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        has_gpu = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(skip_gpu)
