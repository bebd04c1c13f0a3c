"""Prepared slides survive the round trip through a folder, and load without AnnData."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from _data import real

from storm.train._store import load_slides, save_slides


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from storm.models import StormModel

    adata = real("her2st", "C2")
    model = StormModel.setup([adata], n_top_genes=50, net={"dim": 32, "depth": 1, "heads": 2, "patch_px": 32})
    slides = model.prepare(adata)
    folder = save_slides(slides, tmp_path_factory.mktemp("store") / "slides", genes=model.genes)
    return slides, model.genes, folder


def test_round_trip_keeps_every_array(prepared):
    slides, genes, folder = prepared
    loaded, loaded_genes = load_slides(folder)
    assert loaded_genes == genes
    (a,), (b,) = slides, loaded
    np.testing.assert_array_equal(a.index, b.index)
    np.testing.assert_array_equal(a.offsets_um, b.offsets_um)
    np.testing.assert_array_equal(a.expression(np.arange(a.n_obs)), b.expression(np.arange(b.n_obs)))
    np.testing.assert_array_equal(a.gene_mask, b.gene_mask)
    np.testing.assert_array_equal(a.patches.centres, b.patches.centres)
    assert b.patches.side_px == a.patches.side_px
    rows = np.arange(5)
    np.testing.assert_array_equal(a.patches.cut(a.patches.load(), rows, 32), b.patches.cut(b.patches.load(), rows, 32))


def test_refuses_a_non_empty_folder_and_a_missing_manifest(prepared, tmp_path):
    slides, genes, folder = prepared
    with pytest.raises(FileExistsError, match="not empty"):
        save_slides(slides, folder, genes=genes)
    with pytest.raises(FileNotFoundError, match=r"slides\.json"):
        load_slides(tmp_path)


def test_loading_needs_no_single_cell_stack(prepared):
    _, _, folder = prepared
    code = (
        "import sys\n"
        "for m in ('anndata', 'scanpy', 'squidpy', 'platformdirs'): sys.modules[m] = None\n"
        "from storm.train import WindowDataset\n"
        "from storm.train._store import load_slides\n"
        f"slides, genes = load_slides({str(folder)!r})\n"
        "item = WindowDataset(slides, patch_px=32)[0]\n"
        "print(tuple(item['image'].shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().startswith("(25, 3, 32, 32)")
