"""Slide-level clinical prediction: bags of tile features from AnnData, cross-validated training, risk and maps.

The user path (DESIGN.md §2, clinical): tile a slide into 55 µm patches and predict their expression
(:func:`storm.tl.virtual_st`: tiles × genes in ``X``), embed the tiles (``obsm['X_storm']``,
:func:`storm.tl.embed` in image mode) → :func:`slide_features` (one bag per slide) →
:func:`fit_slide_model` (patient-level cross-validation, Cox or logistic loss) → :func:`predict_slide_risk` on new
slides → :func:`tile_attributions` → :func:`storm.pl.risk_map`. The torch model is
:class:`storm.nn.SlideRiskModel`; training lives in :mod:`storm.train`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np
import pandas as pd
from anndata import AnnData

from storm._logging import logger
from storm.tl._utils import elapsed, get_rep, start_timer

if TYPE_CHECKING:  # pragma: no cover
    from storm.nn._slide_model import SlideModelConfig, SlideRiskModel
    from storm.train._slide import SlideCVResult

__all__ = ["SlideRiskPrediction", "fit_slide_model", "predict_slide_risk", "slide_features", "tile_attributions"]

_MODALITIES = ("image", "expression")
#: Default expression key; :func:`storm.tl.virtual_st` results (marked by ``uns['virtual_st']``) keep it in ``X``.
_VIRTUAL_ST_KEY = "X_virtual_st"


# ---------------------------------------------------------------------------------------------------- bags
def _slide_id(adata: AnnData, library_key: str, default: str) -> str:
    """Name one slide: its one ``obs[library_key]`` value, else its one ``uns['spatial']`` key, else ``default``."""
    if library_key in adata.obs:
        values = pd.unique(adata.obs[library_key].astype(str))
        if len(values) == 1:
            return str(values[0])
    libraries = list(adata.uns.get("spatial", {}))
    return str(libraries[0]) if len(libraries) == 1 else default


def _slides(tiles: Any, library_key: str) -> list[tuple[str, AnnData]]:
    """``[(slide_id, tiles)]`` from a dict, a list, a feature folder, or one AnnData split by ``obs[library_key]``."""
    if isinstance(tiles, str | os.PathLike):
        from storm.tl._cohort import read_cohort_features

        tiles = read_cohort_features(tiles)
    if isinstance(tiles, AnnData):
        if library_key in tiles.obs:
            labels = tiles.obs[library_key].astype("category").cat.remove_unused_categories()
            return [(str(lib), tiles[(labels == lib).to_numpy()]) for lib in labels.cat.categories]
        return [(_slide_id(tiles, library_key, "slide_0"), tiles)]
    if isinstance(tiles, Mapping):
        items = [(str(k), v) for k, v in tiles.items()]
    elif isinstance(tiles, Sequence) and not isinstance(tiles, str):
        items = [
            (_slide_id(a, library_key, f"slide_{i}") if isinstance(a, AnnData) else "", a) for i, a in enumerate(tiles)
        ]
    else:
        raise ValueError(f"Expected an AnnData, a list or a dict of AnnData, got {type(tiles).__name__}.")
    if not items:
        raise ValueError("No slides given: pass at least one AnnData of tiles.")
    bad = sorted({type(a).__name__ for _, a in items if not isinstance(a, AnnData)})
    if bad:
        raise ValueError(f"Expected AnnData objects (one per slide), got {', '.join(bad)}.")
    ids = [i for i, _ in items]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(
            f"Several slides share the id(s) {duplicated[:5]}; pass a dict {{slide_id: adata}} to name them."
        )
    return items


def _features(adata: AnnData, key: str, slide: str) -> tuple[np.ndarray, pd.Index | None] | None:
    """Features of one slide's tiles under ``key``, as finite float32; ``None`` if absent.

    ``obsm[key]``, else ``layers[key]``, else ``X`` for ``key="X"``; for the default key ``'X_virtual_st'``, ``X`` of
    a :func:`storm.tl.virtual_st` result. Returns ``(features, column names)``: the genes (``var_names``) when read
    from ``X`` or a layer, ``None`` from ``obsm``.
    """
    if key in adata.obsm:
        return get_rep(adata, key, hint=f"slide {slide!r}").astype(np.float32), None
    if key == _VIRTUAL_ST_KEY and "virtual_st" in adata.uns:
        key = "X"  # virtual_st's tiles × genes prediction
    if key in adata.layers:
        x = adata.layers[key]
    elif key == "X" and adata.X is not None and adata.n_vars > 0:
        x = adata.X
    else:
        return None
    x = np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float64)
    if not np.isfinite(x).all():
        raise ValueError(f"Slide {slide!r}: `{key}` holds NaN or infinite values; recompute or drop those tiles.")
    return x.astype(np.float32), adata.var_names.copy()


def _check_columns(
    slides: list[tuple[str, AnnData]], found: list[tuple[np.ndarray, pd.Index | None]], key: str, modality: str
) -> None:
    """Every slide's features of one modality must have the same width and, where named, the same genes in order."""
    widths = {s: x.shape[1] for (s, _), (x, _) in zip(slides, found, strict=True)}
    if len(set(widths.values())) > 1:
        raise ValueError(
            f"`{key}` ({modality} features) has different widths across slides ({dict(list(widths.items())[:5])}); "
            "every slide's tiles must be described by the same features (the same model, the same gene list)."
        )
    named = [(s, cols) for (s, _), (_, cols) in zip(slides, found, strict=True) if cols is not None]
    for s, cols in named[1:]:
        if not cols.equals(named[0][1]):
            raise ValueError(
                f"`{key}` of slide {s!r} holds other genes (or another order) than slide {named[0][0]!r}; predict "
                "every slide with heads of the same gene list, or subset them to common genes in one order: "
                "`tiles = {s: t[:, genes].copy() for s, t in tiles.items()}`."
            )


