"""Batched GEMMs for the CPU kernels: independent products spread over Numba threads.

Winograd needs ``alpha^2 * groups`` independent products ``M[i] = U[i] @ V[i]``.
Handing them one by one to a multi-threaded BLAS synchronises the BLAS
threads several times per product, and alternating those threads with
Numba's between the transform phases makes two busy-waiting thread pools
compete for the same cores (on a machine with few cores, or under load, each
pool's spinning threads steal the time the other's need).  Instead
:func:`batched_matmul` runs the products in one Numba parallel loop, each a single-threaded BLAS call (``np.dot`` in nopython
mode calls SciPy's BLAS), so one thread pool does all the work and a sum is
never split across threads.

Single-threaded BLAS: while :func:`single_threaded_blas` is active, the BLAS
library SciPy (hence Numba) calls is limited to one thread through
``threadpoolctl`` (a runtime dependency) -- a process-wide setting, restored
when the last concurrent fastconv call leaves; other threads calling SciPy's
BLAS meanwhile run single-threaded too.  Where threadpoolctl cannot find that
library the BLAS keeps its threads (still correct; slower when it nests them).

:func:`panel_gemm` is the exception: a register-blocked GEMM micro-kernel in
Numba for the thin products of the channel-vectorised Winograd path (a few
to a few hundred tiles times hundreds of channels), where a BLAS call's
packing and dispatch cost as much as the arithmetic.
"""

from __future__ import annotations

import contextlib
import threading

import numba
import numpy as np

from .._config import JIT, PJIT
from .simd import ACCUMULATORS, REGISTERS, sget, sset, stack_vectors, vbcast, vfma, vload, vsplat, vstore


@numba.njit(**JIT)
def matmul_into(A, B, C):
    """``C = A @ B`` for C-contiguous 2-D arrays, single-threaded inside Numba code.

    A 1x1 @ 1xN product (depthwise Winograd) is a scaled copy: no BLAS call.
    """
    if A.shape[0] == 1 and A.shape[1] == 1:
        a = A[0, 0]
        b = B[0]
        c = C[0]
        for j in range(b.shape[0]):
            c[j] = a * b[j]
    else:
        np.dot(A, B, C)


@numba.njit(**PJIT)
def _batched_matmul(A, B, C):
    # C[i] = A[i] @ B[i] for the leading index i; A (n, M, K), B (n, K, N), C (n, M, N), all
    # C-contiguous.  One job per product.
    for i in numba.prange(A.shape[0]):
        matmul_into(A[i], B[i], C[i])


def batched_matmul(A, B, C):
    """``C[i] = A[i] @ B[i]`` over the leading axis; C-contiguous 3-D arrays of one dtype."""
    with single_threaded_blas():
        _batched_matmul(A, B, C)


