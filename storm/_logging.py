"""The package logger: one ``logging.Logger`` named ``storm``, at INFO unless ``$STORM_LOG_LEVEL`` says otherwise.

``STORM_LOG_LEVEL=WARNING`` keeps storm's progress messages out of executed notebooks (the documentation pages and
their quick runs set it); ``logging.getLogger("storm").setLevel(...)`` changes it within a session.
"""

from __future__ import annotations

import logging
import os

LEVEL_ENV = "STORM_LOG_LEVEL"

logger = logging.getLogger("storm")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s storm: %(message)s"))
    logger.addHandler(_handler)
    _level = os.environ.get(LEVEL_ENV, "INFO").upper()
    if _level not in logging.getLevelNamesMapping():
        raise ValueError(f"${LEVEL_ENV}={_level!r} is not a logging level: use DEBUG, INFO, WARNING or ERROR.")
    logger.setLevel(_level)
    logger.propagate = False
