"""Per-slide arrays that feed training and inference (numpy only: built from AnnData by :mod:`storm.models`)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from storm._patch_crop import crop_patches, decode_image

__all__ = ["PatchCache", "PatchSource", "SlideArrays"]


@dataclass(eq=False)
class PatchSource:
    """Where a slide's spot patches are cut from: an image file decoded on demand, or a small in-memory image.

    Attributes
    ----------
    centres
        ``(n_obs, 2)`` float64: each spot's centre (x, y) in continuous pixel coordinates of this image (pixel
        index + 0.5), in the slide's spot order.
    side_px
        Side of a patch (``size_um``) in pixels of this image.
    path
        Full-resolution image file, decoded lazily (:meth:`load`); ``None`` when ``array`` holds the image.
    array
        uint8 ``(height, width, 3)`` image (a hires/lowres image kept with the AnnData); ``None`` for a file.
    name
        ``"fullres"``, ``"hires"`` or ``"lowres"``: which image of the slide this is.
    level
        Pyramid level of a whole-slide image file (``centres`` and ``side_px`` are then in pixels of that level,
        read tile by tile); ``None``: an image file decoded whole.
    """

    centres: np.ndarray
    side_px: float
    path: str | None = None
    array: np.ndarray | None = None
    name: str = "fullres"
    level: int | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.array is None):
            raise ValueError("A PatchSource needs exactly one of `path` (an image file) and `array` (pixels).")
        self.centres = np.asarray(self.centres, dtype=np.float64)
        if self.centres.ndim != 2 or self.centres.shape[1] != 2:
            raise ValueError(f"`centres` must be (n, 2), got {self.centres.shape}.")
        if not np.isfinite(self.side_px) or self.side_px <= 0:
            raise ValueError(f"`side_px` must be a positive number, got {self.side_px}.")

    @property
    def in_memory(self) -> bool:
        """Whether the pixels are held in memory (no decoding needed)."""
        return self.array is not None

    def load(self) -> np.ndarray:
        """Return the image pixels (decoding the file: callers cache the result, see :class:`PatchCache`).

        A whole-slide level is returned lazily (:class:`storm.io.WholeSlideImage`): cutting reads its tiles.
        """
        if self.array is not None:
            return self.array
        if self.level is not None:
            from storm._wsi_reader import WholeSlideImage

            return WholeSlideImage(self.path).level(self.level)
        return decode_image(self.path)

    def cut(self, image: np.ndarray, rows: np.ndarray, out_px: int) -> np.ndarray:
        """Cut the patches of spots ``rows`` from ``image`` (the output of :meth:`load`): ``(len(rows), px, px, 3)``."""
        return crop_patches(image, self.centres[np.asarray(rows)], self.side_px, out_px)


@dataclass(eq=False)
class SlideArrays:
    """Everything the network needs from one slide, as arrays in the slide's spot order.

    Built from an AnnData by :meth:`storm.models.StormModel.prepare`; consumed by :class:`storm.train.WindowDataset`
    and by :meth:`storm.models.StormModel.embed`. Indices are local to the slide (0 … ``n_obs - 1``).

    Attributes
    ----------
    library_id
        Slide id.
    index
        int64 ``(n_obs, W)``: spot of each window position, position 0 = centre, -1 = padding.
    offsets_um
        float32 ``(n_obs, W, 2)``: neighbour minus centre position in µm (0 at padding).
    expr
        ``(n_obs, G)`` float32 log-normalised expression on the model's gene list (a numpy array or a scipy CSR
        matrix: only row slicing and ``toarray`` are used), or ``None``.
    gene_mask
        bool ``(G,)``: genes this slide measures; ``None`` without expression.
    patches
        The slide's :class:`PatchSource`, or ``None`` without an image (or when images are not used).
    has_expr
        Whether expression is used (``False`` for image-only use or data without counts).
    obs_rows
        int64 ``(n_obs,)``: rows of the slide's spots in the AnnData it came from (to write results back).
    """

    library_id: str
    index: np.ndarray
    offsets_um: np.ndarray
    expr: Any = None
    gene_mask: np.ndarray | None = None
    patches: PatchSource | None = None
    has_expr: bool = field(default=True)
    obs_rows: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.index = np.asarray(self.index, dtype=np.int64)
        self.offsets_um = np.asarray(self.offsets_um, dtype=np.float32)
        n, w = self.index.shape
        if self.offsets_um.shape != (n, w, 2):
            raise ValueError(f"offsets_um must be ({n}, {w}, 2), got {self.offsets_um.shape}.")
        if self.index.max(initial=-1) >= n:
            raise ValueError(f"Slide {self.library_id!r}: window index refers to spot ≥ n_obs ({n}).")
        if self.expr is None:
            self.has_expr = False
        else:
            if self.expr.shape[0] != n:
                raise ValueError(f"Slide {self.library_id!r}: expr has {self.expr.shape[0]} rows for {n} spots.")
            if self.gene_mask is None:
                self.gene_mask = np.ones(self.expr.shape[1], dtype=bool)
            self.gene_mask = np.asarray(self.gene_mask, dtype=bool)
            if self.gene_mask.shape != (self.expr.shape[1],):
                raise ValueError(f"gene_mask must be ({self.expr.shape[1]},), got {self.gene_mask.shape}.")
        if self.patches is not None and len(self.patches.centres) != n:
            raise ValueError(f"Slide {self.library_id!r}: {len(self.patches.centres)} patch centres for {n} spots.")
        if self.obs_rows is None:
            self.obs_rows = np.arange(n, dtype=np.int64)

    def __repr__(self) -> str:
        g = self.expr.shape[1] if self.expr is not None else 0
        img = self.patches.name if self.patches is not None else "none"
        return (
            f"SlideArrays({self.library_id!r}, n_obs={self.n_obs}, W={self.window_size}, genes={g}, "
            f"has_expr={self.has_expr}, image={img})"
        )

    @property
    def n_obs(self) -> int:
        """Number of spots, and of windows (one per spot)."""
        return self.index.shape[0]

    @property
    def window_size(self) -> int:
        """Positions per window (W)."""
        return self.index.shape[1]

    @property
    def mask(self) -> np.ndarray:
        """Bool ``(n_obs, W)``: positions holding a spot."""
        return self.index >= 0

    @property
    def has_image(self) -> bool:
        """Whether patches can be cut for this slide."""
        return self.patches is not None

    @property
    def n_genes(self) -> int:
        """Width ``G`` of the expression matrix (0 without expression)."""
        return 0 if self.expr is None else int(self.expr.shape[1])

    def expression(self, rows: np.ndarray) -> np.ndarray:
        """Dense float32 expression of spots ``rows``: ``(len(rows), G)``."""
        x = self.expr[np.asarray(rows)]
        if hasattr(x, "toarray"):
            x = x.toarray()
        return np.asarray(x, dtype=np.float32)


class PatchCache:
    """Per-worker memory of slide images and of the patches already cut from them.

    Patches are cut on first use and remembered per slide (a window's 25 spots are the neighbours of other
    windows, so each patch is needed about 25 times per epoch); the decoded images they come from are kept in a
    least-recently-used cache of ``max_images`` slides (a 9,900 × 9,300 HER2ST scan is 276 MB decoded), and the
    patch tables in one of ``max_bytes``. Once every spot of a slide has its patch, its image is no longer read.
    In-memory images (hires/lowres arrays) are never counted as decoded images.

    Parameters
    ----------
    max_images
        Decoded full-resolution images kept (≥ 1).
    max_bytes
        Bytes of remembered patches kept (over all slides; 0 disables the memory: patches are cut on each use).
    """

    def __init__(self, max_images: int = 2, max_bytes: int = 512 * 2**20) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be ≥ 1, got {max_images}.")
        self.max_images = int(max_images)
        self.max_bytes = int(max_bytes)
        self._images: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._tables: OrderedDict[Any, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self.n_decoded = 0  # decodes so far (tests and logs read it)

    @property
    def n_images(self) -> int:
        """Decoded images held now."""
        return len(self._images)

    @property
    def table_bytes(self) -> int:
        """Bytes of patch tables held now (allocated; pages never written cost no memory)."""
        return sum(t.nbytes for t, _ in self._tables.values())

    def image(self, key: Any, source: PatchSource) -> np.ndarray:
        """Return the pixels of ``source`` (decoded once while it stays among the ``max_images`` most recent)."""
        if source.in_memory:
            return source.array
        if key in self._images:
            self._images.move_to_end(key)
            return self._images[key]
        while len(self._images) >= self.max_images:
            self._images.popitem(last=False)  # drop before decoding the next: peak memory stays max_images images
        pixels = source.load()
        self.n_decoded += 1
        self._images[key] = pixels
        return pixels

    def patches(self, key: Any, source: PatchSource, rows: np.ndarray, out_px: int) -> np.ndarray:
        """Patches ``(len(rows), out_px, out_px, 3)`` of spots ``rows`` of the slide ``key``."""
        rows = np.asarray(rows, dtype=np.int64)
        n = len(source.centres)
        size = n * out_px * out_px * 3
        if size > self.max_bytes:
            return source.cut(self.image(key, source), rows, out_px)
        if key not in self._tables:
            # np.zeros maps untouched pages lazily: a table costs memory only for the patches cut into it
            self._tables[key] = (np.zeros((n, out_px, out_px, 3), dtype=np.uint8), np.zeros(n, dtype=bool))
        table, filled = self._tables[key]
        self._tables.move_to_end(key)
        missing = np.unique(rows[~filled[rows]])
        if len(missing):
            table[missing] = source.cut(self.image(key, source), missing, out_px)
            filled[missing] = True
            if filled.all():
                self._images.pop(key, None)  # every patch is cut: the image is not needed any more
        while len(self._tables) > 1 and self.table_bytes > self.max_bytes:
            self._tables.popitem(last=False)
        return table[rows]

    def clear(self) -> None:
        """Drop every decoded image and remembered patch."""
        self._images.clear()
        self._tables.clear()