def slide_features(
    tiles: AnnData | Sequence[AnnData] | Mapping[str, AnnData] | str | os.PathLike,
    *,
    image_key: str | None = "X_storm",
    expression_key: str | None = "X_virtual_st",
    library_key: str = "library_id",
    spatial_key: str = "spatial",
) -> list[dict[str, Any]]:
    """Turn the tiles of each slide into a bag of features for the slide-level model.

    Parameters
    ----------
    tiles
        AnnData of tiles (one row per 55 µm tile): a dict ``{slide_id: adata}``, a list (one AnnData per slide),
        one AnnData whose ``obs[library_key]`` tells slides apart, or the folder of :func:`storm.tl.cohort_features`
        (one ``<slide_id>.h5ad`` per slide).
    image_key
        ``obsm`` key of the tiles' image features (:func:`storm.tl.embed` writes ``'X_storm'``); ``None``: no
        image modality.
    expression_key
        ``obsm`` key, ``layers`` key or ``'X'`` of the tiles' (virtual-ST) expression; ``None``: no expression
        modality. The default ``'X_virtual_st'`` is read from ``obsm`` where present, else, for the tiles returned
        by :func:`storm.tl.virtual_st` (recognised by ``uns['virtual_st']``), from ``X``: their predicted
        ``log1p`` normalised expression. Expression read from ``X`` or a layer must have the same genes, in the same
        order, in every slide.
    library_key
        Column of ``obs`` with the slide id (to split one AnnData, and to name the slides of a list).
    spatial_key
        ``obsm`` key of the tile centres, kept with the bag for maps (optional). A modality whose key is found
        in no slide is skipped (logged); one found in some slides only is an error, as every bag must carry the
        same modalities.

    Returns
    -------
    list of dict
        One bag per slide: ``'slide_id'``, ``'image'`` and/or ``'expression'`` (float32 ``(n_tiles, d)``),
        ``'coords'`` (``(n_tiles, 2)`` from ``obsm[spatial_key]``, or ``None``) and ``'obs_names'``.

    Raises
    ------
    ValueError
        No slides, a slide without tiles, duplicated slide ids, non-finite features, a modality missing from
        some slides, features of different widths or genes across slides, or no modality at all.

    Examples
    --------
    Both modalities from whole-slide tiles (``head`` from :func:`storm.tl.train_expression_head`)::

        tiles = {lib: storm.tl.virtual_st(adata, head) for lib, adata in sections.items()}
        for t in tiles.values():
            storm.tl.embed(t, mode="image")
        bags = storm.tl.slide_features(tiles)  # 'image' from obsm['X_storm'], 'expression' from X
    """
    slides = _slides(tiles, library_key)
    keys = {"image": image_key, "expression": expression_key}
    features: dict[str, list[tuple[np.ndarray, pd.Index | None] | None]] = {m: [] for m in _MODALITIES}
    for slide, adata in slides:
        if adata.n_obs == 0:
            raise ValueError(f"Slide {slide!r} has no tiles.")
        for m in _MODALITIES:
            features[m].append(_features(adata, keys[m], slide) if keys[m] is not None else None)
    used = []
    for m in _MODALITIES:
        found = [x is not None for x in features[m]]
        if all(found):
            _check_columns(slides, features[m], keys[m], m)
            used.append(m)
        elif any(found):
            missing = [s for (s, _), f in zip(slides, found, strict=True) if not f]
            raise ValueError(
                f"`{keys[m]}` ({m} features) is missing from slide(s) {missing[:5]} but present in others; every "
                f"slide needs the same modalities (pass {m}_key=None to leave {m} out)."
            )
        elif keys[m] is not None:
            hint = (
                " (tiles of storm.tl.virtual_st keep it in X: pass expression_key='X' where their uns['virtual_st'] "
                "was lost, e.g. by concatenation)"
                if keys[m] == _VIRTUAL_ST_KEY
                else ""
            )
            logger.info(f"slide_features: no slide has `{keys[m]}`; bags carry no {m} features{hint}.")
    if not used:
        obsm = sorted({k for _, a in slides for k in a.obsm})
        raise ValueError(
            f"No tile features found (image_key={image_key!r}, expression_key={expression_key!r}; obsm keys: "
            f"{obsm}). Run `storm.tl.embed` on the tiles (image) or predict their expression with "
            "`storm.tl.virtual_st` first."
        )
    bags = []
    for i, (slide, adata) in enumerate(slides):
        coords = np.asarray(adata.obsm[spatial_key], dtype=np.float64)[:, :2] if spatial_key in adata.obsm else None
        bag: dict[str, Any] = {"slide_id": slide, "coords": coords, "obs_names": np.asarray(adata.obs_names)}
        for m in used:
            bag[m] = features[m][i][0]
        bags.append(bag)
    logger.info(f"slide_features: {len(bags)} bags of {', '.join(used)} features")
    return bags


