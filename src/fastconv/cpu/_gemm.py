"""Batched GEMMs for the CPU kernels: independent products spread over Numba threads.

Winograd needs ``alpha^2 * groups`` independent products ``M[i] = U[i] @ V[i]``.
Handing them one by one to a multi-threaded BLAS synchronises the BLAS
threads several times per product, and alternating those threads with
Numba's between the transform phases makes two busy-waiting thread pools
compete for the same cores (on a 2-core machine under load this was measured
to cost 10-100x).  Instead :func:`batched_matmul` runs the products in one
Numba parallel loop, each a single-threaded BLAS call (``np.dot`` in nopython
mode calls SciPy's BLAS), so one thread pool does all the work and a sum is
never split across threads.

Single-threaded BLAS: while :func:`single_threaded_blas` is active, the BLAS
library SciPy (hence Numba) calls is limited to one thread through
``threadpoolctl`` when it is installed -- a process-wide setting, restored
when the last concurrent fastconv call leaves; other threads calling SciPy's
BLAS meanwhile run single-threaded too.  Without ``threadpoolctl`` the BLAS
keeps its threads (still correct; slower when it nests them).
"""

from __future__ import annotations

import contextlib
import threading

import numba
import numpy as np

from .._config import JIT, PJIT


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


_lock = threading.Lock()
_state = {"depth": 0, "limiter": None, "controller": False}


def _controller():
    """threadpoolctl controller of the BLAS that Numba's np.dot calls, or None."""
    if _state["controller"] is False:
        ctl = None
        try:
            import scipy.linalg.cython_blas  # noqa: F401  (loads the library Numba calls)
            from threadpoolctl import ThreadpoolController

            sel = ThreadpoolController().select(user_api="blas")
            libs = [c for c in sel.lib_controllers if "scipy" in c.filepath.lower()]
            if libs:
                sel.lib_controllers = libs
                ctl = sel
        except Exception:  # threadpoolctl missing or unable to inspect this process
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
