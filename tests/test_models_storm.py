"""storm.models.StormModel: setup, embed, save/load and their validation, from_pretrained."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from _data import TINY_NET, real

from storm._files import write_manifest
from storm.models import StormModel, StormModelConfig, resolve_device
from storm.models._checkpoint import EMBEDDED_MODELS
from storm.nn import StormNetConfig
from storm.train import WindowDataset

NET = TINY_NET
LIB = "V1_Adult_Mouse_Brain"


@pytest.fixture(scope="module")
def adata():
    return real("visium_fixture")


@pytest.fixture(scope="module")
def model(adata):
    return StormModel.setup(adata, n_top_genes=100, net=NET, random_state=0)


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    return model.save(tmp_path_factory.mktemp("model") / "m")


def test_setup_chooses_genes_and_initialises_from_pca(adata, model):
    assert len(model.genes) == 100
    assert set(model.genes) <= set(adata.var_names)
    assert model.config.net.n_genes == 100
    assert model.config.net.window_size == 25
    assert model.modalities == ("image", "expression")
    assert model.dim == 16
    emb = model.module.expression_encoder.gene_embedding.detach()
    fresh = StormModel.setup(adata, genes=model.genes, net=NET, init_pca=False, random_state=0)
    assert not torch.allclose(emb, fresh.module.expression_encoder.gene_embedding)
    assert "StormModel(genes=100" in repr(model)
    # included genes come first; hist-style lists of genes not measured are dropped
    incl = StormModel.setup(adata, n_top_genes=10, include_genes=["Gfap", "NOT_A_GENE"], net=NET, init_pca=False)
    assert incl.genes[0] == "Gfap"
    assert "NOT_A_GENE" not in incl.genes
    assert len(incl.genes) <= 11


@pytest.mark.parametrize("mode", ["auto", "joint", "image", "expression"])
def test_embed_shapes_and_modes(adata, model, mode):
    emb = model.embed(adata, mode=mode, progress=False)
    assert emb.shape == (49, 16)
    assert emb.dtype == np.float32
    assert np.isfinite(emb).all()
    assert np.abs(emb).sum(1).min() > 0


def test_embed_modes_differ_and_auto_is_joint(adata, model):
    joint = model.embed(adata, mode="joint", progress=False)
    np.testing.assert_array_equal(model.embed(adata, progress=False), joint)
    assert not np.allclose(model.embed(adata, mode="image", progress=False), joint)
    assert not np.allclose(model.embed(adata, mode="expression", progress=False), joint)
    # a list gives one array per AnnData
    out = model.embed([adata, adata[:10].copy()], progress=False)
    assert [o.shape for o in out] == [(49, 16), (10, 16)]


def test_embed_chunks_equal_windows_of_raw_patches(adata, model):
    """Chunked embedding with cached spot features equals the network on whole windows of raw patches."""
    emb = model.embed(adata, batch_size=8, chunk_size=20, progress=False)
    slides = model.prepare(adata)
    ds = WindowDataset(slides, patch_px=model.config.patch_px)
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    with torch.inference_mode():
        ref = model.module.embed(batch).numpy()
    np.testing.assert_allclose(emb, ref, rtol=1e-4, atol=1e-5)


def test_embed_errors(adata, model):
    no_image = adata.copy()
    no_image.uns["spatial"][LIB]["images"] = {}
    del no_image.uns["spatial"][LIB]["metadata"]["fullres_path"]
    with pytest.raises(ValueError, match=r"needs an H&E image.*V1_Adult_Mouse_Brain"):
        model.embed(no_image, mode="image", progress=False)
    assert model.embed(no_image, progress=False).shape == (49, 16)  # auto: expression only
    no_counts = adata.copy()
    no_counts.X = None
    with pytest.raises(ValueError, match="needs expression counts"):
        model.embed(no_counts, mode="expression", progress=False)
    assert model.embed(no_counts, progress=False).shape == (49, 16)  # auto: image only
    other = adata.copy()
    other.var_names = [f"gene{i}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match=r"No gene overlaps: the data has 1,999 genes \(e.g. 'gene0'.*panel 100"):
        model.embed(other, progress=False)
    with pytest.raises(ValueError, match="mode must be one of"):
        model.embed(adata, mode="rna", progress=False)
    image_only = StormModel.setup(adata, genes=["Gfap"], net=NET | {"expression_encoder": "none"}, init_pca=False)
    with pytest.raises(ValueError, match="needs the expression modality"):
        image_only.embed(adata, mode="expression", progress=False)
    assert image_only.embed(adata, progress=False).shape == (49, 16)


def test_save_load_bit_identical(adata, model, saved):
    assert sorted(p.name for p in saved.iterdir()) == ["SHA256SUMS", "config.json", "model.safetensors"]
    body = json.loads((saved / "config.json").read_text())
    assert body["genes"] == model.genes
    assert body["net"]["dim"] == 16
    assert len(body["weights"]["sha256"]) == 64
    assert body["setup"]["size_um"] == 55.0
    assert body["storm_version"]
    from safetensors.torch import load_file

    assert not any(k.startswith(("teacher.", "decoders.")) for k in load_file(saved / "model.safetensors"))
    loaded = StormModel.load(saved)
    np.testing.assert_array_equal(loaded.embed(adata, progress=False), model.embed(adata, progress=False))
    assert loaded.config.to_dict() == model.config.to_dict()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(saved)


def _copy(saved, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(saved, dst)
    return dst


def test_load_refuses_tampered_weights(saved, tmp_path):
    bad = _copy(saved, tmp_path)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"refused: its sha256"):
        StormModel.load(bad)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(genes=c["genes"][:-1]), "99 genes but net.n_genes = 100"),
        (lambda c: (c.update(genes=c["genes"][:-1]), c["net"].update(n_genes=99)), "trained on 100"),
        (lambda c: c["net"].update(dim=32, decoder_dim=32), "do not fit this configuration"),
        (lambda c: c.update(extra=1), "unknown keys"),
        (lambda c: c["net"].update(new_field=1), "Unknown StormNetConfig fields"),
        (lambda c: c["setup"].update(patch_colour="red"), "Unknown setup arguments"),
        (lambda c: c.update(format="other"), "not a storm model"),
    ],
)
def test_load_refuses_mismatched_config(saved, tmp_path, edit, message):
    bad = _copy(saved, tmp_path)
    body = json.loads((bad / "config.json").read_text())
    edit(body)
    (bad / "config.json").write_text(json.dumps(body))
    write_manifest(bad, ["config.json", "model.safetensors"])  # checksums that match: the contents are judged
    with pytest.raises(ValueError, match=message):
        StormModel.load(bad)


def test_load_refuses_a_config_with_reordered_genes(saved, tmp_path):
    """Same length, other order: every gene would be read into another gene's embedding; the manifest refuses it."""
    bad = _copy(saved, tmp_path)
    body = json.loads((bad / "config.json").read_text())
    body["genes"] = body["genes"][::-1]
    (bad / "config.json").write_text(json.dumps(body, indent=1) + "\n")
    with pytest.raises(ValueError, match=r"config.json is refused: its sha256 .* differs from the one in SHA256SUMS"):
        StormModel.load(bad)


