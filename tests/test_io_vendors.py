"""Single-cell and Visium HD readers: real tiny vendor folders (Xenium, CosMx, MERSCOPE), a synthetic Visium HD one."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import sparse

import storm.pp
from storm.datasets import vendor_folder
from storm.io import read_cosmx, read_merscope, read_visium_hd, read_xenium
from storm.io._xenium import CONTROL_PREFIXES, is_control

CONTROL_WORDS = ("negprb", "blank", "negcontrol", "systemcontrol", "unassigned", "codeword")


def check_cells_layout(adata: ad.AnnData, library_id: str, platform: str) -> None:
    """storm's layout for cells/bins: µm coordinates with microns_per_pixel = 1; controls apart from genes."""
    assert sparse.issparse(adata.X)
    assert adata.X.dtype == np.float32
    assert adata.var_names.is_unique
    assert not any(word in name.lower() for name in adata.var_names for word in CONTROL_WORDS)
    assert isinstance(adata.obs["library_id"].dtype, pd.CategoricalDtype)
    assert set(adata.obs["library_id"]) == {library_id}
    assert adata.obsm["spatial"].dtype == np.float64
    assert adata.obsm["spatial"].shape == (adata.n_obs, 2)
    assert np.isfinite(adata.obsm["spatial"]).all()
    controls = adata.obsm["controls"]
    assert isinstance(controls, pd.DataFrame)
    assert list(controls.index) == list(adata.obs_names)
    np.testing.assert_allclose(adata.obs["control_counts"], controls.sum(axis=1))
    entry = adata.uns["spatial"][library_id]
    assert entry["scalefactors"]["microns_per_pixel"] == 1.0
    assert entry["metadata"]["platform"] == platform
    assert entry["metadata"]["source"]


@pytest.fixture(scope="module")
def xenium():
    return read_xenium(vendor_folder("xenium"))


@pytest.fixture(scope="module")
def cosmx():
    return read_cosmx(vendor_folder("cosmx"))


@pytest.fixture(scope="module")
def merscope():
    return read_merscope(vendor_folder("merscope"))


# --- Xenium ----------------------------------------------------------------------------------------------------------


def test_read_xenium(xenium):
    check_cells_layout(xenium, "xenium", "xenium")
    assert xenium.shape == (526, 27)
    assert list(xenium.obsm["controls"].columns) == ["NegControlProbe_00003", "BLANK_0070", "BLANK_0464"]
    assert xenium.obsm["controls"].to_numpy().sum() == 3
    assert xenium.var.loc["LEF1", "gene_ids"] == "ENSG00000138795"
    # the gene counts of each cell are the cell table's transcript_counts
    np.testing.assert_array_equal(np.asarray(xenium.X.sum(1)).ravel(), xenium.obs["transcript_counts"])
    # µm: a 410 µm crop around (1,200, 1,200) µm; the first cell as in cells.parquet
    xy = xenium.obsm["spatial"]
    assert xy.min() > 990
    assert xy.max() < 1410
    np.testing.assert_allclose(xy[0], [1303.904047, 1345.704913])
    meta = xenium.uns["spatial"]["xenium"]["metadata"]
    assert meta["pixel_size_um"] == pytest.approx(0.2125)
    assert meta["pixel_size_source"].startswith("nominal")  # no experiment.xenium, no PhysicalSizeX here
    assert meta["morphology_image"].endswith("morphology_focus.ome.tif")
    assert "x_centroid" not in xenium.obs


def test_read_xenium_csv_and_experiment_file(tmp_path, xenium):
    src = vendor_folder("xenium")
    folder = tmp_path / "run1"
    folder.mkdir()
    for name in ("cell_feature_matrix.h5", "cells.csv.gz"):
        shutil.copy(src / name, folder / name)
    (folder / "experiment.xenium").write_text(
        json.dumps({"pixel_size": 0.2125, "run_name": "R1", "region_name": "tumour", "panel_name": "test"})
    )
    adata = read_xenium(folder, cells="auto")  # only the CSV is there
    check_cells_layout(adata, "R1_tumour", "xenium")
    np.testing.assert_allclose(adata.obsm["spatial"], xenium.obsm["spatial"])
    meta = adata.uns["spatial"]["R1_tumour"]["metadata"]
    assert meta["pixel_size_source"] == "experiment.xenium"
    assert meta["panel_name"] == "test"
    with pytest.raises(FileNotFoundError, match=r"cells\.parquet"):
        read_xenium(folder, cells="parquet")
    with pytest.raises(ValueError, match="cells="):
        read_xenium(folder, cells="tsv")