# ---------------------------------------------------------------------------------------------------- training
def _binary(values: pd.Series, positive: Any, key: str) -> np.ndarray:
    """0/1 (float, NaN where missing) from labels, given ``positive`` (or already 0/1/bool)."""
    if positive is not None:
        labels = set(values.dropna().unique())
        if positive not in labels:
            raise ValueError(f"positive={positive!r} is not among the `{key}` labels {sorted(map(str, labels))}.")
        return np.where(values.isna(), np.nan, (values == positive).astype(float))
    numeric = pd.to_numeric(values, errors="coerce")
    if numeric[values.notna()].isna().any() or not numeric.dropna().isin((0, 1)).all():
        labels = sorted(map(str, values.dropna().unique()))[:6]
        raise ValueError(f"`{key}` holds labels {labels}: pass positive= (the responders' label).")
    return numeric.to_numpy(dtype=float)


def fit_slide_model(
    bags: Sequence[Mapping[str, Any]],
    clinical: pd.DataFrame,
    *,
    time_key: str | None = None,
    event_key: str | None = None,
    response_key: str | None = None,
    positive: Any = None,
    patient_key: str | None = None,
    slide_key: str | None = None,
    n_splits: int = 5,
    config: SlideModelConfig | dict[str, Any] | None = None,
    max_epochs: int = 30,
    batch_size: int = 32,
    lr: float = 1e-3,
    accelerator: str = "auto",
    seed: int = 0,
    **kwargs: Any,
) -> SlideCVResult:
    """Train the slide risk model with patient-level cross-validation (survival or response).

    Each bag is matched to its row of ``clinical`` by its ``'slide_id'``. Folds never split a patient's slides
    (``patient_key``); see :func:`storm.train.fit_slide_model_cv` for the training and the metrics.

    Parameters
    ----------
    bags
        From :func:`slide_features`.
    clinical
        One row per slide, indexed by slide id (or with the ids in column ``slide_key``).
    time_key, event_key
        Columns of follow-up time and event flag (1 = event): survival, Cox partial likelihood loss.
    response_key
        Column of the response label: response, logistic loss.
    positive
        The responders' label in ``response_key`` (not needed for 0/1 or boolean columns).
    patient_key
        Column of patient ids (slides of one patient stay in one fold); ``None``: one slide per patient.
    slide_key
        Column of slide ids; ``None``: the index.
    n_splits
        Folds of the cross-validation.
    config
        :class:`storm.nn.SlideModelConfig` (feature widths are filled from the bags).
    max_epochs, batch_size, lr, accelerator, seed
        Training settings (see :func:`storm.train.fit_slide_model_cv`).
    **kwargs
        Passed to :func:`storm.train.fit_slide_model_cv` (``weight_decay``, ``tile_dropout``, ``max_tiles``).

    Returns
    -------
    :class:`storm.train.SlideCVResult`
        ``risk`` (out-of-fold, in the order of ``ids``), ``fold``, ``fold_metrics``, ``oof_metric``, the fold
        ``models``. Slides whose outcome is missing are dropped (logged) and absent from ``ids``.

    Raises
    ------
    ValueError
        Slides missing from ``clinical``, duplicated slide rows, unknown columns, both or neither of survival and
        response keys, and the errors of :func:`storm.train.fit_slide_model_cv` (no events, one class, too few
        patients for ``n_splits``).
    """
    from storm.train._slide import fit_slide_model_cv

    start = start_timer()
    survival = time_key is not None or event_key is not None
    if survival == (response_key is not None):
        raise ValueError("Pass time_key and event_key (survival) or response_key (response), not both or neither.")
    if survival and (time_key is None or event_key is None):
        raise ValueError("Survival needs both time_key and event_key.")
    if not isinstance(clinical, pd.DataFrame):
        raise ValueError(f"clinical must be a pandas DataFrame (one row per slide), got {type(clinical).__name__}.")
    outcome_keys = [time_key, event_key] if survival else [response_key]
    needed = [k for k in [*outcome_keys, patient_key, slide_key] if k is not None]
    unknown = [k for k in needed if k not in clinical.columns]
    if unknown:
        raise ValueError(f"Columns {unknown} are not in the clinical table (columns: {list(clinical.columns)[:20]}).")
    table = clinical.set_index(slide_key) if slide_key is not None else clinical
    table = table.set_axis(table.index.astype(str))
    if table.index.has_duplicates:
        raise ValueError(
            f"Slide ids repeat in the clinical table: {sorted(set(table.index[table.index.duplicated()]))[:5]}."
        )
    if any("slide_id" not in bag for bag in bags):
        raise ValueError("Every bag needs a 'slide_id' to be matched to the clinical table (use slide_features).")
    ids = [str(bag["slide_id"]) for bag in bags]
    absent = [i for i in ids if i not in table.index]
    if absent:
        raise ValueError(f"{len(absent)} slides are not in the clinical table, e.g. {absent[:5]}.")
    rows = table.loc[ids]
    if survival:
        outcome = {"time": pd.to_numeric(rows[time_key], errors="coerce"), "event": rows[event_key]}
        outcome["event"] = pd.Series(_binary(outcome["event"], None, event_key), index=rows.index)
    else:
        outcome = {"response": pd.Series(_binary(rows[response_key], positive, response_key), index=rows.index)}
    keep = np.logical_and.reduce([v.notna().to_numpy() for v in outcome.values()])
    if patient_key is not None:
        keep &= rows[patient_key].notna().to_numpy()
    if not keep.all():
        logger.warning(f"fit_slide_model: dropped {int((~keep).sum())} of {len(ids)} slides with a missing outcome.")
    idx = np.flatnonzero(keep)
    targets = {name: values.to_numpy(dtype=float)[idx] for name, values in outcome.items()}
    groups = rows[patient_key].to_numpy()[idx] if patient_key is not None else np.asarray(ids, dtype=object)[idx]
    result = fit_slide_model_cv(
        [bags[i] for i in idx],
        **targets,
        groups=groups,
        n_splits=n_splits,
        config=config,
        max_epochs=max_epochs,
        batch_size=batch_size,
        lr=lr,
        accelerator=accelerator,
        seed=seed,
        ids=[ids[i] for i in idx],
        **kwargs,
    )
    logger.info(
        f"fit_slide_model: finished ({elapsed(start)}): {len(idx)} slides, {len(np.unique(groups))} patients, "
        f"out-of-fold {result.metric} {result.oof_metric:.3f}"
    )
    return result


