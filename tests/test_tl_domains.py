"""storm.tl.domains: K-means / GMM / Leiden on an embedding, one labelling over slides, errors leave adata as it was."""

from __future__ import annotations

import copy
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import storm
from storm.metrics import ari

SIZES = (60, 45, 30, 20, 10)


def blobs(sizes=SIZES, dims=8, seed=0, spread=8.0, libraries=("A",)):
    """Separated Gaussian blobs in ``obsm["X_storm_niche"]`` (the default ``use_rep``), split by ``libraries``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dims)) * spread
    truth = np.repeat(np.arange(len(sizes)), sizes)
    truth = truth[rng.permutation(len(truth))]
    emb = centres[truth] + rng.normal(size=(len(truth), dims))
    lib = pd.Categorical(np.resize(np.asarray(libraries), len(truth)), categories=list(libraries))
    obs = pd.DataFrame({"truth": truth, "library_id": lib}, index=[f"s{i}" for i in range(len(truth))])
    # each blob a patch of tissue of its own (a unit grid, patches 1000 apart): smoothing never mixes two blobs
    xy = np.zeros((len(truth), 2))
    for k in range(len(sizes)):
        rows = np.flatnonzero(truth == k)
        xy[rows] = np.stack([np.arange(len(rows)) % 8, np.arange(len(rows)) // 8], axis=1) + np.array([1000.0 * k, 0.0])
    return ad.AnnData(obs=obs, obsm={"X_storm_niche": emb, "spatial": xy})


def snapshot(adata):
    return (
        adata.obs.copy(),
        {k: np.array(v, copy=True) for k, v in adata.obsm.items()},
        copy.deepcopy(dict(adata.uns)),
        sorted(adata.obsp),
    )


def assert_unchanged(adata, before):
    obs, obsm, uns, obsp = before
    pd.testing.assert_frame_equal(adata.obs, obs)
    assert sorted(adata.obsm) == sorted(obsm)
    for k, v in obsm.items():
        np.testing.assert_array_equal(np.asarray(adata.obsm[k]), v)
    assert sorted(adata.uns) == sorted(uns)
    np.testing.assert_equal(dict(adata.uns), uns)  # values too: a previous result is not overwritten
    assert sorted(adata.obsp) == obsp


def test_the_default_finds_the_blobs_and_writes_the_documented_keys():
    adata = blobs()
    assert storm.tl.domains(adata, 5) is None
    labels = adata.obs["storm_domains"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert list(labels.cat.categories) == ["0", "1", "2", "3", "4"]
    assert ari(adata.obs["truth"], labels) == pytest.approx(1.0)
    # "0" is the largest domain, then by decreasing size
    assert labels.value_counts().reindex(labels.cat.categories).tolist() == list(SIZES)
    colors = adata.uns["storm_domains_colors"]
    assert len(colors) == 5
    assert all(re.fullmatch(r"#[0-9a-fA-F]{6}", c) for c in colors)
    params = adata.uns["storm_domains"]["params"]
    assert params["method"] == "gmm"
    assert params["covariance_type"] == "tied"
    assert params["n_domains"] == 5
    assert params["use_rep"] == "X_storm_niche"
    assert params["n_pcs"] == 20
    assert params["random_state"] == 0
    assert params["library_key"] == "library_id"
    assert sorted(adata.obsp) == []  # no neighbors graph left behind


@pytest.mark.parametrize("method", ["kmeans", "gmm"])
def test_deterministic_for_a_seed(method):
    adata = blobs(spread=1.5)  # overlapping blobs: a seed-dependent answer would show
    first = storm.tl.domains(adata, 4, method=method, copy=True)
    second = storm.tl.domains(adata, 4, method=method, copy=True)
    pd.testing.assert_series_equal(first.obs["storm_domains"], second.obs["storm_domains"])
    assert "storm_domains" not in adata.obs  # copy=True leaves the input alone


@pytest.mark.parametrize("method", ["kmeans", "gmm"])
def test_method_variants_recover_blobs(method):
    adata = blobs()
    storm.tl.domains(adata, 5, method=method, key_added="dom")
    assert ari(adata.obs["truth"], adata.obs["dom"]) == pytest.approx(1.0)
    assert adata.uns["dom"]["params"]["method"] == method
    assert len(adata.uns["dom_colors"]) == 5


def test_two_slides_in_one_anndata_share_one_labelling():
    # the same tissue twice (a copy with small noise), as two slides of one AnnData: one clustering over all rows
    one = blobs()
    two = one.copy()
    noise = np.random.default_rng(1).normal(scale=0.05, size=two.obsm["X_storm_niche"].shape)
    two.obsm["X_storm_niche"] = two.obsm["X_storm_niche"] + noise
    one.obs["library_id"] = pd.Categorical(["A"] * one.n_obs, categories=["A", "B"])
    two.obs["library_id"] = pd.Categorical(["B"] * two.n_obs, categories=["A", "B"])
    both = ad.concat([one, two], index_unique="-")
    storm.tl.domains(both, 5)
    a = both.obs.loc[both.obs["library_id"] == "A", "storm_domains"].to_numpy()
    b = both.obs.loc[both.obs["library_id"] == "B", "storm_domains"].to_numpy()
    np.testing.assert_array_equal(a, b)  # the same spot gets the same domain name on both slides


def test_a_list_is_clustered_together_like_its_concatenation():
    one, two = blobs(seed=0), blobs(seed=0)
    two.obsm["X_storm_niche"] = two.obsm["X_storm_niche"][::-1].copy()  # other row order, same points
    storm.tl.domains([one, two], 5)
    assert list(one.obs["storm_domains"].cat.categories) == list(two.obs["storm_domains"].cat.categories)
    assert one.uns["storm_domains_colors"] == two.uns["storm_domains_colors"]
    np.testing.assert_array_equal(one.obs["storm_domains"].to_numpy(), two.obs["storm_domains"].to_numpy()[::-1])
    joined = ad.concat([one, two], index_unique="-")
    del joined.obs["storm_domains"]
    storm.tl.domains(joined, 5)
    np.testing.assert_array_equal(
        joined.obs["storm_domains"].to_numpy(),
        np.concatenate([one.obs["storm_domains"].to_numpy(), two.obs["storm_domains"].to_numpy()]),
    )


def test_copy_of_a_list_returns_copies():
    one, two = blobs(seed=0), blobs(seed=2)
    out = storm.tl.domains([one, two], 3, copy=True)
    assert isinstance(out, list)
    assert len(out) == 2
    assert all("storm_domains" in a.obs for a in out)
    assert "storm_domains" not in one.obs
    assert "storm_domains" not in two.obs


def _with_nan(adata):
    adata.obsm["X_storm_niche"][3, 1] = np.nan
    return adata


def _with_inf(adata):
    adata.obsm["X_storm_niche"][0, 0] = np.inf
    return adata


def _with_two_patients(adata):
    adata.obs["patient"] = pd.Series(np.resize(["p1", "p2"], adata.n_obs), index=adata.obs_names).astype(object)
    return adata


def _with_missing_batch(adata):
    _with_two_patients(adata).obs.iloc[0, adata.obs.columns.get_loc("patient")] = None
    return adata


@pytest.mark.parametrize(
    ("prepare", "kwargs", "match"),
    [
        (
            lambda a: a,
            {"use_rep": "X_missing", "n_domains": 3},
            r"obsm\['X_missing'\].*'X_storm_niche'.*storm.tl.embed",
        ),
        (lambda a: a, {"n_domains": 10_000}, r"larger than the number of spots \(165\): ask for at most 165"),
        (lambda a: a, {"n_domains": 1}, "at least 2"),
        (lambda a: a, {"n_domains": 2.5}, "must be an integer"),
        (lambda a: a, {}, "needs `n_domains`"),
        (lambda a: a, {"n_domains": 3, "method": "gmm", "resolution": 1.0}, "Leiden parameter"),
        (lambda a: a, {"n_domains": 3, "method": "louvain"}, "`method` must be one of"),
        (lambda a: a, {"n_domains": 3, "n_pcs": 0}, "`n_pcs` must be a positive integer"),
        (lambda a: a, {"n_domains": 3, "key_added": ""}, "key_added"),
        (_with_nan, {"n_domains": 3}, "NaN or infinite.*'s3'"),
        (_with_inf, {"n_domains": 3}, "NaN or infinite"),
        (lambda a: a, {"n_domains": 3, "batch_key": "patient"}, r"'patient' is not a column of `adata.obs`"),
        (lambda a: a, {"n_domains": 3, "batch_key": "library_id"}, r"one value \('A'\).*no batch effect"),
        (_with_missing_batch, {"n_domains": 3, "batch_key": "patient"}, "1 missing value"),
        (lambda a: a, {"n_domains": 3, "harmony_kwargs": {"sigma": 1.0}}, "give `batch_key` too"),
        (
            _with_two_patients,
            {"n_domains": 3, "batch_key": "patient", "harmony_kwargs": {"random_state": 1}},
            r"may not set \['random_state'\]",
        ),
        (_with_two_patients, {"n_domains": 3, "batch_key": "patient", "harmony_kwargs": 1.0}, "must be a dict"),
    ],
)
def test_bad_input_raises_and_leaves_adata_unchanged(prepare, kwargs, match):
    adata = blobs()
    storm.tl.domains(adata, 2, key_added="old")  # a previous result must survive a failed call
    adata = prepare(adata)
    before = snapshot(adata)
    n = kwargs.pop("n_domains", None)
    with pytest.raises(ValueError, match=match):
        storm.tl.domains(adata, n, **kwargs)
    assert_unchanged(adata, before)


def test_a_section_with_fewer_spots_than_domains_is_refused_but_can_join_a_list():
    small = blobs(sizes=(2, 2))
    before = snapshot(small)
    with pytest.raises(ValueError, match=r"`n_domains`=5 is larger than the number of spots \(4\).*together"):
        storm.tl.domains(small, 5)
    assert_unchanged(small, before)
    storm.tl.domains([small, blobs()], 5)  # clustered with a larger section, it gets the shared domains
    assert set(small.obs["storm_domains"]) <= {"0", "1", "2", "3", "4"}


def test_a_bad_element_of_a_list_leaves_every_element_unchanged():
    good, bad = blobs(seed=0), _with_nan(blobs(seed=1))
    before = snapshot(good)
    with pytest.raises(ValueError, match="NaN"):
        storm.tl.domains([good, bad], 3)
    assert_unchanged(good, before)


def test_embeddings_of_different_widths_cannot_be_clustered_together():
    with pytest.raises(ValueError, match="different widths"):
        storm.tl.domains([blobs(dims=8), blobs(dims=4)], 3)


@pytest.mark.slow  # the first kNN graph of a process compiles numba code (~10 s)
def test_kmeans_on_the_centre_embedding_is_the_papers_protocol():
    adata = blobs()
    adata.obsm["X_storm"] = adata.obsm.pop("X_storm_niche")
    storm.tl.domains(adata, 5, use_rep="X_storm", method="kmeans", n_pcs=None)
    assert ari(adata.obs["truth"], adata.obs["storm_domains"]) == pytest.approx(1.0)
    params = adata.uns["storm_domains"]["params"]
    assert (params["method"], params["use_rep"], params["n_init"]) == ("kmeans", "X_storm", 10)
    assert "n_pcs" not in params  # None is not stored


def test_reduce_rep_standardises_then_keeps_the_leading_components():
    from storm._gmm import reduce_rep

    rng = np.random.default_rng(0)
    rep = rng.normal(size=(200, 6)) * np.array([100.0, 1, 1, 1, 1, 0.01])
    full = reduce_rep(rep, None, 0)
    np.testing.assert_allclose(full.std(axis=0), 1.0)  # one huge dimension no longer dominates
    np.testing.assert_allclose(full.mean(axis=0), 0.0, atol=1e-12)
    assert reduce_rep(rep, 3, 0).shape == (200, 3)
    assert reduce_rep(rep, 50, 0).shape == (200, 6)  # more components than dimensions: all kept


def test_leiden_resolution_search_hits_the_asked_number():
    pytest.importorskip("igraph")
    adata = blobs(sizes=(80, 70, 60, 50, 40, 30), spread=6.0)
    storm.tl.domains(adata, 6, method="leiden")
    params = adata.uns["storm_domains"]["params"]
    assert params["n_domains"] == 6
    assert params["n_domains_requested"] == 6
    assert params["resolution"] > 0
    assert ari(adata.obs["truth"], adata.obs["storm_domains"]) > 0.95
    again = storm.tl.domains(adata, 6, method="leiden", copy=True)
    pd.testing.assert_series_equal(adata.obs["storm_domains"], again.obs["storm_domains"])  # deterministic
    # without n_domains: Leiden at resolution 1.0, whatever number of domains it finds
    storm.tl.domains(adata, method="leiden", key_added="free")
    assert adata.uns["free"]["params"]["resolution"] == 1.0
    assert "n_domains_requested" not in adata.uns["free"]["params"]
    assert sorted(adata.obsp) == []


@pytest.mark.slow
def test_leiden_reports_what_it_reached_when_the_number_is_impossible():
    pytest.importorskip("igraph")
    adata = blobs(spread=50.0)  # 5 far-apart blobs: the kNN graph falls apart in 5 pieces
    storm.tl.domains(adata, 2, method="leiden")
    assert adata.uns["storm_domains"]["params"]["n_domains"] >= 5


def test_gmm_retries_with_more_regularisation_when_a_fit_fails(monkeypatch):
    from sklearn.mixture import GaussianMixture

    seen = []
    original = GaussianMixture.fit

    def flaky_fit(self, X, y=None):
        seen.append(self.reg_covar)
        if len(seen) == 1:
            raise ValueError(
                "Fitting the mixture model failed because some components have ill-defined empirical covariance"
            )
        return original(self, X, y)

    monkeypatch.setattr(GaussianMixture, "fit", flaky_fit)
    adata = blobs()
    storm.tl.domains(adata, 5, method="gmm")
    assert seen == pytest.approx([1e-6, 1e-4])
    assert ari(adata.obs["truth"], adata.obs["storm_domains"]) == pytest.approx(1.0)


def test_gmm_unknown_covariance_type_is_refused_without_retries(caplog):
    adata = blobs()
    before = snapshot(adata)
    with caplog.at_level("WARNING", logger="storm"), pytest.raises(ValueError, match="`covariance_type` must be one"):
        storm.tl.domains(adata, 5, method="gmm", covariance_type="foo")
    assert "retrying" not in caplog.text
    assert_unchanged(adata, before)


def shifted_slides(seed, *, dims=8, spread=5.0, shift=4.0, local=0.5, sizes=SIZES):
    """Two slides of the same domains in other proportions, the second moved by a patient effect.

    The effect is a shift common to all domains, ``shift`` times the distance between the two closest domain
    centres, plus a part of its own per domain (``local`` times that distance), as between patients; the noise
    of each spot is drawn anew on each slide.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dims)) * spread
    nearest = min(np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1 :])

    def unit(v):
        return v / np.linalg.norm(v, axis=-1, keepdims=True)

    effect = nearest * (shift * unit(rng.normal(size=dims)) + local * unit(rng.normal(size=(len(sizes), dims))))
    slides = []
    for i, counts in enumerate((sizes, sizes[::-1])):
        truth = rng.permutation(np.repeat(np.arange(len(sizes)), counts))
        emb = centres[truth] + rng.normal(size=(len(truth), dims)) + i * effect[truth]
        obs = pd.DataFrame({"truth": truth, "patient": f"p{i}"}, index=[f"s{i}_{j}" for j in range(len(truth))])
        slides.append(ad.AnnData(obs=obs, obsm={"X_storm_niche": emb}))
    return slides


