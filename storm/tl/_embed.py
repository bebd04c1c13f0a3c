"""``storm.tl.embed``: the frozen STORM model's centre-token embedding of every spot, into ``obsm``."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Literal, Protocol

import numpy as np
from anndata import AnnData

from storm._logging import logger
from storm.models._coverage import WARN_GENE_COVERAGE
from storm.models._modes import Mode, auto_mode, resolve_mode
from storm.tl._spatialdata import is_spatialdata, run_on_table
from storm.tl._utils import as_adata_list, clean_params, elapsed, save_data, start_timer


class _Embedder(Protocol):
    """What :func:`embed` needs of a model: :class:`storm.models.StormModel` and any duck-typed stand-in."""

    def embed(self, adata: AnnData, **kwargs: Any) -> np.ndarray: ...


def _check_embedding(emb: Any, adata: AnnData, model_name: str) -> np.ndarray:
    emb = np.asarray(emb)
    if emb.ndim != 2 or emb.shape[0] != adata.n_obs:
        raise RuntimeError(
            f"Model {model_name!r} returned an embedding of shape {emb.shape} for {adata.n_obs} spots; expected "
            "(n_obs, n_dims). This is a bug in the model's `embed`, please report it."
        )
    if not np.isfinite(emb).all():
        raise RuntimeError(
            f"Model {model_name!r} returned NaN or infinite embeddings; check the inputs (counts, images) and the "
            "checkpoint, or try mode='expression' / mode='image' to find which modality fails."
        )
    return emb.astype(np.float32, copy=False)


def _reading_the_panel(model: Any, adatas: list[AnnData], n_genes: int | None) -> tuple[Any, list[str]]:
    """``panel="data"``: a copy of ``model`` that also reads the data's other genes (see :func:`embed`)."""
    from storm.models import StormModel, read_panel

    if not isinstance(model, StormModel):
        raise ValueError(f"`panel='data'` needs a storm.models.StormModel, got {type(model).__name__}.")
    if model.config.net.expression_encoder != "gene_embedding":
        raise ValueError(
            "`panel='data'` needs a model with the panel-agnostic expression encoder "
            f"(net.expression_encoder='gene_embedding'); this one has {model.config.net.expression_encoder!r}. "
            "Use panel='model'."
        )
    extended, appended = read_panel(model, adatas, n_top_genes=n_genes)
    logger.info(
        f"embed: {len(appended)} gene(s) of the data appended to the model's {len(model.genes):,} (panel='data')"
    )
    return extended, appended


#: ``model="from_data"``: the name recorded in ``uns[key_added]['params']['model']``.
FROM_DATA = "from_data"


def _model_from_data(adatas: list[AnnData], n_genes: int | None, library_key: str) -> Any:
    """``model="from_data"``: storm-mini's network set up on the slides, untrained (see :func:`embed`)."""
    from storm.models import from_data

    return from_data(adatas, n_top_genes=3000 if n_genes is None else int(n_genes), library_key=library_key)


def _coverage_threshold(accepted: Any, min_gene_coverage: float | None, model_name: str) -> float | None:
    """Return the ``min_gene_coverage`` to pass to ``model.embed``: the one given, else the model's default."""
    if "min_gene_coverage" not in accepted:
        if min_gene_coverage is not None:
            raise ValueError(f"Model {model_name!r} takes no `min_gene_coverage`; leave it at None.")
        return None
    default = accepted["min_gene_coverage"].default
    value = default if min_gene_coverage is None else min_gene_coverage
    return None if value is inspect.Parameter.empty else float(value)