# ---------------------------------------------------------------------------------------------------- prediction
class SlideRiskPrediction(NamedTuple):
    """Result of :func:`predict_slide_risk`.

    Attributes
    ----------
    risk
        Risk per bag (log relative hazard, or response log-odds); the mean over the models of an ensemble.
    attention
        Per bag, ``{modality: (n_tiles,)}`` attention over its tiles (sums to 1 per modality).
    """

    risk: np.ndarray
    attention: list[dict[str, np.ndarray]]


def _models(model: Any) -> list[SlideRiskModel]:
    """Return the model(s) behind ``model``: a SlideRiskModel, a list of them, a SlideCVResult or a module."""
    from storm.nn._slide_model import SlideRiskModel

    models = getattr(model, "models", None)
    if models is None and hasattr(model, "model") and isinstance(model.model, SlideRiskModel):
        models = [model.model]
    if models is None:
        models = list(model) if isinstance(model, Sequence) else [model]
    if not models or not all(isinstance(m, SlideRiskModel) for m in models):
        raise ValueError(
            "model must be a storm.nn.SlideRiskModel, a list of them, or the result of fit_slide_model; got "
            f"{type(model).__name__}."
        )
    return models


def predict_slide_risk(
    model: SlideRiskModel | Sequence[SlideRiskModel] | SlideCVResult,
    bags: Sequence[Mapping[str, Any]],
    *,
    batch_size: int = 1,
    accelerator: str = "auto",
) -> SlideRiskPrediction:
    """Risk score and per-tile attention of each slide.

    Parameters
    ----------
    model
        A trained :class:`storm.nn.SlideRiskModel`, a list of them, or the result of :func:`fit_slide_model` (the
        fold models' mean risk and mean attention: a cross-validation ensemble for new cohorts). For the training
        cohort itself use the result's out-of-fold ``risk``: the fold models have seen most of its slides.
    bags
        From :func:`slide_features`; they may carry fewer modalities than the model (the missing modality then
        contributes nothing to the risk).
    batch_size
        Bags per forward pass (1 avoids padding).
    accelerator
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"gpu"``.

    Returns
    -------
    SlideRiskPrediction
        ``risk`` ``(n_bags,)`` and ``attention`` (per bag, ``{modality: (n_tiles,)}``).
    """
    from storm.train._slide import predict_bags, resolve_device

    device = resolve_device(accelerator)
    risks, maps = [], []
    for m in _models(model):
        risk, attention = predict_bags(m, bags, batch_size=batch_size, device=device, return_attention=True)
        risks.append(risk)
        maps.append(attention)
    attention = [{k: np.mean([mp[b][k] for mp in maps], axis=0) for k in maps[0][b]} for b in range(len(bags))]
    return SlideRiskPrediction(np.mean(risks, axis=0), attention)


