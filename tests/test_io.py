"""Readers: Space Ranger folders, legacy ST tables, R data files; on real files from the data mirror."""

from __future__ import annotations

import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import storm.io
from storm.datasets import fetch, visium_fixture_folder
from storm.io import (
    LazyImage,
    r_to_pandas,
    read_image,
    read_legacy_st,
    read_rda,
    read_summarized_experiment,
    read_visium,
)

HER2ST = "her2st/data/"


def check_layout(adata, library_id: str, platform: str) -> None:
    """The AnnData layout contract of DEVELOPERS.md."""
    assert sparse.isspmatrix_csr(adata.X) or sparse.issparse(adata.X)
    assert adata.X.dtype == np.float32
    assert adata.var_names.is_unique
    assert isinstance(adata.obs["library_id"].dtype, pd.CategoricalDtype)
    assert set(adata.obs["library_id"]) == {library_id}
    for key in ("array_row", "array_col"):
        assert adata.obs[key].dtype == np.int64
    assert adata.obsm["spatial"].dtype == np.float64
    assert adata.obsm["spatial"].shape == (adata.n_obs, 2)
    entry = adata.uns["spatial"][library_id]
    for name, img in entry["images"].items():
        assert name in {"hires", "lowres"}
        assert img.dtype == np.uint8
        assert img.ndim == 3
        assert img.shape[2] == 3
        assert f"tissue_{name}_scalef" in entry["scalefactors"]
    assert entry["scalefactors"]["microns_per_pixel"] > 0
    assert entry["metadata"]["platform"] == platform
    assert entry["metadata"]["source"]


# --- Visium ---------------------------------------------------------------------------------------------------------


