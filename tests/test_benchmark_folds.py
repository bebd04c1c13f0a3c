"""The domain benchmark's folds never score a slide with a model pretrained on its donor or patient."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _folds


def test_every_fold_leaves_out_the_patients_it_scores():
    for fold in _folds.FOLDS:
        corpus = fold.corpus_slides()
        assert corpus, fold.name
        for section in fold.evaluates:
            assert section not in corpus
            assert _folds.patient_of(section) not in {_folds.patient_of(s) for s in corpus}
            assert _folds.fold_of(section) is fold


def test_fold_of_refuses_a_contaminated_fold(monkeypatch):
    leaky = _folds.Fold("leaky", {"her2st": ["B2"]}, ("B1",))
    monkeypatch.setattr(_folds, "FOLDS", (leaky,))
    with pytest.raises(AssertionError, match="patient B"):
        _folds.fold_of("B1")
    with pytest.raises(KeyError, match="no fold"):
        _folds.fold_of("151673")


def test_fold_config_changes_only_the_corpus():
    import yaml

    recipe = yaml.safe_load(_folds.RECIPE.read_text())
    written = yaml.safe_load(_folds.fold_config(_folds.FOLDS[1]).read_text())
    assert written["data"]["datasets"] == {"dlpfc": ["151673", "151674"]}
    written["data"]["datasets"] = recipe["data"]["datasets"]
    assert written == recipe


def test_objective_fold_config_adds_only_the_objective_and_has_its_own_runs():
    import yaml

    fold = _folds.FOLDS[0]
    masked = yaml.safe_load(_folds.fold_config(fold).read_text())
    prototype = yaml.safe_load(_folds.fold_config(fold, "masked + prototype").read_text())
    assert prototype.pop("objective") == {"niche_loss": "prototype", "niche_weight": 1.0}
    assert prototype == masked
    assert _folds.model_folder(fold, 0) != _folds.model_folder(fold, 0, "masked + prototype")
    from storm.train import PretrainConfig

    assert PretrainConfig.from_yaml(_folds.fold_config(fold, "masked + prototype")).objective.niche_loss == "prototype"
