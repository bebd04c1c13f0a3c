"""Aggregate single-molecule transcripts (Xenium, CosMx, MERSCOPE) into square bins of a few µm, streaming.

Binned imaging data look like a sequencing grid (Visium HD) but are not one: the platform is recorded as
``"binned:<source platform>"`` so no downstream step mistakes them for Visium HD.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

from storm._logging import logger
from storm.io._cosmx import COSMX_PIXEL_SIZE_UM
from storm.io._xenium import CONTROL_PREFIXES, cell_anndata, is_control

#: Columns of the tables :func:`read_transcripts` yields (Xenium's names, in µm): the defaults of
#: :func:`bin_transcripts`.
X, Y, GENE = "x_location", "y_location", "feature_name"
#: Per platform: file name patterns (in order of preference), then the vendor's (x, y, gene) columns.
_FORMATS: dict[str, tuple[tuple[str, ...], tuple[str, str, str]]] = {
    "xenium": (
        ("transcripts.parquet", "transcripts.csv.gz", "transcripts.csv"),
        ("x_location", "y_location", "feature_name"),
    ),
    "cosmx": (("*_tx_file.csv", "*_tx_file.csv.gz"), ("x_global_px", "y_global_px", "target")),
    "merscope": (("detected_transcripts.csv", "detected_transcripts.csv.gz"), ("global_x", "global_y", "gene")),
}
# (row, col, gene) pack into one uint64: 22 + 22 + 20 bits. Bin indices within ±2²¹ (±4 m of 2 µm bins), ≤ 2²⁰ genes.
_BIN_BITS, _GENE_BITS = 22, 20
_OFFSET = 1 << (_BIN_BITS - 1)
_BIN_MASK = (1 << _BIN_BITS) - 1
_GENE_MASK = (1 << _GENE_BITS) - 1
_MIN_FLUSH = 1 << 20  # distinct (bin, gene) codes held before merging the parts


@dataclass(frozen=True)
class TranscriptChunks:
    """Transcripts of one file, read in chunks.

    Iterate to get DataFrames of ``x_location``, ``y_location`` (µm) and ``feature_name`` (str).

    Attributes
    ----------
    path
        The transcripts file.
    platform
        ``"xenium"``, ``"cosmx"`` or ``"merscope"``.
    pixel_size_um
        µm per unit of the file's coordinates (1 for Xenium and MERSCOPE, the camera pixel for CosMx).
    chunk_size
        Transcripts per chunk.
    min_qv
        Xenium: keep transcripts with ``qv >= min_qv`` (10x counts Q ≥ 20 in its cell matrix); None keeps all.
    """

    path: Path
    platform: str
    pixel_size_um: float = 1.0
    chunk_size: int = 1_000_000
    min_qv: float | None = 20.0

    def __iter__(self) -> Iterator[pd.DataFrame]:
        x, y, gene = _FORMATS[self.platform][1]
        use_qv = self.platform == "xenium" and self.min_qv is not None
        columns = [x, y, gene, *(["qv"] if use_qv else [])]
        for chunk in self._raw_chunks(columns):
            if use_qv:
                chunk = chunk[chunk["qv"].to_numpy() >= self.min_qv]
            names = chunk[gene]
            if names.dtype == object and len(names) and isinstance(names.iloc[0], bytes):
                names = names.str.decode("utf-8")  # Xenium < 1.3 wrote bytes
            yield pd.DataFrame(
                {
                    X: chunk[x].to_numpy(np.float64) * self.pixel_size_um,
                    Y: chunk[y].to_numpy(np.float64) * self.pixel_size_um,
                    GENE: names.astype(str).to_numpy(),
                }
            )

    def _raw_chunks(self, columns: list[str]) -> Iterator[pd.DataFrame]:
        if self.path.suffix == ".parquet":
            import pyarrow.parquet as pq

            with pq.ParquetFile(self.path) as pf:
                missing = set(columns) - set(pf.schema_arrow.names)
                if missing:
                    raise ValueError(f"{self.path} lacks the {self.platform} transcript columns {sorted(missing)}.")
                for batch in pf.iter_batches(batch_size=self.chunk_size, columns=columns):
                    yield batch.to_pandas()
            return
        header = pd.read_csv(self.path, nrows=0).columns
        missing = set(columns) - set(header)
        if missing:
            raise ValueError(f"{self.path} lacks the {self.platform} transcript columns {sorted(missing)}.")
        with pd.read_csv(self.path, usecols=columns, chunksize=self.chunk_size) as reader:
            yield from reader


def read_transcripts(
    path: str | os.PathLike,
    *,
    platform: str | None = None,
    chunk_size: int = 1_000_000,
    pixel_size_um: float | None = None,
    min_qv: float | None = 20.0,
) -> TranscriptChunks:
    """Open a transcripts file for streaming.

    Xenium ``transcripts.parquet`` (or ``transcripts.csv.gz``), CosMx ``*_tx_file.csv``, MERSCOPE
    ``detected_transcripts.csv``. Nothing is read until the result is iterated; each chunk holds ``chunk_size``
    transcripts at most.

    Parameters
    ----------
    path
        The file, or a folder holding one (the first pattern found: Xenium's parquet before its CSV).
    platform
        ``"xenium"``, ``"cosmx"`` or ``"merscope"``; default: from the file name.
    chunk_size
        Transcripts per chunk (parquet batches / CSV chunks).
    pixel_size_um
        CosMx only: µm per pixel of ``x_global_px``/``y_global_px`` (default 0.12028, see :func:`storm.io.read_cosmx`).
    min_qv
        Xenium only: drop transcripts with ``qv < min_qv`` (10x's cell matrix counts Q ≥ 20); ``None`` keeps all.

    Returns
    -------
    A :class:`TranscriptChunks`: iterate it for DataFrames with ``x_location``, ``y_location`` (µm) and
    ``feature_name``; pass it to :func:`bin_transcripts`.

    Raises
    ------
    FileNotFoundError
        No such file, or no transcripts file in the folder.
    ValueError
        Unknown ``platform`` or a file name that names none.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"No transcripts file at {path}. Pass Xenium's transcripts.parquet, CosMx's *_tx_file.csv or MERSCOPE's "
            "detected_transcripts.csv (or their folder)."
        )
    if platform is not None and platform not in _FORMATS:
        raise ValueError(f"platform={platform!r}: choose one of {sorted(_FORMATS)}.")
    if path.is_dir():
        candidates = [(p, name) for name, (pats, _) in _FORMATS.items() for pat in pats for p in sorted(path.glob(pat))]
        candidates = [(p, n) for p, n in candidates if platform in (None, n)]
        if not candidates:
            raise FileNotFoundError(
                f"No transcripts file in {path} (Xenium transcripts.parquet, CosMx *_tx_file.csv, "
                "MERSCOPE detected_transcripts.csv)."
            )
        path, detected = candidates[0]  # patterns are in order of preference: parquet before CSV
    else:
        detected = next((n for n, (pats, _) in _FORMATS.items() if any(path.match(p) for p in pats)), None)
    platform = platform or detected
    if platform is None:
        raise ValueError(f"Cannot tell the platform of {path.name} from its name: pass platform=.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
    scale = 1.0
    if platform == "cosmx":
        scale = COSMX_PIXEL_SIZE_UM if pixel_size_um is None else float(pixel_size_um)
    return TranscriptChunks(path=path, platform=platform, pixel_size_um=scale, chunk_size=chunk_size, min_qv=min_qv)


def _sum_codes(codes: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``counts`` over equal ``codes``; returns the sorted unique codes and their sums."""
    order = np.argsort(codes, kind="stable")
    codes, counts = codes[order], counts[order]
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    return codes[starts], np.add.reduceat(counts, starts)


class _Accumulator:
    """Counts per (bin, gene) as one packed uint64 code each, summed as chunks arrive.

    Code = row (22 bits) | col (22 bits) | gene (20 bits), offsets making rows and columns non-negative. Per chunk
    only the distinct codes are kept (12 bytes each); the kept parts are merged whenever they double, so memory stays
    within a small multiple of the non-zero (bin, gene) pairs, whatever the number of transcripts.
    """

    def __init__(self) -> None:
        self.genes: dict[str, int] = {}
        self.codes: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []
        self.held = 0
        self.merged = 0

    def add(self, col: np.ndarray, row: np.ndarray, names: pd.Series) -> None:
        codes, uniques = pd.factorize(names)
        lookup = np.array([self.genes.setdefault(str(g), len(self.genes)) for g in uniques], dtype=np.uint64)
        if len(self.genes) > _GENE_MASK:
            raise ValueError(f"More than {_GENE_MASK} distinct feature names: is `gene` the right column?")
        packed = (
            ((row + _OFFSET).astype(np.uint64) << np.uint64(_BIN_BITS + _GENE_BITS))
            | ((col + _OFFSET).astype(np.uint64) << np.uint64(_GENE_BITS))
            | lookup[codes]
        )
        unique, n = np.unique(packed, return_counts=True)
        self.codes.append(unique)
        self.counts.append(n.astype(np.uint32))
        self.held += len(unique)
        if self.held > max(_MIN_FLUSH, 2 * self.merged):
            self._merge()

    def _merge(self) -> None:
        if len(self.codes) > 1:
            codes, counts = _sum_codes(np.concatenate(self.codes), np.concatenate(self.counts))
            self.codes, self.counts = [codes], [counts]
        self.merged = self.held = sum(len(c) for c in self.codes)

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Return (row, col, gene index, count) per non-zero (bin, gene), sorted by bin."""
        self._merge()
        codes, counts = self.codes[0], self.counts[0]
        gene = (codes & np.uint64(_GENE_MASK)).astype(np.int64)
        col = ((codes >> np.uint64(_GENE_BITS)) & np.uint64(_BIN_MASK)).astype(np.int64) - _OFFSET
        row = (codes >> np.uint64(_BIN_BITS + _GENE_BITS)).astype(np.int64) - _OFFSET
        return row, col, gene, counts


def bin_transcripts(
    transcripts: pd.DataFrame | Iterable[pd.DataFrame],
    *,
    bin_um: float = 8.0,
    x: str = X,
    y: str = Y,
    gene: str = GENE,
    library_id: str = "binned",
    platform: str | None = None,
    controls: Sequence[str] = CONTROL_PREFIXES,
    origin: tuple[float, float] = (0.0, 0.0),
) -> AnnData:
    """Count transcripts in square bins of ``bin_um`` µm: a grid AnnData from single-molecule data.

    Bin ``(array_row, array_col) = (floor((y - y0) / bin_um), floor((x - x0) / bin_um))`` with ``(x0, y0) = origin``:
    with the default origin, bins of 2, 8 and 16 µm nest (a 16 µm bin is exactly four 8 µm bins). Only bins holding
    at least one transcript are returned. Tables are consumed chunk by chunk: memory grows with the non-zero
    (bin, gene) pairs, not with the number of transcripts.

    Parameters
    ----------
    transcripts
        A DataFrame, or an iterable of DataFrames (e.g. :func:`read_transcripts`), with coordinates in µm.
    bin_um
        Bin side in µm (2, 8, 16 are Visium HD's).
    x, y, gene
        Column names of the coordinates (µm) and feature names.
    library_id
        Key of the slide in ``uns['spatial']`` and value of ``obs['library_id']``.
    platform
        Source platform (``"xenium"``, ``"cosmx"``, ``"merscope"``, …); default: that of a :class:`TranscriptChunks`,
        else ``"unknown"``. Recorded as ``"binned:<platform>"``.
    controls
        Name prefixes (case-insensitive) of control features, counted in ``obsm['controls']`` instead of ``X``.
    origin
        (x0, y0) in µm: the corner of bin (0, 0).

    Returns
    -------
    AnnData with

    - ``.X``: transcript counts of the genes per bin, float32 CSR; ``var_names`` the genes, sorted;
    - ``obsm['controls']``: float32 DataFrame of the control features per bin; ``obs['control_counts']`` their sum;
    - ``obs['array_row']``, ``obs['array_col']`` (int64 bin indices along y and x; negative where coordinates are),
      ``obs['library_id']``; obs names ``<bin>um_<row>_<col>``;
    - ``obsm['spatial']``: float64 (x, y) bin centres in µm;
    - ``uns['spatial'][library_id]``: ``scalefactors``: ``microns_per_pixel = 1``, ``spot_diameter_fullres`` =
      ``bin_um``; ``metadata``: ``platform='binned:<platform>'``, ``source``, ``bin_size_um``, ``origin_um``,
      ``n_transcripts``, ``pixel_size_um`` (of the source coordinates, for a :class:`TranscriptChunks`).

    Raises
    ------
    ValueError
        ``bin_um`` not positive, missing columns, non-finite coordinates, or no transcripts.
    """
    if not np.isfinite(bin_um) or bin_um <= 0:
        raise ValueError(f"bin_um must be a positive number of µm, got {bin_um!r}.")
    chunks: Iterable[pd.DataFrame] = [transcripts] if isinstance(transcripts, pd.DataFrame) else transcripts
    if platform is None:
        platform = getattr(transcripts, "platform", None) or "unknown"
    x0, y0 = (float(v) for v in origin)

    acc = _Accumulator()
    n_transcripts = 0
    for chunk in chunks:
        missing = {x, y, gene} - set(chunk.columns)
        if missing:
            raise ValueError(f"The transcript table lacks the columns {sorted(missing)} (has {list(chunk.columns)}).")
        if chunk.empty:
            continue
        xs, ys = chunk[x].to_numpy(np.float64), chunk[y].to_numpy(np.float64)
        if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
            raise ValueError("Transcript coordinates contain NaN or infinite values: drop those rows first.")
        col = np.floor((xs - x0) / bin_um).astype(np.int64)
        row = np.floor((ys - y0) / bin_um).astype(np.int64)
        if min(col.min(), row.min()) < -_OFFSET or max(col.max(), row.max()) >= _OFFSET:
            raise ValueError(
                f"Transcripts lie over {_OFFSET:,} bins of {bin_um:g} µm from the origin {origin}: are the coordinates "
                "in µm? Set `origin` near the tissue for larger sections."
            )
        acc.add(col, row, chunk[gene])
        n_transcripts += len(chunk)
    if n_transcripts == 0:
        raise ValueError("No transcripts to bin (empty table, or all filtered out).")

    row, col, gene_idx, n = acc.result()
    # codes are sorted by (row, col): a new bin starts wherever either changes
    new_bin = np.r_[True, (row[1:] != row[:-1]) | (col[1:] != col[:-1])]
    bin_idx = np.cumsum(new_bin) - 1
    rows, cols = row[new_bin], col[new_bin]
    names = np.array(list(acc.genes), dtype=object)
    order = np.argsort(names, kind="stable")  # sorted var names: one order whatever the chunking
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    counts = sparse.csr_matrix((n.astype(np.float32), (bin_idx, rank[gene_idx])), shape=(len(rows), len(names)))
    xy = np.column_stack([x0 + (cols + 0.5) * bin_um, y0 + (rows + 0.5) * bin_um])
    obs = pd.DataFrame(
        {"array_row": rows, "array_col": cols},
        index=pd.Index([f"{bin_um:g}um_{r}_{c}" for r, c in zip(rows, cols, strict=True)], dtype=object),
    )
    meta = {
        "bin_size_um": float(bin_um),
        "origin_um": [x0, y0],
        "n_transcripts": int(n_transcripts),
    }
    source = str(getattr(transcripts, "path", "a transcript table"))
    adata = cell_anndata(
        counts,
        names[order],
        obs=obs,
        xy_um=xy,
        library_id=library_id,
        platform=f"binned:{platform}",
        source=f"{bin_um:g} µm bins of {source}",
        pixel_size_um=getattr(transcripts, "pixel_size_um", None),
        control_mask=is_control(names[order], controls),
        metadata=meta,
        scalefactors={"spot_diameter_fullres": float(bin_um)},
    )
    logger.info(
        "Binned %d transcripts into %d bins of %g µm × %d genes (+%d controls in obsm['controls'])",
        n_transcripts,
        adata.n_obs,
        bin_um,
        adata.n_vars,
        adata.obsm["controls"].shape[1],
    )
    return adata
