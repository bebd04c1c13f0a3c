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