def majority_domain(adata, key):
    """The domain most spots of each true domain get on this slide."""
    return adata.obs.groupby("truth", observed=True)[key].agg(lambda d: d.value_counts().index[0]).to_numpy()


def pooled_ari(slides, key):
    return ari(np.concatenate([a.obs["truth"] for a in slides]), np.concatenate([a.obs[key] for a in slides]))


@pytest.mark.parametrize("seed", [0, 1])
def test_batch_key_recovers_one_label_set_across_a_batch_shift(seed):
    """Without correction the patient effect splits domains by slide; with Harmony, one label set on both."""
    slides = shifted_slides(seed)
    storm.tl.domains(slides, 5, key_added="raw")
    storm.tl.domains(slides, 5, batch_key="patient")
    one, two = slides

    # uncorrected: most domains get another name on the second slide, and the labels do not match the tissue
    assert np.mean(majority_domain(one, "raw") == majority_domain(two, "raw")) <= 0.2
    assert pooled_ari(slides, "raw") < 0.6
    # corrected: each slide's domains are right and every domain has the same name on both slides
    assert min(ari(a.obs["truth"], a.obs["storm_domains"]) for a in slides) > 0.95
    np.testing.assert_array_equal(majority_domain(one, "storm_domains"), majority_domain(two, "storm_domains"))
    assert pooled_ari(slides, "storm_domains") > 0.95

    params = one.uns["storm_domains"]["params"]
    assert params["batch_key"] == "patient"
    assert params["batch_correction"] == "harmony"
    assert params["n_batches"] == 2
    assert params["harmony"] == {"sigma": 1.0}
    assert two.uns["storm_domains"]["params"] == params
    assert not {"batch_key", "batch_correction", "n_batches", "harmony"} & set(one.uns["raw"]["params"])


