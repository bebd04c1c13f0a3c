"""Slide-level clinical model: modules, Cox loss, cross-validation on planted bags, attributions, AnnData path."""

from __future__ import annotations

import math

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from storm.nn._slide_model import (
    AttentionPool,
    CrossModalFusion,
    PerceiverCompressor,
    SlideModelConfig,
    SlideRiskModel,
    cox_partial_likelihood_loss,
    integrated_gradients,
)
from storm.train._slide import BagDataset, _splits, collate_bags, fit_slide_model_cv

# Small enough to train 5 folds in seconds on one CPU thread; the defaults reach the same C-index, ~3× slower.
SMALL = SlideModelConfig(dim=32, n_latents=8, heads=2, latent_depth=0, fusion_depth=0, dropout=0.0, pool_hidden=16)


def _bags(n: int, dims: dict[str, int], seed: int = 0, low: int = 5, high: int = 20) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    bags = []
    for _ in range(n):
        k = int(rng.integers(low, high))
        bags.append({m: rng.normal(size=(k, d)).astype(np.float32) for m, d in dims.items()})
    return bags


def planted_cohort(n_patients: int = 120, d: int = 16, *, task: str = "survival", seed: int = 0, strength: float = 25):
    """Bags of 50–200 tiles whose outcome depends on the fraction of tiles shifted along a hidden direction.

    Every fifth patient has two slides (same fraction, same outcome), so patient-level folds are exercised. The
    log-hazard (or log-odds) is ``strength × (fraction - mean)``; fractions lie in [0, 0.5].
    """
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    fraction = rng.uniform(0, 0.5, n_patients)
    lp = strength * (fraction - fraction.mean())
    if task == "survival":
        t_event = rng.exponential(1.0, n_patients) * np.exp(-lp)
        t_censor = rng.exponential(2.0, n_patients)
        outcome = {"time": np.minimum(t_event, t_censor), "event": (t_event <= t_censor).astype(float)}
    else:
        outcome = {"response": (rng.random(n_patients) < 1 / (1 + np.exp(-lp))).astype(float)}
    bags, patients = [], []
    for p in range(n_patients):
        for _ in range(2 if p % 5 == 0 else 1):
            k = int(rng.integers(50, 201))
            x = rng.normal(size=(k, d)).astype(np.float32)
            x[rng.random(k) < fraction[p]] += 3.0 * u.astype(np.float32)
            bags.append({"image": x})
            patients.append(p)
    patients = np.asarray(patients)
    return bags, {k: v[patients] for k, v in outcome.items()}, patients, lp


# ---------------------------------------------------------------------------------------------------- modules
def test_config_validation_and_roundtrip():
    with pytest.raises(ValueError, match="divisible"):
        SlideModelConfig(image_dim=4, dim=30, heads=4)
    with pytest.raises(ValueError, match="image_dim"):
        SlideModelConfig(image_dim=0)
    with pytest.raises(ValueError, match="neither"):
        SlideRiskModel(SlideModelConfig())
    config = SlideModelConfig(image_dim=8, expression_dim=5, dim=16)
    assert SlideModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="Unknown"):
        SlideModelConfig.from_dict({**config.to_dict(), "bogus": 1})


def test_building_blocks_shapes():
    torch.manual_seed(0)
    tokens, mask = torch.randn(2, 30, 16), torch.ones(2, 30, dtype=torch.bool)
    mask[1, 10:] = False
    z, weights = PerceiverCompressor(16, n_latents=4, heads=2)(tokens, mask, need_weights=True)
    assert z.shape == (2, 4, 16)
    assert weights.shape == (2, 4, 30)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4))
    assert weights[1, :, 10:].abs().max() == 0
    fused = CrossModalFusion(16, heads=2)({"image": z, "expression": torch.randn(2, 4, 16)})
    assert fused["image"].shape == (2, 4, 16)
    assert CrossModalFusion(16, heads=2)({"image": z})["image"] is z  # one modality: nothing to fuse
    pooled, w = AttentionPool(16, 8)(z)
    assert pooled.shape == (2, 16)
    torch.testing.assert_close(w.sum(-1), torch.ones(2))


