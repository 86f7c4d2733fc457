"""The machine's fp32 FMA peak, timed on the machine: the yardstick for "percent of peak".

A spec-sheet peak (cores x FMA pipes x lanes x 2 x clock) says what the
silicon could do; a virtual machine, a power limit or a narrower FMA path
can make the real one smaller (``docs/benchmarks.md`` gives an example:
less than half the spec-sheet figure).  :func:`fma_peak` runs, on every
thread, a loop of independent vector FMAs of the kernels' target width on
registers only (:data:`fastconv.cpu.simd.ACCUMULATORS` of them: 24 with
AVX-512's 32 registers, 12 with AVX2's 16 -- more than latency x pipes, so
the FMA units never wait) and reports the FLOP rate.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from .._config import PJIT
from ..cpu.simd import ACCUMULATORS, lanes, sget, sset, stack_vectors, vfma, vload, vstore


@numba.njit(**PJIT)
def _fma_loop(buf, iters):
    nthreads = buf.shape[0]
    for t in numba.prange(nthreads):
        row = buf[t]
        L = row.shape[0] // (ACCUMULATORS + 2)
        acc = stack_vectors(row, ACCUMULATORS)
        for i in range(ACCUMULATORS):
            sset(acc, i, vload(row, i * L))
        a = vload(row, ACCUMULATORS * L)
        b = vload(row, (ACCUMULATORS + 1) * L)
        for _ in range(iters):
            for i in range(ACCUMULATORS):
                sset(acc, i, vfma(a, b, sget(acc, i)))
        for i in range(ACCUMULATORS):
            vstore(row, i * L, sget(acc, i))


def fma_peak(threads=None, dtype=np.float32, seconds=0.2) -> float:
    """The FMA peak timed with ``threads`` Numba threads (default: all)."""
    threads = numba.get_num_threads() if threads is None else int(threads)
    L = lanes(dtype)
    buf = np.zeros((threads, (ACCUMULATORS + 2) * L), dtype=dtype)
    buf[:, ACCUMULATORS * L:] = 1e-8  # a * b tiny: no overflow, no denormals
    _fma_loop(buf, 10)  # compile
    flops_per_iter = threads * ACCUMULATORS * L * 2
    iters = 1000
    while True:
        t0 = time.perf_counter()
        _fma_loop(buf, iters)
        dt = time.perf_counter() - t0
        if dt >= seconds / 4:
            break
        iters *= 4
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        _fma_loop(buf, iters)
        best = max(best, flops_per_iter * iters / (time.perf_counter() - t0) / 1e9)
    return best
