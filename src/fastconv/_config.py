"""Every setting fastconv reads from the environment, in one place.

Kernels import their Numba options from here (``JIT`` and ``PJIT``) instead of
hard-coding flags, so a user can switch e.g. ``fastmath`` for the whole
package with one variable, and tests can see what was used.

Variables
---------
FASTCONV_FASTMATH
    "1" lets LLVM reassociate floating-point sums (default "0").  Off by
    default: reassociation changes results with the number of threads and
    voids the error bounds the tests hold.
FASTCONV_CACHE
    "0" disables Numba's on-disk cache (default "1").
FASTCONV_WORKSPACE_MB
    Upper bound, in MiB, on the scratch memory of one im2col or Winograd call
    (default 256).  Work is tiled over batch and output rows to respect it.
FASTCONV_WEIGHT_CACHE_MB
    Upper bound, in MiB, on the prepared weights (Winograd-transformed or
    packed) kept between calls whose weights did not change (default 256;
    ``0`` disables the cache).  See :mod:`fastconv._weight_cache`.
FASTCONV_CUDA_BLOCK
    Threads per block edge of the CUDA kernels (default 16); the simulator
    tests shrink it so that multi-block paths run.
FASTCONV_CUDA_REGTILE, FASTCONV_CUDA_BK
    Register tile edge (default 8) and K-slice depth (default 8) of the CUDA
    GEMM kernels (implicit GEMM, Winograd).
FASTCONV_CUDA_DIRECT_K, FASTCONV_CUDA_DIRECT_Q
    Output channels (default 8) and columns (default 2) per thread of the
    CUDA direct kernel.
FASTCONV_CUDA_SPLITK
    Split-K factor of the implicit GEMM (default 0: chosen per call).
FASTCONV_CUDA_WORKSPACE_MB
    Device workspace bound of one CUDA Winograd call (default 1024).
FASTCONV_CACHE_DIR
    Where ``algorithm="tuned"`` keeps its measurements (read by
    :mod:`fastconv.tuning` at call time; default ~/.cache/fastconv).
"""

from __future__ import annotations

import os
import threading


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _int(name: str, default: int, minimum: int = 1) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        v = int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"environment variable {name} must be >= {minimum}, got {v}")
    return v


FASTMATH = _flag("FASTCONV_FASTMATH", False)
CACHE = _flag("FASTCONV_CACHE", True)
WORKSPACE_BYTES = max(1, _int("FASTCONV_WORKSPACE_MB", 256)) * 2**20
WEIGHT_CACHE_BYTES = _int("FASTCONV_WEIGHT_CACHE_MB", 256, minimum=0) * 2**20
CUDA_BLOCK = _int("FASTCONV_CUDA_BLOCK", 16)
CUDA_REGTILE = _int("FASTCONV_CUDA_REGTILE", 8)
CUDA_BK = _int("FASTCONV_CUDA_BK", 8)
CUDA_DIRECT_K = _int("FASTCONV_CUDA_DIRECT_K", 8)
CUDA_DIRECT_Q = _int("FASTCONV_CUDA_DIRECT_Q", 2)
CUDA_SPLITK = _int("FASTCONV_CUDA_SPLITK", 0, minimum=0)
CUDA_WORKSPACE_BYTES = _int("FASTCONV_CUDA_WORKSPACE_MB", 1024) * 2**20

# Options for serial and parallel Numba kernels.  nogil lets Python threads
# run kernels concurrently; error_model="numpy" keeps divisions branch-free.
JIT = dict(cache=CACHE, fastmath=FASTMATH, nogil=True, error_model="numpy")
PJIT = dict(JIT, parallel=True)
# Options of every @cuda.jit kernel.
CUDA_JIT = dict(fastmath=FASTMATH)


def _pick_threading_layer() -> str:
    """Choose a Numba threading layer that tolerates concurrent entry.

    Numba's default fallback, ``workqueue``, aborts the process when two
    Python threads enter parallel kernels at once.  TBB and OpenMP do not.
    The user's own NUMBA_THREADING_LAYER always wins.
    """
    import numba

    if os.environ.get("NUMBA_THREADING_LAYER"):
        return numba.config.THREADING_LAYER
    for layer, module in (("tbb", "tbbpool"), ("omp", "omppool")):
        try:
            __import__(f"numba.np.ufunc.{module}")
        except Exception:  # the shared library is missing or broken
            continue
        numba.config.THREADING_LAYER = layer
        return layer
    numba.config.THREADING_LAYER = "workqueue"
    return "workqueue"


THREADING_LAYER = _pick_threading_layer()

# Held around every parallel kernel launch when only the unsafe workqueue
# layer is available: calls are then serialised instead of aborting.
_PARALLEL_LOCK = threading.RLock() if THREADING_LAYER == "workqueue" else None


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def parallel_section():
    """Context manager to wrap parallel kernel launches in."""
    return _PARALLEL_LOCK if _PARALLEL_LOCK is not None else _NoLock()