def test_read_xenium_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="Xenium output folder"):
        read_xenium(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="cell-feature matrix"):
        read_xenium(tmp_path)
    shutil.copy(vendor_folder("xenium") / "cell_feature_matrix.h5", tmp_path)
    with pytest.raises(FileNotFoundError, match="cell table"):
        read_xenium(tmp_path)


# --- CosMx -----------------------------------------------------------------------------------------------------------


def test_read_cosmx(cosmx):
    check_cells_layout(cosmx, "Run5642_S3_Quarter", "cosmx")
    assert cosmx.shape == (27, 950)  # cell_ID 0 (transcripts outside cells) dropped
    assert list(cosmx.obsm["controls"].columns) == [f"NegPrb{i}" for i in range(1, 11)]
    assert "Aph1b/c" in cosmx.var_names
    meta = cosmx.uns["spatial"]["Run5642_S3_Quarter"]["metadata"]
    assert meta["pixel_size_um"] == pytest.approx(0.12028)
    assert meta["unassigned_counts"] > 0
    # µm = global px × 0.12028; the 27 cells lie in one FOV (512 µm across on the commercial instrument)
    table = pd.read_csv(next(vendor_folder("cosmx").glob("*_metadata_file.csv")))
    name = f"{table.loc[0, 'fov']}_{table.loc[0, 'cell_ID']}"
    np.testing.assert_allclose(
        cosmx.obsm["spatial"][list(cosmx.obs_names).index(name)],
        table.loc[0, ["CenterX_global_px", "CenterY_global_px"]].to_numpy(float) * 0.12028,
    )
    extent = np.ptp(cosmx.obsm["spatial"], axis=0)
    assert (extent > 20).all()
    assert (extent < 512).all()
    # cells 10-20 µm across: a plausible soma size, which a wrong unit (px, or mm) would not give
    assert 50 < cosmx.obs["area_um2"].median() < 500


def test_read_cosmx_options(cosmx):
    folder = vendor_folder("cosmx")
    legacy = read_cosmx(next(folder.glob("*_exprMat_file.csv")), pixel_size_um=0.18, library_id="s1")
    np.testing.assert_allclose(legacy.obsm["spatial"], cosmx.obsm["spatial"] / 0.12028 * 0.18)
    local = read_cosmx(folder, fov_offsets=False)
    assert local.obsm["spatial"].max() < 4256 * 0.12028  # inside one FOV frame
    with pytest.raises(ValueError, match="pixel_size_um"):
        read_cosmx(folder, pixel_size_um=0)


def test_read_cosmx_atomx_cell_ids(tmp_path, cosmx):
    """AtoMx flat files name cells ``c_<slide>_<fov>_<cell_ID>`` in a ``cell`` column: used when both files have it."""
    for src in vendor_folder("cosmx").glob("Run5642_S3_Quarter_*_file.csv"):
        table = pd.read_csv(src)
        table.insert(0, "cell", "c_1_" + table["fov"].astype(str) + "_" + table["cell_ID"].astype(str))
        table.to_csv(tmp_path / src.name.replace("Run5642_S3_Quarter", "S1"), index=False)
    adata = read_cosmx(tmp_path)
    assert adata.obs_names[0] == "c_1_1_367"
    assert adata.uns["spatial"]["S1"]["metadata"]["platform"] == "cosmx"
    np.testing.assert_allclose(adata.X.toarray(), cosmx.X.toarray())


def test_read_cosmx_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="CosMx"):
        read_cosmx(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="exprMat"):
        read_cosmx(tmp_path)
    shutil.copy(next(vendor_folder("cosmx").glob("*_exprMat_file.csv")), tmp_path)
    with pytest.raises(FileNotFoundError, match="metadata"):
        read_cosmx(tmp_path)


# --- MERSCOPE --------------------------------------------------------------------------------------------------------


def test_read_merscope(merscope):
    check_cells_layout(merscope, "Liver1Slice1", "merscope")
    assert merscope.shape == (100, 347)
    assert merscope.obsm["controls"].shape[1] == 38
    assert all(c.startswith("Blank-") for c in merscope.obsm["controls"].columns)
    # cell ids are 128-bit integers: kept exactly, as text
    assert merscope.obs_names[0] == "103327291694389284070574461648020091166"
    meta = merscope.uns["spatial"]["Liver1Slice1"]["metadata"]
    assert meta["pixel_size_um"] == pytest.approx(0.108)
    assert meta["pixel_size_source"] == "images/manifest.json"
    # µm: centres inside the mosaic's bounding box (images/manifest.json bbox_microns)
    xmin, ymin, xmax, ymax = 2406.278, -106.8995, 2623.5707, 114.2828
    xy = merscope.obsm["spatial"]
    assert ((xy[:, 0] > xmin) & (xy[:, 0] < xmax) & (xy[:, 1] > ymin) & (xy[:, 1] < ymax)).all()
    assert ((merscope.obs["min_x"] <= xy[:, 0]) & (xy[:, 0] <= merscope.obs["max_x"])).all()


