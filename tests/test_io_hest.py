"""HEST-1k: read_hest on a HEST-layout folder built from HER2ST C2 (h5ad, pyramidal TIFF, metadata), pretraining."""

from __future__ import annotations

import json

import numpy as np
import pytest
from _data import TINY_NET, real

import storm
from storm._wsi_reader import WholeSlideImage

SAMPLE = "SPA_C2"  # HEST names legacy-ST samples SPA…


@pytest.fixture(scope="module")
def c2():
    return real("her2st", "C2")


@pytest.fixture(scope="module")
def hest_folder(tmp_path_factory, c2):
    """A HEST-1k folder with one sample, laid out and named as the HEST-1k release is (metadata field names too)."""
    root = tmp_path_factory.mktemp("hest")
    for sub in ("st", "wsis", "metadata"):
        (root / sub).mkdir()
    entry = c2.uns["spatial"]["C2"]
    mpp = entry["scalefactors"]["microns_per_pixel"]
    pixels = storm.io.LazyImage(entry["metadata"]["fullres_path"]).load()
    # the scan's own resolution tags say 0.5 µm/px; HEST's estimate from the spot spacing is what it trusts
    storm.io.write_pyramid(root / "wsis" / f"{SAMPLE}.tif", pixels, microns_per_pixel=0.5, levels=3)
    st = c2.copy()
    st.obs["pxl_col_in_fullres"] = st.obsm["spatial"][:, 0]
    st.obs["pxl_row_in_fullres"] = st.obsm["spatial"][:, 1]
    st.obs["in_tissue"] = 1
    del st.obs["library_id"]
    st.uns["spatial"] = {"ST": {"images": {"downscaled_fullres": entry["images"]["hires"]}, "scalefactors": {}}}
    st.write_h5ad(root / "st" / f"{SAMPLE}.h5ad")
    height, width = pixels.shape[:2]
    meta = {
        "dataset_title": "Spatial deconvolution of HER2-positive breast cancer",
        "id": SAMPLE,
        "organ": "Breast",
        "species": "Homo sapiens",
        "oncotree_code": "IDC",
        "st_technology": "Spatial Transcriptomics",
        "pixel_size_um_embedded": 0.5,
        "pixel_size_um_estimated": mpp,
        "magnification": "20x",
        "fullres_px_width": width,
        "fullres_px_height": height,
        "spots_under_tissue": st.n_obs,
        "spot_diameter": 100.0,
        "inter_spot_dist": 200.0,
        "nb_genes": st.n_vars,
        "disease_state": "Cancer",
        "tissue": None,
    }
    (root / "metadata" / f"{SAMPLE}.json").write_text(json.dumps(meta))
    return root


def test_read_hest_layout(hest_folder, c2):
    assert storm.io.hest_samples(hest_folder) == [SAMPLE]
    assert storm.io.hest_samples(hest_folder, st_technology="visium") == []
    assert storm.io.hest_samples(hest_folder, st_technology=["Spatial Transcriptomics"], species="homo sapiens")
    adata = storm.io.read_hest(hest_folder, SAMPLE)
    assert adata.shape == c2.shape
    np.testing.assert_array_equal(adata.X.toarray(), c2.X.toarray())
    np.testing.assert_array_equal(adata.obsm["spatial"], c2.obsm["spatial"])
    assert list(adata.uns["spatial"]) == [SAMPLE]  # HEST's 'ST' entry replaced
    entry = adata.uns["spatial"][SAMPLE]
    mpp = c2.uns["spatial"]["C2"]["scalefactors"]["microns_per_pixel"]
    assert entry["scalefactors"]["microns_per_pixel"] == pytest.approx(mpp)
    assert entry["metadata"]["mpp_source"] == "HEST metadata pixel_size_um_estimated"
    assert entry["scalefactors"]["spot_diameter_fullres"] == pytest.approx(100 / mpp)
    assert entry["metadata"]["platform"] == "st"
    assert entry["metadata"]["hest"]["oncotree_code"] == "IDC"
    assert "tissue" not in entry["metadata"]["hest"]  # None is not storable in h5ad
    assert entry["metadata"]["fullres_path"].endswith(f"wsis/{SAMPLE}.tif")
    assert len(entry["metadata"]["wsi"]["level_shapes"]) == 3
    assert adata.obs["library_id"].tolist() == [SAMPLE] * adata.n_obs
    # the spots' patches from the whole-slide image are the JPEG's (up to JPEG re-compression)
    a = np.concatenate(list(storm.pp.extract_patches(c2, out_px=64))).astype(int)
    b = np.concatenate(list(storm.pp.extract_patches(adata, out_px=64))).astype(int)
    assert np.abs(a - b).mean() < 1.5
    # the legacy-ST grid fit agrees with HEST's estimate
    without = adata.copy()
    del without.uns["spatial"][SAMPLE]["scalefactors"]["microns_per_pixel"]
    assert storm.pp.patch_scale(without).loc[SAMPLE, "microns_per_pixel"] == pytest.approx(mpp, rel=5e-3)
    no_image = storm.io.read_hest(hest_folder, SAMPLE, image=False)
    assert "fullres_path" not in no_image.uns["spatial"][SAMPLE]["metadata"]


def test_read_hest_bad_input(hest_folder, tmp_path):
    with pytest.raises(FileNotFoundError, match="counts"):
        storm.io.read_hest(hest_folder, "TENX95")
    broken = tmp_path / "hest"
    for sub in ("st", "metadata", "wsis"):
        (broken / sub).mkdir(parents=True)
    (broken / "st" / f"{SAMPLE}.h5ad").symlink_to(hest_folder / "st" / f"{SAMPLE}.h5ad")
    (broken / "metadata" / f"{SAMPLE}.json").write_text(json.dumps({"st_technology": "Visium"}))
    with pytest.raises(ValueError, match="microns_per_pixel"):
        storm.io.read_hest(broken, SAMPLE)
    with pytest.raises(FileNotFoundError, match="wsis"):
        storm.io.read_hest(broken, SAMPLE, microns_per_pixel=0.7)
    with pytest.raises(FileNotFoundError, match="st/"):
        storm.io.hest_samples(tmp_path)


def test_pretraining_from_a_hest_folder(hest_folder, tmp_path, monkeypatch):
    from storm.train import pretrain

    reads = []
    original = WholeSlideImage.read

    def spy(self, level, *args):
        reads.append(level)
        return original(self, level, *args)

    monkeypatch.setattr(WholeSlideImage, "read", spy)
    config = {
        "data": {"hest": [{"folder": str(hest_folder), "samples": "all", "st_technology": ["Spatial Transcriptomics"]}],
                 "val_fraction": 0.1},
        "genes": {"n_top_genes": 40},
        "net": dict(TINY_NET),
        "optim": {"warmup_steps": 1},
        "trainer": {"max_steps": 2, "batch_size": 8, "accelerator": "cpu", "progress_bar": False},
        "output": str(tmp_path / "run"),
    }  # fmt: skip
    model, trainer = pretrain(config)
    assert trainer.global_step == 2
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()
    assert len(model.config.genes) >= 40
    # 55 µm in 16 px: 3.4 µm/px wanted; patches came tile by tile from level 2 (2.75 µm/px) of the pyramid
    assert reads
    assert set(reads) == {2}
    with pytest.raises(ValueError, match="Unknown keys"):
        pretrain(config | {"data": {"hest": [{"folder": str(hest_folder), "sample": "x"}]}})