def test_read_visium_spatial_folder():
    adata = read_visium(visium_fixture_folder(), counts_file=None, library_id="mouse")
    check_layout(adata, "mouse", "visium")
    assert adata.shape == (100, 0)
    entry = adata.uns["spatial"]["mouse"]
    assert entry["images"]["hires"].shape == (2000, 2000, 3)
    assert entry["images"]["lowres"].shape == (600, 600, 3)
    sf = entry["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(89.4275, rel=1e-4)
    # 100 µm between spot centres ≈ 138 px on this slide
    assert sf["spot_pitch_fullres"] == pytest.approx(137.9, rel=0.01)
    assert sf["microns_per_pixel"] == pytest.approx(100 / sf["spot_pitch_fullres"])
    first = adata.obs.loc["AAACAAGTATCTCCCA-1"]
    assert (first["array_row"], first["array_col"]) == (50, 102)
    np.testing.assert_array_equal(adata.obsm["spatial"][0], [9811.0, 8513.0])  # (x, y) = (pxl_col, pxl_row)


def test_read_visium_warns_without_counts(storm_log):
    adata = read_visium(visium_fixture_folder())
    assert adata.n_vars == 0
    assert "No count matrix" in storm_log.text


def _copy_spatial(tmp_path: Path) -> Path:
    outs = tmp_path / "sample1" / "outs"
    shutil.copytree(visium_fixture_folder(), outs / "spatial")
    return outs


def test_read_visium_positions_with_header(tmp_path):
    outs = _copy_spatial(tmp_path)
    old = outs / "spatial" / "tissue_positions_list.csv"
    table = pd.read_csv(old, header=None)
    table.columns = [
        "barcode",
        "in_tissue",
        "array_row",
        "array_col",
        "pxl_row_in_fullres",
        "pxl_col_in_fullres",
    ]
    table.to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    old.unlink()
    adata = read_visium(outs, counts_file=None)
    reference = read_visium(visium_fixture_folder(), counts_file=None)
    assert set(adata.uns["spatial"]) == {"sample1"}  # the folder above outs/
    np.testing.assert_array_equal(adata.obsm["spatial"], reference.obsm["spatial"])
    pd.testing.assert_frame_equal(adata.obs[["array_row", "array_col"]], reference.obs[["array_row", "array_col"]])


def _write_10x_h5(path: Path, barcodes: list[str], genes: list[str], counts: np.ndarray) -> None:
    """A Cell Ranger v3 feature-barcode matrix (genes × barcodes, CSC)."""
    matrix = sparse.csc_matrix(counts.T.astype(np.int32))
    with h5py.File(path, "w") as f:
        f.attrs["library_ids"] = np.array([b"slide_A"])
        f.attrs["software_version"] = b"spaceranger-2.1.0"
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"], g["indices"], g["indptr"] = matrix.data, matrix.indices, matrix.indptr
        g["shape"] = np.array(matrix.shape, dtype=np.int32)
        feats = g.create_group("features")
        feats["id"] = np.array([f"ENSMUSG{i:011d}" for i in range(len(genes))], dtype="S")
        feats["name"] = np.array(genes, dtype="S")
        feats["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        feats["genome"] = np.array(["mm10"] * len(genes), dtype="S")
        feats["_all_tag_keys"] = np.array([b"genome"])


def test_read_visium_with_count_matrix(tmp_path):
    outs = _copy_spatial(tmp_path)
    barcodes = pd.read_csv(outs / "spatial" / "tissue_positions_list.csv", header=None)[0].tolist()[:10]
    rng = np.random.default_rng(0)
    counts = rng.poisson(2, size=(10, 4))
    _write_10x_h5(outs / "filtered_feature_bc_matrix.h5", barcodes, ["Gfap", "Snap25", "Gfap", "Mbp"], counts)

    adata = read_visium(outs)
    check_layout(adata, "slide_A", "visium")  # library id from the h5 attributes
    assert adata.shape == (10, 4)
    assert list(adata.obs_names) == barcodes
    assert list(adata.var_names) == ["Gfap", "Snap25", "Gfap-1", "Mbp"]
    assert adata.var["gene_ids"].str.startswith("ENSMUSG").all()
    np.testing.assert_array_equal(adata.X.toarray(), counts)
    assert adata.uns["spatial"]["slide_A"]["metadata"]["software_version"] == "spaceranger-2.1.0"


def test_read_visium_counts_of_another_slide(tmp_path):
    outs = _copy_spatial(tmp_path)
    _write_10x_h5(outs / "filtered_feature_bc_matrix.h5", ["NOTABARCODE-1"], ["Gfap"], np.ones((1, 1)))
    with pytest.raises(ValueError, match="not in the positions file"):
        read_visium(outs)


def test_read_visium_missing_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="outs/"):
        read_visium(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="Space Ranger"):
        read_visium(tmp_path / "empty")
    outs = _copy_spatial(tmp_path)
    with pytest.raises(FileNotFoundError, match="counts_file"):
        read_visium(outs, counts_file="raw_feature_bc_matrix.h5")
    (outs / "spatial" / "tissue_positions_list.csv").unlink()
    with pytest.raises(FileNotFoundError, match="tissue_positions"):
        read_visium(outs)


def test_read_visium_unreadable_image(tmp_path):
    outs = _copy_spatial(tmp_path)
    (outs / "spatial" / "tissue_lowres_image.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="not an image"):
        read_visium(outs, counts_file=None)


def test_read_visium_fullres_image_must_cover_the_spots():
    # the 950 × 1717 px squidpy crop is far smaller than this slide's coordinates (up to ~9,800 px)
    crop = fetch("squidpy/tests/_data/test_img.jpg")
    with pytest.raises(ValueError, match="outside"):
        read_visium(visium_fixture_folder(), counts_file=None, fullres_image=crop)


# --- legacy ST ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def c2_files() -> tuple[Path, Path, Path]:
    return (
        fetch(HER2ST + "ST-cnts/C2.tsv.gz"),
        fetch(HER2ST + "ST-spotfiles/C2_selection.tsv"),
        fetch(HER2ST + "ST-imgs/C/C2/5714_HE_BT_C2.jpg"),
    )


def test_read_legacy_st(c2_files, monkeypatch):
    def no_decoding(self):
        raise AssertionError("the full-resolution image was decoded")

    monkeypatch.setattr(LazyImage, "load", no_decoding)
    adata = read_legacy_st(*c2_files, library_id="C2")
    check_layout(adata, "C2", "st")
    assert adata.shape == (187, 15706)
    assert adata.obs_names[0] == "10x21"
    assert (adata.obs.loc["10x21", "array_col"], adata.obs.loc["10x21", "array_row"]) == (10, 21)
    entry = adata.uns["spatial"]["C2"]
    sf, meta = entry["scalefactors"], entry["metadata"]
    assert sf["spot_pitch_fullres"] == pytest.approx(290.7, abs=0.5)
    assert sf["microns_per_pixel"] == pytest.approx(200 / sf["spot_pitch_fullres"])
    assert sf["spot_diameter_fullres"] == pytest.approx(100 / sf["microns_per_pixel"])
    assert meta["fullres_shape"] == [9911, 9274]
    assert Path(meta["fullres_path"]).samefile(c2_files[2])
    assert max(entry["images"]["hires"].shape[:2]) == 2000
    assert sf["tissue_hires_scalef"] == pytest.approx(2000 / 9911, rel=1e-3)
    assert float(adata.X.sum()) == pytest.approx(float(np.rint(adata.X.data).sum()))  # integer counts


def test_read_legacy_st_transposed_and_unplaced_spots(c2_files, tmp_path, storm_log):
    counts, spots, _ = c2_files
    table = pd.read_csv(counts, sep="\t", index_col=0).iloc[:20, :50]
    table.T.to_csv(tmp_path / "genes_by_spots.tsv", sep="\t")  # genes as rows
    selection = pd.read_csv(spots, sep="\t")
    keys = selection["x"].astype(str) + "x" + selection["y"].astype(str)
    selection[keys != table.index[0]].to_csv(tmp_path / "sel.tsv", sep="\t", index=False)

    adata = read_legacy_st(tmp_path / "genes_by_spots.tsv", tmp_path / "sel.tsv", library_id="C2")
    assert adata.shape == (19, 50)
    assert table.index[0] not in adata.obs_names
    assert "1 of 20 spots" in storm_log.text
    assert "images" in adata.uns["spatial"]["C2"]
    assert not adata.uns["spatial"]["C2"]["images"]
    assert "fullres_path" not in adata.uns["spatial"]["C2"]["metadata"]


def test_read_legacy_st_bad_inputs(c2_files, tmp_path):
    counts, spots, _ = c2_files
    with pytest.raises(FileNotFoundError, match="ST counts table"):
        read_legacy_st(tmp_path / "missing.tsv", spots, library_id="x")
    with pytest.raises(FileNotFoundError, match="selection"):
        read_legacy_st(counts, tmp_path / "missing.tsv", library_id="x")
    with pytest.raises(FileNotFoundError, match="image=None"):
        read_legacy_st(counts, spots, tmp_path / "missing.jpg", library_id="x")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match="not an image"):
        read_legacy_st(counts, spots, tmp_path / "broken.jpg", library_id="x")
    pd.DataFrame({"a": [1, 2]}, index=["gene1", "gene2"]).to_csv(tmp_path / "bad.tsv", sep="\t")
    with pytest.raises(ValueError, match="spot names"):
        read_legacy_st(tmp_path / "bad.tsv", spots, library_id="x")
    pd.DataFrame({"x": [1], "y": [2]}).to_csv(tmp_path / "badsel.tsv", sep="\t", index=False)
    with pytest.raises(ValueError, match="pixel_x"):
        read_legacy_st(counts, tmp_path / "badsel.tsv", library_id="x")


# --- R data ---------------------------------------------------------------------------------------------------------


def test_read_rda_small_file_keeps_na(tmp_path):
    import rdata

    flags = np.ma.masked_array([True, True, False], mask=[False, True, False])
    numbers = np.ma.masked_array(np.array([1, 2, 3], dtype=np.int32), mask=[False, True, False])
    rdata.write_rda(tmp_path / "small.rda", {"clinical": {"flag": flags, "n": numbers, "x": np.array([1.5, np.nan])}})

    objects = read_rda(tmp_path / "small.rda")
    clinical = objects["clinical"]
    flag = r_to_pandas(clinical["flag"])
    assert flag.dtype == "boolean"
    assert flag[0]
    assert pd.isna(flag[1])  # R's NA, stored as a masked True: must not read as True
    assert flag.sum() == 1
    n = r_to_pandas(clinical["n"])
    assert n.dtype == "Int64"
    assert pd.isna(n[1])
    assert n[2] == 3
    assert np.isnan(r_to_pandas(clinical["x"])[1])


def test_r_to_pandas_untyped_na_and_sentinels():
    all_na = np.ma.masked_array([True, True], mask=[True, True])
    assert np.isnan(r_to_pandas(all_na)).all()
    sentinel = np.array([5, np.iinfo(np.int32).min], dtype=np.int32)
    assert pd.isna(r_to_pandas(sentinel)[1])
    strings = np.array(["a", None], dtype=object)
    assert pd.isna(r_to_pandas(strings)[1])


def test_read_summarized_experiment():
    adata = read_summarized_experiment(fetch("PredictioR/data/ICB_small_Hugo.rda"))
    assert adata.shape == (27, 1801)
    assert adata.obs_names[0] == "Pt1"
    assert adata.var_names[0] == "FGR"
    assert adata.var["gene_id"].iloc[0].startswith("ENSG")
    assert adata.uns["R_assay"] == "gene_expression"
    # columns that are NA for every patient (R logical NA) stay missing, never True
    assert adata.obs["histo"].isna().all()
    assert adata.obs["survival_time_pfs"].isna().all()
    assert adata.obs["survival_time_os"].isna().sum() == 1


def test_read_rda_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="R data file"):
        read_rda(tmp_path / "missing.rda")
    (tmp_path / "junk.rda").write_bytes(b"this is not R data")
    with pytest.raises(ValueError, match="not an R data file"):
        read_rda(tmp_path / "junk.rda")
    import rdata

    rdata.write_rda(tmp_path / "list.rda", {"x": {"a": np.array([1.0])}})
    with pytest.raises(ValueError, match="SummarizedExperiment"):
        read_summarized_experiment(tmp_path / "list.rda")


