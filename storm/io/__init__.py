"""Readers: Space Ranger (Visium) folders, legacy ST tables, R data files, and images opened lazily."""

from ._image import LazyImage, read_image
from ._legacy_st import read_legacy_st
from ._rdata import r_to_pandas, read_rda, read_summarized_experiment
from ._visium import read_visium

__all__ = [
    "LazyImage",
    "r_to_pandas",
    "read_image",
    "read_legacy_st",
    "read_rda",
    "read_summarized_experiment",
    "read_visium",
]
