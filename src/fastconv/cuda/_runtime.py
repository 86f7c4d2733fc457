"""Loading the CUDA target lazily, its settings, and launch helpers.

Nothing here imports :mod:`numba.cuda` at import time: ``import fastconv.cuda``
must work on a machine without numba-cuda, without a GPU, or with a numba-cuda
that cannot load (numba-cuda 0.30 with numpy >= 2.5 fails on its first kernel
compile with ``module 'numpy' has no attribute 'row_stack'``).  :func:`require`
does the import, probes the target once, and raises
:class:`fastconv.CudaUnavailableError` saying what to install or why the
target cannot load.

Settings (read once, at import; ``fastconv._config`` holds the shared ones)
---------------------------------------------------------------------------
FASTCONV_CUDA_BLOCK (``fastconv._config.CUDA_BLOCK``)
    Threads per block edge of every tiled kernel (default 16, i.e. 256
    threads).  The simulator tests use 4 so that multi-block paths run.
FASTCONV_CUDA_REGTILE
    Register tile edge of the GEMM kernels (default 8: each thread owns an
    8 x 8 block of outputs, a block a 128 x 128 tile).  Must divide
    FASTCONV_CUDA_BLOCK.
FASTCONV_CUDA_BK
    Depth of the shared-memory K-slices of the GEMM kernels (default 8).
FASTCONV_CUDA_DIRECT_K, FASTCONV_CUDA_DIRECT_Q
    Output channels (default 8) and output columns (default 2) each thread
    of the direct kernel accumulates in registers.
FASTCONV_CUDA_SPLITK
    Split-K factor of the implicit GEMM (default 0: chosen per call so that
    the grid has at least two blocks per SM; see
    :func:`fastconv.cuda.implicit_gemm.plan`).
FASTCONV_CUDA_WORKSPACE_MB
    Upper bound, in MiB, on the device workspace of one Winograd call
    (default 1024); tiles are processed in chunks to respect it.
"""

from __future__ import annotations

import os
import threading

import numpy as np

from .. import _config
from ..errors import CudaUnavailableError

INSTALL_HINT = "pip install 'fastconv[cuda]' (numba-cuda with numpy < 2.5, and an NVIDIA driver)"


class Settings:
    """Block and tile sizes of the CUDA kernels (compile-time constants of each kernel)."""

    def __init__(self):
        self.block = _config.CUDA_BLOCK
        self.regtile = _config.CUDA_REGTILE
        self.bk = _config.CUDA_BK
        self.direct_k = _config.CUDA_DIRECT_K
        self.direct_q = _config.CUDA_DIRECT_Q
        self.workspace_bytes = _config.CUDA_WORKSPACE_BYTES
        self.splitk = _config.CUDA_SPLITK
        TB, RT, BK = self.block, min(self.regtile, self.block), self.bk
        # The GEMM kernels' cooperative loads assume these divisibilities
        # (every thread loads the same number of elements of each tile).
        while TB % RT:
            RT -= 1
        self.regtile = RT
        nt = TB * TB
        if nt % BK or (BK * RT) % TB or nt % (TB * RT):
            raise ValueError(f"FASTCONV_CUDA_BK={BK} does not fit FASTCONV_CUDA_BLOCK={TB} and "
                             f"FASTCONV_CUDA_REGTILE={RT}: need (BLOCK^2) % BK == 0 and "
                             f"(BK * REGTILE) % BLOCK == 0")
        if nt > 1024:
            raise ValueError(f"FASTCONV_CUDA_BLOCK={TB} gives {nt} threads per block; CUDA allows 1024")


SETTINGS = Settings()

# Options of every @cuda.jit kernel, from the package's one config module.
CUDA_JIT = _config.CUDA_JIT

# Dynamic shared memory a block may use without an opt-in (every GPU since sm_20).
SHARED_BYTES = 48 * 1024

_lock = threading.Lock()
_state: dict = {}


