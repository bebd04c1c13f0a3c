"""The data-set loaders on the real data (through the mirror): shapes, labels, missing values, image alignment."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import storm.datasets as ds
from storm.io import LazyImage

LAYER_COUNTS_151673 = {"L1": 273, "L2": 253, "L3": 989, "L4": 218, "L5": 673, "L6": 692, "WM": 513}
HER2ST_LABEL_COUNTS = {
    "B1": {
        "connective tissue": 95,
        "adipose tissue": 70,
        "invasive cancer": 63,
        "breast glands": 41,
        "undetermined": 26,
    },
    "C1": {"invasive cancer": 127, "connective tissue": 37, "undetermined": 9, "adipose tissue": 3},
    "D1": {"invasive cancer": 139, "connective tissue": 109, "undetermined": 51, "immune infiltrate": 7},
    "E1": {"invasive cancer": 340, "immune infiltrate": 177, "undetermined": 53, "connective tissue": 17},
    "F1": {"invasive cancer": 577, "connective tissue": 56, "undetermined": 32, "immune infiltrate": 26},
}
# name: (patients, genes, responders, non-responders, unknown response, has PFS, has TMB)
ICB = {
    "Hugo": (27, 1801, 14, 13, 0, False, False),
    "Liu": (74, 1741, 35, 34, 5, True, True),
    "Mariathasan": (195, 1768, 42, 91, 62, False, True),
    "Miao": (33, 1761, 10, 18, 5, True, True),
    "Nathanson": (24, 1792, 10, 14, 0, False, True),
    "Padron": (45, 1792, 3, 20, 22, True, False),
    "Riaz": (23, 1801, 4, 10, 9, False, True),
    "Van_Allen": (42, 1761, 9, 30, 3, True, True),
}


def brightness_at(image: np.ndarray, xy: np.ndarray, scalef: float) -> np.ndarray:
    """Mean RGB of the image pixel under each spot centre."""
    px = np.rint(np.asarray(xy) * scalef).astype(int)
    assert (px >= 0).all()
    assert (px[:, 0] < image.shape[1]).all()
    assert (px[:, 1] < image.shape[0]).all()
    return image[px[:, 1], px[:, 0]].astype(float).mean(axis=1)


def corners(image: np.ndarray, size: int = 30) -> np.ndarray:
    return np.concatenate(
        [image[:size, :size], image[:size, -size:], image[-size:, :size], image[-size:, -size:]]
    ).astype(float)


def assert_roundtrip(adata: ad.AnnData, path: Path) -> None:
    adata.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.shape == adata.shape
    assert list(back.obs.columns) == list(adata.obs.columns)
    pd.testing.assert_index_equal(back.var_names, adata.var_names)


# --- DLPFC ----------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dlpfc_151673() -> ad.AnnData:
    return ds.dlpfc("151673")


def test_dlpfc_shape_and_labels(dlpfc_151673):
    adata = dlpfc_151673
    assert ds.dlpfc_sections() == ["151673", "151674"]
    assert adata.shape == (3639, 5000)
    assert list(adata.obs["layer"].cat.categories) == ["L1", "L2", "L3", "L4", "L5", "L6", "WM"]
    assert adata.obs["layer"].value_counts().to_dict() == LAYER_COUNTS_151673
    assert adata.obs["layer"].isna().sum() == 28
    assert (adata.obs["in_tissue"] == 1).all()


def test_dlpfc_layout(dlpfc_151673):
    adata = dlpfc_151673
    assert adata.X.format == "csr"
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.data, np.rint(adata.X.data))
    assert adata.obs["library_id"].dtype == "category"
    assert adata.obs["array_row"].dtype == np.int64
    assert adata.obsm["spatial"].dtype == np.float64
    assert adata.var_names.is_unique
    assert adata.var["gene_ids"].str.startswith("ENSG").all()
    assert {"NPY", "PLP1", "MBP", "SNAP25"} <= set(adata.var_names)
    kept_ids = (adata.var_names == adata.var["gene_ids"]).sum()
    assert kept_ids == 264  # ~5% of the genes have no symbol and keep their Ensembl id
    entry = adata.uns["spatial"]["151673"]
    assert set(entry["images"]) == {"lowres"}
    assert entry["images"]["lowres"].shape == (600, 600, 3)
    assert entry["metadata"]["platform"] == "visium"
    assert "Maynard" in entry["metadata"]["source"]
    assert "fullres_path" not in entry["metadata"]
    sf = entry["scalefactors"]
    assert sf["spot_pitch_fullres"] == pytest.approx(138.0, abs=1.0)
    assert sf["microns_per_pixel"] == pytest.approx(100 / sf["spot_pitch_fullres"])


def test_dlpfc_spots_land_on_tissue(dlpfc_151673):
    entry = dlpfc_151673.uns["spatial"]["151673"]
    image = entry["images"]["lowres"]
    under_spots = brightness_at(image, dlpfc_151673.obsm["spatial"], entry["scalefactors"]["tissue_lowres_scalef"])
    background = corners(image).mean()
    assert under_spots.mean() < background - 25
    assert (under_spots < background).mean() > 0.9


def test_dlpfc_other_section_and_bad_name():
    adata = ds.dlpfc("151674")
    assert adata.shape == (3673, 5000)
    assert adata.obs["layer"].isna().sum() == 38
    with pytest.raises(ValueError, match="151673, 151674"):
        ds.dlpfc("151507")


def test_dlpfc_writes_to_h5ad(dlpfc_151673, tmp_path):
    assert_roundtrip(dlpfc_151673, tmp_path / "dlpfc.h5ad")


# --- HER2ST ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def her2st_c2() -> ad.AnnData:
    def no_decoding(self):
        raise AssertionError("her2st() decoded the full-resolution image")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(LazyImage, "load", no_decoding)
        return ds.her2st("C2")


def test_her2st_sections():
    assert len(ds.her2st_sections()) == 23
    assert ds.her2st_sections(with_image=True) == ["C2", "C3", "C4", "C5", "C6"]
    assert ds.her2st_sections(labelled=True) == ["B1", "C1", "D1", "E1", "F1"]
    assert ds.her2st_sections(with_image=True, labelled=True) == []
    assert "J1" not in ds.her2st_sections()  # labels without counts


def test_her2st_c2(her2st_c2):
    adata = her2st_c2
    assert adata.shape == (187, 15706)
    assert adata.X.dtype == np.float32
    assert adata.var_names.is_unique
    assert set(adata.obs["patient"]) == {"C"}
    assert "label" not in adata.obs
    entry = adata.uns["spatial"]["C2"]
    meta, sf = entry["metadata"], entry["scalefactors"]
    assert meta["platform"] == "st"
    assert meta["fullres_shape"] == [9911, 9274]
    assert Path(meta["fullres_path"]).is_file()
    assert "Andersson" in meta["source"]
    assert sf["microns_per_pixel"] == pytest.approx(0.688, abs=0.005)
    assert max(entry["images"]["hires"].shape[:2]) == 2000
    lazy = LazyImage(meta["fullres_path"])
    assert lazy.shape[:2] == tuple(meta["fullres_shape"])


def test_her2st_spots_land_on_tissue(her2st_c2):
    entry = her2st_c2.uns["spatial"]["C2"]
    thumb = entry["images"]["hires"]
    under_spots = brightness_at(thumb, her2st_c2.obsm["spatial"], entry["scalefactors"]["tissue_hires_scalef"])
    background = corners(thumb).mean()
    assert background > 220  # bare glass
    assert under_spots.mean() < background - 50
    assert (under_spots < 200).mean() > 0.8


@pytest.mark.parametrize("section", sorted(HER2ST_LABEL_COUNTS))
def test_her2st_labels(section):
    adata = ds.her2st(section)
    labels = adata.obs["label"]
    assert list(labels.cat.categories) == [
        "invasive cancer",
        "cancer in situ",
        "immune infiltrate",
        "breast glands",
        "connective tissue",
        "adipose tissue",
        "undetermined",
    ]
    counts = labels.value_counts()
    assert counts[counts > 0].to_dict() == HER2ST_LABEL_COUNTS[section]
    assert labels.isna().sum() == adata.n_obs - sum(HER2ST_LABEL_COUNTS[section].values())


def test_her2st_names(her2st_c2):
    assert ds.her2st("c2").shape == her2st_c2.shape
    with pytest.raises(ValueError, match="B1, B2"):
        ds.her2st("A1")
    with pytest.raises(ValueError, match="storm has"):
        ds.her2st("J1")


def test_her2st_writes_to_h5ad(her2st_c2, tmp_path):
    assert_roundtrip(her2st_c2, tmp_path / "c2.h5ad")


def test_hist2st_genes(her2st_c2):
    genes = ds.hist2st_genes()
    assert len(genes) == 785
    assert len(set(genes)) == 785
    assert genes[:3] == ["HPS6", "TNC", "NR1H2"]
    assert set(genes) <= set(her2st_c2.var_names)


# --- ICB cohorts ----------------------------------------------------------------------------------------------------


def test_icb_cohorts_table():
    table = ds.icb_cohorts()
    assert list(table.index) == list(ICB)
    assert table.loc["Mariathasan", "n"] == 195
    assert table.loc["Mariathasan", "cancer_type"] == "Bladder"
    assert table["citation"].str.len().gt(20).all()


@pytest.mark.parametrize("name", list(ICB))
def test_icb_cohort(name):
    n, n_genes, n_r, n_nr, n_na, has_pfs, has_tmb = ICB[name]
    adata = ds.icb_cohort(name)
    table = ds.icb_cohorts()
    assert adata.shape == (n, n_genes)
    assert table.loc[name, "n"] == n
    assert set(adata.obs["cancer_type"]) == {table.loc[name, "cancer_type"]}
    assert adata.uns["icb"]["assay"] == "log2(TPM + 0.001)"
    assert np.nanmin(adata.X) == pytest.approx(np.log2(0.001))
    assert adata.var["gene_ids"].str.startswith("ENSG").all()
    response = adata.obs["response"]
    assert list(response.cat.categories) == ["R", "NR"]
    assert ((response == "R").sum(), (response == "NR").sum(), response.isna().sum()) == (n_r, n_nr, n_na)
    assert adata.obs["os_time"].notna().sum() >= n - 1
    assert set(adata.obs["os_event"].dropna()) <= {0.0, 1.0}
    assert ("pfs_time" in adata.obs) == has_pfs
    assert ("pfs_event" in adata.obs) == has_pfs
    assert ("tmb" in adata.obs) == has_tmb
    assert "event_occurred_os" in adata.obs  # original R columns are kept
    assert ("storm_warnings" in adata.uns) == (name == "Miao")


def test_icb_na_stays_missing():
    hugo = ds.icb_cohort("Hugo")
    # logical NA columns (no PFS, no TMB in this cohort): missing, never True
    for column in ("survival_time_pfs", "event_occurred_pfs", "TMB_perMb", "histo"):
        assert hugo.obs[column].isna().all(), column
    assert hugo.obs["os_time"].isna().sum() == 1
    mariathasan = ds.icb_cohort("Mariathasan")
    assert mariathasan.obs["tmb"].isna().sum() == 43
    van_allen = ds.icb_cohort("Van Allen")
    assert van_allen.obs["LDH"].dtype == "Int64"
    assert van_allen.obs["LDH"].isna().sum() == 1
    assert van_allen.obs["tmb"].isna().sum() == 2


def test_icb_miao_events_flagged_not_fixed(tmp_path):
    miao = ds.icb_cohort("Miao")
    assert len(miao.uns["storm_warnings"]) == 2
    assert "inverted" in miao.uns["storm_warnings"][0]
    check = ds.icb_event_check(miao)
    assert check["suspicious"].all()
    assert (check.loc["os", "events_R"], check.loc["os", "n_R"]) == (8, 10)
    # loaded as stored: the flags are the file's
    np.testing.assert_array_equal(miao.obs["os_event"], miao.obs["event_occurred_os"].astype(float))
    assert not ds.icb_event_check(ds.icb_cohort("Liu"))["suspicious"].any()
    assert_roundtrip(miao, tmp_path / "miao.h5ad")


def test_icb_names():
    assert ds.icb_cohort("van_allen").uns["icb"]["cohort"] == "Van_Allen"
    with pytest.raises(ValueError, match="Mariathasan"):
        ds.icb_cohort("IMvigor")


# --- fixtures -------------------------------------------------------------------------------------------------------


def test_visium_fixture(tmp_path):
    adata = ds.visium_fixture()
    assert adata.shape == (49, 1999)
    assert adata.X.dtype == np.float32
    np.testing.assert_array_equal(adata.X.data, np.rint(adata.X.data))
    assert "lognorm" in adata.layers
    entry = adata.uns["spatial"]["V1_Adult_Mouse_Brain"]
    meta, sf = entry["metadata"], entry["scalefactors"]
    assert meta["fullres_shape"] == [1717, 950]
    assert LazyImage(meta["fullres_path"]).shape == (1717, 950, 3)
    assert sf["microns_per_pixel"] == pytest.approx(0.725, abs=0.01)
    for name in ("hires", "lowres"):
        brightness_at(entry["images"][name], adata.obsm["spatial"], sf[f"tissue_{name}_scalef"])
    assert ((adata.obs["array_row"] + adata.obs["array_col"]) % 2 == 0).all()
    assert adata.obs["library_id"].dtype == "category"
    assert_roundtrip(adata, tmp_path / "fixture.h5ad")


def test_visium_fixture_folder():
    folder = ds.visium_fixture_folder()
    assert folder.name == "spatial"
    assert {p.name for p in folder.iterdir()} >= {"scalefactors_json.json", "tissue_positions_list.csv"}


def test_public_api():
    assert set(ds.__all__) >= {"registry", "fetch", "dlpfc", "her2st", "icb_cohort", "visium_fixture"}
    assert "Banksy/data/dlpfc151673.rda" in ds.registry()
