"""Tests of storm.metrics against hand-worked toy cases, direct scikit-learn calls and brute-force references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn import metrics as skm

from storm import metrics as sm
from storm.metrics import _clustering, _pearson, _spatial


def grid(nx: int, ny: int) -> np.ndarray:
    """Unit-spaced lattice, spot index = y * nx + x (row-major), as float coordinates (x, y)."""
    return np.array([[x, y] for y in range(ny) for x in range(nx)], dtype=float)


# --- brute-force ports of SpatialPCA's fx_PAS / fx_CHAOS (R), kept deliberately naive --------------------------


def pas_reference(labels: np.ndarray, xy: np.ndarray, k: int = 10) -> float:
    n = len(labels)
    d = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    abnormal = 0
    for i in range(n):
        others = np.delete(np.arange(n), i)
        order = others[np.argsort(d[i, others], kind="stable")][:k]  # R's order() is stable
        abnormal += int((labels[order] != labels[i]).sum() > k / 2)
    return abnormal / n


def chaos_reference(labels: np.ndarray, xy: np.ndarray) -> float:
    z = (xy - xy.mean(0)) / xy.std(0, ddof=1)  # R scale()
    total = 0.0
    for c in np.unique(labels):
        pts = z[labels == c]
        if len(pts) == 1:
            continue
        d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
        np.fill_diagonal(d, np.inf)
        total += d.min(1).sum()
    return total / len(labels)


# --- agreement metrics ------------------------------------------------------------------------------------------

AGREEMENT = [
    (sm.nmi, skm.normalized_mutual_info_score),
    (sm.ari, skm.adjusted_rand_score),
    (sm.fmi, skm.fowlkes_mallows_score),
    (sm.homogeneity, skm.homogeneity_score),
    (sm.completeness, skm.completeness_score),
]


@pytest.mark.parametrize(("ours", "theirs"), AGREEMENT)
def test_agreement_matches_sklearn(ours, theirs):
    rng = np.random.default_rng(0)
    true, pred = rng.integers(0, 4, 200), rng.integers(0, 5, 200)
    assert ours(true, pred) == pytest.approx(theirs(true, pred), abs=1e-12)
    # Label names do not matter, only the partition.
    names = np.array(["a", "b", "c", "d", "e"])
    assert ours(names[true], names[pred]) == pytest.approx(theirs(true, pred), abs=1e-12)


@pytest.mark.parametrize(("ours", "theirs"), AGREEMENT)
def test_agreement_drops_missing_positions(ours, theirs):
    rng = np.random.default_rng(1)
    true = rng.integers(0, 3, 60).astype(object)
    pred = rng.integers(0, 3, 60).astype(float)
    true[[0, 5, 9]] = None
    pred[[5, 20]] = np.nan
    keep = np.ones(60, bool)
    keep[[0, 5, 9, 20]] = False
    expected = theirs(true[keep].astype(int), pred[keep].astype(int))
    assert ours(true, pred) == pytest.approx(expected, abs=1e-12)
    assert ours(pd.Categorical(true), pd.Series(pred)) == pytest.approx(expected, abs=1e-12)


def test_agreement_hand_computed():
    true, pred = [0, 0, 1, 1], ["x", "x", "x", "x"]
    # One predicted cluster: fully complete, not homogeneous, no information, chance-level ARI.
    assert sm.homogeneity(true, pred) == 0.0
    assert sm.completeness(true, pred) == 1.0
    assert sm.nmi(true, pred) == 0.0
    assert sm.ari(true, pred) == 0.0
    # Pairs together in truth: {01, 23} = 2; in prediction: all C(4,2) = 6; both: 2 -> FMI = 2 / sqrt(2 * 6).
    assert sm.fmi(true, pred) == pytest.approx(2 / np.sqrt(12))
    # A relabelled identical partition is perfect under every agreement metric.
    for f, _ in AGREEMENT:
        assert f([0, 0, 1, 2], ["b", "b", "a", "c"]) == pytest.approx(1.0)


def test_agreement_errors():
    with pytest.raises(ValueError, match="entries"):
        sm.nmi([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="No spots left"):
        sm.ari([np.nan, 1.0], [0, None])
    with pytest.raises(ValueError, match="one-dimensional"):
        sm.fmi(np.zeros((2, 2)), np.zeros((2, 2)))


# --- ASW --------------------------------------------------------------------------------------------------------


def test_asw_hand_computed():
    # Groups {0, 1} and {10, 11} on a line. a(i) = 1 for every point; b(i) is the mean distance to the other
    # group: 10.5 for the outer points (0, 11), 9.5 for the inner (1, 10). s(i) = 1 - a/b.
    x = np.array([[0.0], [1.0], [10.0], [11.0]])
    s = np.mean([1 - 1 / 10.5, 1 - 1 / 9.5, 1 - 1 / 9.5, 1 - 1 / 10.5])
    assert sm.asw(x, ["a", "a", "b", "b"]) == pytest.approx((s + 1) / 2)


def test_asw_matches_sklearn_rescaled_and_drops_missing():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(80, 3))
    labels = rng.integers(0, 3, 80).astype(float)
    x[labels == 1] += 3
    s = skm.silhouette_score(x, labels, metric="manhattan")
    assert sm.asw(x, labels, metric="manhattan") == pytest.approx((s + 1) / 2)
    with_missing = labels.copy()
    with_missing[:10] = np.nan
    assert sm.asw(x, with_missing) == pytest.approx((skm.silhouette_score(x[10:], labels[10:]) + 1) / 2)


def test_asw_subsamples(monkeypatch):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 2))
    labels = rng.integers(0, 2, 300)
    a = sm.asw(x, labels, sample_size=100, random_state=1)
    assert a == sm.asw(x, labels, sample_size=100, random_state=1)  # reproducible
    assert a != sm.asw(x, labels)  # and really a subsample
    # Above ASW_MAX_SPOTS the default subsamples to that size.
    monkeypatch.setattr(_clustering, "ASW_MAX_SPOTS", 100)
    assert sm.asw(x, labels, random_state=1) == a
    with pytest.raises(ValueError, match="shape"):
        sm.asw(x[:10], labels)


# --- PAS --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [3, 4, 10])
def test_pas_two_halves_is_zero(k):
    # 4x4 grid split at x = 2. Worked by hand for k = 10 at the worst spots (by symmetry, the rest follow):
    # (0,0): 10 nearest = 6 same + 4 other [(2,0),(2,1),(3,0),(2,2)]; (1,0): rings 1, √2, 2, √5 hold exactly
    # 10 spots, 5 of them other -> 5 is not > 5; (1,1): rings 1, √2, 2 hold 10 spots, 4 other. No spot has
    # more than k/2 other-label neighbours for k = 3, 4 either, so PAS = 0.
    xy = grid(4, 4)
    assert sm.pas((xy[:, 0] >= 2).astype(int), xy, k=k) == 0.0


def test_pas_checkerboard():
    xy = grid(4, 4)
    board = ((xy[:, 0] + xy[:, 1]) % 2).astype(int)
    # k = 3: corners see 2 other (at 1) + 1 same (at √2): 2 > 1.5; edges and interior see 3 other at 1.
    assert sm.pas(board, xy, k=3) == 1.0
    # k = 4: the 4 corners see 2 other + 2 same (at √2 and 2): 2 is not > 2, so 12 of 16 are abnormal.
    assert sm.pas(board, xy, k=4) == 0.75


def test_pas_isolated_spot():
    # One spot of another label in the middle of a 5x5 block: all 10 of its neighbours differ, while each other
    # spot has at most 1 differing neighbour among its 10.
    xy = grid(5, 5)
    labels = np.zeros(25, int)
    labels[12] = 1
    assert sm.pas(labels, xy) == 1 / 25


def test_pas_ties_broken_by_spot_order():
    # The middle spot has two neighbours at distance 1; with k = 1 the lower index wins, as R's order().
    assert sm.pas(["a", "b", "b"], [[-1.0], [0.0], [1.0]], k=1) == pytest.approx(2 / 3)  # picks 'a' (index 0)
    assert sm.pas(["b", "b", "a"], [[1.0], [0.0], [-1.0]], k=1) == pytest.approx(1 / 3)  # picks 'b' (index 0)


@pytest.mark.parametrize(("pad", "chunk"), [(0, 7), (8, 65_536)])
def test_pas_matches_bruteforce_reference(monkeypatch, pad, chunk):
    # Lattices make every spot's 10th neighbour a tie; pad=0 forces the exact ball-query fallback everywhere,
    # and a 7-spot query chunk exercises the chunked neighbour search.
    monkeypatch.setattr(_spatial, "_TIE_PAD", pad)
    monkeypatch.setattr(_spatial, "_QUERY_CHUNK", chunk)
    rng = np.random.default_rng(4)
    xy = grid(9, 7)
    labels = (xy[:, 0] > 3).astype(int) + (xy[:, 1] > 4)
    labels[rng.choice(63, 10, replace=False)] = rng.integers(0, 3, 10)
    for k in (1, 4, 10):
        assert sm.pas(labels, xy, k=k) == pytest.approx(pas_reference(labels, xy, k))
    # Also off-lattice, with duplicated coordinates.
    pts = np.round(rng.uniform(0, 5, size=(60, 2)), 1)
    pts[50:] = pts[:10]
    lab = rng.integers(0, 3, 60)
    assert sm.pas(lab, pts, k=6) == pytest.approx(pas_reference(lab, pts, 6))


def test_pas_small_slide_warns_and_validates():
    xy = grid(2, 2)
    with pytest.warns(UserWarning, match="fewer than k"):
        # 3 other spots, threshold 1.5: spot 0 = 'a' sees b, a, b -> 2 other: abnormal; likewise every spot.
        assert sm.pas(["a", "b", "b", "a"], xy, k=10) == 1.0
    with pytest.raises(ValueError, match="positive integer"):
        sm.pas([0, 1], [[0.0], [1.0]], k=0)


# --- CHAOS ------------------------------------------------------------------------------------------------------


def test_chaos_two_halves():
    xy = grid(4, 4)
    halves = (xy[:, 0] >= 2).astype(int)
    # Every spot has a same-label 4-neighbour at distance 1.
    assert sm.chaos(halves, xy, standardize=False) == pytest.approx(1.0)
    # Standardised as R scale(): each axis has values 0..3 four times, s.d. (ddof=1) = sqrt(20/15), so a unit
    # step becomes sqrt(3)/2.
    assert sm.chaos(halves, xy) == pytest.approx(np.sqrt(3) / 2)


def test_chaos_isolated_pair_and_singleton():
    xy = grid(4, 4)
    # Label 1 only at opposite corners (0,0) and (3,3): each is 3√2 from its only same-label spot; the 14 others
    # each have a same-label neighbour at 1.
    pair = np.zeros(16, int)
    pair[[0, 15]] = 1
    assert sm.chaos(pair, xy, standardize=False) == pytest.approx((14 + 2 * 3 * np.sqrt(2)) / 16)
    # A singleton domain contributes 0 but still counts in the denominator (fx_CHAOS skips it).
    single = np.zeros(16, int)
    single[0] = 1
    assert sm.chaos(single, xy, standardize=False) == pytest.approx(15 / 16)
    # Fragmenting a domain raises CHAOS.
    assert sm.chaos(pair, xy) > sm.chaos((xy[:, 0] >= 2).astype(int), xy)


def test_chaos_matches_bruteforce_reference():
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 100, size=(120, 2)) * [1.0, 3.0]  # anisotropic, as real slides
    labels = rng.integers(0, 4, 120)
    labels[7] = 9  # a singleton
    assert sm.chaos(labels, xy) == pytest.approx(chaos_reference(labels, xy))


def test_chaos_zero_spread_axis_is_only_centred():
    # All spots on one row: y has zero s.d.; x = 0..3 has s.d. sqrt(5/3), so unit steps become sqrt(3/5).
    xy = np.array([[0.0, 2.0], [1.0, 2.0], [2.0, 2.0], [3.0, 2.0]])
    assert sm.chaos([0, 0, 1, 1], xy) == pytest.approx(np.sqrt(3 / 5))


# --- shared spatial behaviour -----------------------------------------------------------------------------------


def test_spatial_metrics_drop_missing_labels():
    xy = grid(5, 5)
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 3, 25).astype(object)
    missing = [3, 11, 19]
    labels[missing] = None
    keep = np.setdiff1d(np.arange(25), missing)
    lab = labels[keep].astype(int)
    assert sm.chaos(labels, xy) == pytest.approx(sm.chaos(lab, xy[keep]))
    assert sm.pas(labels, xy, k=4) == pytest.approx(sm.pas(lab, xy[keep], k=4))


def test_spatial_metrics_per_library_never_cross_slides():
    # Two slides in overlapping coordinate frames: A is a 4x4 grid split in halves (PAS 0), B a 3x3
    # checkerboard on the same origin (PAS 1 with k = 3: corners see 2 other + 1 same, the rest 3 other).
    xy_a, xy_b = grid(4, 4), grid(3, 3)
    lab_a = (xy_a[:, 0] >= 2).astype(int)
    lab_b = ((xy_b[:, 0] + xy_b[:, 1]) % 2).astype(int) + 10
    xy = np.vstack([xy_a, xy_b])
    labels = np.concatenate([lab_a, lab_b])
    library = np.array(["A"] * 16 + ["B"] * 9)
    assert sm.pas(labels, xy, k=3, library=library) == pytest.approx((16 * 0 + 9 * 1) / 25)
    expected = (16 * sm.chaos(lab_a, xy_a) + 9 * sm.chaos(lab_b, xy_b)) / 25
    assert sm.chaos(labels, xy, library=library) == pytest.approx(expected)
    # Pooled, slide B's spots sit on top of slide A's (distance 0): both scores change.
    assert sm.pas(labels, xy, k=3) != pytest.approx(9 / 25)
    assert sm.chaos(labels, xy) != pytest.approx(expected)
    # Order of spots does not matter, only which slide they belong to.
    perm = np.random.default_rng(7).permutation(25)
    assert sm.chaos(labels[perm], xy[perm], library=library[perm]) == pytest.approx(expected)


def test_spatial_metrics_validate_inputs():
    xy = grid(3, 3)
    with pytest.raises(ValueError, match="coords"):
        sm.chaos(np.zeros(9), xy[:5])
    with pytest.raises(ValueError, match="library"):
        sm.pas(np.zeros(9), xy, library=[None] + ["a"] * 8)
    with pytest.raises(ValueError, match="non-finite"):
        sm.chaos(np.zeros(9), np.where(np.arange(9)[:, None] == 4, np.nan, xy))
    with pytest.raises(ValueError, match="No labelled"):
        sm.pas([None] * 9, xy)


# --- clustering_scores -------------------------------------------------------------------------------------------


def test_clustering_scores_bundles_all_eight():
    rng = np.random.default_rng(8)
    xy = grid(6, 6)
    true = (xy[:, 0] >= 3).astype(int)
    pred = true.copy()
    pred[[0, 7, 20]] = 1 - pred[[0, 7, 20]]
    emb = rng.normal(size=(36, 4)) + true[:, None] * 2
    scores = sm.clustering_scores(true, pred, embedding=emb, coords=xy)
    assert list(scores) == ["NMI", "ARI", "FMI", "homogeneity", "completeness", "ASW", "CHAOS", "PAS"]
    assert scores["NMI"] == sm.nmi(true, pred)
    assert scores["ARI"] == sm.ari(true, pred)
    assert scores["FMI"] == sm.fmi(true, pred)
    assert scores["homogeneity"] == sm.homogeneity(true, pred)
    assert scores["completeness"] == sm.completeness(true, pred)
    assert scores["ASW"] == sm.asw(emb, true)
    assert scores["CHAOS"] == sm.chaos(pred, xy)
    assert scores["PAS"] == sm.pas(pred, xy)
    bare = sm.clustering_scores(true, pred)
    assert list(bare) == list(scores)
    assert np.isnan([bare["ASW"], bare["CHAOS"], bare["PAS"]]).all()


# --- gene-wise Pearson -------------------------------------------------------------------------------------------


def centred_orthonormal(n: int, m: int, seed: int) -> np.ndarray:
    """m orthonormal columns that each sum to 0: their correlations are exactly their inner products."""
    z = np.random.default_rng(seed).normal(size=(n, m))
    q, _ = np.linalg.qr(z - z.mean(0))
    return q


def with_correlations(r: np.ndarray, n: int, seed: int, scale: np.ndarray | None = None):
    """(pred, true) whose gene-wise Pearson r is exactly `r`; `scale` sets the variance of each true gene."""
    g = len(r)
    q = centred_orthonormal(n, 2 * g, seed)
    true, noise = q[:, :g], q[:, g:]
    pred = r * true + np.sqrt(1 - r**2) * noise
    scale = np.ones(g) if scale is None else scale
    return 3.0 + 7.0 * pred, 5.0 + true * scale  # affine maps leave r unchanged


def test_gene_pearson_perfect_anti_and_constant():
    y = np.random.default_rng(9).normal(size=(30, 3))
    pred = np.column_stack([2 * y[:, 0] + 1, -0.5 * y[:, 1] + 4, np.full(30, 2.0)])
    with pytest.warns(UserWarning, match="1 of 3 genes are constant"):
        r = sm.gene_pearson(pred, y, genes=["up", "down", "flat"])
    assert r.name == "pearson_r"
    assert list(r.index) == ["up", "down", "flat"]
    assert r["up"] == pytest.approx(1.0)
    assert r["down"] == pytest.approx(-1.0)
    assert np.isnan(r["flat"])


def test_gene_pearson_matches_numpy_for_every_input_type(monkeypatch):
    r_true = np.array([0.9, -0.3, 0.0, 0.55])
    pred, true = with_correlations(r_true, 50, seed=10)
    expected = np.array([np.corrcoef(pred[:, j], true[:, j])[0, 1] for j in range(4)])
    np.testing.assert_allclose(expected, r_true, atol=1e-12)
    np.testing.assert_allclose(sm.gene_pearson(pred, true), r_true, atol=1e-12)
    np.testing.assert_allclose(sm.gene_pearson(pred.astype(np.float32), true), r_true, atol=1e-6)
    np.testing.assert_allclose(sm.gene_pearson(sparse.csr_matrix(pred), sparse.coo_matrix(true)), r_true, atol=1e-12)
    frame = pd.DataFrame(true, columns=list("ABCD"))
    r = sm.gene_pearson(pred, frame)
    assert list(r.index) == list("ABCD")
    # Many small row chunks merge to the same answer (the streaming path).
    monkeypatch.setattr(_pearson, "_CHUNK_ELEMENTS", 7)
    np.testing.assert_allclose(sm.gene_pearson(pred, true), r_true, atol=1e-12)


def test_gene_pearson_is_stable_for_large_means(monkeypatch):
    # Raw-sum formulas lose everything here (mean 1e8, spread 1); centred chunk merging does not.
    r_true = np.array([0.8, -0.6])
    pred, true = with_correlations(r_true, 40, seed=11)
    monkeypatch.setattr(_pearson, "_CHUNK_ELEMENTS", 10)
    np.testing.assert_allclose(sm.gene_pearson(pred + 1e8, true - 1e8), r_true, atol=1e-6)


def test_gene_pearson_validates():
    with pytest.raises(ValueError, match="shape"):
        sm.gene_pearson(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="names"):
        sm.gene_pearson(np.eye(3), np.eye(3), genes=["a"])
    with pytest.raises(ValueError, match="at least 2"):
        sm.gene_pearson(np.ones((1, 2)), np.ones((1, 2)))


def test_pearson_summary_hand_computed():
    r = np.array([0.9, 0.5, -0.2, 0.7, 0.1])
    # Variances of true: gene 1 (25) and gene 4 (16) are the two most variable.
    pred, true = with_correlations(r, 40, seed=12, scale=np.array([1.0, 5.0, 3.0, 2.0, 4.0]))
    out = sm.pearson_summary(pred, true, top_k=2)
    assert list(out.index) == ["pooled"]
    assert list(out.columns) == ["n_obs", "n_genes", "mean", "median", "top_k_mean", "hvg_mean"]
    row = out.loc["pooled"]
    assert row["n_obs"] == 40
    assert row["n_genes"] == 5
    assert row["mean"] == pytest.approx(r.mean())
    assert row["median"] == pytest.approx(0.5)
    assert row["top_k_mean"] == pytest.approx((0.9 + 0.7) / 2)
    assert row["hvg_mean"] == pytest.approx((0.5 + 0.1) / 2)
    assert out.attrs == {"top_k": 2, "n_hvg": 2}
    # n_hvg apart from top_k; top_k beyond the number of genes averages them all.
    out = sm.pearson_summary(sparse.csr_matrix(pred), true, top_k=10, n_hvg=3)
    assert out.loc["pooled", "top_k_mean"] == pytest.approx(r.mean())
    assert out.loc["pooled", "hvg_mean"] == pytest.approx((0.5 + 0.1 - 0.2) / 3)


def test_pearson_summary_per_group_and_pooled():
    r1, r2 = np.array([0.9, 0.2, 0.4]), np.array([-0.5, 0.6, 0.8])
    p1, t1 = with_correlations(r1, 30, seed=13)
    p2, t2 = with_correlations(r2, 20, seed=14)
    pred, true = np.vstack([p2, p1]), np.vstack([t2, t1])
    groups = np.array(["s2"] * 20 + ["s1"] * 30)
    out = sm.pearson_summary(pred, true, top_k=1, groups=groups)
    assert list(out.index) == ["s2", "s1", "pooled"]  # order of first appearance, pooled last
    assert out.index.name == "group"
    assert list(out["n_obs"]) == [20, 30, 50]
    assert out.loc["s1", "median"] == pytest.approx(0.4)
    assert out.loc["s2", "median"] == pytest.approx(0.6)
    assert out.loc["s1", "top_k_mean"] == pytest.approx(0.9)
    assert out.loc["s2", "top_k_mean"] == pytest.approx(0.8)
    pooled = np.array([np.corrcoef(pred[:, j], true[:, j])[0, 1] for j in range(3)])
    assert out.loc["pooled", "median"] == pytest.approx(np.median(pooled))
    assert out.loc["pooled", "mean"] == pytest.approx(pooled.mean())


def test_pearson_summary_constant_genes_and_errors():
    pred, true = with_correlations(np.array([0.3, 0.6]), 20, seed=15)
    true = np.column_stack([true, np.r_[np.zeros(10), np.arange(10.0)]])  # gene 2: constant in group 'a'
    pred = np.column_stack([pred, np.arange(20.0)])
    groups = ["a"] * 10 + ["b"] * 10
    with pytest.warns(UserWarning, match=r"0 of 3 pooled, at most 1 in one row \(.a.\)"):
        out = sm.pearson_summary(pred, true, groups=groups, top_k=5)
    assert out.loc["a", "n_genes"] == 2
    assert out.loc["b", "n_genes"] == 3
    with pytest.raises(ValueError, match="reserved"):
        sm.pearson_summary(pred, true, groups=["pooled"] * 20)
    with pytest.raises(ValueError, match="missing"):
        sm.pearson_summary(pred, true, groups=[None] + ["a"] * 19)
    with pytest.raises(ValueError, match="entries"):
        sm.pearson_summary(pred, true, groups=["a"] * 5)
    with pytest.raises(ValueError, match="top_k"):
        sm.pearson_summary(pred, true, top_k=0)


def test_metrics_import_without_anndata():
    import subprocess
    import sys

    code = (
        "import sys; import storm.metrics; "
        "bad = [m for m in ('anndata', 'scanpy', 'torch') if m in sys.modules]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_knn_accuracy_separable_and_label_handling():
    rng = np.random.default_rng(0)
    X = np.r_[rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (30, 2))]
    y = np.array(["a"] * 30 + ["b"] * 30, dtype=object)
    assert sm.knn_accuracy(X, y, n_neighbors=5) == 1.0
    flipped = np.where(np.arange(60) % 2 == 0, "a", "b").astype(object)  # labels unrelated to X
    assert sm.knn_accuracy(X, flipped, n_neighbors=5) < 0.8
    # missing labels and classes below min_per_class are left out, not scored
    y_missing = y.copy()
    y_missing[:5] = None
    y_missing[5:8] = "rare"
    assert sm.knn_accuracy(X, y_missing, n_neighbors=5) == 1.0
    with pytest.raises(ValueError, match="two classes"):
        sm.knn_accuracy(X, ["a"] * 60)
    with pytest.raises(ValueError, match="NaN"):
        sm.knn_accuracy(np.full((60, 2), np.nan), y)
    with pytest.raises(ValueError, match="len"):
        sm.knn_accuracy(X[:10], y)
