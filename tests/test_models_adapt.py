"""Self-supervised adaptation (storm.train.adapt): new genes appended, old weights kept, the input model untouched."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _data import real

import storm
from storm.models import StormModel, extend_genes
from storm.nn import StormNetConfig, StormPretrainModel


@pytest.fixture(scope="module")
def model():
    return StormModel.from_pretrained()


@pytest.fixture(scope="module")
def merfish():
    """A 300 µm corner of the MERFISH section: ~200 cells, 155 genes of which storm-mini knows 31."""
    adata = real("merfish_preoptic")
    xy = adata.obsm["spatial"]
    return adata[((xy - xy.min(axis=0)) < 300).all(axis=1)].copy()


def test_self_loss_decoder_is_training_only():
    net = StormNetConfig(n_genes=12, dim=16, depth=1, heads=2, image_encoder="none", expr_self_loss_weight=1.0)
    module = StormPretrainModel(net)
    assert "decoders.expression_self.1.weight" in module.state_dict()
    assert not any(k.startswith("decoders.") for k in module.inference_state_dict())
    torch.manual_seed(0)
    batch = {
        "offsets_um": torch.randn(3, 25, 2) * 50,
        "expr": torch.rand(3, 25, 12),
    }
    out = module(batch, generator=torch.Generator().manual_seed(0))
    assert out["loss_expr_self"] > 0
    assert torch.isclose(out["loss"], out["loss_expr"] + out["loss_expr_self"])
    plain = StormPretrainModel(StormNetConfig(n_genes=12, dim=16, depth=1, heads=2, image_encoder="none"))
    assert float(plain(batch, generator=torch.Generator().manual_seed(0))["loss_expr_self"]) == 0.0
    with pytest.raises(ValueError, match="expr_self_loss_weight"):
        StormNetConfig(n_genes=12, expr_self_loss_weight=-1.0)


def test_extend_genes_keeps_the_model_for_known_genes(model, merfish):
    known = merfish[:, [g.upper() in set(model.genes) for g in merfish.var_names]].copy()
    bigger = extend_genes(model, ["NEWGENE1", "NEWGENE2"])
    assert bigger.genes == [*model.genes, "NEWGENE1", "NEWGENE2"]
    assert bigger.config.net.n_genes == len(model.genes) + 2
    assert len(model.genes) == model.config.net.n_genes  # the input model is untouched
    # the new genes are not measured here, so the embedding must not change
    np.testing.assert_allclose(
        bigger.embed(known, mode="expression", progress=False),
        model.embed(known, mode="expression", progress=False),
        atol=1e-5,
    )
    with pytest.raises(ValueError, match="already on the model's list"):
        extend_genes(model, [model.genes[0]])


def test_adapt_reads_the_whole_panel_and_leaves_the_model_alone(model, merfish):
    before = {k: v.clone() for k, v in model.module.inference_state_dict().items()}
    adapted = storm.train.adapt(model, merfish, steps=3, batch_size=32, progress=False)
    assert model.gene_coverage(merfish)["n_used"] == 31
    assert adapted.gene_coverage(merfish)["n_used"] == merfish.n_vars == 155
    assert adapted.genes[: len(model.genes)] == model.genes
    after = model.module.inference_state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    emb = adapted.embed(merfish, mode="expression", progress=False)
    assert emb.shape == (merfish.n_obs, model.dim)
    assert np.isfinite(emb).all()
    # deterministic for a seed
    again = storm.train.adapt(model, merfish, steps=3, batch_size=32, progress=False).embed(
        merfish, mode="expression", progress=False
    )
    np.testing.assert_allclose(emb, again, atol=1e-5)


def test_adapt_without_new_genes_keeps_the_gene_list(model, merfish):
    adapted = storm.train.adapt(model, merfish, steps=3, batch_size=32, new_genes=False, progress=False)
    assert adapted.genes == model.genes


def test_adapt_bad_input(model, merfish):
    with pytest.raises(ValueError, match="steps"):
        storm.train.adapt(model, merfish, steps=0)
    with pytest.raises(ValueError, match="at least `batch_size`"):
        storm.train.adapt(model, merfish[:20].copy(), batch_size=64)
    with pytest.raises(TypeError, match="AnnData"):
        storm.train.adapt(model, [])


def test_embed_reads_the_whole_panel_zero_shot_without_touching_the_model(model, merfish):
    before = {k: v.clone() for k, v in model.module.inference_state_dict().items()}
    genes_before = list(model.genes)
    known = storm.tl.embed(merfish, model, mode="expression", copy=True)
    whole = storm.tl.embed(merfish, model, mode="expression", panel="data", n_panel_genes=50, copy=True)
    again = storm.tl.embed(merfish, model, mode="expression", panel="data", n_panel_genes=50, copy=True)
    params = whole.uns["X_storm"]["params"]
    assert params["panel"] == "data"
    assert params["n_genes_appended"] == 50
    assert params["gene_coverage"]["n_used"] == known.uns["X_storm"]["params"]["gene_coverage"]["n_used"] + 50
    assert known.uns["X_storm"]["params"]["n_genes_appended"] == 0
    assert not np.allclose(whole.obsm["X_storm"], known.obsm["X_storm"])
    np.testing.assert_array_equal(whole.obsm["X_storm"], again.obsm["X_storm"])  # deterministic
    assert model.genes == genes_before
    for k, v in model.module.inference_state_dict().items():
        assert torch.equal(v, before[k]), k


def test_read_panel_points_new_genes_along_their_co_expression(model, merfish):
    from storm.models import read_panel

    extended, added = read_panel(model, [merfish], n_top_genes=None)
    assert added
    assert extended.genes == model.genes + added
    assert len(added) == merfish.n_vars - model.gene_coverage(merfish)["n_used"]
    emb = extended.module.expression_encoder.gene_embedding.detach()
    assert torch.isfinite(emb).all()
    assert (emb[len(model.genes) :].norm(dim=1) > 0).all()


def test_embed_panel_bad_values_leave_adata_unchanged(model, merfish):
    adata = merfish.copy()
    with pytest.raises(ValueError, match="`panel` must be"):
        storm.tl.embed(adata, model, panel="everything")
    with pytest.raises(ValueError, match="`n_panel_genes`"):
        storm.tl.embed(adata, model, panel="data", n_panel_genes=0)
    assert "X_storm" not in adata.obsm
    assert "X_storm" not in adata.uns


def test_model_from_data_is_set_up_on_the_slides_deterministic_and_recorded():
    adata = real("visium_fixture")
    first = storm.tl.embed(adata, "from_data", n_panel_genes=200, copy=True)
    second = storm.tl.embed(adata, "from_data", n_panel_genes=200, copy=True)
    np.testing.assert_array_equal(first.obsm["X_storm_niche"], second.obsm["X_storm_niche"])
    params = first.uns["X_storm"]["params"]
    assert params["model"] == "from_data"
    assert params["mode"] == "expression"  # the fixture has an image, but the model is untrained
    coverage = params["gene_coverage"]
    assert coverage["n_model_genes"] == 200  # its genes are the data's own most variable ones
    assert coverage["n_used"] == 200
    assert "X_storm" not in adata.obsm  # copy=True


@pytest.mark.parametrize(
    ("model", "kwargs", "match"),
    [
        ("from_data", {"mode": "joint"}, "expression only"),
        ("from_data", {"panel": "data"}, "own genes"),
        ("storm-mini", {}, "from_pretrained"),
    ],
)
def test_a_bad_model_from_data_request_is_refused_and_nothing_is_written(model, kwargs, match):
    adata = real("visium_fixture")
    with pytest.raises(ValueError, match=match):
        storm.tl.embed(adata, model, **kwargs)
    assert "X_storm" not in adata.obsm
    assert "X_storm" not in adata.uns


def test_from_data_averages_initialisations_of_one_gene_list():
    from storm.models import from_data

    adata = real("visium_fixture")
    ensemble = from_data(adata, n_top_genes=100, n_models=2, random_state=3)
    first, second = ensemble.members
    assert first.genes == second.genes == ensemble.genes
    kwargs = {"mode": "expression", "niche": True}
    (c1, n1), (c2, n2) = (m.embed(adata, progress=False, **kwargs) for m in ensemble.members)
    assert not np.allclose(n1, n2)  # different random initialisations
    centre, niche = ensemble.embed(adata, **kwargs)
    np.testing.assert_allclose(niche, (n1 + n2) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(centre, (c1 + c2) / 2, rtol=1e-5, atol=1e-6)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="n_models"):
            from_data(adata, n_models=bad)


def test_from_data_scales_counts_to_the_median_total_on_request():
    from storm.models import from_data

    adata = real("visium_fixture")
    totals = np.asarray(adata.X.sum(axis=1)).ravel()
    ensemble = from_data(adata, n_top_genes=100, n_models=2, target_sum="median")
    expected = float(np.median(totals[totals > 0]))
    assert expected != 1e4
    assert [m.config.target_sum for m in ensemble.members] == [expected, expected]
    assert from_data(adata, n_top_genes=100, n_models=1).members[0].config.target_sum == 1e4
    for bad in ("mean", 0, -5.0, True, None):
        with pytest.raises(ValueError, match="target_sum"):
            from_data(adata, n_top_genes=100, n_models=1, target_sum=bad)