def simulator() -> bool:
    """True when numba's CUDA simulator is enabled (NUMBA_ENABLE_CUDASIM=1)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")


# numba.cuda as a module global (the simulator swaps globals, not closures).
cuda_g = None


def _probe_kernel(a):
    i = cuda_g.grid(1)
    if i < a.size:
        a[i] = i


def _probe() -> dict:
    info = {"available": False, "reason": "", "device": None, "compute_capability": None,
            "numba_cuda_version": None, "simulator": simulator()}
    try:
        import numba_cuda  # noqa: F401
        info["numba_cuda_version"] = getattr(numba_cuda, "__version__", None)
    except Exception:
        pass
    try:
        from numba import cuda
    except Exception as exc:  # numba without the CUDA target
        info["reason"] = f"numba.cuda cannot be imported ({exc}); install it with {INSTALL_HINT}"
        return info
    if info["numba_cuda_version"] is None and not hasattr(cuda, "jit"):
        info["reason"] = f"numba-cuda is not installed; {INSTALL_HINT}"
        return info
    try:
        if not cuda.is_available():
            info["reason"] = ("numba-cuda is installed but finds no usable NVIDIA GPU / driver "
                              "(numba.cuda.is_available() is False)")
            return info
        dev = cuda.get_current_device()
        name = getattr(dev, "name", "numba CUDA simulator" if info["simulator"] else "unknown")
        info["device"] = name.decode() if isinstance(name, bytes) else str(name)
        cc = getattr(dev, "compute_capability", None)
        info["compute_capability"] = None if cc is None else tuple(int(v) for v in cc)
    except Exception as exc:
        info["reason"] = f"the CUDA driver could not be initialised: {exc}"
        return info
    # Compile and run one tiny kernel: numba-cuda fails only here when it is
    # incompatible with the installed numpy.
    try:
        global cuda_g
        cuda_g = cuda
        k = cuda.jit(**CUDA_JIT)(_probe_kernel)
        a = cuda.device_array(4, np.float32)
        k[1, 4](a)
        if not np.array_equal(a.copy_to_host(), np.arange(4, dtype=np.float32)):
            raise RuntimeError("a probe kernel computed wrong values")
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"
        hint = ""
        if "row_stack" in str(exc) or np.lib.NumpyVersion(np.__version__) >= "2.5.0":
            hint = (f" numba-cuda {info['numba_cuda_version']} does not work with numpy "
                    f"{np.__version__}; install numpy < 2.5 (pip install 'numpy<2.5').")
        info["reason"] = f"the numba CUDA target cannot compile kernels ({msg}).{hint}"
        return info
    info["available"] = True
    info["reason"] = "simulator (NUMBA_ENABLE_CUDASIM=1)" if info["simulator"] else "ok"
    return info


def status() -> dict:
    """Probe the CUDA target once per process and return what was found."""
    with _lock:
        if "info" not in _state:
            _state["info"] = _probe()
        return dict(_state["info"])


def require():
    """The ``numba.cuda`` module, or :class:`CudaUnavailableError` saying why not."""
    info = status()
    if not info["available"]:
        raise CudaUnavailableError(f"CUDA arrays were passed but the CUDA backend cannot run: "
                                   f"{info['reason']}")
    from numba import cuda
    return cuda


def cuda_module():
    from numba import cuda
    return cuda


def bind_cuda(namespace: dict):
    """Bind ``numba.cuda`` as the global ``cuda`` of a kernel module, on first use.

    Each kernel module keeps its own global (the simulator rewrites module
    globals that are numba.cuda), so the import stays lazy: ``import
    fastconv.cuda`` never imports numba.cuda.
    """
    if namespace.get("cuda") is None:
        from numba import cuda

        namespace["cuda"] = cuda
    return namespace["cuda"]


def nbtype(dtype):
    """The numba scalar type of a numpy dtype (for shared/local arrays)."""
    import numba
    return numba.from_dtype(np.dtype(dtype))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


class Context:
    """Where one call's kernels run and how it allocates device memory.

    ``stream`` is the caller's stream (torch's / CuPy's current stream, or
    numba's default), so kernels are ordered after the producer of the inputs
    without a host synchronisation; ``empty`` allocates through the caller's
    framework (its caching allocator) when there is one.  Without one,
    :meth:`workspace` reuses a per-thread device buffer, because numba's
    allocator calls cudaMalloc/cudaFree every time.  Buffers of one thread
    are reused only by that thread's later calls, which its stream orders
    after the earlier ones.

    ``events``, when a list, receives ``(label, event)`` pairs recorded by
    :meth:`mark` after each phase (the benchmark's per-phase timings).
    """

    def __init__(self, stream=0, empty=None, events=None):
        self.stream = stream
        self._empty = empty
        self.events = events

    def empty(self, shape, dtype):
        if self._empty is not None:
            return self._empty(tuple(shape), np.dtype(dtype))
        cuda = cuda_module()
        return cuda.device_array(tuple(shape), dtype=np.dtype(dtype), stream=self.stream)

    def workspace(self, key: str, n: int, dtype):
        """A 1-D device scratch array of ``n`` elements (contents undefined)."""
        if self._empty is not None or simulator():
            return self.empty((n,), dtype)
        cuda = cuda_module()
        cache = getattr(_workspaces, "buffers", None)
        if cache is None:
            cache = _workspaces.buffers = {}
        ck = (id(cuda.current_context()), key, np.dtype(dtype).str)
        buf = cache.get(ck)
        if buf is None or buf.size < n:
            cache.pop(ck, None)
            buf = cuda.device_array(max(int(n), 1), dtype=np.dtype(dtype), stream=self.stream)
            cache[ck] = buf
        return buf[:n]

    def mark(self, label: str) -> None:
        if self.events is not None:
            ev = cuda_module().event()
            ev.record(self.stream)
            self.events.append((label, ev))


_workspaces = threading.local()


def empty_cache() -> None:
    """Release the device workspaces this thread's calls on numba arrays keep for reuse."""
    _workspaces.buffers = {}


def threads_1d() -> int:
    """Threads per block of the one-dimensional (element-wise) kernels: BLOCK^2 (256 by default)."""
    return SETTINGS.block * SETTINGS.block


def launch(kernel, grid, block, ctx: Context, shared_bytes: int = 0):
    """``kernel[grid, block, stream, shared]`` with a non-empty grid."""
    grid = tuple(max(1, int(g)) for g in grid)
    return kernel[grid, tuple(int(b) for b in block), ctx.stream, int(shared_bytes)]


_dummies: dict = {}


def dummy(dtype, ctx: Context):
    """A one-element device array standing in for an absent optional argument."""
    cuda = cuda_module()
    key = (np.dtype(dtype).str, None if simulator() else id(cuda.current_context()))
    arr = _dummies.get(key)
    if arr is None:
        arr = cuda.device_array(1, dtype=np.dtype(dtype))
        _dummies[key] = arr
    return arr
