"""Measure a function in a fresh process: wall seconds and the process's peak resident memory.

Each measurement runs in its own spawned interpreter so that peak memory belongs to that step alone (imports
included, reported separately as the baseline of an empty step).
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import sys
import time
from collections.abc import Callable
from typing import Any


def _own_peak_kb() -> float:
    """Peak resident memory (kB) of this process's own address space.

    ``/proc/self/status`` VmHWM where it exists (Linux): ``getrusage``'s ``ru_maxrss`` keeps the high-water mark of
    the address space replaced at ``exec``, which for a spawned child is the forked copy of its parent, so it reports
    the parent's memory whenever the parent is larger than the step being measured.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return float(line.split()[1])
    except OSError:
        pass
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # kB on Linux


def _child(fn: Callable[..., Any], args: tuple, queue: mp.Queue) -> None:
    try:
        start = time.perf_counter()
        extra = fn(*args)
        seconds = time.perf_counter() - start
        peak_kb = _own_peak_kb()
        queue.put({"seconds": seconds, "peak_mb": peak_kb / 1024, **(extra or {})})
    except BaseException as err:  # report, do not hang the parent
        queue.put({"error": f"{type(err).__name__}: {err}"})


def measure(fn: Callable[..., Any], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a spawned process; return seconds, peak RSS in MB and whatever dict ``fn`` returns."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def print_table(rows: list[dict[str, Any]], columns: list[str], file=sys.stdout) -> None:
    """Print rows as an aligned plain-text table."""
    cells = [[f"{r.get(c):.2f}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)), file=file)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)), file=file)
