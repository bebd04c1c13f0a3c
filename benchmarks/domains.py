"""Spatial-domain benchmark: storm against a plain baseline and the peers a user would pick instead.

Sections: DLPFC 151673 and 151674 (K = 7 manual layers, scored on the labelled spots) and the five
pathologist-labelled HER2ST sections B1, C1, D1, E1, F1 (K = number of pathologist classes present other than
``undetermined``; every spot is clustered, the scores use the spots whose label is neither missing nor
``undetermined``). ARI and NMI are computed on the scored spots, CHAOS on the predicted map of all spots.

Every (method, section) runs in a process of its own, one at a time: storm's rows
(``benchmarks/_storm_methods.py::METHODS``) and the baseline in the package's environment, each peer with the
interpreter of its own environment under ``.peers/<name>`` (built by ``benchmarks/peers/setup_envs.sh``). Peak
memory is the child's maximum resident set size as the kernel reports it on ``wait4``; ``seconds`` is the time from
the loaded AnnData to the labels (what the method costs), ``wall_s`` the whole child process (imports and reading
included). Results are cached per (method, section) in ``benchmarks/logs/domains_cache/``; a rerun skips those.

Usage (from the repository root, with the package's environment)::

    STORM_DATA_MIRROR=../shared/data .venv/bin/python benchmarks/domains.py            # everything not cached
    .venv/bin/python benchmarks/domains.py --methods BANKSY SpaGCN --sections 151673   # a selection
    .venv/bin/python benchmarks/domains.py --summary-only                              # tables from the cache
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _harness import print_table  # noqa: E402

LOGS = HERE / "logs"
CACHE = LOGS / "domains_cache"
PEER_ENVS = ROOT / ".peers"

DLPFC = ("151673", "151674")
HER2ST = ("B1", "C1", "D1", "E1", "F1")
SECTIONS = DLPFC + HER2ST
EXCLUDED_LABELS = ("undetermined",)
BASELINE = "PCA + K-means (baseline)"


@dataclass(frozen=True)
class Peer:
    """A peer method: its environment under ``.peers/`` and its runner script under ``benchmarks/peers/``."""

    env: str
    script: str

    @property
    def python(self) -> Path:
        return PEER_ENVS / self.env / "bin" / "python"


PEERS: dict[str, Peer] = {
    "BANKSY": Peer("banksy", "run_banksy.py"),
    "SpaGCN": Peer("spagcn", "run_spagcn.py"),
    "CellCharter": Peer("cellcharter", "run_cellcharter.py"),
    "Novae (from scratch)": Peer("novae", "run_novae.py"),
    "GraphST": Peer("graphst", "run_graphst.py"),
}


def storm_methods() -> dict[str, Callable]:
    """storm's rows, owned by the lead engineer in ``_storm_methods.py``."""
    from _storm_methods import METHODS

    return dict(METHODS)


def all_methods() -> list[str]:
    """Every method of the benchmark, in run order: storm's rows, the baseline, then the peers."""
    return [*storm_methods(), BASELINE, *PEERS]


# ---------------------------------------------------------------------------------------------------- sections


def scoring_labels(labels: Sequence[Any], excluded: Sequence[str] = EXCLUDED_LABELS) -> np.ndarray:
    """Reference labels used for scoring: object array, ``None`` where the label is missing or excluded.

    HER2ST's pathologist marked some spots ``undetermined``: they are clustered like every other spot but left out
    of the scores, and the class does not count towards K.
    """
    series = pd.Series(pd.Categorical(labels)).astype(object)
    out = series.where(series.notna() & ~series.isin(list(excluded)), None).to_numpy(dtype=object)
    return out


def n_classes(truth: np.ndarray) -> int:
    """K of a section: the number of distinct reference classes among the scored spots."""
    return len({t for t in truth if t is not None})


@lru_cache(maxsize=2)
def load_section(section: str):
    """The section's AnnData as storm loads it (do not modify: cached), its scoring labels and its platform."""
    import storm

    if section in DLPFC:
        adata, column, platform = storm.datasets.dlpfc(section), "layer", "visium"
    elif section in HER2ST:
        adata, column, platform = storm.datasets.her2st(section), "label", "st"
    else:
        raise ValueError(f"Unknown section {section!r}; the benchmark has {', '.join(SECTIONS)}.")
    truth = scoring_labels(adata.obs[column])
    return adata, truth, platform