@pytest.mark.parametrize("dims", [{"image": 12, "expression": 7}, {"image": 12}, {"expression": 7}])
def test_model_shapes_per_modality(dims):
    torch.manual_seed(0)
    config = SlideModelConfig(**{f"{m}_dim": d for m, d in dims.items()}, dim=16, n_latents=4, heads=2)
    model = SlideRiskModel(config).eval()
    batch = collate_bags(
        [{"index": i, **{m: torch.as_tensor(x) for m, x in b.items()}} for i, b in enumerate(_bags(3, dims))]
    )
    inputs = {k: v for k, v in batch.items() if k != "index"}
    out = model(**inputs, return_attention=True)
    assert out.risk.shape == (3,)
    assert set(out.modality_risk) == set(dims)
    torch.testing.assert_close(sum(out.modality_risk.values()), out.risk)
    for m in dims:
        attention = out.tile_attention[m]
        assert attention.shape == batch[m].shape[:2]
        torch.testing.assert_close(attention.sum(-1), torch.ones(3))
        padded = ~batch[f"{m}_mask"]
        if padded.any():
            assert attention[padded].abs().max() == 0
    assert model(**inputs).tile_attention is None
    torch.testing.assert_close(model(**inputs).risk, out.risk)  # fused kernel and explicit weights agree


def test_model_rejects_bad_inputs():
    model = SlideRiskModel(SlideModelConfig(image_dim=6, dim=8, n_latents=2, heads=2))
    with pytest.raises(ValueError, match="at least one modality"):
        model()
    with pytest.raises(ValueError, match="no 'expression' branch"):
        model(expression=torch.randn(1, 3, 6))
    with pytest.raises(ValueError, match="shape"):
        model(image=torch.randn(1, 3, 5))
    with pytest.raises(ValueError, match="at least one real"):
        model(image=torch.randn(2, 3, 6), image_mask=torch.tensor([[True, False, False], [False, False, False]]))