def test_harmonypys_narrow_default_kernel_leaves_a_large_patient_effect_uncorrected():
    """Why storm widens Harmony's kernel: with harmonypy's sigma=0.1 each soft cluster holds one slide."""
    slides = shifted_slides(0)
    storm.tl.domains(slides, 5, key_added="raw")
    storm.tl.domains(slides, 5, batch_key="patient", harmony_kwargs={"sigma": 0.1}, key_added="narrow")
    assert slides[0].uns["narrow"]["params"]["harmony"] == {"sigma": 0.1}
    assert pooled_ari(slides, "narrow") < 0.6
    assert pooled_ari(slides, "narrow") == pytest.approx(pooled_ari(slides, "raw"), abs=0.05)


def test_batch_correction_is_deterministic_for_a_seed():
    first = storm.tl.domains(shifted_slides(0), 5, batch_key="patient", copy=True)
    second = storm.tl.domains(shifted_slides(0), 5, batch_key="patient", copy=True)
    for a, b in zip(first, second, strict=True):
        pd.testing.assert_series_equal(a.obs["storm_domains"], b.obs["storm_domains"])


def test_a_batch_key_missing_from_one_element_of_a_list_leaves_both_unchanged():
    one, two = blobs(seed=0), blobs(seed=1)
    one.obs["patient"] = "p1"
    before = snapshot(one), snapshot(two)
    with pytest.raises(ValueError, match=r"AnnData at position\(s\) \[1\]"):
        storm.tl.domains([one, two], 3, batch_key="patient")
    assert_unchanged(one, before[0])
    assert_unchanged(two, before[1])