def test_load_refuses_a_folder_without_manifest(saved, tmp_path):
    bad = _copy(saved, tmp_path)
    (bad / "SHA256SUMS").unlink()
    with pytest.raises(ValueError, match=r"no SHA256SUMS.*sha256sum config.json model.safetensors > SHA256SUMS"):
        StormModel.load(bad)
    (bad / "SHA256SUMS").write_text(f"{'0' * 64}  model.safetensors\n")
    with pytest.raises(ValueError, match=r"lists no checksum of \['config.json'\]"):
        StormModel.load(bad)


def test_load_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.json"):
        StormModel.load(tmp_path)


def test_from_pretrained_local_embedded_and_hub(saved, monkeypatch, tmp_path):
    assert StormModel.from_pretrained(saved).genes == StormModel.load(saved).genes
    if (EMBEDDED_MODELS["storm-mini"] / "config.json").is_file():
        assert StormModel.from_pretrained().dim > 0
    else:
        with pytest.raises(FileNotFoundError, match="not shipped"):
            StormModel.from_pretrained()
    with pytest.raises(FileNotFoundError, match="No model folder"):
        StormModel.from_pretrained(str(tmp_path / "nowhere" / "deeper"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match=r"HF_HUB_OFFLINE.*hf download"):
        StormModel.from_pretrained("storm-st/no-such-model")


def test_from_pretrained_mistyped_relative_folder_is_not_sent_to_the_hub(monkeypatch, tmp_path):
    """'runs/storm-mini' looks like a Hub id 'owner/name'; where ./runs exists it is a local path with a typo."""
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("sent to the Hugging Face Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    with pytest.raises(FileNotFoundError, match=r"No model folder at 'runs/storm-mini': the folder 'runs' exists"):
        StormModel.from_pretrained("runs/storm-mini")


def test_from_pretrained_hub_failure_says_no_local_folder_exists(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FileNotFoundError, match=r"No local folder 'runs/storm-mini' exists"):
        StormModel.from_pretrained("runs/storm-mini")


def test_config_validation():
    net = StormNetConfig(n_genes=3)
    with pytest.raises(ValueError, match=r"2 genes but net.n_genes = 3"):
        StormModelConfig(net=net, genes=["a", "b"])
    with pytest.raises(ValueError, match="no-context ablation"):
        StormModelConfig(net=net, genes=["a", "b", "c"], window=1)
    with pytest.raises(ValueError, match="repeats"):
        StormModelConfig(net=net, genes=["a", "a", "c"])
    cfg = StormModelConfig(net=net, genes=["a", "b", "c"])
    assert StormModelConfig.from_dict(cfg.to_dict()) == cfg


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("gpu")


def test_setup_ablation_window_1(adata):
    m = StormModel.setup(adata, genes=["Gfap", "Mbp"], net=NET | {"window_size": 1}, init_pca=False)
    assert m.config.window == 1
    assert m.config.net.window_size == 1
    (slide,) = m.prepare(adata)
    assert slide.window_size == 1
    assert m.embed(adata, progress=False).shape == (49, 16)  # single-spot windows


def _raw_windows(slide, rows, w):
    """The network's input for the windows of ``rows``, gathered from spot arrays the way training does."""
    from storm.nn import BatchKeys

    index = slide.index[rows, :w]
    valid = index >= 0
    expr = slide.expression(np.maximum(index, 0).ravel()).reshape(*index.shape, -1) * valid[..., None]
    return {
        BatchKeys.OFFSETS: torch.from_numpy(slide.offsets_um[rows, :w]),
        BatchKeys.POS_MASK: torch.from_numpy(valid),
        BatchKeys.EXPR: torch.from_numpy(expr),
        BatchKeys.GENE_MASK: torch.from_numpy(slide.gene_mask).expand(len(rows), -1),
    }


def test_embed_of_storm_mini_equals_the_network_on_raw_windows_of_a_real_section():
    """Spot tokens encoded once per chunk and gathered into windows give the network's output on whole windows."""
    dlpfc = real("dlpfc", "151673")
    model = StormModel.from_pretrained()
    emb = model.embed(dlpfc, mode="expression", chunk_size=1000, progress=False)
    alone = model.embed(dlpfc, mode="expression", context=False, progress=False)
    (slide,) = model.prepare(dlpfc, mode="expression")
    rows = np.random.default_rng(0).choice(slide.n_obs, 200, replace=False)
    with torch.inference_mode():
        ref = model.module.embed(_raw_windows(slide, rows, model.config.net.window_size)).numpy()
        ref_alone = model.module.embed(_raw_windows(slide, rows, 1)).numpy()
    np.testing.assert_allclose(emb[slide.obs_rows[rows]], ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(alone[slide.obs_rows[rows]], ref_alone, rtol=1e-4, atol=1e-5)
    assert not np.allclose(alone, emb, atol=1e-2)  # the context changes the embedding
