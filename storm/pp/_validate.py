"""Checks shared by every function that reads an AnnData: each raises a `ValueError` that says what to do.

The checks only read: none of them modifies the AnnData, so a public function can run all of its checks first and
write only once they pass (no half-modified object on error). Other subpackages (`storm.tl`, `storm.models`) import
them from here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

SPATIAL_KEY = "spatial"

__all__ = [
    "check_coordinates_in_image",
    "check_counts",
    "check_gene_overlap",
    "check_libraries",
    "check_positive",
    "check_spatial",
    "check_unique_names",
    "get_matrix",
]


def _examples(names: Sequence | pd.Index, n: int = 3) -> str:
    names = list(names)
    shown = ", ".join(repr(str(x)) for x in names[:n])
    return shown + (", …" if len(names) > n else "")


def check_positive(value: float, name: str, *, integer: bool = False) -> None:
    """Raise unless ``value`` is a finite number > 0 (and an integer when ``integer``)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"`{name}` must be a number, got {value!r}.")
    if integer and not float(value).is_integer():
        raise ValueError(f"`{name}` must be a whole number, got {value!r}.")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be finite and > 0, got {value!r}.")


def check_spatial(adata: AnnData, key: str = SPATIAL_KEY) -> np.ndarray:
    """Return ``adata.obsm[key]`` as a float64 (n_obs, 2) array of (x, y), after checking it.

    Raises
    ------
    ValueError
        If the key is missing, the array is not (n_obs, 2) or a coordinate is NaN or infinite.
    """
    if key not in adata.obsm:
        raise ValueError(
            f"No spot coordinates: `adata.obsm[{key!r}]` is missing. Store the (x, y) spot centres in full-resolution "
            "pixels there (cells/bins: µm with `microns_per_pixel = 1`), as `storm.datasets` and `squidpy` readers do."
        )
    xy = adata.obsm[key]
    if isinstance(xy, pd.DataFrame):
        xy = xy.to_numpy()
    xy = np.asarray(xy)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(
            f"`adata.obsm[{key!r}]` has shape {xy.shape}; expected (n_obs, 2) = (x, y). Drop z or extra columns."
        )
    try:
        xy = xy.astype(np.float64, copy=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"`adata.obsm[{key!r}]` is not numeric ({xy.dtype}).") from err
    bad = ~np.isfinite(xy).all(axis=1)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} of {adata.n_obs} spots have NaN or infinite coordinates in `adata.obsm[{key!r}]` "
            f"(e.g. {_examples(adata.obs_names[bad])}). Remove them first, e.g. `adata = adata[finite_mask].copy()`."
        )
    return xy


def check_unique_names(adata: AnnData, *, obs: bool = True, var: bool = True) -> None:
    """Raise if obs names (spot barcodes) or var names (genes) repeat."""
    for axis, wanted, names, fix in (
        ("obs", obs, adata.obs_names, "adata.obs_names_make_unique()` or prefix barcodes with their slide id"),
        ("var", var, adata.var_names, "adata.var_names_make_unique()` or sum the duplicated genes"),
    ):
        if wanted and not names.is_unique:
            dup = names[names.duplicated()].unique()
            raise ValueError(
                f"{len(dup)} {axis} names occur more than once (e.g. {_examples(dup)}). Make them unique first: `{fix}."
            )


def get_matrix(adata: AnnData, layer: str | None = None):
    """Return ``adata.X`` or ``adata.layers[layer]``, raising a clear error when it does not exist."""
    if layer is None:
        if adata.X is None:
            raise ValueError(
                "`adata.X` is empty (None). Put the counts in `.X` or pass `layer=` naming where they are."
            )
        return adata.X
    if layer not in adata.layers:
        raise ValueError(f"No layer {layer!r} in `adata.layers` (there are: {list(adata.layers) or 'none'}).")
    return adata.layers[layer]


def check_counts(adata: AnnData, layer: str | None = None) -> None:
    """Raise if the count matrix holds negative, NaN or infinite values.

    Raw counts (or volume-normalised counts as MERFISH ships them) are non-negative and finite; anything else is usually
    an already log-normalised or scaled matrix passed where counts are expected.
    """
    X = get_matrix(adata, layer)
    values = X.data if sparse.issparse(X) else np.asarray(X)
    where = "`adata.X`" if layer is None else f"`adata.layers[{layer!r}]`"
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise ValueError(
            f"{where} holds {values.dtype} values, not numbers; counts must be a numeric matrix. Convert it, e.g. "
            f"`adata.X = adata.X.astype(np.float32)` (values that do not convert are not counts)."
        )
    n_bad = int(np.size(values) - np.count_nonzero(np.isfinite(values)))
    if n_bad:
        raise ValueError(
            f"{where} holds {n_bad:,} NaN or infinite values; counts must be finite. Fix or drop those spots/genes."
        )
    n_neg = int(np.count_nonzero(values < 0))
    if n_neg:
        raise ValueError(
            f"{where} holds {n_neg:,} negative values; expected raw counts. Is it already scaled or log-normalised? "
            "Pass the raw counts (e.g. `layer='counts'`)."
        )