def two_halves(side=24, noise=1.2, seed=0):
    """A square grid whose left and right halves are two domains, their embeddings buried in spot-level noise."""
    rng = np.random.default_rng(seed)
    xy = np.stack(np.meshgrid(np.arange(side), np.arange(side)), axis=-1).reshape(-1, 2).astype(float) * 100.0
    truth = (xy[:, 0] >= side * 50).astype(int)
    emb = truth[:, None] * np.ones(4) + rng.normal(scale=noise, size=(len(truth), 4))
    obs = pd.DataFrame({"truth": truth, "library_id": "A"}, index=[f"s{i}" for i in range(len(truth))])
    return ad.AnnData(obs=obs, obsm={"X_storm_niche": emb, "spatial": xy})


def test_spatial_smoothing_recovers_domains_buried_in_spot_noise():
    adata = two_halves()
    raw = storm.tl.domains(adata, 2, smooth=0, copy=True)
    smoothed = storm.tl.domains(adata, 2, smooth=1.5, copy=True)
    assert ari(adata.obs["truth"], raw.obs["storm_domains"]) < 0.5
    assert ari(adata.obs["truth"], smoothed.obs["storm_domains"]) > 0.9
    params = smoothed.uns["storm_domains"]["params"]
    assert params["smooth"] == 1.5
    assert params["spot_pitch"] == [100.0]  # the grid's pitch, in obsm['spatial'] units
    assert raw.uns["storm_domains"]["params"]["smooth"] == 0.0
    assert "spot_pitch" not in raw.uns["storm_domains"]["params"]


