"""Where data live: the local cache and the read-only mirrors, both set through environment variables."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DATA_DIR_ENV = "STORM_DATA_DIR"
MIRROR_ENV = "STORM_DATA_MIRROR"


def data_dir() -> Path:
    """Return the local cache folder: ``$STORM_DATA_DIR`` or the user cache dir (e.g. ``~/.cache/storm``)."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("storm"))


def mirror_dirs() -> list[Path]:
    """Return the mirror folders named in ``$STORM_DATA_MIRROR`` (several separated by ``os.pathsep``)."""
    env = os.environ.get(MIRROR_ENV, "")
    return [Path(p).expanduser() for p in env.split(os.pathsep) if p.strip()]
