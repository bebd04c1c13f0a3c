"""Binning transcripts into square µm bins, streamed in chunks: on the real Xenium, CosMx and MERSCOPE transcripts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import storm.pp._binning as binning
from storm.datasets import vendor_folder
from storm.pp import TranscriptChunks, bin_transcripts, read_transcripts


@pytest.fixture(scope="module")
def xenium_tx() -> pd.DataFrame:
    return pd.read_parquet(vendor_folder("xenium") / "transcripts.parquet")


@pytest.mark.parametrize("bin_um", [2, 8, 16])
def test_bin_xenium_counts_and_grid(xenium_tx, bin_um):
    adata = bin_transcripts(read_transcripts(vendor_folder("xenium"), chunk_size=700), bin_um=bin_um, library_id="x")
    # every transcript counted once: per-gene totals are the transcript table's (all have qv >= 20 here)
    totals = pd.Series(np.asarray(adata.X.sum(0)).ravel(), index=adata.var_names)
    totals = pd.concat([totals, adata.obsm["controls"].sum()])
    expected = xenium_tx["feature_name"].value_counts()
    pd.testing.assert_series_equal(totals.sort_index(), expected.sort_index().astype(np.float32), check_names=False)
    assert set(adata.obsm["controls"].columns) == {"NegControlProbe_00003", "BLANK_0070", "BLANK_0464"}
    assert adata.var_names.is_monotonic_increasing
    # bin centres on the grid, matching the bin indices
    xy = adata.obsm["spatial"]
    np.testing.assert_allclose(xy[:, 0], (adata.obs["array_col"] + 0.5) * bin_um)
    np.testing.assert_allclose(xy[:, 1], (adata.obs["array_row"] + 0.5) * bin_um)
    # each transcript falls in the bin of its coordinates: recount them from the table
    n_per_bin = xenium_tx.groupby(
        [np.floor(xenium_tx["y_location"] / bin_um), np.floor(xenium_tx["x_location"] / bin_um)]
    ).size()
    got = pd.Series(
        np.asarray(adata.X.sum(1), dtype=float).ravel() + adata.obs["control_counts"].to_numpy(float),
        index=pd.MultiIndex.from_arrays([adata.obs["array_row"].astype(float), adata.obs["array_col"].astype(float)]),
    )
    pd.testing.assert_series_equal(got.sort_index(), n_per_bin.sort_index().astype(float), check_names=False)
    entry = adata.uns["spatial"]["x"]
    assert entry["metadata"]["platform"] == "binned:xenium"  # never "visium_hd"
    assert entry["metadata"]["bin_size_um"] == bin_um
    assert entry["metadata"]["n_transcripts"] == len(xenium_tx)
    assert entry["scalefactors"] == {"microns_per_pixel": 1.0, "spot_diameter_fullres": float(bin_um)}
    assert adata.obs["array_row"].dtype == np.int64


def test_bins_nest(xenium_tx):
    fine = bin_transcripts(xenium_tx, bin_um=8)
    coarse = bin_transcripts(xenium_tx, bin_um=16)
    assert fine.uns["spatial"]["binned"]["metadata"]["platform"] == "binned:unknown"
    # four 8 µm bins make one 16 µm bin
    parent = pd.MultiIndex.from_arrays([fine.obs["array_row"] // 2, fine.obs["array_col"] // 2])
    summed = pd.DataFrame(fine.X.toarray(), index=parent, columns=fine.var_names).groupby(level=[0, 1]).sum()
    coarse_df = pd.DataFrame(
        coarse.X.toarray(),
        index=pd.MultiIndex.from_arrays([coarse.obs["array_row"], coarse.obs["array_col"]]),
        columns=coarse.var_names,
    )
    pd.testing.assert_frame_equal(summed.sort_index(), coarse_df.sort_index(), check_names=False)


def test_chunking_and_merging_do_not_change_counts(xenium_tx, monkeypatch):
    whole = bin_transcripts(xenium_tx, bin_um=8)
    monkeypatch.setattr(binning, "_MIN_FLUSH", 50)  # force many intermediate merges
    chunks = (xenium_tx.iloc[i : i + 97] for i in range(0, len(xenium_tx), 97))
    streamed = bin_transcripts(chunks, bin_um=8)
    assert list(streamed.obs_names) == list(whole.obs_names)
    assert list(streamed.var_names) == list(whole.var_names)
    assert (streamed.X != whole.X).nnz == 0


def test_origin_and_negative_coordinates():
    tx = pd.DataFrame({"x_location": [-0.5, 0.5, 7.9, 8.1], "y_location": [-3.0, 1.0, 1.0, 1.0], "feature_name": "A"})
    adata = bin_transcripts(tx, bin_um=8)
    assert sorted(zip(adata.obs["array_row"], adata.obs["array_col"], strict=True)) == [(-1, -1), (0, 0), (0, 1)]
    shifted = bin_transcripts(tx, bin_um=8, origin=(-0.5, -3.0))
    assert shifted.obs["array_col"].min() == 0
    np.testing.assert_allclose(shifted.obsm["spatial"].min(0), [3.5, 1.0])


def test_read_transcripts_cosmx_and_merscope():
    cosmx = read_transcripts(vendor_folder("cosmx"))
    assert cosmx.platform == "cosmx"
    assert cosmx.pixel_size_um == pytest.approx(0.12028)
    raw = pd.read_csv(cosmx.path)
    (chunk,) = list(cosmx)
    np.testing.assert_allclose(chunk["x_location"], raw["x_global_px"] * 0.12028)
    # µm: one FOV of 4,256 px is 512 µm on the commercial instrument
    assert np.ptp(chunk["x_location"]) < 512
    binned = bin_transcripts(cosmx, bin_um=16, library_id="c")
    assert binned.uns["spatial"]["c"]["metadata"]["platform"] == "binned:cosmx"
    assert binned.uns["spatial"]["c"]["metadata"]["pixel_size_um"] == pytest.approx(0.12028)
    assert binned.X.sum() + binned.obs["control_counts"].sum() == len(raw)
    assert not any(v.startswith("NegPrb") for v in binned.var_names)

    merscope = read_transcripts(vendor_folder("merscope") / "detected_transcripts.csv", chunk_size=100)
    assert merscope.platform == "merscope"
    chunks = list(merscope)
    assert len(chunks) == 9  # 826 transcripts in chunks of 100
    binned = bin_transcripts(merscope, bin_um=8)
    assert binned.obsm["controls"].shape[1] == 5  # Blank-* barcodes
    assert binned.X.sum() + binned.obs["control_counts"].sum() == 826
    assert isinstance(merscope, TranscriptChunks)


def test_min_qv_filters_xenium(xenium_tx):
    strict = read_transcripts(vendor_folder("xenium"), min_qv=40)
    n = sum(len(c) for c in strict)
    assert n == (xenium_tx["qv"] >= 40).sum()
    assert 0 < n < len(xenium_tx)


def test_bad_input(tmp_path, xenium_tx):
    with pytest.raises(FileNotFoundError, match="transcripts"):
        read_transcripts(tmp_path / "missing.parquet")
    with pytest.raises(FileNotFoundError, match="No transcripts file"):
        read_transcripts(tmp_path)
    odd = tmp_path / "molecules.csv"
    odd.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="platform="):
        read_transcripts(odd)
    with pytest.raises(ValueError, match="transcript columns"):
        list(read_transcripts(odd, platform="merscope"))
    with pytest.raises(ValueError, match="platform="):
        read_transcripts(odd, platform="stereoseq")
    with pytest.raises(ValueError, match="bin_um"):
        bin_transcripts(xenium_tx, bin_um=0)
    with pytest.raises(ValueError, match="columns"):
        bin_transcripts(xenium_tx, gene="target")
    with pytest.raises(ValueError, match="NaN"):
        bin_transcripts(xenium_tx.assign(x_location=np.nan))
    with pytest.raises(ValueError, match="in µm"):
        bin_transcripts(xenium_tx.assign(x_location=xenium_tx["x_location"] * 1e5))  # 100 m away: not µm
    with pytest.raises(ValueError, match="No transcripts"):
        bin_transcripts(xenium_tx.iloc[:0])
