"""Every bad input gets a clear ValueError and leaves the AnnData exactly as it was."""

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import storm.pp as pp
from storm.pp import _validate


def valid_adata() -> ad.AnnData:
    """A small Visium slide that every pp function accepts."""
    rr, cc = np.meshgrid(np.arange(6), np.arange(10), indexing="ij")
    keep = ((rr + cc) % 2 == 0).ravel()
    rr, cc = rr.ravel()[keep], cc.ravel()[keep]
    n = len(rr)
    rng = np.random.default_rng(0)
    X = rng.poisson(3.0, size=(n, 5)).astype(np.float32)
    adata = ad.AnnData(
        X=sparse.csr_matrix(X),
        obs=pd.DataFrame(
            {"library_id": pd.Categorical(["A"] * n), "array_row": rr, "array_col": cc},
            index=[f"spot{i}" for i in range(n)],
        ),
        var=pd.DataFrame(index=["GAPDH", "ACTB", "CD3E", "MT-CO1", "EPCAM"]),
    )
    mpp = 1.0
    adata.obsm["spatial"] = np.column_stack([cc * 50.0, rr * 50.0 * np.sqrt(3)]) / mpp + 60
    adata.uns["spatial"] = {
        "A": {
            "images": {"hires": np.full((500, 700, 3), 200, dtype=np.uint8)},
            "scalefactors": {"spot_diameter_fullres": 55.0 / mpp, "tissue_hires_scalef": 1.0},
            "metadata": {"platform": "visium"},
        }
    }
    return adata


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.shape == b.shape and np.array_equal(a, b, equal_nan=a.dtype.kind == "f")
    return a == b


def dense(m):
    return m.toarray() if sparse.issparse(m) else np.asarray(m)


def assert_unchanged(adata, before):
    assert adata.shape == before.shape
    pd.testing.assert_frame_equal(adata.obs, before.obs)
    pd.testing.assert_frame_equal(adata.var, before.var)
    assert set(adata.obsm) == set(before.obsm)
    for key in adata.obsm:
        assert _same(np.asarray(adata.obsm[key]), np.asarray(before.obsm[key]))
    assert set(adata.layers) == set(before.layers)
    assert set(adata.obsp) == set(before.obsp)
    assert _same(dense(adata.X), dense(before.X))
    assert _same(dict(adata.uns), dict(before.uns))


# --- the bad inputs ----------------------------------------------------------------------------------------------


def no_spatial(a):
    del a.obsm["spatial"]


def nan_coordinates(a):
    a.obsm["spatial"][[2, 5]] = np.nan


def coordinates_outside_image(a):
    a.uns["spatial"]["A"]["scalefactors"]["tissue_hires_scalef"] = 20.0


def no_scale(a):
    a.uns["spatial"]["A"]["scalefactors"].pop("spot_diameter_fullres")
    a.uns["spatial"]["A"]["metadata"]["platform"] = "xenium"


def negative_counts(a):
    a.X = a.X.toarray()
    a.X[0, 0] = -2


def nonfinite_counts(a):
    a.X.data[3] = np.inf


def object_counts(a):
    a.X = a.X.toarray().astype(object)


def duplicate_obs(a):
    a.obs_names = ["spot0"] * 2 + list(a.obs_names[2:])


def duplicate_var(a):
    a.var_names = ["GAPDH", "GAPDH", "CD3E", "MT-CO1", "EPCAM"]


def unknown_library(a):
    a.obs["library_id"] = pd.Categorical(["A"] * (a.n_obs - 3) + ["B"] * 3)


def no_library_column_two_slides(a):
    del a.obs["library_id"]
    a.uns["spatial"]["B"] = a.uns["spatial"]["A"]


def missing_library_id(a):
    a.obs["library_id"] = pd.Categorical(["A"] * (a.n_obs - 1) + [None])


def windows(a):
    return pp.spatial_windows(a)


def patches(a):
    return list(pp.extract_patches(a, out_px=16))


def scale(a):
    return pp.patch_scale(a)


CALLS = {
    "qc_metrics": pp.qc_metrics,
    "filter_spots": pp.filter_spots,
    "normalize": pp.normalize,
    "harmonize_genes": lambda a: pp.harmonize_genes(a, ["CD3E", "MS4A1"]),
    "spatial_windows": windows,
    "extract_patches": patches,
    "patch_scale": scale,
}