def test_read_merscope_vpt_tables(tmp_path, merscope):
    """vpt re-segmentation writes a row number first and the cell id in ``EntityID``; file names without prefix."""
    src = vendor_folder("merscope")
    counts = pd.read_csv(next(src.glob("*cell_by_gene.csv")), dtype={"Unnamed: 0": str})
    counts.rename(columns={"Unnamed: 0": "cell"}).to_csv(tmp_path / "cell_by_gene.csv", index=False)
    meta = pd.read_csv(next(src.glob("*cell_metadata.csv")), dtype={"Unnamed: 0": str})
    meta.rename(columns={"Unnamed: 0": "EntityID"}).to_csv(tmp_path / "cell_metadata.csv")  # row numbers first
    adata = read_merscope(tmp_path, library_id="vpt")
    assert list(adata.obs_names) == list(merscope.obs_names)
    assert "Unnamed: 0" not in adata.obs
    np.testing.assert_allclose(adata.obsm["spatial"], merscope.obsm["spatial"])
    assert adata.uns["spatial"]["vpt"]["metadata"]["pixel_size_source"].startswith("nominal")  # no images/ here


def test_read_merscope_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="MERSCOPE"):
        read_merscope(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="cell-by-gene"):
        read_merscope(tmp_path)
    shutil.copy(next(vendor_folder("merscope").glob("*cell_by_gene.csv")), tmp_path)
    with pytest.raises(FileNotFoundError, match="cell metadata"):
        read_merscope(tmp_path)


# --- shared ----------------------------------------------------------------------------------------------------------


def test_control_prefixes():
    names = ["NegPrb3", "SystemControl1", "Blank-12", "BLANK_0070", "NegControlProbe_00003", "NEGR1", "Negr1", "BLK"]
    assert is_control(names).tolist() == [True, True, True, True, True, False, False, False]
    assert not is_control(["ACTB"], ()).any()
    assert "Blank-" in CONTROL_PREFIXES


def test_cells_write_and_feed_windows(xenium, tmp_path):
    xenium.write_h5ad(tmp_path / "x.h5ad")
    back = ad.read_h5ad(tmp_path / "x.h5ad")
    pd.testing.assert_frame_equal(back.obsm["controls"], xenium.obsm["controls"])
    windows = storm.pp.spatial_windows(xenium, method="knn", k=6)
    assert windows.method == "knn"
    # offsets are µm (microns_per_pixel = 1): neighbours of a cell lie within a few tens of µm
    assert 2 < np.median(np.linalg.norm(windows.offsets_um[:, 1], axis=-1)) < 30


# --- Visium HD: a synthetic folder in Space Ranger's formats (no real Visium HD data is small enough) ----------------

MPP = 0.2738  # µm per full-res pixel, as Space Ranger writes for a typical H&E scan
HIRES_SCALEF = 0.08