def write_peer_input(section: str, workdir: Path) -> tuple[Path, int]:
    """Write the minimal AnnData a peer runner reads (raw counts, positions, platform); return its path and K."""
    import anndata as ad
    from scipy import sparse

    path = workdir / f"{section}.h5ad"
    adata, truth, platform = load_section(section)
    if not path.exists():
        small = ad.AnnData(
            X=sparse.csr_matrix(adata.X, dtype=np.float32),
            obs=pd.DataFrame(
                {
                    "array_row": adata.obs["array_row"].to_numpy(int),
                    "array_col": adata.obs["array_col"].to_numpy(int),
                },
                index=pd.Index(adata.obs_names.astype(str), dtype=object),
            ),
            var=pd.DataFrame(index=pd.Index(adata.var_names.astype(str), dtype=object)),
        )
        small.obsm["spatial"] = np.asarray(adata.obsm["spatial"], dtype=np.float64)
        small.uns["platform"] = platform
        tmp = path.with_suffix(".tmp.h5ad")
        small.write_h5ad(tmp)
        tmp.rename(path)
    return path, n_classes(truth)


# ---------------------------------------------------------------------------------------------------- workers


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def baseline(adata, n_domains: int, seed: int = 0) -> np.ndarray:
    """Plain baseline: normalize_total, log1p, 2,000 HVGs (seurat flavour), PCA 50, K-means with K (seed 0)."""
    import scanpy as sc
    from sklearn.cluster import KMeans

    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    sc.pp.highly_variable_genes(adata, n_top_genes=2000, subset=True)
    sc.pp.pca(adata, n_comps=50, random_state=seed)
    return KMeans(n_clusters=n_domains, n_init=10, random_state=seed).fit_predict(adata.obsm["X_pca"])


def worker(method: str, section: str, out_dir: Path, seed: int, threads: int) -> None:
    """Run one package-environment method (storm row or baseline) on one section; write the runner protocol."""
    from importlib import metadata

    from peers._runner import peak_rss_mb

    _limit_threads(threads)
    adata, truth, _ = load_section(section)
    k = n_classes(truth)
    fn = (lambda a, n: baseline(a, n, seed)) if method == BASELINE else storm_methods()[method]
    start = time.perf_counter()
    labels = np.asarray(fn(adata.copy(), k)).astype(str)
    seconds = time.perf_counter() - start
    out_dir.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"spot": adata.obs_names, "label": labels}).to_csv(out_dir / "labels.csv", index=False)
    result = {
        "peer": method,
        "version": metadata.version("scanpy" if method == BASELINE else "storm-st"),
        "seconds": seconds,
        "peak_mb": peak_rss_mb(),
        "peak_source": "VmHWM",
        "n_domains": len(set(labels)),
        "threads": threads,
        "notes": [],
    }
    (out_dir / "result.json").write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------------------------- running