def check_libraries(adata: AnnData, library_key: str = "library_id") -> tuple[list[str], np.ndarray]:
    """Return the slide ids and, per obs row, the position of its slide in that list.

    Slides are told apart by ``adata.obs[library_key]``; each must have an entry in ``adata.uns['spatial']``. An
    AnnData without that column counts as one slide when ``uns['spatial']`` holds exactly one entry (as
    :func:`scanpy.read_visium` writes it).

    Raises
    ------
    ValueError
        If slides cannot be told apart, a spot has no slide id, or a slide has no ``uns['spatial']`` entry.
    """
    spatial = adata.uns.get("spatial")
    known = list(spatial) if isinstance(spatial, dict) else []
    if library_key not in adata.obs:
        if len(known) == 1:
            return [str(known[0])], np.zeros(adata.n_obs, dtype=np.int64)
        raise ValueError(
            f"No `adata.obs[{library_key!r}]` and {len(known)} slides in `adata.uns['spatial']` "
            f"({_examples(known) if known else 'none'}): cannot tell which spot belongs to which slide. "
            + (
                "Declare the slide in one call: `storm.pp.set_slide(adata, platform='merfish', microns_per_pixel=1.0, "
                "library_id='s1')` (µm per unit of `obsm['spatial']`; your platform and id)."
                if not known
                else f"Set `adata.obs[{library_key!r}]` to the `uns['spatial']` key of each spot's slide (or declare "
                "each slide with `storm.pp.set_slide(adata, platform=..., microns_per_pixel=..., library_id=...)`)."
            )
        )
    col = adata.obs[library_key]
    if col.isna().any():
        n = int(col.isna().sum())
        raise ValueError(f"{n} spots have no slide id in `adata.obs[{library_key!r}]`; fill them in or drop them.")
    codes, libs = pd.factorize(col.astype(str), sort=False)
    libs = [str(x) for x in libs]
    missing = [lib for lib in libs if lib not in known]
    if missing:
        raise ValueError(
            f"library_id {_examples(missing)} in `adata.obs[{library_key!r}]` has no `adata.uns['spatial']` entry "
            f"(entries: {_examples(known, 6) if known else 'none'}). Add `uns['spatial'][library_id]` with "
            "'scalefactors' (and 'images' or metadata 'fullres_path'), or fix the slide ids."
        )
    return libs, codes.astype(np.int64)


def check_gene_overlap(source: Sequence[str] | pd.Index, target: Sequence[str] | pd.Index) -> np.ndarray:
    """Return a bool mask over ``target``: which of its genes ``source`` measures; raise when there is none."""
    source = pd.Index(source)
    target = pd.Index(target)
    measured = np.asarray(target.isin(source))
    if not measured.any():
        raise ValueError(
            f"No gene overlaps: the data has {len(source):,} genes (e.g. {_examples(source)}) and the panel "
            f"{len(target):,} (e.g. {_examples(target)}). Check that both use gene symbols, or both Ensembl ids "
            "(`adata.var['gene_ids']`), and the same species and letter case."
        )
    return measured


def check_coordinates_in_image(
    xy_image: np.ndarray,
    image_shape: tuple[int, int],
    *,
    library_id: str,
    image_name: str,
    obs_names: pd.Index,
) -> None:
    """Raise if a spot centre (in the image's own pixels) lies outside the image.

    Spots straddling the border are fine (their patches are padded); a centre outside means the coordinates and the
    image disagree, almost always a wrong scale factor or coordinates of another image.
    """
    height, width = image_shape
    # continuous pixel coordinates: the image spans [0, width] × [0, height]
    outside = (xy_image[:, 0] < -0.5) | (xy_image[:, 0] > width - 0.5)
    outside |= (xy_image[:, 1] < -0.5) | (xy_image[:, 1] > height - 0.5)
    if outside.any():
        lo = xy_image.min(axis=0)
        hi = xy_image.max(axis=0)
        raise ValueError(
            f"{int(outside.sum())} of {len(xy_image)} spots of slide {library_id!r} lie outside its {image_name} image "
            f"({width} × {height} px; spot centres span x {lo[0]:.0f}…{hi[0]:.0f}, y {lo[1]:.0f}…{hi[1]:.0f} there; "
            f"e.g. {_examples(obs_names[outside])}). The scale factor or the coordinates are likely wrong: "
            "`obsm['spatial']` must be (x, y) in full-resolution pixels and `tissue_*_scalef` image px per full-res px."
        )