def embed(
    adata: AnnData | Sequence[AnnData],
    model: _Embedder | Literal["from_data"] | None = None,
    *,
    mode: Mode = "auto",
    key_added: str = "X_storm",
    batch_size: int = 256,
    accelerator: str = "auto",
    library_key: str = "library_id",
    context: bool = True,
    panel: Literal["model", "data"] = "model",
    n_panel_genes: int | None = 3000,
    min_gene_coverage: float | None = None,
    table_key: str | None = None,
    image_key: str | None = None,
    copy: bool = False,
) -> AnnData | list[AnnData] | None:
    """Embed every spot with the frozen STORM model: the centre token of its spatial window (paper, §Embeddings).

    A thin step: check the inputs, call ``model.embed``, write the result. The torch code never sees the AnnData;
    :class:`storm.models.StormModel` cuts windows and patches itself.

    Parameters
    ----------
    adata
        Spots × genes with raw counts in ``.X``, ``obsm['spatial']`` and, for the image modes,
        ``uns['spatial'][library_id]['images']`` (squidpy layout). Several slides are told apart by
        ``obs[library_key]``; windows never cross slides. A list of AnnData is embedded one by one with the same
        model, so their embeddings share one space (cluster them together with :func:`storm.tl.domains`).
        Or a :class:`spatialdata.SpatialData`: its table (which records its slide in ``uns['spatial']``, e.g. by
        :func:`storm.pp.set_slide`) is embedded with its image element, placed by the two elements' transformations
        (a uniform scale and a shift), and the results are written into the table.
    model
        ``None`` (the default): the model measured best for what is read. When every slide is read from expression
        alone (``mode="expression"``, or ``"auto"`` without an H&E image fine enough for the model's patches) with
        ``panel="model"``, ``"from_data"`` (below); when an image is read, or with ``panel="data"``, storm-mini, the
        model shipped with storm (:meth:`storm.models.StormModel.from_pretrained`). ``params['model']`` records
        which. A :class:`storm.models.StormModel` (``StormModel.from_pretrained()`` for storm-mini whatever is
        read), or any object with ``embed(adata, mode=, batch_size=, accelerator=, library_key=) -> ndarray`` and
        ``name`` / ``version`` attributes. Zero-shot, a model reads only the genes on its list
        (``uns[key_added]['params']['gene_coverage']``); :func:`storm.train.adapt` returns a copy adapted to your
        slides, self-supervised, that reads your whole panel.
        ``"from_data"``: no pretrained weights, but storm-mini's network set up on the slides given and not
        trained, in expression mode (:func:`storm.models.from_data`: ``n_panel_genes`` of their most variable genes,
        gene embeddings from their PCA loadings, the mean embedding of 5 initialisations, seeds 0–4). It is the
        default for expression because, on sections outside a model's corpus, it finds spatial domains better than
        pretrained storm-mini: a mean ARI over the seven labelled sections of 0.309 where storm-mini's recipe,
        pretrained without them, scores 0.153 (``benchmarks/domains_from_data.py``, ``benchmarks/domains_folds.py``;
        more initialisations, concatenating them or smoothing gave no held-out gain,
        ``benchmarks/domains_from_data_grid.py``). storm-mini's small pretraining does not carry over to other
        tissue and panels; a model pretrained at the paper's scale is passed as ``model``.
    mode
        ``"joint"`` (H&E + expression), ``"image"`` (H&E only), ``"expression"`` (expression only), or ``"auto"``:
        joint when there are counts and every slide has an image fine enough for the model's patches (not upsampled
        over 2×; a low-resolution Visium image alone is not), image with images only, expression otherwise.
    key_added
        Key of ``obsm`` (and ``uns``) written.
    batch_size
        Windows per forward pass.
    accelerator
        ``"auto"``, ``"cpu"``, ``"cuda"``, … (as in Lightning); ``"auto"`` picks a GPU when one is present.
    library_key
        Column of ``obs`` with the slide id.
    context
        ``False``: each spot's window holds only the spot itself (the paper's "no spatial context" ablation, same
        weights); passed to ``model.embed`` only then.
    panel
        Which genes are read. ``"model"``: those on the model's gene list (the others are ignored; see
        ``gene_coverage`` below). ``"data"``: the data's other genes too, zero-shot: the ``n_panel_genes`` most
        variable of them are appended to a copy of the model (:func:`storm.models.read_panel`), each with the gene
        embedding its co-expression with the known genes points to, so no measured gene is thrown away (``model``
        itself is not modified; a list of AnnData gets one copy, so their embeddings still share one space). Needs
        a :class:`storm.models.StormModel` with the gene-embedding expression encoder.
    n_panel_genes
        With ``panel="data"``: at most this many genes appended, the most variable first (Seurat dispersion);
        ``None``: every gene of the data. With ``model="from_data"`` (and the default model for expression): the
        genes the model is set up on (``None``: 3,000).
    min_gene_coverage
        Where expression is read, refuse data holding less than this share of the model's genes (``None``: the
        model's default, 1 % for :class:`storm.models.StormModel`, whose ``embed`` also warns below 10 %; 0: never
        refuse). See ``storm.models._coverage.MIN_GENE_COVERAGE`` for how these were chosen.
    table_key, image_key
        SpatialData only: which table and image element (default: the only one).
    copy
        Return a copy (or a list of copies; for a SpatialData, its table with the results) instead of writing into
        ``adata``.

    Returns
    -------
    ``None``, or the new AnnData (list of AnnData for a list) if ``copy=True``. Written:

    - ``obsm[key_added]``: float32 (n_obs, n_dims) embedding of each spot (its window's centre token: the paper's);
    - ``obsm[f"{key_added}_niche"]``: float32 (n_obs, n_dims) niche embedding, the mean of all output tokens of
      the spot's window: its neighbourhood, which :func:`storm.tl.domains` clusters (models whose ``embed`` has
      no ``niche`` option write none);
    - ``uns[key_added]['params']``: ``mode`` (resolved), ``model``, ``version``, ``batch_size``, ``library_key``,
      ``context``, ``min_gene_coverage`` (the threshold applied, ``None`` for a model without one) and
      ``warn_gene_coverage`` (below it ``StormModel.embed`` warns), and, where expression is read by a model that
      reports it, ``gene_coverage``: a dict of ``n_genes`` (the data's), ``n_model_genes``, ``n_used`` (genes the
      model reads; the others are ignored), ``n_matched_ignoring_case``, ``fraction_used`` and
      ``fraction_of_model`` (the coverage compared with the thresholds); ``panel`` and ``n_genes_appended``
      (genes of the data appended to the model's list with ``panel="data"``, else 0).

    Raises
    ------
    ValueError
        ``model="from_data"`` with a mode other than ``"auto"``/``"expression"`` or with ``panel="data"``; unknown
        mode, or the inputs a mode needs are missing (no counts, no image for a slide), counts all zero,
        too few of the model's genes (``min_gene_coverage``), or a ``min_gene_coverage`` the model does not take.
        Nothing is written.
    RuntimeError
        The model returned an array of the wrong shape or with non-finite values. Nothing is written.

    Examples
    --------
    >>> import storm
    >>> adata = storm.datasets.dlpfc("151673")
    >>> storm.tl.embed(adata)  # doctest: +SKIP
    >>> storm.tl.domains(adata, n_domains=7)  # doctest: +SKIP
    """
    if is_spatialdata(adata):
        return run_on_table(
            embed,
            adata,
            model,
            table_key=table_key,
            image_key=image_key,
            need_image=mode in ("joint", "image"),
            copy=copy,
            writes={"obsm": [key_added, f"{key_added}_niche"], "uns": [key_added]},
            mode=mode,
            key_added=key_added,
            batch_size=batch_size,
            accelerator=accelerator,
            library_key=library_key,
            context=context,
            panel=panel,
            n_panel_genes=n_panel_genes,
            min_gene_coverage=min_gene_coverage,
        )
    start = start_timer()
    adatas, is_list = as_adata_list(adata)
    if not isinstance(batch_size, int | np.integer) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer, got {batch_size!r}.")
    if not isinstance(key_added, str) or not key_added:
        raise ValueError(f"`key_added` must be a non-empty string, got {key_added!r}.")
    if panel not in ("model", "data"):
        raise ValueError(f"`panel` must be 'model' or 'data', got {panel!r}.")
    if n_panel_genes is not None and (isinstance(n_panel_genes, bool) or int(n_panel_genes) < 1):
        raise ValueError(f"`n_panel_genes` must be a positive integer or None, got {n_panel_genes!r}.")
    from_data = isinstance(model, str) and model == FROM_DATA
    if isinstance(model, str) and not from_data:
        raise ValueError(
            f"`model` is a storm.models.StormModel, None (storm-mini) or 'from_data', got {model!r}; load a saved "
            "model with storm.models.StormModel.from_pretrained(path)."
        )
    if from_data and (mode not in ("auto", "expression") or panel != "model"):
        raise ValueError(
            "model='from_data' is untrained: it reads expression only (mode='auto' or 'expression') and already reads "
            f"the data's own genes (panel='model'); got mode={mode!r}, panel={panel!r}."
        )
    mode = "expression" if from_data else mode
    # resolve every mode before loading the model or embedding anything: a bad list element fails fast, untouched
    modes = [resolve_mode(a, mode, library_key=library_key) for a in adatas]

    default = model is None
    if from_data:
        model = _model_from_data(adatas, n_panel_genes, library_key)
    elif default:
        from storm.models import StormModel  # lazily: torch is imported only when an embedding is asked for

        model = StormModel.from_pretrained(None)
    if not callable(getattr(model, "embed", None)):
        raise ValueError(f"`model` needs an `embed` method (a storm.models.StormModel), got {type(model).__name__}.")

    if mode == "auto":
        modes = [auto_mode(a, model, library_key=library_key) for a in adatas]
    if default and panel == "model" and all(m == "expression" for m in modes):
        # no image read: the network set up on the slides beats the pretrained one on unseen sections (docstring)
        logger.info("embed: expression only and no model given: model='from_data' (see storm.tl.embed's `model`)")
        model = _model_from_data(adatas, n_panel_genes, library_key)
    name = str(getattr(model, "name", None) or type(model).__name__)
    # StormModel keeps the storm version that wrote its checkpoint in its config
    version = getattr(model, "version", None) or getattr(getattr(model, "config", None), "version", None)
    appended: list[str] = []
    if panel == "data" and any(m != "image" for m in modes):
        model, appended = _reading_the_panel(
            model, [a for a, m in zip(adatas, modes, strict=True) if m != "image"], n_panel_genes
        )

    extra: dict[str, Any] = {} if context else {"context": False}  # duck-typed models without it keep working
    accepted = inspect.signature(model.embed).parameters
    with_niche = "niche" in accepted
    if with_niche:
        extra["niche"] = True
    threshold = _coverage_threshold(accepted, min_gene_coverage, name)
    if threshold is not None:
        extra["min_gene_coverage"] = threshold
    embeddings, niches, coverages = [], [], []
    for a, resolved in zip(adatas, modes, strict=True):
        emb = model.embed(
            a, mode=resolved, batch_size=int(batch_size), accelerator=accelerator, library_key=library_key, **extra
        )
        emb, niche = emb if with_niche else (emb, None)
        embeddings.append(_check_embedding(emb, a, name))
        niches.append(None if niche is None else _check_embedding(niche, a, name))
        coverage = getattr(model, "gene_coverage", None)
        coverages.append(coverage(a) if callable(coverage) and resolved != "image" else None)

    # all embeddings computed and checked: only now write, so a failure leaves every input untouched
    outputs = [a.copy() for a in adatas] if copy else adatas
    for a, emb, niche, resolved, coverage in zip(outputs, embeddings, niches, modes, coverages, strict=True):
        save_data(a, attr="obsm", key=key_added, data=emb)
        if niche is not None:
            save_data(a, attr="obsm", key=f"{key_added}_niche", data=niche)
        params = {
            "mode": resolved,
            "model": name,
            "version": None if version is None else str(version),
            "batch_size": int(batch_size),
            "library_key": library_key if library_key in a.obs else None,
            "context": bool(context),
            "min_gene_coverage": threshold,
            "warn_gene_coverage": WARN_GENE_COVERAGE if threshold is not None else None,
            "gene_coverage": coverage,
            "panel": panel,
            "n_genes_appended": len(appended),
        }
        save_data(a, attr="uns", key=key_added, data={"params": clean_params(params)})
    dims = embeddings[0].shape[1]
    logger.info(
        f"embed: finished ({elapsed(start)}): {sum(a.n_obs for a in adatas)} spots × {dims} dims "
        f"({', '.join(sorted(set(modes)))} mode, model {name!r}) in obsm[{key_added!r}]"
    )
    if not copy:
        return None
    return outputs if is_list else outputs[0]
