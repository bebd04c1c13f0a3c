"""Build configuration dataclasses from dicts strictly: an unknown key is an error, never silently dropped."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any


def unknown_keys(cls: type, d: Mapping[str, Any], *, exclude: frozenset[str] = frozenset()) -> list[str]:
    """Keys of ``d`` that are not fields of dataclass ``cls`` (minus ``exclude``), sorted."""
    return sorted(set(d) - ({f.name for f in dataclasses.fields(cls)} - exclude))


def strict_from_dict(cls: type, d: Mapping[str, Any] | None, *, label: str, where: str = "") -> Any:
    """Return ``cls(**d)`` after checking every key is a field.

    The error reads "Unknown {label} [keys]{where} (known: …)", e.g. label ``"StormNetConfig fields"``.
    """
    d = dict(d or {})
    unknown = unknown_keys(cls, d)
    if unknown:
        known = sorted(f.name for f in dataclasses.fields(cls))
        raise ValueError(f"Unknown {label} {unknown}{where} (known: {known}); was it written by a newer storm?")
    return cls(**d)