def test_padded_tiles_do_not_change_risk():
    torch.manual_seed(0)
    dims = {"image": 10, "expression": 6}
    model = SlideRiskModel(SlideModelConfig(image_dim=10, expression_dim=6, dim=16, n_latents=4, heads=2)).eval()
    bags = _bags(4, dims, low=3, high=40)
    batch = collate_bags([{"index": i, **{m: torch.as_tensor(x) for m, x in b.items()}} for i, b in enumerate(bags)])
    inputs = {k: v for k, v in batch.items() if k != "index"}
    assert (~inputs["image_mask"]).any()
    with torch.no_grad():
        risk = model(**inputs).risk
        for m in dims:  # garbage (even NaN) in the padding must not leak into the risk
            inputs[m] = inputs[m].masked_fill(~inputs[f"{m}_mask"][..., None], float("nan"))
            inputs[m][~inputs[f"{m}_mask"]] = torch.randn(int((~inputs[f"{m}_mask"]).sum()), dims[m]) * 100
        torch.testing.assert_close(model(**inputs).risk, risk)
        alone = torch.cat([model(**{m: torch.as_tensor(b[m])[None] for m in dims}).risk for b in bags])
    torch.testing.assert_close(alone, risk, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------- Cox loss
def test_cox_loss_hand_computed_with_a_tie():
    # Patients (time, event, risk): A (2, 1, 0.5), B (1, 1, -1), C (3, 0, 0.2), D (2, 1, 1.0); A and D tie at t=2.
    # Breslow risk sets: B at t=1 -> {A, B, C, D}; A and D at t=2 -> {A, C, D} (tied patients stay in each other's).
    risk = torch.tensor([0.5, -1.0, 0.2, 1.0], dtype=torch.float64, requires_grad=True)
    time = torch.tensor([2.0, 1.0, 3.0, 2.0])
    event = torch.tensor([1, 1, 0, 1])
    log_s_acd = math.log(math.exp(0.5) + math.exp(0.2) + math.exp(1.0))
    log_s_all = math.log(math.exp(0.5) + math.exp(-1.0) + math.exp(0.2) + math.exp(1.0))
    log_lik = (0.5 - log_s_acd) + (-1.0 - log_s_all) + (1.0 - log_s_acd)
    loss = cox_partial_likelihood_loss(risk, time, event)
    assert loss.item() == pytest.approx(-log_lik / 3, rel=1e-12)
    assert cox_partial_likelihood_loss(risk, time, event, reduction="sum").item() == pytest.approx(-log_lik)
    loss.backward()
    assert torch.isfinite(risk.grad).all()
    # invariant to the order of patients
    perm = torch.tensor([3, 1, 0, 2])
    assert cox_partial_likelihood_loss(risk.detach()[perm], time[perm], event[perm]).item() == pytest.approx(
        loss.item()
    )


def test_cox_loss_matches_lifelines():
    from lifelines import CoxPHFitter

    rng = np.random.default_rng(0)
    n = 40
    x = rng.normal(size=n)
    t = rng.exponential(1.0, n) * np.exp(-0.8 * x)
    e = (rng.random(n) < 0.7).astype(int)
    fitter = CoxPHFitter().fit(pd.DataFrame({"x": x, "t": t, "e": e}), "t", "e")
    beta = float(fitter.params_["x"])
    # No tied times, so lifelines' Efron likelihood equals Breslow's; risk = beta * x (shift-invariant).
    loss = cox_partial_likelihood_loss(torch.tensor(beta * x), torch.tensor(t), torch.tensor(e))
    assert -loss.item() * e.sum() == pytest.approx(fitter.log_likelihood_, rel=1e-6)
    # lifelines' estimate maximises the likelihood: our loss is flat there
    b = torch.tensor(beta, dtype=torch.float64, requires_grad=True)
    cox_partial_likelihood_loss(b * torch.tensor(x), torch.tensor(t), torch.tensor(e)).backward()
    assert abs(b.grad.item()) < 1e-4


def test_cox_loss_edge_cases():
    risk = torch.tensor([800.0, -800.0, 0.0], requires_grad=True)
    loss = cox_partial_likelihood_loss(risk, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 1, 0]))
    assert torch.isfinite(loss)
    zero = cox_partial_likelihood_loss(risk, torch.tensor([1.0, 2.0, 3.0]), torch.zeros(3))
    assert zero.item() == 0
    zero.backward()  # still on the graph
    with pytest.raises(ValueError, match="one value per patient"):
        cox_partial_likelihood_loss(risk, torch.ones(2), torch.ones(3))


# ---------------------------------------------------------------------------------------------------- CV, planted data
def test_planted_survival_signal_is_recovered():
    bags, outcome, patients, _ = planted_cohort(task="survival")
    result = fit_slide_model_cv(
        bags,
        outcome["time"],
        outcome["event"],
        groups=patients,
        n_splits=5,
        config=SMALL,
        max_epochs=20,
        lr=3e-3,
        accelerator="cpu",
        seed=0,
    )
    assert result.metric == "c_index"
    assert result.oof_metric > 0.8, result.fold_metrics
    assert np.isfinite(result.risk).all()
    assert len(result.models) == 5
    # every patient's slides were held out together
    for p in np.unique(patients):
        assert len(set(result.fold[patients == p])) == 1


@pytest.mark.slow
def test_shuffled_outcome_gives_chance_c_index():
    # Negative control against leakage between folds: outcomes shuffled across patients carry no signal.
    bags, outcome, patients, _ = planted_cohort(task="survival")
    order = np.random.default_rng(5).permutation(patients.max() + 1)
    _, first = np.unique(patients, return_index=True)
    time, event = outcome["time"][first][order][patients], outcome["event"][first][order][patients]
    result = fit_slide_model_cv(
        bags, time, event, groups=patients, config=SMALL, max_epochs=20, lr=3e-3, accelerator="cpu", seed=0
    )
    assert abs(result.oof_metric - 0.5) < 0.12


