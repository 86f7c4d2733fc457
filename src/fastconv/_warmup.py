"""``python -m fastconv warmup``: compile the common CPU kernels into Numba's on-disk cache.

A new installation pays Numba's JIT on its first calls: each kernel
specialisation (path, schedule, dtype, register blocking) compiles once and
is then loaded from the on-disk cache by every later process.  ``warmup``
pays that cost up front, for the layer kinds of :data:`CASES` (between them
they reach every CPU path and schedule), in parallel processes: the tasks
(layer kind x dtype x algorithm) are shared out over ``jobs`` worker
processes, each compiling and caching what its calls need, with a progress
line on stderr.

Numba's cache index is one file per function, rewritten by whichever
process compiled a specialisation last, so two workers that compile two
specialisations of one function at the same moment can each keep only their
own entry.  That costs time, never correctness (a missing entry is compiled
again); a last serial pass in this process therefore runs every task once
more, which loads what is cached and compiles what a race dropped, so the
cache is complete when the command returns.
"""

from __future__ import annotations

import os
import sys
import time

#: Layer kinds: (x shape, w shape, keyword arguments).  3x3 on a wide map, on a small one,
#: deep on 7x7 maps (one and four images: Winograd's stream and split schedules), dilated,
#: 1x1, a strided 7x7 stem, 5x5 over 3 channels, depthwise on a large and on a small map,
#: depthwise 7x7 (and, for fft, each of its three contraction kernels among these).
CASES = (
    ((1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
    ((1, 64, 14, 14), (64, 64, 3, 3), dict(padding=1)),
    ((1, 256, 7, 7), (256, 256, 3, 3), dict(padding=1)),
    ((4, 256, 7, 7), (256, 256, 3, 3), dict(padding=1)),
    ((1, 64, 28, 28), (64, 64, 3, 3), dict(padding=2, dilation=2)),
    ((1, 64, 28, 28), (128, 64, 1, 1), {}),
    ((1, 3, 64, 64), (64, 3, 7, 7), dict(stride=2, padding=3)),
    ((1, 3, 32, 32), (8, 3, 5, 5), {}),
    ((1, 32, 56, 56), (32, 1, 3, 3), dict(padding=1, groups=32)),
    ((8, 64, 7, 7), (64, 1, 3, 3), dict(padding=1, groups=64)),
    ((1, 96, 28, 28), (96, 1, 7, 7), dict(padding=3, groups=96)),
)
ALGORITHMS = ("direct", "im2col", "winograd_f2x2_3x3", "winograd_f4x4_3x3", "fft")
#: fft runs on the kinds whose kernels have at least this many taps (where auto may pick it).
FFT_MIN_TAPS = 25


def tasks(dtypes=("float32", "float64"), cases=None) -> list:
    """Every (x shape, w shape, keywords, dtype, algorithm) of ``cases`` (default
    :data:`CASES`) whose algorithm supports the case."""
    out = []
    for xs, ws, kw in CASES if cases is None else cases:
        for dt in dtypes:
            for alg in ALGORITHMS:
                if alg.startswith("winograd") and (ws[2:] != (3, 3) or kw.get("stride", 1) != 1):
                    continue
                if alg == "fft" and ws[2] * ws[3] < FFT_MIN_TAPS:
                    continue
                out.append((xs, ws, kw, dt, alg))
    return out


def run_task(task) -> tuple:
    """Run one task (compiling what it needs); returns the task and its seconds."""
    import numpy as np

    import fastconv

    xs, ws, kw, dt, alg = task
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(dt)
    w = rng.standard_normal(ws).astype(dt)
    t0 = time.perf_counter()
    fastconv.conv2d(x, w, algorithm=alg, **kw)
    return task, time.perf_counter() - t0


def _bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // max(total, 1)
    return "[" + "#" * filled + "." * (width - filled) + f"] {done}/{total}"


def warmup(jobs=None, dtypes=("float32", "float64"), stream=sys.stderr, cases=None) -> dict:
    """Compile every task of :func:`tasks` in ``jobs`` processes, then check them serially.

    Returns ``{"tasks", "jobs", "parallel_s", "serial_s"}``.  ``jobs``
    defaults to the CPU count (at most the number of tasks).
    """
    import multiprocessing

    from . import _config

    todo = tasks(dtypes, cases)
    jobs = max(1, min(int(jobs or os.cpu_count() or 1), len(todo)))
    t0 = time.perf_counter()
    done = 0
    if jobs > 1:
        # spawn: a fresh interpreter per worker (no forked Numba thread pools)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(jobs) as pool:
            for (xs, ws, _, dt, alg), _ in pool.imap_unordered(run_task, todo):
                done += 1
                print(f"\rwarmup {_bar(done, len(todo))} {alg} {dt} {ws}".ljust(78),
                      end="", file=stream, flush=True)
        print(file=stream)
    t1 = time.perf_counter()
    for k, task in enumerate(todo):
        run_task(task)
        print(f"\rcheck  {_bar(k + 1, len(todo))}".ljust(78), end="", file=stream, flush=True)
    print(file=stream)
    t2 = time.perf_counter()
    if not _config.CACHE:
        print("FASTCONV_CACHE=0: nothing was kept on disk", file=stream)
    return {"tasks": len(todo), "jobs": jobs, "parallel_s": t1 - t0, "serial_s": t2 - t1}
