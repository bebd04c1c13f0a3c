"""``storm.tl.cohort_features``: tile, embed and predict every slide of a cohort, one feature file per slide.

Each slide goes through :func:`storm.tl.virtual_st` (tissue tiles, their H&E-mode STORM embedding and predicted
expression) and is written to ``OUT/<slide_id>.h5ad``: the tiles' AnnData, with the provenance of the run in
``uns['storm_features']``. The slides are the items of a Lightning ``Trainer.predict`` run, so one GPU, several GPUs
or several nodes (``devices=``, ``strategy="ddp"``, ``num_nodes=``; torchrun and SLURM through Lightning's own
environment detection) split the cohort without a launcher of storm's own. Every file is written to a temporary name
and renamed into place (:func:`os.replace`, atomic on one file system), so a run killed at any moment leaves only whole
files; a run started again on the same folder skips the slides already written. A slide that fails (a corrupt tile,
no tissue) is logged and leaves no file; the others go on.

The folder is what :func:`storm.tl.slide_features` and the slide-level model read
(``storm.tl.slide_features(OUT)``).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from storm._logging import logger
from storm.tl._utils import elapsed, start_timer

__all__ = ["cohort_features", "read_cohort", "read_cohort_features"]

#: ``uns`` key of a feature file's provenance.
PROVENANCE_KEY = "storm_features"
#: Suffix of the feature files.
SUFFIX = ".h5ad"
#: Cohort table columns: the slide id, its image file and (optionally) its µm per pixel.
SLIDE_COLUMN, PATH_COLUMN, MPP_COLUMN = "slide_id", "path", "microns_per_pixel"


# ---------------------------------------------------------------------------------------------------- the cohort
def read_cohort(cohort: pd.DataFrame | str | os.PathLike) -> pd.DataFrame:
    """Read and check a cohort table: one row per slide, columns ``slide_id``, ``path`` and ``microns_per_pixel``.

    Parameters
    ----------
    cohort
        A CSV file or a DataFrame. ``path`` is the slide's image (relative paths are relative to the CSV's folder, or
        to the working directory for a DataFrame); ``microns_per_pixel`` is optional (empty: the file's own
        metadata). Other columns (e.g. the clinical ones) are ignored.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``slide_id`` (str), with ``path`` (absolute str) and ``microns_per_pixel`` (float, NaN = the
        file's own).

    Raises
    ------
    ValueError
        Missing columns, empty or repeated slide ids, ids that are not file names.
    FileNotFoundError
        Slide files that do not exist (all of them are listed).
    """
    root = Path.cwd()
    if not isinstance(cohort, pd.DataFrame):
        root = Path(cohort).resolve().parent
        cohort = pd.read_csv(cohort, dtype={SLIDE_COLUMN: str, PATH_COLUMN: str})
    missing = [c for c in (SLIDE_COLUMN, PATH_COLUMN) if c not in cohort.columns]
    if missing:
        raise ValueError(
            f"The cohort table needs the columns {SLIDE_COLUMN!r} and {PATH_COLUMN!r} (one row per slide); "
            f"{missing} missing (columns: {list(cohort.columns)[:10]})."
        )
    ids = cohort[SLIDE_COLUMN].astype("string").str.strip()
    bad = [str(i) for i in ids if pd.isna(i) or not i or i != Path(i).name or i.startswith(".")]
    if bad:
        raise ValueError(f"Slide ids must be non-empty file names (no '/', not starting with '.'), got {bad[:5]}.")
    if ids.duplicated().any():
        raise ValueError(f"Slide ids repeat in the cohort table: {sorted(set(ids[ids.duplicated()]))[:5]}.")
    paths = [str(p if Path(p).is_absolute() else root / p) for p in cohort[PATH_COLUMN].astype(str)]
    absent = [p for p in paths if not Path(p).is_file()]
    if absent:
        raise FileNotFoundError(f"{len(absent)} slide files of the cohort do not exist, e.g. {absent[:3]}.")
    mpp = cohort[MPP_COLUMN] if MPP_COLUMN in cohort.columns else np.nan
    table = pd.DataFrame({PATH_COLUMN: paths, MPP_COLUMN: pd.to_numeric(mpp, errors="coerce")}, index=ids.to_numpy())
    table.index.name = SLIDE_COLUMN
    return table


def read_cohort_features(folder: str | os.PathLike) -> dict[str, Any]:
    """Read the feature files of a folder written by :func:`cohort_features`: ``{slide_id: AnnData of its tiles}``.

    Parameters
    ----------
    folder
        The output folder of :func:`cohort_features` (``*.h5ad``, one per slide; temporary files are ignored).

    Returns
    -------
    dict
        Slide id → AnnData (sorted by slide id), ready for :func:`storm.tl.slide_features`.

    Raises
    ------
    FileNotFoundError
        No such folder, or no feature file in it.
    """
    import anndata as ad

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"No folder {folder}: pass the output folder of storm.tl.cohort_features.")
    files = sorted(p for p in folder.glob(f"*{SUFFIX}") if not p.name.startswith("."))
    if not files:
        raise FileNotFoundError(f"{folder} holds no feature files (*{SUFFIX}): run `storm features` on it first.")
    return {p.stem: ad.read_h5ad(p) for p in files}


# ---------------------------------------------------------------------------------------------------- provenance
def _state_digest(module: Any) -> str:
    """sha256 of a torch module's parameters and buffers (names, shapes and bytes)."""
    import torch

    digest = hashlib.sha256()
    for key, t in sorted(module.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{key}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _run_identity(model: Any, head: Any, params: Mapping[str, Any]) -> dict[str, Any]:
    """Identify a run by what makes two runs' files interchangeable: the encoder, the head and the tiling."""
    from storm.tl._expression_features import encoder_identity

    encoder = encoder_identity(model)
    identity = {
        "encoder": {"name": encoder["name"], "fingerprint": encoder["fingerprint"]},
        "head": {"genes": len(head.genes), "fingerprint": _state_digest(head)},
        "params": dict(params),
    }
    identity["fingerprint"] = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return identity


def _file_fingerprint(path: Path) -> str | None:
    """Read the run fingerprint recorded in a feature file (not the file itself); None if it has none."""
    import h5py
    from anndata.io import read_elem

    try:
        with h5py.File(path, "r") as f:
            return str(read_elem(f[f"uns/{PROVENANCE_KEY}/fingerprint"]))
    except (OSError, KeyError):
        return None


def _check_finished(files: dict[str, Path], fingerprint: str) -> list[str]:
    """Slides already written by a run of the same identity; a file of another run is an error."""
    done = [s for s, p in files.items() if p.is_file()]
    foreign = [s for s in done if _file_fingerprint(files[s]) != fingerprint]
    if foreign:
        raise ValueError(
            f"{len(foreign)} feature files in {files[foreign[0]].parent} were written with another model, head or "
            f"tiling parameters (e.g. {foreign[:3]}): write to a new folder, or delete those files to recompute them."
        )
    return done


def _write_atomic(adata: Any, path: Path) -> None:
    """Write ``adata`` to a temporary file beside ``path``, then rename it into place (whole file or none)."""
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a run killed while writing this slide
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------- Lightning
def _lightning_parts(model: Any, head: Any, vst_kwargs: dict[str, Any], identity: dict[str, Any], out: Path):
    """Build the LightningModule (one slide per predict step) and the writer callback (lightning imported here)."""
    from lightning.pytorch import LightningModule
    from lightning.pytorch.callbacks import BasePredictionWriter

    from storm._version import __version__
    from storm.tl._virtual_st import virtual_st

    class SlideFeatures(LightningModule):
        """Runs :func:`storm.tl.virtual_st` on the slide of each predict step, on this process's device."""

        def __init__(self) -> None:
            super().__init__()
            self.net = model.module  # registered: Lightning moves it to this rank's device
            self.head = head

        def predict_step(self, row: dict[str, Any], batch_idx: int) -> dict[str, Any]:
            start = time.perf_counter()
            mpp = row[MPP_COLUMN] if np.isfinite(row[MPP_COLUMN]) else None
            try:
                tiles = virtual_st(
                    row[PATH_COLUMN],
                    self.head,
                    model=model,
                    microns_per_pixel=mpp,
                    library_id=row[SLIDE_COLUMN],
                    accelerator=self.device,
                    progress=False,
                    **vst_kwargs,
                )
            except Exception as err:  # one bad slide must not stop a cohort: reported in the summary
                logger.error(f"cohort_features: slide {row[SLIDE_COLUMN]!r} failed, no file written: {err}")
                return {**row, "error": f"{type(err).__name__}: {err}"}
            source = Path(row[PATH_COLUMN])
            tiles.uns[PROVENANCE_KEY] = {
                **identity,
                "slide_id": row[SLIDE_COLUMN],
                "source": {"path": str(source), "bytes": int(source.stat().st_size)},
                "storm_version": __version__,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "seconds": time.perf_counter() - start,
            }
            return {**row, "tiles": tiles}

    class FeatureWriter(BasePredictionWriter):
        """Writes each slide's tiles as soon as they are computed (atomically)."""

        def __init__(self) -> None:
            super().__init__(write_interval="batch")
            self.results: list[dict[str, Any]] = []

        def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
            tiles = prediction.pop("tiles", None)
            if tiles is not None:
                _write_atomic(tiles, out / f"{prediction[SLIDE_COLUMN]}{SUFFIX}")
                prediction["n_tiles"] = tiles.n_obs
            self.results.append(prediction)

    return SlideFeatures(), FeatureWriter()


def _first(batch: list[Any]) -> Any:
    """Collate of one slide per batch."""
    return batch[0]


def cohort_features(
    cohort: pd.DataFrame | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    head: Any,
    model: Any = None,
    tile_um: float = 55.0,
    tissue_threshold: float | None = None,
    min_tissue_fraction: float = 0.5,
    batch_size: int = 256,
    embedding_key: str = "X_storm",
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    progress: bool = True,
) -> pd.DataFrame:
    """Tile, embed and predict every slide of a cohort into one feature file per slide; resumable.

    Parameters
    ----------
    cohort
        A cohort table (CSV path or DataFrame; see :func:`read_cohort`): ``slide_id``, ``path`` and optionally
        ``microns_per_pixel``.
    out_dir
        Output folder (created): ``<slide_id>.h5ad`` per slide. Slides whose file exists are skipped.
    head
        A trained :class:`storm.nn.ExpressionHead` (:func:`storm.tl.train_expression_head`,
        :meth:`storm.nn.SavedHead.load`).
    model
        The :class:`storm.models.StormModel` the head was trained on; default the embedded storm-mini.
    tile_um, tissue_threshold, min_tissue_fraction, batch_size
        As in :func:`storm.tl.virtual_st`.
    embedding_key
        ``obsm`` key of the tiles' STORM embedding (the slide model's image features).
    accelerator, devices, strategy, num_nodes
        Lightning ``Trainer`` arguments: e.g. ``accelerator="gpu", devices=8, strategy="ddp"`` splits the slides
        over 8 GPUs (each process writes the slides it computed).

    progress
        Show a progress bar over the slides.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``slide_id``: ``path``, ``file``, ``status`` (``"written"``, ``"skipped"``: written by an earlier
        run, ``"failed"``: no file, the reason in ``error``), ``n_tiles`` (slides computed by this process). Each file
        holds the tiles of :func:`storm.tl.virtual_st` (``X`` predicted expression, ``obsm[embedding_key]``,
        ``obsm['spatial']``) and ``uns['storm_features']``: ``encoder`` and ``head`` (names and sha256
        fingerprints), ``params`` (the tiling), ``fingerprint`` (of the three), ``slide_id``, ``source`` (``path``,
        ``bytes``), ``storm_version``, ``created`` (UTC) and ``seconds``.

    Raises
    ------
    ValueError
        A bad cohort table (:func:`read_cohort`), a head of another model, or files in ``out_dir`` written with
        another model, head or tiling parameters.
    FileNotFoundError
        Slide files that do not exist.
    """
    from lightning.pytorch import Trainer
    from torch.utils.data import DataLoader

    from storm.tl._expression_features import resolve_model
    from storm.tl._predict_expression import check_head
    from storm.train._slide import _quiet_lightning

    start = start_timer()
    table = read_cohort(cohort)
    model = resolve_model(model)
    check_head(head, model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vst_kwargs = {
        "tile_um": float(tile_um),
        "tissue_threshold": tissue_threshold,
        "min_tissue_fraction": float(min_tissue_fraction),
        "batch_size": int(batch_size),
        "embedding_key": embedding_key,
    }
    params = {k: v for k, v in vst_kwargs.items() if k != "batch_size" and v is not None}  # h5ad stores no None
    identity = _run_identity(model, head, params)
    files = {s: out / f"{s}{SUFFIX}" for s in table.index}
    done = _check_finished(files, identity["fingerprint"])
    todo = [{SLIDE_COLUMN: s, **table.loc[s].to_dict()} for s in table.index if s not in done]
    logger.info(f"cohort_features: {len(table)} slides, {len(done)} already written in {out}, {len(todo)} to compute")
    results: list[dict[str, Any]] = []
    if todo:
        module, writer = _lightning_parts(model, head, vst_kwargs, identity, out)
        with _quiet_lightning():
            trainer = Trainer(
                accelerator=accelerator,
                devices=devices,
                strategy=strategy,
                num_nodes=num_nodes,
                callbacks=[writer],
                logger=False,
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=progress,
            )
            loader = DataLoader(todo, batch_size=1, shuffle=False, collate_fn=_first)
            trainer.predict(module, dataloaders=loader, return_predictions=False)
        results = writer.results
    summary = pd.DataFrame(index=pd.Index(table.index, name=SLIDE_COLUMN))
    summary[PATH_COLUMN] = table[PATH_COLUMN]
    summary["file"] = [str(files[s]) for s in table.index]
    # slides of other processes (DDP) that left no file are "missing"; this process's own failures are "failed"
    summary["status"] = [
        "skipped" if s in done else ("written" if files[s].is_file() else "missing") for s in table.index
    ]
    summary["n_tiles"] = pd.array([pd.NA] * len(table), dtype="Int64")
    summary["error"] = ""
    for r in results:
        if "error" in r:
            summary.loc[r[SLIDE_COLUMN], ["status", "error"]] = ["failed", r["error"]]
        else:
            summary.loc[r[SLIDE_COLUMN], "n_tiles"] = r["n_tiles"]
    failed = int((summary["status"] == "failed").sum())
    logger.info(
        f"cohort_features: finished ({elapsed(start)}): {int((summary['status'] == 'written').sum())} written, "
        f"{len(done)} skipped, {failed} failed"
    )
    return summary