def test_planted_response_signal_is_recovered():
    bags, outcome, patients, _ = planted_cohort(task="response", seed=1)
    result = fit_slide_model_cv(
        bags,
        response=outcome["response"],
        groups=patients,
        n_splits=5,
        config=SMALL,
        max_epochs=20,
        lr=3e-3,
        accelerator="cpu",
        seed=0,
    )
    assert result.metric == "auc"
    assert result.oof_metric > 0.8, result.fold_metrics


def test_folds_are_patient_level_and_stratified():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(30), rng.integers(1, 4, 30))
    event = (groups % 3 == 0).astype(float)
    folds = _splits("survival", groups, event, 5, seed=0)
    assert sorted(np.concatenate([test for _, test in folds]).tolist()) == list(range(len(groups)))
    for train, test in folds:
        assert not set(groups[train]) & set(groups[test])
        assert event[test].any()


def test_few_events_fall_back_to_unstratified_folds():
    bags = _bags(8, {"image": 4})
    event = np.r_[1.0, np.zeros(7)]
    result = fit_slide_model_cv(
        bags, np.arange(1.0, 9.0), event, n_splits=2, config=SMALL, max_epochs=1, accelerator="cpu"
    )
    assert sorted(np.bincount(result.fold).tolist()) == [4, 4]
    assert np.isnan(result.fold_metrics).sum() == 1  # the fold without an event has no C-index


def test_tile_dropout_and_max_tiles():
    from storm.train._slide import SlideRiskModule

    module = SlideRiskModule(SlideModelConfig(image_dim=4, dim=8, n_latents=2, heads=2), tile_dropout=0.9)
    mask = torch.zeros(50, 6, dtype=torch.bool)
    mask[:, :2] = True
    dropped = module._drop_tiles({"image": torch.randn(50, 6, 4), "image_mask": mask})["image_mask"]
    assert dropped.any(dim=1).all()  # never an empty bag
    assert not (dropped & ~mask).any()  # never a padded tile
    assert len(BagDataset(_bags(1, {"image": 4}, low=30, high=31), max_tiles=7)[0]["image"]) == 7
    bags = _bags(8, {"image": 4}, low=20, high=40)
    result = fit_slide_model_cv(
        bags,
        np.arange(1.0, 9.0),
        np.ones(8),
        n_splits=2,
        config=SMALL,
        max_epochs=2,
        batch_size=4,
        tile_dropout=0.5,
        max_tiles=10,
        accelerator="cpu",
    )
    assert np.isfinite(result.risk).all()


def test_large_bag_cost_is_linear_in_tiles():
    model = SlideRiskModel(SlideModelConfig(image_dim=32, dim=16, n_latents=4, heads=2)).eval()
    with torch.no_grad():
        out = model(image=torch.randn(1, 20_000, 32), return_attention=True)
    # the largest attention matrix is latents × tiles, never tiles × tiles
    assert out.tile_attention["image"].shape == (1, 20_000)
    assert torch.isfinite(out.risk).all()