#: Register tile of :func:`panel_gemm`: ``PANEL_ROWS`` rows of ``M`` times
#: ``PANEL_VECS`` vectors of its columns; each step over the inner dimension loads
#: ``PANEL_VECS`` vectors of ``U`` and broadcasts ``PANEL_ROWS`` elements of ``V``.
#: With AVX-512's 32 registers 6 x 4 = 24 accumulators (6 rows rather than 8: 6
#: broadcasts instead of 8 per 24 FMAs); with 16 registers 4 x 2 = 8: the kernel's
#: partial-tile branches keep a few more values live than accumulators + loads + one
#: broadcast, and 6 x 2 spills two of them (benchmarks/spill_check.py).
PANEL_ROWS = 6 if REGISTERS >= 32 else 4
PANEL_VECS = max(1, min(ACCUMULATORS // PANEL_ROWS, 2 if REGISTERS < 32 else 4))
_PANEL_ACC = PANEL_ROWS * PANEL_VECS


@numba.njit(**JIT)
def panel_gemm(V, vbase, U, ubase, M, mbase, T, Cp, kb0, kb1, Kp, L, ucs=0, ubs=0, nc=0):
    """``M[t, k] = sum_c V[t, c] U[c, k]`` for ``t < T`` and ``k`` in blocks ``kb0 .. kb1 - 1``.

    Flat, C-contiguous 1-D arrays with element offsets: ``V`` holds ``T``
    rows of ``Cp`` from ``vbase``; ``U`` is stored by column blocks,
    ``U[c, kb * L + l]`` at ``ubase + (kb * Cp + c) * L + l`` (``L`` lanes:
    the ``L`` columns of a block for one ``c`` are one vector), or, with the
    strides ``ucs`` and ``ubs`` given, at ``ubase + kb * ubs + c * ucs + l``
    (``U`` row-major: ``ucs`` its row length, ``ubs = L``); ``M`` holds
    ``T`` rows of ``Kp`` from ``mbase``.  Every sum runs over ``c`` in order
    with one fused multiply-add per term, so results do not depend on the
    blocking.  No bounds checks: callers keep the offsets in range.
    ``nc > 0``: the sums run over the first ``nc`` values of ``c`` only, ``Cp``
    staying the row length of ``V`` (a chunk of a longer sum).
    """
    if ucs == 0:
        ucs, ubs = L, Cp * L
    n_inner = Cp if nc == 0 else nc
    acc = stack_vectors(V, _PANEL_ACC)
    uv = stack_vectors(V, PANEL_VECS)
    zero = vsplat(0, V)
    for kb in range(kb0, kb1, PANEL_VECS):
        nv = min(PANEL_VECS, kb1 - kb)
        for t0 in range(0, T, PANEL_ROWS):
            nt = min(PANEL_ROWS, T - t0)
            for i in range(_PANEL_ACC):
                sset(acc, i, zero)
            vrow = vbase + t0 * Cp
            for c in range(n_inner):
                for j in range(PANEL_VECS):
                    if j < nv:
                        sset(uv, j, vload(U, ubase + (kb + j) * ubs + c * ucs))
                for i in range(PANEL_ROWS):
                    if i < nt:
                        vv = vbcast(V, vrow + i * Cp + c)
                        for j in range(PANEL_VECS):
                            if j < nv:
                                sset(acc, i * PANEL_VECS + j,
                                     vfma(vv, sget(uv, j), sget(acc, i * PANEL_VECS + j)))
            for i in range(PANEL_ROWS):
                if i < nt:
                    for j in range(PANEL_VECS):
                        if j < nv:
                            vstore(M, mbase + (t0 + i) * Kp + (kb + j) * L,
                                   sget(acc, i * PANEL_VECS + j))


#: Rows of a parallel GEMM's row block are a multiple of this (the M unroll
#: of OpenBLAS's AVX-512 SGEMM kernel).
ROW_ALIGN = 16


@numba.njit(**PJIT)
def _grouped_matmul(A, B, C, rb):
    # C[b, g] = A[g] @ B[b, g]; A (G, M, K), B (nb, G, K, N), C (nb, G, M, N), C-contiguous.
    # One job per (b, g, block of rb rows of C): each job reads all of B[b, g] and
    # writes disjoint rows, so every output's sum is one BLAS dot product whatever
    # the number of threads.
    nb, G, M = C.shape[0], C.shape[1], C.shape[2]
    nrb = (M + rb - 1) // rb
    for job in numba.prange(nb * G * nrb):
        blk = job % nrb
        bg = job // nrb
        g = bg % G
        b = bg // G
        m0 = blk * rb
        m1 = min(M, m0 + rb)
        matmul_into(A[g, m0:m1], B[b, g], C[b, g, m0:m1])


def grouped_matmul(A, B, C):
    """``C[b, g] = A[g] @ B[b, g]`` in Numba's thread pool, single-threaded BLAS per job.

    ``A`` is ``(G, M, K)``, ``B`` ``(nb, G, K, N)`` and ``C`` ``(nb, G, M, N)``,
    all C-contiguous and of one dtype.  The products are split into blocks
    of rows of ``C`` so that even one product keeps every thread busy.  BLAS's
    own threads are never woken: after a multi-threaded OpenBLAS call its
    workers busy-wait for about 2**28 cycles (tens of milliseconds), and on a
    machine with few cores they slow the next convolution -- ours or
    PyTorch's -- while they spin.
    """
    nb, G, M = C.shape[0], C.shape[1], C.shape[2]
    if C.size == 0:
        return
    if A.shape[2] == 0:
        C[...] = 0
        return
    # One row block per thread when there are fewer products than threads:
    # every job packs all of B[b, g] again, so smaller blocks only add packing.
    threads = max(1, numba.get_num_threads())
    nrb = max(1, min(-(-M // ROW_ALIGN), -(-threads // (nb * G))))
    rb = -(-M // nrb)
    if rb < M:
        rb = -(-rb // ROW_ALIGN) * ROW_ALIGN
    with single_threaded_blas():
        _grouped_matmul(A, B, C, rb)


_lock = threading.Lock()
_state = {"depth": 0, "limiter": None, "controller": False}


def _controller():
    """threadpoolctl controller of the BLAS that Numba's np.dot calls, or None."""
    if _state["controller"] is False:
        import scipy.linalg.cython_blas  # noqa: F401  (loads the library Numba calls)
        from threadpoolctl import ThreadpoolController

        ctl = None
        try:
            sel = ThreadpoolController().select(user_api="blas")
            libs = [c for c in sel.lib_controllers if "scipy" in c.filepath.lower()]
            if libs:
                sel.lib_controllers = libs
                ctl = sel
        except Exception:  # threadpoolctl unable to inspect this process
            ctl = None
        _state["controller"] = ctl
    return _state["controller"]


@contextlib.contextmanager
def single_threaded_blas():
    """Limit SciPy's BLAS to one thread while any fastconv call is inside this block."""
    with _lock:
        ctl = _controller()
        if ctl is not None and _state["depth"] == 0:
            _state["limiter"] = ctl.limit(limits=1)
        _state["depth"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["depth"] -= 1
            if _state["depth"] == 0 and _state["limiter"] is not None:
                _state["limiter"].restore_original_limits()
                _state["limiter"] = None