def write_10x_h5(path: Path, counts: np.ndarray, barcodes: list[str], genes: list[str]) -> None:
    """A 10x HDF5 feature-barcode matrix (format version 2, Space Ranger ≥ 3): features × barcodes, CSC."""
    csc = sparse.csc_matrix(counts.T.astype(np.int32))  # features × barcodes, compressed by barcode
    with h5py.File(path, "w") as f:
        f.attrs["filetype"] = "matrix"
        f.attrs["version"] = 2
        f.attrs["chemistry_description"] = "Visium HD v1"
        f.attrs["software_version"] = "spaceranger-3.1.1"
        m = f.create_group("matrix")
        m["barcodes"] = np.array(barcodes, dtype="S")
        m["data"] = csc.data
        m["indices"] = csc.indices.astype(np.int64)
        m["indptr"] = csc.indptr.astype(np.int64)
        m["shape"] = np.array(csc.shape, dtype=np.int32)
        feat = m.create_group("features")
        feat["id"] = np.array([f"ENSG{i:011d}" for i in range(len(genes))], dtype="S")
        feat["name"] = np.array(genes, dtype="S")
        feat["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        feat["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")
        feat["_all_tag_keys"] = np.array([b"genome"])


def make_visium_hd(root: Path, bin_size: int = 8, *, microns_per_pixel: float | None = MPP) -> Path:
    """outs/binned_outputs/square_XXXum/ with a 4 × 5 bin grid, 3 genes, hires image; returns outs/."""
    folder = root / "sampleA" / "outs" / "binned_outputs" / f"square_{bin_size:03d}um"
    spatial = folder / "spatial"
    spatial.mkdir(parents=True)
    rows, cols = np.meshgrid(np.arange(4), np.arange(5), indexing="ij")
    rows, cols = rows.ravel(), cols.ravel()
    barcodes = [f"s_{bin_size:03d}um_{r:05d}_{c:05d}-1" for r, c in zip(rows, cols, strict=True)]
    origin_px = np.array([1000.0, 2000.0])  # the grid starts away from the image corner
    positions = pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": np.int32(1),
            "array_row": rows.astype(np.int32),
            "array_col": cols.astype(np.int32),
            "pxl_row_in_fullres": origin_px[1] + (rows + 0.5) * bin_size / MPP,
            "pxl_col_in_fullres": origin_px[0] + (cols + 0.5) * bin_size / MPP,
        }
    )
    positions.to_parquet(spatial / "tissue_positions.parquet", index=False)
    scalefactors = {
        "spot_diameter_fullres": bin_size / MPP,
        "bin_size_um": float(bin_size),
        "tissue_hires_scalef": HIRES_SCALEF,
        "tissue_lowres_scalef": 0.008,
        "fiducial_diameter_fullres": 1000.0,
        "regist_target_img_scalef": 0.25,
    }
    if microns_per_pixel is not None:
        scalefactors["microns_per_pixel"] = microns_per_pixel
    (spatial / "scalefactors_json.json").write_text(json.dumps(scalefactors))
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(spatial / "tissue_hires_image.png")
    # the filtered matrix holds the in-tissue bins in an order of its own; one bin dropped
    counts = np.arange(len(barcodes) * 3).reshape(-1, 3) % 4
    keep = np.arange(len(barcodes))[::-1][:-1]
    write_10x_h5(folder / "filtered_feature_bc_matrix.h5", counts[keep], [barcodes[i] for i in keep], ["A", "B", "C"])
    return root / "sampleA" / "outs"


def test_read_visium_hd_synthetic(tmp_path):
    outs = make_visium_hd(tmp_path)
    adata = read_visium_hd(outs, bin_size=8)
    check_cells_layout(adata, "sampleA", "visium_hd")
    assert adata.shape == (19, 3)
    assert adata.obs_names[0] == "s_008um_00003_00004-1"
    assert (adata.obs["array_row"].dtype, adata.obs["array_col"].dtype) == (np.int64, np.int64)
    # µm = full-res px × microns_per_pixel; neighbouring bins are 8 µm apart
    first = adata.obs.iloc[0]
    expected = np.array([1000 * MPP + (first.array_col + 0.5) * 8, 2000 * MPP + (first.array_row + 0.5) * 8])
    np.testing.assert_allclose(adata.obsm["spatial"][0], expected)
    entry = adata.uns["spatial"]["sampleA"]
    sf, meta = entry["scalefactors"], entry["metadata"]
    assert meta["pixel_size_um"] == pytest.approx(MPP)
    assert meta["bin_size_um"] == 8.0
    assert meta["software_version"] == "spaceranger-3.1.1"
    assert sf["spot_diameter_fullres"] == 8.0
    # the hires image stays aligned: µm × converted scalef = full-res px × Space Ranger's scalef
    assert entry["images"]["hires"].shape == (300, 300, 3)
    np.testing.assert_allclose(adata.obsm["spatial"][0] * sf["tissue_hires_scalef"], expected / MPP * HIRES_SCALEF)
    assert "tissue_lowres_scalef" not in sf  # no lowres image written
    # the bin folder itself, and its parent, are accepted too
    same = read_visium_hd(outs / "binned_outputs" / "square_008um", library_id="x")
    np.testing.assert_allclose(same.obsm["spatial"], adata.obsm["spatial"])


def test_read_visium_hd_bad_input(tmp_path):
    outs = make_visium_hd(tmp_path)
    with pytest.raises(FileNotFoundError, match="square_016um"):
        read_visium_hd(outs, bin_size=16)
    with pytest.raises(FileNotFoundError, match="Visium HD output"):
        read_visium_hd(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="count matrix"):
        read_visium_hd(outs, counts_file="raw_feature_bc_matrix.h5")
    with pytest.raises(ValueError, match="bin_size"):
        read_visium_hd(outs, bin_size=2.5)
    no_mpp = make_visium_hd(tmp_path / "other", microns_per_pixel=None)
    with pytest.raises(ValueError, match="microns_per_pixel"):
        read_visium_hd(no_mpp)