CASES = [
    (no_spatial, ["spatial_windows", "extract_patches", "patch_scale"], r"obsm\['spatial'\]` is missing"),
    (nan_coordinates, ["spatial_windows", "extract_patches", "patch_scale"], "2 of 30 spots have NaN or infinite"),
    (coordinates_outside_image, ["extract_patches"], "lie outside its hires image"),
    (no_scale, ["spatial_windows", "extract_patches", "patch_scale"], "No physical scale"),
    (negative_counts, ["qc_metrics", "filter_spots", "normalize"], "negative values"),
    (nonfinite_counts, ["qc_metrics", "filter_spots", "normalize"], "NaN or infinite values"),
    (object_counts, ["qc_metrics", "filter_spots", "normalize"], r"holds object values, not numbers.*astype"),
    (duplicate_obs, ["qc_metrics", "filter_spots", "normalize", "harmonize_genes"], "obs names occur more"),
    (duplicate_var, ["qc_metrics", "filter_spots", "normalize", "harmonize_genes"], "var names occur more"),
    (unknown_library, ["spatial_windows", "extract_patches", "patch_scale"], r"'B'.*has no `adata.uns\['spatial'\]"),
    (no_library_column_two_slides, ["spatial_windows", "extract_patches", "patch_scale"], "cannot tell which spot"),
    (missing_library_id, ["spatial_windows", "extract_patches", "patch_scale"], "1 spots have no slide id"),
]


@pytest.mark.parametrize("name", list(CALLS))
def test_valid_input_is_accepted(name):
    CALLS[name](valid_adata())


@pytest.mark.parametrize(
    ("breaker", "name", "match"),
    [(b, n, m) for b, names, m in CASES for n in names],
    ids=[f"{b.__name__}-{n}" for b, names, _ in CASES for n in names],
)
def test_bad_input_raises_and_leaves_adata_unchanged(breaker, name, match):
    adata = valid_adata()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Observation names are not unique", UserWarning)  # anndata's own warning
        breaker(adata)
        before = adata.copy()
    with pytest.raises(ValueError, match=match):
        CALLS[name](adata)
    assert_unchanged(adata, before)


def test_no_overlapping_genes_leaves_adata_unchanged():
    adata = valid_adata()
    before = adata.copy()
    with pytest.raises(ValueError, match="No gene overlaps"):
        pp.harmonize_genes(adata, ["ENSG00000111640"])
    assert_unchanged(adata, before)


def test_checks_do_not_modify():
    adata = valid_adata()
    adata.obsm["spatial"] = adata.obsm["spatial"].astype(np.int64)  # squidpy fixtures store integers
    before = adata.copy()
    xy = _validate.check_spatial(adata)
    assert xy.dtype == np.float64
    _validate.check_counts(adata)
    _validate.check_unique_names(adata)
    libs, codes = _validate.check_libraries(adata)
    assert libs == ["A"]
    assert (codes == 0).all()
    assert_unchanged(adata, before)
    assert adata.obsm["spatial"].dtype == np.int64


@pytest.mark.parametrize("value", [0, -1.0, np.nan, np.inf, "5", True])
def test_check_positive(value):
    with pytest.raises(ValueError, match="size_um"):
        pp.patch_scale(valid_adata(), size_um=value)


def test_wrong_spatial_shape():
    adata = valid_adata()
    adata.obsm["spatial"] = np.zeros((adata.n_obs, 3))
    with pytest.raises(ValueError, match=r"expected \(n_obs, 2\)"):
        pp.spatial_windows(adata)


def test_no_image_raises():
    adata = valid_adata()
    adata.uns["spatial"]["A"]["images"] = {}
    with pytest.raises(ValueError, match="has no image at all"):
        pp.extract_patches(adata)
    pp.spatial_windows(adata)  # windows need no image


def test_image_without_scalefactor_raises():
    adata = valid_adata()
    del adata.uns["spatial"]["A"]["scalefactors"]["tissue_hires_scalef"]
    with pytest.raises(ValueError, match="tissue_hires_scalef"):
        pp.extract_patches(adata)
