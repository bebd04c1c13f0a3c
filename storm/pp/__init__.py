"""Preprocessing: QC, normalisation, gene-panel harmonisation, µm-based patches and spatial windows."""

from ._binning import TranscriptChunks, bin_transcripts, read_transcripts
from ._filter import filter_spots
from ._harmonize import harmonize_genes
from ._normalize import normalize
from ._patches import extract_patches
from ._qc import qc_metrics
from ._scale import patch_scale
from ._windows import SpatialWindows, spatial_windows

__all__ = [
    "SpatialWindows",
    "TranscriptChunks",
    "bin_transcripts",
    "extract_patches",
    "filter_spots",
    "harmonize_genes",
    "normalize",
    "patch_scale",
    "qc_metrics",
    "read_transcripts",
    "spatial_windows",
]