def test_read_image_is_reexported():
    img = read_image(fetch("squidpy/tests/_data/test_img.jpg"))
    assert isinstance(img, LazyImage)
    assert img.shape == (1717, 950, 3)
    assert not img.decoded
    assert set(storm.io.__all__) >= {"read_visium", "read_legacy_st", "read_rda", "read_summarized_experiment"}


def test_16_bit_values_in_a_non_uint16_integer_image_are_rescaled_not_clipped():
    from storm.io._spatial import to_rgb_uint8

    ramp = np.linspace(0, 65535, 12 * 3).reshape(3, 4, 3).astype(np.int64)
    out = to_rgb_uint8(ramp)
    np.testing.assert_array_equal(out, to_rgb_uint8(ramp.astype(np.uint16)))  # as if it were a uint16 file
    assert out.max() == 255
    assert len(np.unique(out)) == ramp.size  # a ramp stays a ramp, not white
    np.testing.assert_array_equal(to_rgb_uint8(np.full((2, 2, 3), 200, np.int32)), np.full((2, 2, 3), 200))  # 8-bit


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.zeros((8, 8, 2), np.uint8), r"shape \(8, 8, 2\).*a 2-channel image is not one"),
        (
            np.where(np.eye(8, dtype=bool)[..., None], np.nan, 0.5).repeat(3, axis=2),
            r"24 NaN .*nan_to_num",
        ),
        (np.full((4, 4, 3), -1, np.int16), "negative pixel values"),
        (np.full((4, 4, 3), 70_000, np.int64), "more than 16 bits"),
        (np.full((4, 4, 3), "a", dtype=object), "holds object values"),
    ],
)
def test_bad_image_arrays_are_refused_with_advice(image, match):
    from storm.io._spatial import to_rgb_uint8

    with pytest.raises(ValueError, match=match):
        to_rgb_uint8(image)


