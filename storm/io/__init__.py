"""Readers: Space Ranger (Visium) folders, legacy ST tables, R data files, images and whole slides opened lazily."""

from storm._wsi_reader import WholeSlideImage

from ._cosmx import read_cosmx
from ._hest import hest_samples, read_hest
from ._image import LazyImage, read_image
from ._legacy_st import read_legacy_st
from ._merscope import read_merscope
from ._rdata import r_to_pandas, read_rda, read_summarized_experiment
from ._visium import read_visium
from ._visium_hd import read_visium_hd
from ._wsi import read_wsi
from ._wsi_write import write_pyramid
from ._xenium import read_xenium

__all__ = [
    "LazyImage",
    "WholeSlideImage",
    "hest_samples",
    "r_to_pandas",
    "read_cosmx",
    "read_hest",
    "read_image",
    "read_legacy_st",
    "read_merscope",
    "read_rda",
    "read_summarized_experiment",
    "read_visium",
    "read_visium_hd",
    "read_wsi",
    "read_xenium",
    "write_pyramid",
]