def test_cv_is_deterministic_and_leaves_global_rng_alone():
    bags = _bags(12, {"image": 4}, seed=3)
    time = np.arange(1.0, 13.0)
    event = np.tile([1.0, 0.0, 1.0], 4)
    config = SlideModelConfig(dim=8, n_latents=2, heads=2, latent_depth=0, fusion_depth=0)
    state = torch.get_rng_state()
    runs = [
        fit_slide_model_cv(
            bags, time, event, n_splits=2, config=config, max_epochs=2, batch_size=4, accelerator="cpu", seed=7
        )
        for _ in range(2)
    ]
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(runs[0].risk, runs[1].risk)
    np.testing.assert_array_equal(runs[0].fold, runs[1].fold)
    other = fit_slide_model_cv(
        bags, time, event, n_splits=2, config=config, max_epochs=2, batch_size=4, accelerator="cpu", seed=8
    )
    assert not np.array_equal(other.risk, runs[0].risk)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"time": np.ones(8), "event": np.zeros(8)}, "No events"),
        ({"response": np.ones(8)}, "both classes"),
        ({"response": np.tile([0.0, 1.0], 4), "n_splits": 5}, "every one of the 5 test folds"),
        ({"time": np.ones(8), "event": np.ones(8), "n_splits": 9}, "too few for 9-fold"),
        ({"time": np.ones(7), "event": np.ones(8)}, "7 values for 8 bags"),
        ({"time": np.ones(8), "event": np.ones(8), "groups": np.arange(7)}, "one patient id per bag"),
        ({"time": np.ones(8), "event": np.ones(8), "response": np.ones(8)}, "not both"),
        ({"time": np.ones(8)}, "Pass time and event"),
        ({"response": np.arange(8.0)}, "0/1"),
        ({"time": -np.ones(8), "event": np.ones(8)}, "negative"),
        ({"time": np.r_[np.nan, np.ones(7)], "event": np.ones(8)}, "missing"),
        ({"time": np.arange(8.0), "event": np.ones(8), "groups": np.repeat(np.arange(4), 2)}, "different time"),
        ({"time": np.ones(8), "event": np.ones(8), "config": SlideModelConfig(image_dim=5)}, "width 5"),
    ],
)
def test_cv_bad_input(kwargs, match):
    bags = _bags(8, {"image": 4})
    with pytest.raises(ValueError, match=match):
        fit_slide_model_cv(bags, n_splits=kwargs.pop("n_splits", 2), max_epochs=1, accelerator="cpu", **kwargs)


def test_bags_bad_input():
    with pytest.raises(ValueError, match="non-empty list"):
        BagDataset([])
    with pytest.raises(ValueError, match="same modalities"):
        BagDataset([{"image": np.ones((3, 4))}, {"expression": np.ones((3, 4))}])
    with pytest.raises(ValueError, match="no image tiles"):
        BagDataset([{"image": np.ones((0, 4))}])
    with pytest.raises(ValueError, match="NaN"):
        BagDataset([{"image": np.full((2, 4), np.nan)}])


# ---------------------------------------------------------------------------------------------------- attributions
@pytest.mark.parametrize("baseline", ["zero", "mean"])
def test_integrated_gradients_completeness(baseline):
    torch.manual_seed(0)
    model = SlideRiskModel(SlideModelConfig(image_dim=10, expression_dim=6, dim=16, n_latents=4, heads=2))
    for m, d in (("image", 10), ("expression", 6)):  # non-trivial standardisation, as after training
        model.set_feature_stats(m, torch.randn(d) * 0.1, torch.rand(d) + 0.5)
    model.train()  # must be switched to eval (no dropout) inside and restored after
    bag = {
        m: torch.as_tensor(x) for m, x in _bags(1, {"image": 10, "expression": 6}, seed=1, low=20, high=21)[0].items()
    }
    ig = integrated_gradients(model, bag, baseline=baseline, n_steps=64)
    assert model.training
    total = sum(a.sum() for a in ig.attributions.values()).item()
    assert ig.attributions["image"].shape == (20, 10)
    assert total == pytest.approx(ig.risk - ig.baseline_risk, abs=1e-3 + 1e-2 * abs(ig.risk - ig.baseline_risk))
    with torch.no_grad():
        model.eval()
        assert ig.risk == pytest.approx(model(**{m: v[None] for m, v in bag.items()}).risk.item(), abs=1e-5)


