"""Real data for tests: loaded through storm.datasets, skipped where neither a mirror nor the network has it."""

from __future__ import annotations

import pytest


def real(name: str, *args):
    """Call ``storm.datasets.<name>(*args)``; skip the test when the data cannot be had on this machine."""
    from storm import datasets

    try:
        return getattr(datasets, name)(*args)
    except datasets.DataUnavailableError as err:  # no mirror and no network
        pytest.skip(str(err))
