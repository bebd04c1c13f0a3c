"""Windows of many slides as a torch Dataset, and a sampler that keeps each worker on one slide at a time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from storm._slide_data import PatchCache, SlideArrays
from storm.nn import BatchKeys

__all__ = ["SlideBlockSampler", "WindowDataset"]

#: Extra keys of a dataset item (not read by the network): the slide (position in the dataset's slide list) and
#: the centre spot (row within that slide) of each window.
SLIDE_KEY = "slide"
CENTRE_KEY = "centre"


class WindowDataset(Dataset):
    """One item per spatial window (a centre spot and its neighbours) over the spots of many slides.

    An item gathers the window's positions from its own slide only: expression rows, µm offsets, masks, and the
    H&E patches of its spots, cut on demand from the slide image. Full-resolution images are decoded lazily and
    kept in a small per-worker LRU cache, and the patches cut from them are remembered (:class:`PatchCache`), so
    the data set never holds the slide set's images; pair it with :class:`SlideBlockSampler` so that a worker reads
    many windows of one slide in a row.

    Parameters
    ----------
    slides
        Per-slide arrays (see :class:`SlideArrays`); expression, where present, over one gene list.
    windows
        Global window ids to serve (window ``j`` of slide ``s`` is ``sum(n_obs of slides before s) + j``); default:
        all windows of all slides.
    patch_px
        Side of the patches in pixels (``StormNetConfig.patch_px``).
    window_size
        Positions per item: longer windows are cut (positions come centre first, nearest first), shorter ones
        padded; default the largest ``W`` of the slides.
    use_image, use_expression
        Serve this modality where a slide has it. Items carry ``image``/``expr`` only if some slide has it; a
        window of a slide without it gets zeros and ``has_image``/``has_expr`` = ``False``.
    cache_slides
        Decoded full-resolution images kept per worker.
    cache_patches_mb
        Megabytes of cut patches remembered per worker (0: cut every patch on each use).

    Notes
    -----
    Item keys: those of :class:`storm.nn.BatchKeys` (``image`` uint8 ``(W, 3, px, px)``, ``expr`` float32
    ``(W, G)``, ``gene_mask`` ``(G,)``, ``offsets_um`` ``(W, 2)``, ``pos_mask`` ``(W,)``, ``has_image``,
    ``has_expr``), plus ``slide`` and ``centre`` (int64 scalars). Patches of padded positions are zeros and never
    encoded (``pos_mask`` is ``False`` there).
    """

    def __init__(
        self,
        slides: Sequence[SlideArrays],
        *,
        windows: np.ndarray | None = None,
        patch_px: int = 64,
        window_size: int | None = None,
        use_image: bool = True,
        use_expression: bool = True,
        cache_slides: int = 2,
        cache_patches_mb: float = 512,
    ) -> None:
        self.slides = list(slides)
        if not self.slides:
            raise ValueError("WindowDataset needs at least one slide.")
        counts = np.array([s.n_obs for s in self.slides], dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        n_total = int(self.starts[-1])
        self.windows = np.arange(n_total, dtype=np.int64) if windows is None else np.asarray(windows, dtype=np.int64)
        if self.windows.ndim != 1 or (len(self.windows) and (self.windows.min() < 0 or self.windows.max() >= n_total)):
            raise ValueError(f"`windows` must be a 1-D array of window ids in [0, {n_total}).")
        #: slide (position in ``slides``) of each item: what :class:`SlideBlockSampler` groups by
        self.item_slides = (np.searchsorted(self.starts, self.windows, side="right") - 1).astype(np.int64)
        self.window_size = int(window_size or max(s.window_size for s in self.slides))
        self.patch_px = int(patch_px)
        self.with_image = bool(use_image) and any(s.has_image for s in self.slides)
        self.with_expression = bool(use_expression) and any(s.has_expr for s in self.slides)
        if not (self.with_image or self.with_expression):
            raise ValueError(
                "No slide has a modality to serve: none has an image"
                + ("" if use_image else " (images disabled)")
                + " and none has expression"
                + ("" if use_expression else " (expression disabled)")
                + "."
            )
        genes = {s.n_genes for s in self.slides if s.has_expr}
        if len(genes) > 1:
            raise ValueError(f"Slides have expression over different gene lists (widths {sorted(genes)}).")
        self.n_genes = genes.pop() if genes else 0
        self.cache = PatchCache(cache_slides, int(cache_patches_mb * 2**20))

    def __len__(self) -> int:
        return len(self.windows)

    def locate(self, i: int) -> tuple[int, int]:
        """Return ``(slide, centre)`` of item ``i``: the slide's position in ``slides`` and the centre's row in it."""
        s = int(self.item_slides[i])
        return s, int(self.windows[i] - self.starts[s])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        s, c = self.locate(i)
        slide = self.slides[s]
        w = self.window_size
        index = np.full(w, -1, dtype=np.int64)
        offsets = np.zeros((w, 2), dtype=np.float32)
        n = min(w, slide.window_size)
        index[:n] = slide.index[c, :n]
        offsets[:n] = slide.offsets_um[c, :n]
        valid = index >= 0
        rows = index[valid]
        item = {
            BatchKeys.OFFSETS: torch.from_numpy(offsets),
            BatchKeys.POS_MASK: torch.from_numpy(valid),
            SLIDE_KEY: torch.tensor(s, dtype=torch.int64),
            CENTRE_KEY: torch.tensor(c, dtype=torch.int64),
        }
        if self.with_expression:
            expr = np.zeros((w, self.n_genes), dtype=np.float32)
            has_expr = slide.has_expr
            if has_expr:
                expr[valid] = slide.expression(rows)
                gene_mask = slide.gene_mask
            else:
                gene_mask = np.zeros(self.n_genes, dtype=bool)
            item[BatchKeys.EXPR] = torch.from_numpy(expr)
            item[BatchKeys.GENE_MASK] = torch.from_numpy(np.array(gene_mask, dtype=bool))
            item[BatchKeys.HAS_EXPR] = torch.tensor(has_expr)
        if self.with_image:
            px = self.patch_px
            image = np.zeros((w, px, px, 3), dtype=np.uint8)
            if slide.has_image:
                image[valid] = self.cache.patches(s, slide.patches, rows, px)
            # (W, px, px, 3) → (W, 3, px, px): channels first, as the image encoders take them
            item[BatchKeys.IMAGE] = torch.from_numpy(np.ascontiguousarray(image.transpose(0, 3, 1, 2)))
            item[BatchKeys.HAS_IMAGE] = torch.tensor(slide.has_image)
        return item


class SlideBlockSampler(Sampler[int]):
    """Shuffle windows across slides, but hand them out in blocks of one slide.

    Each epoch, the windows of every slide are shuffled and cut into blocks of ``block_size``; the blocks of all
    slides are shuffled together and concatenated. A data-loader worker therefore receives many consecutive
    windows of one slide (it decodes that slide's image once per block, not once per window), while the order of
    slides and windows is random. The order depends only on ``(seed, epoch)``.

    Parameters
    ----------
    item_slides
        Slide of each data-set item (:attr:`WindowDataset.item_slides`).
    block_size
        Windows per block; a multiple of the batch size keeps whole batches on one slide.
    shuffle
        Shuffle windows and blocks (``False``: slides in order, windows in order; for validation).
    seed
        Base seed of the shuffles.
    num_replicas, rank
        Distributed training: each of ``num_replicas`` processes takes every ``num_replicas``-th window of the
        common order (so each keeps the block structure); all get the same number of windows, the order being
        padded with its first windows (or cut, with ``drop_last``) to a multiple of ``num_replicas``.
    drop_last
        Cut instead of pad for an even split across replicas.

    Notes
    -----
    Resuming mid-epoch: :meth:`skip` makes the next iteration start after the windows already used, so a resumed
    run sees exactly the windows an uninterrupted one would (:class:`StormDataModule` does this from its
    checkpointed state).
    """

    def __init__(
        self,
        item_slides: np.ndarray,
        *,
        block_size: int = 256,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        drop_last: bool = False,
    ) -> None:
        if block_size < 1:
            raise ValueError(f"block_size must be ≥ 1, got {block_size}.")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"Need 0 ≤ rank < num_replicas, got rank={rank}, num_replicas={num_replicas}.")
        item_slides = np.asarray(item_slides)
        order = np.argsort(item_slides, kind="stable")
        bounds = np.flatnonzero(np.diff(item_slides[order])) + 1
        self._groups = np.split(order, bounds) if len(order) else []
        self.n_items = len(item_slides)
        self.block_size = int(block_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.drop_last = bool(drop_last)
        self.epoch = 0
        self._skip: tuple[int, int] | None = None  # (epoch, items to skip)

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` (Lightning calls this at the start of every epoch)."""
        self.epoch = int(epoch)

    def skip(self, n_items: int, epoch: int | None = None) -> None:
        """Start the next iteration over ``epoch`` (default: the current one) after its first ``n_items`` (per rank)."""
        self._skip = (self.epoch if epoch is None else int(epoch), int(n_items))

    def _total(self) -> int:
        r = self.num_replicas
        return (self.n_items // r) * r if self.drop_last else -(-self.n_items // r) * r

    def __len__(self) -> int:
        return self._total() // self.num_replicas

    def order(self, epoch: int | None = None) -> np.ndarray:
        """Return the item order of ``epoch`` for this rank (without any skip)."""
        epoch = self.epoch if epoch is None else int(epoch)
        rng = np.random.default_rng([self.seed, epoch])
        blocks = []
        for items in self._groups:
            items = rng.permutation(items) if self.shuffle else items
            blocks += [items[i : i + self.block_size] for i in range(0, len(items), self.block_size)]
        if self.shuffle and blocks:
            blocks = [blocks[j] for j in rng.permutation(len(blocks))]
        seq = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.int64)
        total = self._total()
        if total > len(seq) and len(seq):
            seq = np.concatenate([seq, np.resize(seq, total - len(seq))])
        return seq[:total][self.rank :: self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        seq = self.order()
        if self._skip is not None:
            epoch, n = self._skip
            self._skip = None
            if epoch == self.epoch:
                seq = seq[n:]
        return iter(seq.tolist())