# ---------------------------------------------------------------------------------------------------- AnnData path
def _tiles(n: int, seed: int, library_id: str, *, image: bool = True) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n)))
    grid = np.stack(np.meshgrid(np.arange(side), np.arange(side)), -1).reshape(-1, 2)[:n] * 100.0 + 50.0
    adata = ad.AnnData(obs=pd.DataFrame(index=[f"{library_id}_t{i}" for i in range(n)]))
    adata.obsm["X_storm"] = rng.normal(size=(n, 8)).astype(np.float32)
    adata.obsm["spatial"] = grid
    if image:
        adata.uns["spatial"] = {
            library_id: {
                "images": {"hires": rng.random((side * 10, side * 10, 3)).astype(np.float32)},
                "scalefactors": {"tissue_hires_scalef": 0.1, "spot_diameter_fullres": 100.0},
            }
        }
    return adata


def test_end_to_end_tiles_to_risk_map():
    import matplotlib.pyplot as plt

    from storm.pl._risk_map import risk_map
    from storm.tl._slide import predict_slide_risk, slide_features, tile_attributions

    tiles = [_tiles(30, 0, "s1"), _tiles(45, 1, "s2", image=False)]
    bags = slide_features(tiles)  # no X_virtual_st: image-only bags
    assert [b["slide_id"] for b in bags] == ["s1", "slide_1"]
    assert bags[0]["image"].shape == (30, 8)
    assert "expression" not in bags[0]
    assert bags[1]["coords"].shape == (45, 2)
    torch.manual_seed(0)
    model = SlideRiskModel(SlideModelConfig(image_dim=8, dim=16, n_latents=4, heads=2))
    pred = predict_slide_risk(model, bags, accelerator="cpu")
    assert pred.risk.shape == (2,)
    assert np.isfinite(pred.risk).all()
    assert pred.attention[1]["image"].shape == (45,)
    assert pred.attention[0]["image"].sum() == pytest.approx(1.0, abs=1e-5)

    attention = tile_attributions(model, bags[0])
    np.testing.assert_allclose(attention, pred.attention[0]["image"], rtol=1e-5)
    ig = tile_attributions(model, bags[0], method="integrated_gradients", n_steps=32)
    with torch.no_grad():
        model.eval()
        x = torch.as_tensor(bags[0]["image"])[None]
        delta = (model(image=x).risk - model(image=torch.zeros_like(x)).risk).item()
    assert ig.shape == (30,)
    assert ig.sum() == pytest.approx(delta, abs=1e-3 + 1e-2 * abs(delta))

    ax = risk_map(tiles[0], ig)
    assert len(ax.images) == 1  # drawn over the H&E
    assert ax.collections[0].norm.vcenter == 0  # signed values: diverging map centred at 0
    ax2 = risk_map(tiles[1], pred.attention[1]["image"], colorbar=False)
    assert len(ax2.images) == 0
    with pytest.raises(ValueError, match="45 tiles"):
        risk_map(tiles[1], np.ones(3))
    plt.close("all")


def test_fit_slide_model_from_a_clinical_table():
    from storm.tl._slide import fit_slide_model, predict_slide_risk, slide_features

    one = ad.concat(
        [_tiles(12, i, f"s{i}", image=False) for i in range(10)], label="library_id", keys=[f"s{i}" for i in range(10)]
    )
    one.obs_names_make_unique()
    bags = slide_features(one)
    assert [b["slide_id"] for b in bags] == [f"s{i}" for i in range(10)]
    clinical = pd.DataFrame(
        {
            "os": np.repeat(np.arange(1.0, 6.0), 2),  # two slides per patient, one outcome per patient
            "dead": np.repeat([1, 0, 1, 0, 1], 2),
            "patient": [f"p{i // 2}" for i in range(10)],
            "response": np.repeat(["R", "NR", "R", "NR", "R"], 2),
        },
        index=[f"s{i}" for i in range(10)],
    ).iloc[::-1]  # row order differs from the bags': matched by slide id
    clinical.loc["s0", "os"] = np.nan  # dropped, logged
    result = fit_slide_model(
        bags,
        clinical,
        time_key="os",
        event_key="dead",
        patient_key="patient",
        n_splits=2,
        max_epochs=1,
        config=SlideModelConfig(dim=8, n_latents=2, heads=2),
        accelerator="cpu",
    )
    assert result.ids == [f"s{i}" for i in range(1, 10)]
    assert result.config.image_dim == 8
    assert set(result.groups) == {f"p{i}" for i in range(5)}
    responders = fit_slide_model(
        bags,
        clinical,
        response_key="response",
        positive="R",
        n_splits=2,
        max_epochs=1,
        config=SlideModelConfig(dim=8, n_latents=2, heads=2),
        accelerator="cpu",
    )
    assert responders.metric == "auc"
    assert predict_slide_risk(result, bags[:3], accelerator="cpu").risk.shape == (3,)
    with pytest.raises(ValueError, match="positive="):
        fit_slide_model(bags, clinical, response_key="response", n_splits=2, accelerator="cpu")
    with pytest.raises(ValueError, match="not in the clinical table"):
        fit_slide_model(bags, clinical.iloc[1:], time_key="os", event_key="dead", accelerator="cpu")
    with pytest.raises(ValueError, match="not both or neither"):
        fit_slide_model(bags, clinical, time_key="os", event_key="dead", response_key="response")


