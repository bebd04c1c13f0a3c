"""Real, public data sets as AnnData, resolved through the registry (cache → mirror → verified download)."""

from ._dlpfc import dlpfc, dlpfc_sections
from ._fetch import ChecksumError, DataUnavailableError, fetch
from ._fixtures import visium_fixture, visium_fixture_folder
from ._genes import ensembl_to_symbol
from ._her2st import her2st, her2st_sections, hist2st_genes
from ._icb import icb_cohort, icb_cohorts, icb_event_check
from ._registry import registry
from ._single_cell import cosmx_nsclc, merfish_preoptic, vendor_folder, xenium_breast
from ._wsi import cmu_small_region

__all__ = [
    "ChecksumError",
    "DataUnavailableError",
    "cmu_small_region",
    "cosmx_nsclc",
    "dlpfc",
    "dlpfc_sections",
    "ensembl_to_symbol",
    "fetch",
    "her2st",
    "her2st_sections",
    "hist2st_genes",
    "icb_cohort",
    "icb_cohorts",
    "icb_event_check",
    "merfish_preoptic",
    "registry",
    "vendor_folder",
    "visium_fixture",
    "visium_fixture_folder",
    "xenium_breast",
]
