"""Preprocessing: declaring a slide, QC, normalisation, gene panels, µm patches, stain normalisation, windows."""

from ._binning import TranscriptChunks, bin_transcripts, read_transcripts
from ._filter import filter_spots
from ._harmonize import harmonize_genes
from ._normalize import normalize
from ._patches import extract_patches
from ._qc import qc_metrics
from ._scale import patch_scale
from ._set_slide import set_slide
from ._stain import StainProfile, fit_stain_profile, normalize_stain
from ._stain_profile import stain_profile
from ._windows import SpatialWindows, spatial_windows

__all__ = [
    "SpatialWindows",
    "StainProfile",
    "TranscriptChunks",
    "bin_transcripts",
    "extract_patches",
    "filter_spots",
    "fit_stain_profile",
    "harmonize_genes",
    "normalize",
    "normalize_stain",
    "patch_scale",
    "qc_metrics",
    "read_transcripts",
    "set_slide",
    "spatial_windows",
    "stain_profile",
]
