"""The package logger: one ``logging.Logger`` named ``storm``, silent unless the user configures logging."""

from __future__ import annotations

import logging

logger = logging.getLogger("storm")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s storm: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
