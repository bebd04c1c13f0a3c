"""A folder of prepared slides: train on a node that has torch but no single-cell stack (no AnnData, no scanpy).

``storm prepare`` (or :func:`save_slides`) writes what :meth:`storm.models.StormModel.prepare` built from AnnData:
one ``.npz`` per slide (windows, offsets, sparse expression, patch centres), the slide images it cuts patches from
(copied once), and ``slides.json`` listing them with the gene list. :func:`load_slides` reads it back with numpy and
scipy only, and the arrays go to :class:`storm.train.WindowDataset` unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from storm._logging import logger
from storm._slide_data import PatchSource, SlideArrays

__all__ = ["load_slides", "save_slides"]

_FORMAT = "storm-slides/1"


def save_slides(slides: list[SlideArrays], folder: str | os.PathLike, *, genes: list[str]) -> Path:
    """Write prepared slides to ``folder`` (created; must be empty or absent).

    Parameters
    ----------
    slides
        Output of :meth:`storm.models.StormModel.prepare` for each AnnData.
    folder
        Destination.
    genes
        The model gene list the expression columns follow.

    Returns
    -------
    The folder.
    """
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        raise FileExistsError(f"{folder} is not empty: choose a new folder for the prepared slides.")
    folder.mkdir(parents=True, exist_ok=True)
    entries, images = [], {}
    for i, slide in enumerate(slides):
        arrays = {"index": slide.index, "offsets_um": slide.offsets_um}
        if slide.expr is not None:
            csr = sp.csr_matrix(slide.expr, dtype=np.float32)
            arrays |= {"expr_data": csr.data, "expr_indices": csr.indices, "expr_indptr": csr.indptr}
            arrays["gene_mask"] = slide.gene_mask
        entry = {"library_id": slide.library_id, "file": f"slide_{i:04d}.npz", "has_expr": bool(slide.has_expr)}
        if slide.patches is not None:
            src = slide.patches
            arrays["centres"] = src.centres
            entry |= {"side_px": float(src.side_px), "image_name": src.name}
            if src.level is not None:
                entry["level"] = int(src.level)
            if src.path is not None:
                if src.path not in images:  # slides of one image share the copy
                    images[src.path] = f"image_{len(images):04d}{Path(src.path).suffix}"
                    shutil.copyfile(src.path, folder / images[src.path])
                entry["image_file"] = images[src.path]
            else:
                arrays["image"] = src.array
        np.savez(folder / entry["file"], **arrays)
        entries.append(entry)
    manifest = {"format": _FORMAT, "genes": list(genes), "slides": entries}
    (folder / "slides.json").write_text(json.dumps(manifest, indent=1))
    logger.info(f"save_slides: {len(slides)} slides, {len(images)} image files → {folder}")
    return folder


def load_slides(folder: str | os.PathLike) -> tuple[list[SlideArrays], list[str]]:
    """Read slides written by :func:`save_slides`.

    Parameters
    ----------
    folder
        Folder holding ``slides.json`` and one ``.npz`` per slide (``storm prepare``).

    Returns
    -------
    slides
        One :class:`SlideArrays` per slide, in the manifest's order.
    genes
        The gene vocabulary the expression columns follow.
    """
    folder = Path(folder)
    manifest_path = folder / "slides.json"
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{folder} has no slides.json: write it with `storm prepare` or save_slides().")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != _FORMAT:
        raise ValueError(f"{manifest_path} is format {manifest.get('format')!r}; this storm reads {_FORMAT!r}.")
    genes = list(manifest["genes"])
    slides = []
    for entry in manifest["slides"]:
        with np.load(folder / entry["file"]) as z:
            expr = gene_mask = None
            if "expr_data" in z:
                n = z["index"].shape[0]
                expr = sp.csr_matrix((z["expr_data"], z["expr_indices"], z["expr_indptr"]), shape=(n, len(genes)))
                gene_mask = z["gene_mask"]
            patches = None
            if "centres" in z:
                location = (
                    {"path": str(folder / entry["image_file"])} if "image_file" in entry else {"array": z["image"]}
                )
                patches = PatchSource(
                    z["centres"], entry["side_px"], name=entry["image_name"], level=entry.get("level"), **location
                )
            slides.append(
                SlideArrays(
                    entry["library_id"],
                    z["index"],
                    z["offsets_um"],
                    expr=expr,
                    gene_mask=gene_mask,
                    patches=patches,
                    has_expr=entry["has_expr"],
                )
            )
    return slides, genes
