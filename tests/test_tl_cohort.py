"""Cohort-scale features: storm.tl.cohort_features and `storm features` on small pyramidal TIFFs cut from real H&E."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from _data import TINY_NET, real

import storm

#: (y, x) corners of 1,600-px crops of HER2ST C6's H&E that hold tissue; six slides, three per response class.
CROPS = [(3200, 3200), (3200, 4000), (4000, 2400), (4000, 4000), (4800, 2400), (4800, 3200)]
SIDE = 1600


@pytest.fixture(scope="module")
def c6():
    return real("her2st", "C6")


@pytest.fixture(scope="module")
def tiny(c6):
    """A tiny model and head (16-px patches: tiles are read from level 2 of each pyramid)."""
    from storm.models import StormModel

    model = StormModel.setup(c6, n_top_genes=50, net=TINY_NET, random_state=0)
    head = storm.tl.train_expression_head(c6, n_top_genes=10, model=model, epochs=1, val_groups=(), progress=False)
    return model, head


@pytest.fixture(scope="module")
def cohort(tmp_path_factory, c6):
    """Six 1,600-px pyramidal TIFFs (JPEG tiles, 3 levels, µm/px in the tags) and their cohort CSV."""
    folder = tmp_path_factory.mktemp("cohort")
    meta = c6.uns["spatial"]["C6"]
    pixels = storm.io.LazyImage(meta["metadata"]["fullres_path"]).load()
    mpp = meta["scalefactors"]["microns_per_pixel"]
    rows = []
    for i, (y, x) in enumerate(CROPS):
        path = storm.io.write_pyramid(folder / f"s{i}.tif", pixels[y : y + SIDE, x : x + SIDE], microns_per_pixel=mpp)
        rows.append({"slide_id": f"s{i}", "path": path.name})  # relative to the CSV's folder
    table = pd.DataFrame(rows)
    table.to_csv(folder / "cohort.csv", index=False)
    return folder / "cohort.csv"


def _mtimes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.h5ad")}


def test_one_file_per_slide_with_provenance_that_trains_the_slide_model(cohort, tiny, tmp_path):
    model, head = tiny
    bad = cohort.parent / "broken.tif"
    bad.write_bytes(b"II*\x00" + os.urandom(4096))  # a TIFF signature, then garbage
    table = pd.read_csv(cohort)
    table["path"] = [str(cohort.parent / p) for p in table["path"]]  # a DataFrame's relative paths are the cwd's
    table = pd.concat([table, pd.DataFrame([{"slide_id": "broken", "path": str(bad)}])], ignore_index=True)
    out = tmp_path / "features"
    summary = storm.tl.cohort_features(table, out, head=head, model=model, accelerator="cpu", progress=False)

    assert summary.loc["broken", "status"] == "failed"
    assert summary.loc["broken", "error"]
    assert not (out / "broken.h5ad").exists()  # a slide that fails leaves no file
    assert list(summary["status"].drop("broken")) == ["written"] * len(CROPS)
    assert sorted(p.name for p in out.iterdir()) == [f"s{i}.h5ad" for i in range(len(CROPS))]  # no temporary file

    tiles = storm.tl.read_cohort_features(out)
    s0 = tiles["s0"]
    assert s0.n_obs == summary.loc["s0", "n_tiles"] > 50
    prov = s0.uns["storm_features"]
    assert prov["slide_id"] == "s0"
    assert prov["source"]["path"] == str(cohort.parent / "s0.tif")
    assert prov["encoder"]["fingerprint"] == storm.tl.encoder_identity(model)["fingerprint"]
    assert prov["params"]["tile_um"] == 55.0
    # the same tiles, embedding and prediction as virtual_st on the slide alone
    ref = storm.tl.virtual_st(cohort.parent / "s0.tif", head, model=model, embedding_key="X_storm", progress=False)
    assert list(ref.obs_names) == list(s0.obs_names)
    np.testing.assert_array_equal(s0.obsm["X_storm"], ref.obsm["X_storm"])
    np.testing.assert_array_equal(s0.X, ref.X)
    np.testing.assert_array_equal(s0.obsm["spatial"], ref.obsm["spatial"])

    # the slide-level model trains from the folder (response of three slides against three)
    bags = storm.tl.slide_features(out)
    assert [b["slide_id"] for b in bags] == [f"s{i}" for i in range(len(CROPS))]
    assert bags[0]["image"].shape == (s0.n_obs, model.dim)
    assert bags[0]["expression"].shape == (s0.n_obs, len(head.genes))
    clinical = pd.DataFrame({"response": [1, 0, 1, 0, 1, 0]}, index=[b["slide_id"] for b in bags])
    result = storm.tl.fit_slide_model(
        bags, clinical, response_key="response", n_splits=3, max_epochs=2, accelerator="cpu"
    )
    assert len(result.ids) == len(CROPS)
    assert np.isfinite(result.risk).all()


def test_a_second_run_skips_finished_slides_and_refuses_another_setup(cohort, tiny, tmp_path):
    model, head = tiny
    out = tmp_path / "features"
    storm.tl.cohort_features(cohort, out, head=head, model=model, accelerator="cpu", progress=False)
    before = _mtimes(out)
    (out / "s2.h5ad").unlink()  # as if the run had stopped before s2
    summary = storm.tl.cohort_features(cohort, out, head=head, model=model, accelerator="cpu", progress=False)
    assert summary.loc["s2", "status"] == "written"
    assert (summary["status"].drop("s2") == "skipped").all()
    after = _mtimes(out)
    assert {k: v for k, v in after.items() if k != "s2.h5ad"} == {k: v for k, v in before.items() if k != "s2.h5ad"}
    # files of another tiling are never mixed into one folder
    with pytest.raises(ValueError, match="another model, head or tiling"):
        storm.tl.cohort_features(cohort, out, head=head, model=model, tile_um=110.0, accelerator="cpu")


def test_bad_cohort_tables(cohort, tmp_path):
    with pytest.raises(ValueError, match="'slide_id' and 'path'"):
        storm.tl.read_cohort(pd.DataFrame({"id": ["a"], "file": ["a.tif"]}))
    with pytest.raises(ValueError, match="repeat"):
        storm.tl.read_cohort(pd.DataFrame({"slide_id": ["a", "a"], "path": [str(cohort)] * 2}))
    with pytest.raises(ValueError, match="file names"):
        storm.tl.read_cohort(pd.DataFrame({"slide_id": ["../a"], "path": [str(cohort)]}))
    with pytest.raises(FileNotFoundError, match="do not exist"):
        storm.tl.read_cohort(pd.DataFrame({"slide_id": ["a"], "path": [str(tmp_path / "nope.svs")]}))
    with pytest.raises(FileNotFoundError, match="no feature files"):
        storm.tl.read_cohort_features(tmp_path)


def _storm_command() -> list[str]:
    """The package's console entry point (`storm`), as installed beside this interpreter."""
    script = Path(sys.executable).with_name("storm")
    assert script.is_file(), f"the console script {script} is not installed (pip install -e .)"
    return [str(script)]


def test_the_cli_killed_mid_cohort_resumes_without_recomputing(cohort, tiny, tmp_path):
    model, head = tiny
    model.save(tmp_path / "model")
    head.save(tmp_path / "head")
    out = tmp_path / "features"
    command = [
        *_storm_command(),
        "features",
        str(cohort),
        "--out",
        str(out),
        "--head",
        str(tmp_path / "head"),
        "--model",
        str(tmp_path / "model"),
        "--accelerator",
        "cpu",
        "--quiet",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob("*.h5ad")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
    finally:
        proc.wait()
        stderr = proc.stderr.read().decode()
        proc.stderr.close()
    done = _mtimes(out)
    assert 1 <= len(done) < len(CROPS), (done, stderr)
    inodes = {p.name: p.stat().st_ino for p in out.glob("*.h5ad")}

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert rerun.returncode == 0, rerun.stderr
    assert sorted(p.name for p in out.iterdir()) == [f"s{i}.h5ad" for i in range(len(CROPS))]
    after = _mtimes(out)
    assert {k: after[k] for k in done} == done  # the finished slides were not recomputed
    assert {k: out.joinpath(k).stat().st_ino for k in done} == {k: inodes[k] for k in done}
    assert f"{len(done)} already written" in rerun.stderr
