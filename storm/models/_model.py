"""The user-facing STORM model: set up from AnnData, embed spots, save and load."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from anndata import AnnData
from tqdm.auto import tqdm

from storm._logging import logger
from storm._slide_data import SlideArrays
from storm.models._checkpoint import read_checkpoint, resolve_pretrained, write_checkpoint
from storm.models._config import StormModelConfig, window_positions
from storm.models._coverage import MIN_GENE_COVERAGE, check_gene_coverage
from storm.models._prepare import has_counts, panel_coverage, pca_loadings, prepare_slides, select_genes
from storm.nn import ExpressionEncoder, StormNetConfig, StormPretrainModel
from storm.pp._stain import StainProfile, fit_stain_profile, normalize_stain
from storm.pp._stain_profile import N_PATCHES, sample_rows

__all__ = ["StormModel", "resolve_device"]


def resolve_device(accelerator: str | torch.device = "auto") -> torch.device:
    """Device for ``accelerator``: ``"auto"`` = CUDA when available, else CPU (never MPS unless asked for).

    Parameters
    ----------
    accelerator
        ``"auto"``, ``"cpu"``, ``"cuda"``/``"gpu"`` (optionally ``"cuda:1"``), ``"mps"``, or a ``torch.device``.

    Returns
    -------
    torch.device
    """
    if isinstance(accelerator, torch.device):
        return accelerator
    name = str(accelerator).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "gpu":
        name = "cuda"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"accelerator={accelerator!r} but no CUDA device is available; use 'cpu' or 'auto'.")
    try:
        return torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"Unknown accelerator {accelerator!r}; use 'auto', 'cpu', 'cuda' or 'mps'.") from err


def _as_datasets(adata: AnnData | Sequence[AnnData | Sequence[AnnData]]) -> list[list[AnnData]]:
    if isinstance(adata, AnnData):
        return [[adata]]
    out = []
    for item in adata:
        if isinstance(item, AnnData):
            out.append([item])
        elif isinstance(item, Sequence) and item and all(isinstance(a, AnnData) for a in item):
            out.append(list(item))
        else:
            raise ValueError("Pass an AnnData, a list of AnnData, or a list of lists of AnnData (one per data set).")
    if not out:
        raise ValueError("No AnnData given.")
    return out


class StormModel:
    """STORM: joint embeddings of spots from their H&E patches, expression and spatial neighbourhood.

    A model is a network (:class:`~storm.nn.StormPretrainModel`) plus the configuration that says how to turn an
    AnnData into its inputs (:class:`StormModelConfig`: gene list, patch size in µm, window). Build one with
    :meth:`setup` (fresh, to pretrain), :meth:`load` (a saved folder) or :meth:`from_pretrained`; pretrain it with
    :func:`storm.train.pretrain`; embed spots with :meth:`embed`.

    Parameters
    ----------
    config
        The model configuration.
    module
        The network; default a freshly initialised one.

    Examples
    --------
    >>> model = storm.models.StormModel.from_pretrained()  # doctest: +SKIP
    >>> adata.obsm["X_storm"] = model.embed(adata)  # doctest: +SKIP
    """

    def __init__(self, config: StormModelConfig, module: StormPretrainModel | None = None) -> None:
        self.config = config
        self.module = module if module is not None else StormPretrainModel(config.net)
        if self.module.config.to_dict() != config.net.to_dict():
            raise ValueError("The module was built with another StormNetConfig than config.net.")

    def __repr__(self) -> str:
        cfg = self.config
        n = self.module.parameter_counts()["inference"]
        return (
            f"StormModel(genes={len(cfg.genes):,}, dim={cfg.net.dim}, depth={cfg.net.depth}, modalities="
            f"{'+'.join(self.modalities)}, image_encoder={cfg.net.image_encoder!r}, patch={cfg.size_um:g} µm @ "
            f"{cfg.patch_px} px, window={cfg.window}, parameters={n:,})"
        )

    # ------------------------------------------------------------------ properties
    @property
    def genes(self) -> list[str]:
        """The model's gene list."""
        return list(self.config.genes)

    @property
    def modalities(self) -> tuple[str, ...]:
        """Modalities of the network (``"image"``, ``"expression"``)."""
        return tuple(self.module.modalities)

    @property
    def dim(self) -> int:
        """Width of the embeddings."""
        return int(self.config.net.dim)

    # ------------------------------------------------------------------ construction
    @classmethod
    def setup(
        cls,
        adata: AnnData | Sequence[AnnData | Sequence[AnnData]],
        *,
        genes: Sequence[str] | None = None,
        n_top_genes: int = 1000,
        include_genes: Sequence[str] = (),
        net: StormNetConfig | dict[str, Any] | None = None,
        size_um: float = 55.0,
        window: int = 5,
        window_method: str = "auto",
        k: int = 24,
        target_sum: float = 1e4,
        image: str = "auto",
        library_key: str = "library_id",
        layer: str | None = None,
        init_pca: bool = True,
        pca_max_spots: int = 10_000,
        random_state: int = 0,
    ) -> StormModel:
        """Build a fresh (untrained) model for the given data: gene list, panels, scale.

        Parameters
        ----------
        adata
            An AnnData, a list of AnnData, or a list of data sets (lists of AnnData). Each gets the ``n_top_genes``
            highly variable genes of its data set; all are used for the PCA initialisation. Not modified.
        genes
            Use exactly this gene list instead of choosing one.
        n_top_genes
            Highly variable genes per data set (when ``genes`` is not given).
        include_genes
            Genes always on the list (first), e.g. :func:`storm.datasets.hist2st_genes`.
        net
            Network hyper-parameters (:class:`~storm.nn.StormNetConfig` or a dict of its fields; ``n_genes`` is set
            from the gene list). Default: storm-mini's.
        size_um
            Patch side in µm (resized to ``net.patch_px``).
        window
            Window side on grid platforms; with ``net["window_size"] = 1`` (the no-context ablation) it is set to 1.
        window_method, k
            See :func:`storm.pp.spatial_windows`.
        target_sum
            Counts per spot before ``log1p``.
        image
            Which slide image patches come from (``"auto"``, ``"fullres"``, ``"hires"``, ``"lowres"``).
        library_key
            Column of ``obs`` naming each spot's slide.
        layer
            Read raw counts from this layer instead of ``.X``.
        init_pca
            Initialise the gene embeddings from PCA loadings of the data's expression (the paper's choice).
        pca_max_spots
            Spots sampled for the PCA.
        random_state
            Seed of the network initialisation, the spot sample and the PCA.

        Returns
        -------
        StormModel
        """
        datasets = _as_datasets(adata)
        flat = [a for d in datasets for a in d]
        if genes is None:
            genes = select_genes(
                datasets,
                n_top_genes=n_top_genes,
                include=include_genes,
                library_key=library_key,
                layer=layer,
                target_sum=target_sum,
            )
        genes = [str(g) for g in genes]
        if isinstance(net, StormNetConfig):
            net = net.to_dict()
        net = dict(net or {})
        net["n_genes"] = len(genes)
        if net.get("window_size") == 1:
            window = 1
        net["window_size"] = window_positions(window, k)
        config = StormModelConfig(
            net=StormNetConfig.from_dict(net),
            genes=genes,
            size_um=size_um,
            window=window,
            window_method=window_method,
            k=k,
            target_sum=target_sum,
            image=image,
        )
        torch.manual_seed(random_state)
        model = cls(config)
        if config.net.image_encoder == "efficientnet_lite0":  # start the tower from ImageNet, as timm's does
            from storm.nn import load_imagenet_weights

            load_imagenet_weights(model.module.image_encoder.backbone)
            if model.module.teacher is not None:
                model.module.update_teacher(momentum=0.0)
        encoder = model.module.expression_encoder
        if init_pca and isinstance(encoder, ExpressionEncoder):
            slides = [
                s for a in flat for s in model.prepare(a, mode="expression", library_key=library_key, layer=layer)
            ]
            loadings = pca_loadings(slides, config.net.gene_dim, max_spots=pca_max_spots, random_state=random_state)
            if loadings is not None:
                encoder.init_from_pca(torch.from_numpy(loadings))
                if model.module.teacher is not None:
                    model.module.update_teacher(momentum=0.0)
                logger.info(f"StormModel.setup: gene embeddings initialised from {loadings.shape[1]} PCA loadings")
        logger.info(f"StormModel.setup: {model!r}")
        return model

    # ------------------------------------------------------------------ data
    def prepare(
        self,
        adata: AnnData,
        *,
        mode: str = "auto",
        library_key: str = "library_id",
        layer: str | None = None,
    ) -> list[SlideArrays]:
        """Turn an AnnData into per-slide arrays for this model (see :func:`storm.models.prepare_slides`).

        Parameters
        ----------
        adata
            Spots of one or several slides. Not modified.
        mode
            ``"auto"``, ``"joint"``, ``"image"`` or ``"expression"`` (see :meth:`embed`).
        library_key
            Column of ``obs`` naming each spot's slide.
        layer
            Read raw counts from this layer.

        Returns
        -------
        list[SlideArrays]
        """
        return prepare_slides(
            adata, self.config, mode=mode, library_key=library_key, layer=layer, modalities=self.modalities
        )

    def gene_coverage(self, adata: AnnData) -> dict[str, int | float]:
        """How much of ``adata``'s gene panel this model reads (genes not on its list are ignored).

        Names match exactly, else ignoring letter case (e.g. mouse ``Gad1`` → human ``GAD1``; see
        :func:`storm.models.match_genes`).

        Parameters
        ----------
        adata
            Cells or spots × genes. Not modified.

        Returns
        -------
        dict
            ``n_genes`` (of ``adata``), ``n_model_genes``, ``n_used``, ``n_matched_ignoring_case``,
            ``fraction_used`` (of ``adata``'s genes) and ``fraction_of_model`` (of the model's gene list).
        """
        return panel_coverage(adata.var_names, self.config.genes)

    # ------------------------------------------------------------------ inference
    def embed(
        self,
        adata: AnnData | Sequence[AnnData],
        *,
        mode: str = "auto",
        batch_size: int = 256,
        accelerator: str | torch.device = "auto",
        library_key: str = "library_id",
        layer: str | None = None,
        chunk_size: int = 2048,
        context: bool = True,
        niche: bool = False,
        stain_target: StainProfile | None = None,
        progress: bool = True,
        min_gene_coverage: float = MIN_GENE_COVERAGE,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray] | list:
        """Embed every spot: the centre token(s) of its window, from the frozen model.

        Parameters
        ----------
        adata
            Spots with coordinates, ``uns['spatial']`` and raw counts and/or an H&E image; or a list of such. Not
            modified.
        mode
            ``"auto"``: every modality the model has and each slide offers; ``"joint"``: H&E and expression
            (required); ``"image"``: H&E only (e.g. slides without expression; "virtual ST"); ``"expression"``:
            expression only.
        batch_size
            Windows per forward pass (and patches per image-encoder pass).
        accelerator
            ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``.
        library_key
            Column of ``obs`` naming each spot's slide.
        layer
            Read raw counts from this layer instead of ``.X``.
        chunk_size
            Windows per chunk: the image features of the spots a chunk's windows touch are computed once and shared
            by its windows; memory grows with the chunk, not with the slide.
        context
            ``False``: each spot's window holds only the spot itself (the "no spatial context" ablation of the paper,
            with the same weights).
        niche
            Also return the niche embeddings: the mean of all output tokens of each spot's window, a description of
            its neighbourhood (what :func:`storm.tl.domains` clusters). Costs one full last transformer block.
        stain_target
            Normalise the H&E to these stains (Macenko): each slide's own profile is fitted on the patches of up to
            256 of its spots (:func:`storm.pp.fit_stain_profile`) and every patch is mapped to ``stain_target``
            before the image encoder. ``None`` (default): patches as scanned.
        progress
            Show a progress bar.
        min_gene_coverage
            Where expression is read, refuse data holding less than this share of the model's genes
            (:meth:`gene_coverage`'s ``fraction_of_model``); below ``storm.models._coverage.WARN_GENE_COVERAGE``
            (10 %) a warning says so. The default, 1 %, lets through every data set of fig. 4 (MERFISH, 155 genes:
            1.6 % of storm-mini's) and refuses a handful of genes; 0 turns the refusal off.

        Returns
        -------
        np.ndarray, tuple or list
            float32 ``(n_obs, dim)`` in ``adata.obs`` order; with ``niche=True`` the pair ``(centre, niche)``; one
            result per AnnData for a list.

        Raises
        ------
        ValueError
            An unknown mode; a mode needing an image on a slide without one, or counts the data lack; counts that are
            all zero on the model's genes; no gene in common with the model's gene list, or less than
            ``min_gene_coverage`` of it; bad coordinates or scale.
        """
        if not isinstance(adata, AnnData):
            return [
                self.embed(
                    a,
                    mode=mode,
                    batch_size=batch_size,
                    accelerator=accelerator,
                    library_key=library_key,
                    layer=layer,
                    chunk_size=chunk_size,
                    context=context,
                    niche=niche,
                    stain_target=stain_target,
                    progress=progress,
                    min_gene_coverage=min_gene_coverage,
                )
                for a in adata
            ]
        if batch_size < 1 or chunk_size < 1:
            raise ValueError(f"batch_size and chunk_size must be ≥ 1, got {batch_size} and {chunk_size}.")
        if mode != "image" and "expression" in self.modalities and has_counts(adata, layer):
            check_gene_coverage(self.gene_coverage(adata), min_gene_coverage)
        slides = self.prepare(adata, mode=mode, library_key=library_key, layer=layer)
        if any(s.has_image for s in slides) and self.module.image_encoder is None:
            raise ValueError(
                "This model takes precomputed image features, which embed() cannot compute; use mode='expression' "
                "or call the network (StormModel.module) with features."
            )
        result = self.embed_prepared(
            slides,
            adata.n_obs,
            batch_size=batch_size,
            accelerator=accelerator,
            chunk_size=chunk_size,
            context=context,
            niche=niche,
            stain_target=stain_target,
            progress=progress,
        )
        modes = {("joint" if s.has_image and s.has_expr else "image" if s.has_image else "expression") for s in slides}
        logger.info(
            f"embed: {adata.n_obs:,} spots of {len(slides)} slide(s) embedded ({', '.join(sorted(modes))}"
            f"{'' if context else ', no spatial context'})"
        )
        return result

    def embed_prepared(
        self,
        slides: Sequence[SlideArrays],
        n_obs: int,
        *,
        batch_size: int = 256,
        accelerator: str | torch.device = "auto",
        chunk_size: int = 2048,
        context: bool = True,
        niche: bool = False,
        stain_target: StainProfile | None = None,
        progress: bool = True,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Embed slides already prepared by :meth:`prepare` (the core of :meth:`embed`, without AnnData).

        The network is put in eval mode for the pass and given back in the mode it was in, so a training loop can
        call this between steps (:class:`storm.train.DomainProbe` does).

        Parameters
        ----------
        slides
            Prepared slides; each slide's ``obs_rows`` say where its spots go in the output.
        n_obs
            Rows of the output (the spots of the AnnData the slides came from).
        batch_size, accelerator, chunk_size, context, niche, stain_target, progress
            As in :meth:`embed`.

        Returns
        -------
        np.ndarray or tuple
            float32 ``(n_obs, dim)``; with ``niche=True`` the pair ``(centre, niche)``. Rows no slide covers stay 0.
        """
        device = resolve_device(accelerator)
        self.module.to(device)
        was_training = self.module.training
        self.module.eval()
        out = np.zeros((n_obs, self.dim), dtype=np.float32)
        out_niche = np.zeros_like(out) if niche else None
        total = sum(s.n_obs for s in slides)
        bar = tqdm(total=total, desc="storm embed", unit="spot", disable=not progress)
        try:
            with torch.inference_mode():
                for slide in slides:
                    self._embed_slide(
                        slide, out, out_niche, device, batch_size, chunk_size, bar, context=context, stain=stain_target
                    )
        finally:
            bar.close()
            self.module.train(was_training)
        return (out, out_niche) if niche else out

    def _embed_slide(
        self,
        slide: SlideArrays,
        out: np.ndarray,
        out_niche: np.ndarray | None,
        device: torch.device,
        batch_size: int,
        chunk_size: int,
        bar,
        *,
        context: bool = True,
        stain: StainProfile | None = None,
    ) -> None:
        # Each chunk's windows touch a set of spots; every one of them is encoded once (image features, expression
        # token before neighbourhood attention) and gathered into the windows (StormPretrainModel.embed_windows).
        w = min(slide.window_size, self.config.net.window_size) if context else 1
        pixels = slide.patches.load() if slide.has_image else None
        px = self.config.patch_px
        source = None
        if stain is not None and pixels is not None:  # the slide's own stains, from a sample of its spots
            source = fit_stain_profile(slide.patches.cut(pixels, sample_rows(slide.n_obs, N_PATCHES, 0), px))
        gene_mask = torch.from_numpy(slide.gene_mask).to(device) if slide.has_expr else None
        for start in range(0, slide.n_obs, chunk_size):
            centres = np.arange(start, min(start + chunk_size, slide.n_obs))
            index = slide.index[centres, :w]
            valid = index >= 0
            needed = np.unique(index[valid])  # spots the chunk's windows touch, each encoded once
            pos = np.where(valid, np.searchsorted(needed, np.where(valid, index, needed[0])), -1)
            parts: dict[str, list[torch.Tensor]] = {}
            for b0 in range(0, len(needed), batch_size):
                rows = needed[b0 : b0 + batch_size]
                image = expr = None
                if pixels is not None:
                    patches = slide.patches.cut(pixels, rows, px)
                    if source is not None:
                        patches = normalize_stain(patches, source, stain)
                    image = torch.from_numpy(patches).permute(0, 3, 1, 2).to(device)
                if slide.has_expr:
                    expr = torch.from_numpy(slide.expression(rows)).to(device)
                feats = self.module.spot_features(image=image, expr=expr, gene_mask=gene_mask)
                for key, value in feats.items():
                    parts.setdefault(key, []).append(value)
            spots = {key: torch.cat(value) for key, value in parts.items()}
            offsets_all = torch.from_numpy(slide.offsets_um[centres, :w]).to(device)
            pos_t = torch.from_numpy(pos).to(device)
            for b0 in range(0, len(centres), batch_size):
                sl = slice(b0, b0 + batch_size)
                emb = self.module.embed_windows(spots, pos_t[sl], offsets_all[sl], niche=out_niche is not None)
                rows = slide.obs_rows[centres[sl]]
                if out_niche is not None:
                    emb, emb_niche = emb
                    out_niche[rows] = emb_niche.float().cpu().numpy()
                out[rows] = emb.float().cpu().numpy()
                bar.update(len(rows))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, *, overwrite: bool = False, training: dict[str, Any] | None = None) -> Path:
        """Save the inference weights (``model.safetensors``), ``config.json`` and ``SHA256SUMS`` into folder ``path``.

        Pretraining-only parts (EMA teacher, decoders; :data:`storm.nn.PRETRAINING_ONLY_PREFIXES`) are left out.
        ``config.json`` holds the storm version, the network configuration, the gene list, the setup arguments and
        the sha256 of the weights file; ``SHA256SUMS`` the sha256 of both files (``sha256sum`` format), which
        :meth:`load` checks.

        Parameters
        ----------
        path
            Output folder (created).
        overwrite
            Replace a model saved there before.
        training
            Optional provenance stored in ``config.json`` (data, steps, losses).

        Returns
        -------
        Path
            The folder.
        """
        return write_checkpoint(
            path, self.module.inference_state_dict(), self.config.to_dict(), training=training, overwrite=overwrite
        )

    @classmethod
    def load(cls, path: str | os.PathLike) -> StormModel:
        """Load a model saved by :meth:`save`, after validating it.

        Checks: both files match their sha256 in ``SHA256SUMS`` (otherwise the folder is refused: a gene list
        reordered in ``config.json`` would read every gene into another gene's embedding), every configuration
        key is known, the gene list fits the network and the weights, and the weights fit the network exactly
        (strict: no missing, extra or reshaped tensor).

        Parameters
        ----------
        path
            Folder holding ``config.json``, ``model.safetensors`` and ``SHA256SUMS`` (their checksums).

        Returns
        -------
        StormModel

        Raises
        ------
        FileNotFoundError
            Missing files.
        ValueError
            Tampered or corrupt weights, unknown configuration keys, or weights of another configuration or gene list.
        """
        config_dict, state = read_checkpoint(path)
        config = StormModelConfig.from_dict(config_dict)
        n_weights = None
        if "expression_encoder.gene_embedding" in state:
            n_weights = state["expression_encoder.gene_embedding"].shape[0]
        elif "expression_encoder.proj.weight" in state:  # the raw-expression ablation
            n_weights = state["expression_encoder.proj.weight"].shape[1]
        if n_weights is not None and n_weights != len(config.genes):
            raise ValueError(
                f"The gene list in config.json has {len(config.genes):,} genes but the weights were trained on "
                f"{n_weights:,}: the files do not belong together."
            )
        # The weights come from the file: do not fetch a timm backbone's pretrained weights first.
        build_net = dataclasses.replace(config.net, timm_pretrained=False)
        module = StormPretrainModel(build_net)
        module.load_inference_state_dict(state)
        module.config = config.net
        module.eval()
        model = cls(config, module)
        logger.info(f"Loaded {model!r} from {path}")
        return model

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike | None = None, *, revision: str | None = None
    ) -> StormModel:
        """Load a pretrained model: the embedded storm-mini, a local folder, or a Hugging Face Hub repository.

        Parameters
        ----------
        name_or_path
            ``None`` (or ``"storm-mini"``): the model shipped with storm; a folder saved by :meth:`save`; or a Hub
            repository id ``"owner/name"`` holding ``model.safetensors``, ``config.json`` and ``SHA256SUMS`` (only
            those are downloaded; ``HF_HUB_OFFLINE=1`` uses the local cache only).
        revision
            Hub branch, tag or commit.

        Returns
        -------
        StormModel

        Raises
        ------
        FileNotFoundError
            The weights cannot be found or downloaded (the message says what to do).
        ValueError
            The files fail validation (see :meth:`load`).
        """
        return cls.load(resolve_pretrained(name_or_path, revision=revision))