def test_slide_features_bad_input():
    from storm.tl._slide import slide_features

    a, b = _tiles(5, 0, "s1"), _tiles(5, 1, "s1")
    with pytest.raises(ValueError, match="share the id"):
        slide_features([a, b])
    assert [bag["slide_id"] for bag in slide_features({"x": a, "y": b})] == ["x", "y"]
    b.obsm["X_virtual_st"] = np.ones((5, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="missing from slide"):
        slide_features({"x": a, "y": b})
    assert "expression" in slide_features({"x": b})[0]
    with pytest.raises(ValueError, match="No tile features"):
        slide_features(a, image_key=None)
    a.obsm["X_storm"][0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        slide_features(a)
    with pytest.raises(ValueError, match="AnnData"):
        slide_features([np.ones(3)])


def test_slide_features_expression_from_x_and_layers():
    from storm.tl._slide import slide_features

    def virtual(seed: int, library_id: str, genes: list[str]) -> ad.AnnData:
        image = _tiles(6, seed, library_id, image=False)
        x = np.random.default_rng(seed).random((6, len(genes))).astype(np.float32)
        tiles = ad.AnnData(X=x, obs=image.obs, var=pd.DataFrame(index=genes), obsm=dict(image.obsm))
        tiles.uns["virtual_st"] = {"params": {}}  # what storm.tl.virtual_st marks its tiles with
        return tiles

    a, b = virtual(0, "s1", ["g1", "g2", "g3"]), virtual(1, "s2", ["g1", "g2", "g3"])
    bags = slide_features({"a": a, "b": b})  # default 'X_virtual_st': virtual_st's X
    np.testing.assert_array_equal(bags[1]["expression"], b.X)
    assert bags[0]["image"].shape == (6, 8)
    plain = a.copy()
    del plain.uns["virtual_st"]  # e.g. lost in a concatenation: X is not read unless asked for
    assert "expression" not in slide_features(plain)[0]
    assert "expression" in slide_features(plain, expression_key="X")[0]
    b.layers["smooth"] = b.X * 2
    a.layers["smooth"] = a.X * 2
    np.testing.assert_array_equal(slide_features({"a": a, "b": b}, expression_key="smooth")[1]["expression"], b.X * 2)
    with pytest.raises(ValueError, match="other genes"):
        slide_features({"a": a, "b": b[:, ["g2", "g1", "g3"]]})
    with pytest.raises(ValueError, match="different widths"):
        slide_features({"a": a, "b": b[:, :2]})
    b.obsm["X_storm"] = b.obsm["X_storm"][:, :4]
    with pytest.raises(ValueError, match="different widths"):
        slide_features({"a": a, "b": b}, expression_key=None)
    no_x = _tiles(4, 2, "s3")  # tiles without genes: 'X' absent, not an error
    assert "expression" not in slide_features(no_x, expression_key="X")[0]