def run_child(cmd: list[str], timeout: float, log_path: Path, env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` in a session of its own; return exit status, wall seconds, peak RSS (MB) and whether it timed out.

    Peak memory comes from ``wait4`` on the child: the largest resident set of the child or of any descendant it
    waited for, so it belongs to this run alone (unlike ``RUSAGE_CHILDREN``, which keeps the maximum over all).
    """
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        timed_out = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() - start > timeout:
                timed_out = True
                os.killpg(proc.pid, signal.SIGKILL)
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.5)
        proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "returncode": proc.returncode,
        "wall_s": time.perf_counter() - start,
        "child_peak_mb": usage.ru_maxrss / 1024,
        "timed_out": timed_out,
    }


def slug(text: str) -> str:
    """File-name form of a method or section name."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def cache_path(method: str, section: str) -> Path:
    return CACHE / f"{slug(method)}__{slug(section)}.json"


def load_cached(method: str, section: str) -> dict[str, Any] | None:
    path = cache_path(method, section)
    return json.loads(path.read_text()) if path.exists() else None


def save_cached(record: dict[str, Any]) -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = cache_path(record["method"], record["section"])
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.rename(path)


def score(pred: Sequence[Any], truth: np.ndarray, coords: np.ndarray) -> dict[str, float]:
    """ARI and NMI on the scored spots (truth not ``None``); CHAOS of the predicted map over all spots."""
    import storm

    pred = np.asarray(pred).astype(str)
    keep = np.array([t is not None for t in truth])
    return {
        "ari": storm.metrics.ari(truth[keep].astype(str), pred[keep]),
        "nmi": storm.metrics.nmi(truth[keep].astype(str), pred[keep]),
        "chaos": storm.metrics.chaos(pred, coords),
        "n_scored": int(keep.sum()),
    }


def command_for(method: str, section: str, workdir: Path, out_dir: Path, seed: int, threads: int) -> list[str]:
    """The child command line of one (method, section)."""
    if method in PEERS:
        peer = PEERS[method]
        if not peer.python.exists():
            raise FileNotFoundError(
                f"no environment for {method} at {peer.python.parent.parent}: run benchmarks/peers/setup_envs.sh"
                f" {peer.env}"
            )
        path, k = write_peer_input(section, workdir)
        script = HERE / "peers" / peer.script
        return [str(peer.python), str(script), "--input", str(path), "--n-domains", str(k), "--seed", str(seed),
                "--out-dir", str(out_dir), "--threads", str(threads)]  # fmt: skip
    return [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--sections", section,
            "--out-dir", str(out_dir), "--seed", str(seed), "--threads", str(threads)]  # fmt: skip


def run_one(method: str, section: str, *, workdir: Path, seed: int, threads: int, timeout: float) -> dict[str, Any]:
    """Run one method on one section in a child process and score it; failures come back as a record too."""
    _, truth, _ = load_section(section)
    record: dict[str, Any] = {"method": method, "section": section, "k_asked": n_classes(truth), "seed": seed}
    out_dir = workdir / "runs" / f"{slug(method)}__{slug(section)}"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    env = dict(os.environ)
    env.update({v: str(threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
    env.setdefault("STORM_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))
    cmd = command_for(method, section, workdir, out_dir, seed, threads)
    log_path = LOGS / "domains_runs" / f"{slug(method)}__{slug(section)}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    child = run_child(cmd, timeout, log_path, env)
    record.update(child)
    result_path = out_dir / "result.json"
    if child["timed_out"]:
        record.update(status="failed", reason=f"timeout after {timeout:.0f} s")
    elif child["returncode"] != 0 or not result_path.exists():
        tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        record.update(status="failed", reason=f"exit {child['returncode']}: {tail[0][:300]}")
    else:
        result = json.loads(result_path.read_text())
        labels = pd.read_csv(out_dir / "labels.csv", dtype=str, keep_default_na=False)
        adata, truth, _ = load_section(section)
        if list(labels["spot"]) != list(adata.obs_names.astype(str)):
            raise RuntimeError(f"{method} on {section}: labels are not in the section's spot order")
        pred = labels["label"].to_numpy()
        record.update(status="ok", reason="", **{k: result[k] for k in ("seconds", "version", "threads", "notes")})
        # The child's own high-water mark; wait4's ru_maxrss (kept as child_peak_mb) starts from this process's
        # resident memory at fork on Linux, so it is only an upper bound.
        record["peak_mb"] = result["peak_mb"] if result.get("peak_source") == "VmHWM" else child["child_peak_mb"]
        record["peak_source"] = result.get("peak_source", "wait4 ru_maxrss (upper bound)")
        record["k_produced"] = len(set(pred))
        record.update(score(pred, truth, np.asarray(adata.obsm["spatial"])))
        codes, uniques = pd.factorize(pred)
        record["labels"] = {"categories": [str(u) for u in uniques], "codes": codes.tolist()}
    record["log"] = str(log_path.relative_to(ROOT))
    return record


# ---------------------------------------------------------------------------------------------------- reporting

SECTION_COLUMNS = ["method", "ARI", "NMI", "CHAOS", "seconds", "wall_s", "peak_MB", "K", "K_out", "status"]
RANK_COLUMNS = ["rank", "method", "mean_ARI", "DLPFC_ARI", "HER2ST_ARI", "mean_NMI", "mean_CHAOS", "sections",
                "total_s", "max_peak_MB"]  # fmt: skip


def fmt(value: Any, digits: int) -> str:
    """A table cell: the number to ``digits`` decimals, ``-`` where there is none."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, (int, float, np.floating)) else str(value)


def exact_peak(record: dict[str, Any]) -> bool:
    """Whether a record's peak memory is the child's own high-water mark (not an upper bound; see ``run_one``)."""
    return record.get("peak_source") == "VmHWM"


def section_rows(records: list[dict[str, Any]], section: str) -> list[dict[str, Any]]:
    """Rows of one section's table, best ARI first; failed and missing runs last with their reason."""
    rows = []
    for r in records:
        if r["section"] != section:
            continue
        ok = r.get("status") == "ok"
        rows.append(
            {
                "method": r["method"],
                "ari": r["ari"] if ok else None,
                "ARI": fmt(r["ari"] if ok else None, 3),
                "NMI": fmt(r["nmi"] if ok else None, 3),
                "CHAOS": fmt(r["chaos"] if ok else None, 3),
                "seconds": fmt(r["seconds"] if ok else None, 1),
                "wall_s": fmt(r.get("wall_s"), 1),
                "peak_MB": fmt(r.get("peak_mb") if ok else None, 0) + ("" if exact_peak(r) or not ok else "*"),
                "K": fmt(r.get("k_asked"), 0),
                "K_out": fmt(r.get("k_produced"), 0),
                "status": "ok" if ok else f"{r.get('status')}{': ' + r['reason'] if r.get('reason') else ''}",
            }
        )
    return sorted(rows, key=lambda row: np.inf if row["ari"] is None else -row["ari"])


def ranking(records: list[dict[str, Any]], sections: Sequence[str]) -> list[dict[str, Any]]:
    """Methods ranked by mean ARI over ``sections``; a method missing any section ranks after the complete ones.

    Means are over the sections a method finished; ``sections`` says how many of how many.
    """
    by_method: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["section"] in sections:
            by_method.setdefault(r["method"], [])
            if r.get("status") == "ok":
                by_method[r["method"]].append(r)

    def mean(rows: list[dict[str, Any]], key: str, subset: Sequence[str] | None = None) -> float | None:
        values = [r[key] for r in rows if subset is None or r["section"] in subset]
        return float(np.mean(values)) if values else None

    rows = []
    for method, ok in by_method.items():
        rows.append(
            {
                "method": method,
                "mean_ARI": mean(ok, "ari"),
                "DLPFC_ARI": mean(ok, "ari", DLPFC),
                "HER2ST_ARI": mean(ok, "ari", HER2ST),
                "mean_NMI": mean(ok, "nmi"),
                "mean_CHAOS": mean(ok, "chaos"),
                "sections": f"{len(ok)}/{len(sections)}",
                "total_s": float(sum(r["seconds"] for r in ok)) if ok else None,
                "max_peak_MB": float(max(r["peak_mb"] for r in ok)) if ok else None,
                "_peak_exact": all(exact_peak(r) for r in ok),
                "_complete": len(ok) == len(sections),
            }
        )
    rows.sort(key=lambda r: (not r["_complete"], np.inf if r["mean_ARI"] is None else -r["mean_ARI"]))
    for i, row in enumerate(rows, 1):
        row["rank"] = i if row.pop("_complete") else f"({i})"
    return rows


def formatted(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Ranking rows as table cells: scores to 3 decimals, seconds to 1, megabytes to 0."""
    digits = {"mean_ARI": 3, "DLPFC_ARI": 3, "HER2ST_ARI": 3, "mean_NMI": 3, "mean_CHAOS": 3, "total_s": 1,
              "max_peak_MB": 0}  # fmt: skip
    out = []
    for row in rows:
        cells = {k: fmt(v, digits[k]) if k in digits else str(v) for k, v in row.items() if not k.startswith("_")}
        if not row.get("_peak_exact", True) and row.get("max_peak_MB") is not None:
            cells["max_peak_MB"] += "*"
        out.append(cells)
    return out


def collect(methods: Sequence[str], sections: Sequence[str]) -> list[dict[str, Any]]:
    """Cached records of ``methods`` × ``sections``; a pair never run appears as status ``not run``."""
    records = []
    for method in methods:
        for section in sections:
            cached = load_cached(method, section)
            records.append(cached or {"method": method, "section": section, "status": "not run", "reason": ""})
    return records


def write_csv(records: list[dict[str, Any]], path: Path) -> None:
    """One row per (method, section), scores and costs, no labels."""
    keys = ["method", "section", "status", "reason", "ari", "nmi", "chaos", "n_scored", "k_asked", "k_produced",
            "seconds", "wall_s", "peak_mb", "peak_source", "threads", "version", "seed", "notes"]  # fmt: skip
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        for r in records:
            row = dict(r)
            if isinstance(row.get("notes"), list):
                row["notes"] = " | ".join(row["notes"])
            writer.writerow(row)


def report(records: list[dict[str, Any]], sections: Sequence[str], file) -> None:
    """Print the per-section tables and the rankings."""
    print("\nScores: ARI and NMI on the scored spots (DLPFC: the manually labelled spots; HER2ST: every spot whose",
          "pathologist label is not 'undetermined', K excluding 'undetermined', all spots clustered);",
          "CHAOS (lower is better) of the predicted map over all spots. seconds: AnnData in memory to labels;",
          "wall_s: the whole child process; peak_MB: the child's peak resident memory (VmHWM); * marks a value",
          "measured before that fix, an upper bound: the larger of the child's peak and the harness's own memory",
          "(rerun with --force for the exact value).", file=file)  # fmt: skip
    for section in sections:
        rows = section_rows(records, section)
        n_scored = {r.get("n_scored") for r in records if r["section"] == section and r.get("n_scored")}
        print(f"\n== {section} (scored spots: {', '.join(map(str, sorted(n_scored))) or '?'}) ==", file=file)
        print_table(rows, SECTION_COLUMNS, file=file)
    print(f"\n== Ranking by mean ARI over {len(sections)} sections ({', '.join(sections)}) ==", file=file)
    print("(rank in parentheses: the method did not finish every section; its means cover the ones it did)", file=file)
    print_table(formatted(ranking(records, sections)), RANK_COLUMNS, file=file)
    dlpfc = [s for s in sections if s in DLPFC]
    if dlpfc:
        print(f"\n== Ranking by DLPFC mean ARI ({', '.join(dlpfc)}) ==", file=file)
        print_table(formatted(ranking(records, dlpfc)), ["rank", "method", "mean_ARI", "mean_NMI", "mean_CHAOS",
                    "sections"], file=file)  # fmt: skip
    failed = [r for r in records if r.get("status") == "failed"]
    if failed:
        print("\n== Failed runs ==", file=file)
        for r in failed:
            print(f"{r['method']} on {r['section']}: {r['reason']} (log: {r.get('log')})", file=file)


class Tee:
    """Write to several streams at once (stdout and the log)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> None:
        for s in self.streams:
            s.write(text)
            s.flush()

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", help="methods to run (default: all; names as in the tables)")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), help="sections (default: all seven)")
    parser.add_argument("--force", action="store_true", help="rerun even where a cached result exists")
    parser.add_argument("--retry-failed", action="store_true", help="rerun cached failures")
    parser.add_argument("--summary-only", action="store_true", help="print the tables from the cache; run nothing")
    parser.add_argument("--timeout", type=float, default=45 * 60, help="seconds per run (default 2,700)")
    parser.add_argument("--threads", type=int, default=2, help="BLAS/torch threads of every run (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "storm_domains",
                        help="scratch folder for the peers' input files and outputs (outside the repo)")  # fmt: skip
    parser.add_argument("--log", type=Path, default=LOGS / "domains.log")
    parser.add_argument("--csv", type=Path, default=LOGS / "domains.csv")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    os.environ.setdefault("STORM_DATA_MIRROR", str(ROOT.parent / "shared" / "data"))
    if args.worker:
        worker(args.worker, args.sections[0], args.out_dir, args.seed, args.threads)
        return

    known = all_methods()
    methods = args.methods or known
    unknown = [m for m in methods if m not in known]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {known}")
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        parser.error(f"unknown sections {bad}; known: {list(SECTIONS)}")
    sections = [s for s in SECTIONS if s in args.sections]
    args.workdir.mkdir(parents=True, exist_ok=True)
    args.log.parent.mkdir(parents=True, exist_ok=True)

    with open(args.log, "w") as log_file:
        out = Tee(sys.stdout, log_file)
        print(f"# domains benchmark {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {args.threads} threads per run, "
              f"seed {args.seed}, timeout {args.timeout:.0f} s", file=out)  # fmt: skip
        if not args.summary_only:
            for method in methods:
                for section in sections:
                    cached = load_cached(method, section)
                    if cached and not args.force and not (args.retry_failed and cached.get("status") == "failed"):
                        continue
                    print(f"[run] {method} on {section} ...", file=out)
                    try:
                        record = run_one(
                            method, section, workdir=args.workdir, seed=args.seed, threads=args.threads,
                            timeout=args.timeout,
                        )  # fmt: skip
                    except FileNotFoundError as err:  # no environment: report, do not cache
                        print(f"[skip] {method} on {section}: {err}", file=out)
                        continue
                    save_cached(record)
                    if record["status"] == "ok":
                        summary = (f"ARI {record['ari']:.3f}, {record['seconds']:.1f} s, {record['peak_mb']:.0f} MB, "
                                   f"K {record['k_produced']}/{record['k_asked']}")  # fmt: skip
                        print(f"[done] {method} on {section}: {summary}", file=out)
                    else:
                        print(f"[failed] {method} on {section}: {record['reason']}", file=out)
        shown = list(dict.fromkeys([*known, *(args.methods or [])]))
        records = collect(shown, sections)
        report(records, sections, out)
        write_csv([r for r in records if r.get("status") != "not run"], args.csv)
        print(f"\nwrote {args.csv.relative_to(ROOT) if args.csv.is_relative_to(ROOT) else args.csv}", file=out)


if __name__ == "__main__":
    main()
