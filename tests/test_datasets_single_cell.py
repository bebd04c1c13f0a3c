"""Single-cell data set loaders (MERFISH, CosMx, Xenium) and the tiny vendor folders, on the mirror's real files."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from scipy.spatial import cKDTree
from test_io_vendors import check_cells_layout

import storm.datasets as ds
import storm.datasets._single_cell as single_cell
from storm.datasets import DataUnavailableError
from storm.io import read_merscope


@pytest.fixture(scope="module")
def merfish():
    return ds.merfish_preoptic()


@pytest.fixture(scope="module")
def nsclc():
    return ds.cosmx_nsclc()


@pytest.fixture(scope="module")
def breast():
    return ds.xenium_breast()


def median_nn_um(xy: np.ndarray) -> float:
    distance, _ = cKDTree(xy).query(xy, k=2)
    return float(np.median(distance[:, 1]))


def test_merfish_preoptic(merfish):
    check_cells_layout(merfish, "merfish_mousePOA", "merfish")
    assert merfish.shape == (6509, 155)
    assert merfish.obsm["controls"].shape == (6509, 0)
    # counts divided by cell volume: not integers, and said so
    values = merfish.X.data
    assert (values >= 0).all()
    assert not np.allclose(values, np.round(values))
    assert "cell volume" in merfish.uns["X_values"]
    assert merfish.obs["celltype"].value_counts()["Inhibitory"] == 2013
    assert {"Excitatory", "Astrocyte", "Microglia", "Ambiguous"} <= set(merfish.obs["celltype"].cat.categories)
    # neuron types only for neurons
    neurons = merfish.obs["neurontype"].notna()
    assert neurons.sum() == 6509 - 3177
    assert set(merfish.obs.loc[neurons, "celltype"]) == {"Inhibitory", "Excitatory"}
    assert merfish.obs["neurontype"].cat.categories.str.match(r"^[EIH]-\d+$").all()
    # µm: a 1.8 mm field, cells ~12 µm apart
    assert np.ptp(merfish.obsm["spatial"], axis=0) == pytest.approx([1792.2, 1791.6], abs=0.5)
    assert 8 < median_nn_um(merfish.obsm["spatial"]) < 20
    assert "pixel_size_um" not in merfish.uns["spatial"]["merfish_mousePOA"]["metadata"]


def test_cosmx_nsclc(nsclc):
    check_cells_layout(nsclc, "mini_nsclc", "cosmx")
    assert nsclc.shape == (2198, 960)
    assert nsclc.obsm["controls"].shape == (2198, 20)
    assert all(c.startswith("NegPrb") for c in nsclc.obsm["controls"].columns)
    assert np.allclose(nsclc.X.data, np.round(nsclc.X.data))  # counts
    assert nsclc.obs_names[0] == "c_3_18_2"
    assert (nsclc.obs.loc["c_3_18_2", ["slide", "fov", "cell_ID"]].tolist()) == [3, 18, 2]
    # mm → µm: a 0.7 mm square crop, cells ~9 µm apart
    assert np.ptp(nsclc.obsm["spatial"], axis=0) == pytest.approx([700, 700], abs=1)
    assert 5 < median_nn_um(nsclc.obsm["spatial"]) < 15
    assert nsclc.obsm["X_umap"].shape == (2198, 2)
    meta = nsclc.uns["spatial"]["mini_nsclc"]["metadata"]
    assert "non-commercial" in meta["license"]
    assert meta["pixel_size_um"] == pytest.approx(0.18)
    assert "non-commercial" in ds.cosmx_nsclc.__doc__


def test_xenium_breast(breast):
    check_cells_layout(breast, "xenium_breast_rep1", "xenium")
    assert breast.shape == (2189, 313)
    assert breast.obs["celltype"].value_counts()["DCIS_2"] == 1150
    assert breast.obs["celltype"].nunique() == 16
    assert np.allclose(breast.X.data, np.round(breast.X.data))
    entry = breast.uns["spatial"]["xenium_breast_rep1"]
    image = entry["images"]["hires"]
    assert image.shape == (545, 689, 3)
    assert image.dtype == np.uint8
    assert entry["scalefactors"]["tissue_hires_scalef"] == 1.0
    assert entry["metadata"]["mirror_only"] is True
    assert "not H&E" in entry["metadata"]["image_type"] or "no H&E" in entry["metadata"]["image_type"]
    # the image is registered: DAPI (nuclei) is brighter at cell centroids than on average
    col, row = np.floor(breast.obsm["spatial"] * entry["scalefactors"]["tissue_hires_scalef"]).astype(int).T
    inside = (row < image.shape[0]) & (col < image.shape[1])
    assert image[row[inside], col[inside], 0].mean() > 1.3 * image[..., 0].mean()
    assert "mirror" in ds.xenium_breast.__doc__


def test_xenium_breast_needs_the_mirror(tmp_path, monkeypatch):
    monkeypatch.setenv("STORM_DATA_MIRROR", str(tmp_path))
    monkeypatch.setenv("STORM_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(DataUnavailableError, match="mirror"):
        ds.xenium_breast()


@pytest.mark.parametrize(
    ("platform", "files"),
    [
        ("xenium", {"cell_feature_matrix.h5", "cells.parquet", "transcripts.parquet"}),
        ("cosmx", {"Run5642_S3_Quarter_exprMat_file.csv", "Run5642_S3_Quarter_metadata_file.csv"}),
        ("merscope", {"Liver1Slice1_cell_by_gene.csv", "detected_transcripts.csv", "images"}),
        ("vizgen", {"Liver1Slice1_cell_metadata.csv"}),
    ],
)
def test_vendor_folder(platform, files):
    folder = ds.vendor_folder(platform)
    assert folder.is_dir()
    assert files <= {p.name for p in folder.iterdir()}


def test_vendor_folder_copies_split_files(tmp_path, monkeypatch):
    """Files found in different places (some cached, some mirrored) are copied into one folder, sub-folders kept."""
    real_fetch = single_cell.fetch
    moved = tmp_path / "elsewhere" / "manifest.json"

    def fetch(name):
        path = real_fetch(name)
        if name.endswith("images/manifest.json"):
            moved.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, moved)
            return moved
        return path

    monkeypatch.setattr(single_cell, "fetch", fetch)
    monkeypatch.setenv("STORM_DATA_DIR", str(tmp_path / "cache"))
    folder = ds.vendor_folder("merscope")
    assert folder == tmp_path / "cache" / "vendor" / "merscope"
    assert (folder / "images" / "manifest.json").is_file()
    assert (folder / "cell_boundaries" / "feature_data_0a.hdf5").is_file()
    assert read_merscope(folder).shape == (100, 347)


def test_vendor_folder_unknown():
    with pytest.raises(ValueError, match="xenium"):
        ds.vendor_folder("stereoseq")


def test_public_api():
    assert {"merfish_preoptic", "cosmx_nsclc", "xenium_breast", "vendor_folder"} <= set(ds.__all__)
