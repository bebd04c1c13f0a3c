"""storm.train.DomainProbe: the domain ARI of labelled slides while pretraining, and its place in pretrain()."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from _data import TINY_NET, real

import storm
import storm.train
from storm.models import StormModel
from storm.train import DomainProbe, PretrainConfig, ProbeConfig, build_probe, pretrain


@pytest.fixture(scope="module")
def adata():
    return real("visium_fixture")


@pytest.fixture(scope="module")
def model(adata):
    return StormModel.setup(adata, genes=list(adata.var_names[:50]), net=TINY_NET, random_state=0)


def _labels(adata, slide):
    return adata.obs["leiden"].astype(str).to_numpy(dtype=object)[slide.obs_rows]


def test_probe_scores_what_the_domains_pipeline_finds(adata, model):
    slides = model.prepare(adata)
    probe = DomainProbe(model, slides, [_labels(adata, s) for s in slides], names=["brain"])
    scores = probe.score()

    a = adata.copy()
    storm.tl.embed(a, model)
    k = a.obs["leiden"].nunique()
    storm.tl.domains(a, k)
    expected = storm.metrics.ari(a.obs["leiden"].astype(str), a.obs["storm_domains"].astype(str))
    assert scores["probe/ari/brain"] == pytest.approx(expected, abs=1e-12)
    assert scores["probe/ari"] == scores["probe/ari/brain"]


def test_probe_leaves_unlabelled_spots_out_and_restores_training_mode(adata, model):
    slide = model.prepare(adata)[0]
    labels = _labels(adata, slide)
    labels[:10] = None
    probe = DomainProbe(model, [slide], [labels])
    assert len(probe.targets[0][1]) == slide.n_obs - 10
    model.module.train()
    probe.score()
    assert model.module.training


def test_probe_refuses_what_it_cannot_score(adata, model):
    slide = model.prepare(adata)[0]
    with pytest.raises(ValueError, match="one label array"):
        DomainProbe(model, [slide], [])
    with pytest.raises(ValueError, match="labels"):
        DomainProbe(model, [slide], [np.array(["a", "b"], dtype=object)])
    with pytest.raises(ValueError, match="fewer than two"):
        DomainProbe(model, [slide], [np.array(["a"] * slide.n_obs, dtype=object)])
    with pytest.raises(ValueError, match="every_n_steps"):
        DomainProbe(model, [slide], [_labels(adata, slide)], every_n_steps=0)


def _config(tmp_path, **probe):
    return {
        "data": {"datasets": {"visium_fixture": []}, "val_fraction": 0.0},
        "genes": {"n_top_genes": 40},
        "net": dict(TINY_NET),
        "optim": {"warmup_steps": 1},
        "trainer": {"max_steps": 3, "batch_size": 8, "accelerator": "cpu", "progress_bar": False},
        "output": str(tmp_path / "run"),
        "probe": {"datasets": {"visium_fixture": []}, "label_key": "leiden", "every_n_steps": 2} | probe,
    }


def test_pretrain_logs_the_probe_and_records_its_history(tmp_path):
    model, _ = pretrain(_config(tmp_path))
    run = tmp_path / "run"
    rows = [r for r in csv.DictReader((run / "logs" / "metrics.csv").open()) if r.get("probe/ari")]
    # before the first step, every second step, after the last
    assert [int(r["step"]) for r in rows] == [0, 2, 3]
    assert all(-1 <= float(r["probe/ari"]) <= 1 for r in rows)
    history = json.loads((run / "model" / "config.json").read_text())["training"]["probe"]
    assert history["label_key"] == "leiden"
    assert [h["step"] for h in history["history"]] == [0, 2, 3]
    # the last entry scores the saved weights
    slide = model.prepare(real("visium_fixture"))[0]
    labels = real("visium_fixture").obs["leiden"].astype(str).to_numpy(dtype=object)[slide.obs_rows]
    rescored = DomainProbe(model, [slide], [labels]).score()["probe/ari"]
    assert rescored == pytest.approx(history["history"][-1]["probe/ari"], abs=1e-12)


def test_probe_configuration_errors(tmp_path):
    with pytest.raises(ValueError, match="probe"):
        PretrainConfig.from_dict(_config(tmp_path, unknown=1))
    with pytest.raises(ValueError, match="no obs\\['cell_type'\\]"):
        pretrain(_config(tmp_path, label_key="cell_type"))
    assert PretrainConfig.from_dict({}).probe is None


def test_the_probe_example_in_storm_mini_yaml_is_a_valid_configuration():
    import yaml

    lines = (Path(storm.train.__file__).parent / "configs" / "storm_mini.yaml").read_text().splitlines()
    start = lines.index("# probe:")
    block = "\n".join(line.removeprefix("# ") for line in lines[start:])
    probe = PretrainConfig.from_dict({"probe": yaml.safe_load(block)["probe"]}).probe
    assert isinstance(probe, ProbeConfig)
    assert probe.datasets == {"dlpfc": ["151674"]}
    assert probe.label_key == "layer"


@pytest.mark.slow
def test_built_probe_scores_what_embed_and_domains_find_on_dlpfc():
    """DLPFC has only a 600-px image: storm.tl.embed reads expression alone there, and the probe must do the same."""
    adata = real("dlpfc", "151674")
    model = StormModel.from_pretrained()
    probe = build_probe(
        model, ProbeConfig(datasets={"dlpfc": ["151674"]}, label_key="layer"), library_key="library_id", layer=None
    )
    storm.tl.embed(adata, model)
    storm.tl.domains(adata, 7)
    labelled = adata.obs["layer"].notna().to_numpy()
    expected = storm.metrics.ari(
        adata.obs["layer"][labelled].astype(str), adata.obs["storm_domains"][labelled].astype(str)
    )
    assert probe.score()["probe/ari"] == pytest.approx(expected, abs=1e-12)


def test_probing_does_not_change_what_is_trained(tmp_path):
    with_probe, _ = pretrain(_config(tmp_path / "a", every_n_steps=1))
    config = _config(tmp_path / "b")
    config.pop("probe")
    without, _ = pretrain(config)
    a, b = with_probe.module.inference_state_dict(), without.module.inference_state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert (a[key] == b[key]).all(), key


def test_a_resumed_run_keeps_its_probe_history(tmp_path):
    config = _config(tmp_path)
    config["trainer"] = config["trainer"] | {"max_steps": 2, "checkpoint_every_n_steps": 1}
    pretrain(config)
    config["trainer"] = config["trainer"] | {"max_steps": 3, "resume_from": "last"}
    pretrain(config)
    history = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["training"]["probe"]["history"]
    assert [h["step"] for h in history] == [0, 2, 3]