def tile_attributions(
    model: SlideRiskModel | Sequence[SlideRiskModel] | SlideCVResult,
    bag: Mapping[str, Any],
    *,
    method: Literal["attention", "integrated_gradients"] = "attention",
    baseline: Literal["zero", "mean"] = "zero",
    n_steps: int = 64,
    batch_size: int = 16,
    by_modality: bool = False,
) -> np.ndarray | dict[str, np.ndarray]:
    """How much each tile of a slide drives its risk: attention or integrated gradients.

    Parameters
    ----------
    model
        As in :func:`predict_slide_risk` (an ensemble averages its models' maps).
    bag
        One bag from :func:`slide_features`.
    method
        ``"attention"``: each tile's share of the pooled representation (non-negative, sums to 1 per modality;
        where the model looks, not which direction it pushes). ``"integrated_gradients"``: signed contribution of
        each tile to the risk, relative to ``baseline`` (positive = raises the risk); the attributions of all tiles
        add up to ``risk(bag) - risk(baseline)`` (completeness), up to the Riemann-sum error in ``n_steps``.
    baseline
        Integrated gradients only: ``"zero"`` (all-zero features) or ``"mean"`` (every tile replaced by the
        bag's mean tile: attributions then say which tiles make this slide differ from a uniform one).
    n_steps, batch_size
        Integrated gradients only: points on the path, and points per forward pass.
    by_modality
        Return ``{modality: (n_tiles,)}`` instead of one map (attention: mean over modalities; integrated
        gradients: sum over modalities and features).

    Returns
    -------
    ``np.ndarray`` ``(n_tiles,)`` (or a dict by modality), in the order of the bag's tiles
    (``bag['obs_names']``), ready for :func:`storm.pl.risk_map`.

    References
    ----------
    Ilse M, Tomczak JM, Welling M. Attention-based deep multiple instance learning. ICML (2018).
    Sundararajan M, Taly A, Yan Q. Axiomatic attribution for deep networks. ICML (2017).
    """
    import torch

    from storm.nn._slide_model import integrated_gradients

    if isinstance(bag, Sequence) or not isinstance(bag, Mapping):
        raise ValueError("Pass one bag (a dict from slide_features), not a list; loop over slides for several.")
    if method not in ("attention", "integrated_gradients"):
        raise ValueError(f"method must be 'attention' or 'integrated_gradients', got {method!r}.")
    models = _models(model)
    per_modality: dict[str, np.ndarray]
    if method == "attention":
        per_modality = predict_slide_risk(models, [bag], accelerator="cpu").attention[0]
    else:
        features = {
            m: torch.as_tensor(np.asarray(bag[m], dtype=np.float32))
            for m in _MODALITIES
            if bag.get(m) is not None and m in models[0].modalities
        }
        if not features:
            raise ValueError(f"The bag carries none of the model's modalities {models[0].modalities}.")
        sums: dict[str, np.ndarray] = {}
        for mdl in models:
            ig = integrated_gradients(mdl, features, baseline=baseline, n_steps=n_steps, batch_size=batch_size)
            for m, a in ig.attributions.items():
                sums[m] = sums.get(m, 0.0) + a.sum(dim=1).double().numpy()
        # IG is linear in the model: the mean of the models' attributions is the attribution of their mean risk.
        per_modality = {m: s / len(models) for m, s in sums.items()}
    if by_modality:
        return per_modality
    lengths = {m: len(v) for m, v in per_modality.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"The modalities have different tile counts {lengths}; use by_modality=True.")
    stacked = np.stack(list(per_modality.values()))
    return stacked.mean(axis=0) if method == "attention" else stacked.sum(axis=0)
