"""Real data for tests: loaded through storm.datasets, skipped where neither a mirror nor the network has it."""

from __future__ import annotations

import pytest

#: A network small enough for tests to train in seconds.
TINY_NET = {
    "dim": 16,
    "depth": 1,
    "heads": 2,
    "patch_px": 16,
    "conv_widths": [8],
    "image_feature_dim": 8,
    "gene_dim": 8,
    "decoder_dim": 16,
    "decoder_depth": 1,
    "decoder_heads": 2,
}


def real(name: str, *args):
    """Call ``storm.datasets.<name>(*args)``; skip the test when the data cannot be had on this machine."""
    from storm import datasets

    try:
        return getattr(datasets, name)(*args)
    except datasets.DataUnavailableError as err:  # no mirror and no network
        pytest.skip(str(err))