def test_smoothing_stays_within_each_slide():
    from storm._smoothing import slide_groups, smooth_spatially

    one, other = two_halves(seed=0), two_halves(seed=1)
    other.obs["library_id"] = "B"  # the same coordinates: side by side in one frame, but two slides
    both = ad.concat([one, other], index_unique="-")
    groups = slide_groups([both], "library_id")
    assert [len(g) for g in groups] == [one.n_obs, other.n_obs]
    together, _ = smooth_spatially(both.obsm["X_storm_niche"], both.obsm["spatial"], groups, 1.5)
    alone, _ = smooth_spatially(one.obsm["X_storm_niche"], one.obsm["spatial"], [np.arange(one.n_obs)], 1.5)
    np.testing.assert_allclose(together[: one.n_obs], alone)
    # a list of AnnData: each its own slide too
    assert [len(g) for g in slide_groups([one, other], "no_such_column")] == [one.n_obs, other.n_obs]


@pytest.mark.parametrize("smooth", [-1.0, float("nan"), float("inf"), True, "1"])
def test_a_bad_smooth_is_refused(smooth):
    adata = two_halves()
    before = snapshot(adata)
    with pytest.raises(ValueError, match="`smooth`"):
        storm.tl.domains(adata, 2, smooth=smooth)
    assert_unchanged(adata, before)


def test_smoothing_without_spot_positions_is_refused_naming_smooth_0():
    adata = two_halves()
    del adata.obsm["spatial"]
    before = snapshot(adata)
    with pytest.raises(ValueError, match=r"obsm\['spatial'\].*smooth=0"):
        storm.tl.domains(adata, 2, smooth=1.0)
    assert_unchanged(adata, before)
    storm.tl.domains(adata, 2, smooth=0)  # an embedding without positions can still be clustered
    nan = two_halves()
    nan.obsm["spatial"][3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        storm.tl.domains(nan, 2, smooth=1.0)