def _png_bomb(path: Path, side: int) -> Path:
    """A valid 1-bit PNG declaring ``side`` × ``side`` pixels, all black: a few KB that decode to gigabytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes((side + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_decompression_bomb_png_is_refused_before_decoding(tmp_path, monkeypatch):
    import storm._image_memory as image_memory
    from storm.train import decode_image

    bomb = _png_bomb(tmp_path / "bomb.png", 12_000)
    assert bomb.stat().st_size < 100_000
    assert image_memory.decode_bytes(12_000, 12_000, "1") == 12_000**2 * 8
    monkeypatch.setattr(image_memory, "available_memory", lambda: 1_000_000_000)  # 1 GB free: 1.15 GB needed
    lazy = storm.io.LazyImage(bomb)  # the header alone: fine
    assert lazy.shape == (12_000, 12_000, 3)
    with pytest.raises(ValueError, match=r"Refusing to decode .*12,000 × 12,000 px.*1\.2 GB.*tiled pyramidal TIFF"):
        lazy.load()
    assert not lazy.decoded
    with pytest.raises(ValueError, match="Refusing to decode"):
        decode_image(bomb)
    with pytest.raises(ValueError, match="Refusing to decode"):
        lazy.thumbnail(2000)  # PNG has no draft mode: the thumbnail decodes the whole image too
