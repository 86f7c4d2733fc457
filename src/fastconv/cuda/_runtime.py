"""Loading the CUDA target lazily, its settings, and launch helpers.

Nothing here imports :mod:`numba.cuda` at import time: ``import fastconv.cuda``
must work on a machine without numba-cuda, without a GPU, or with a numba-cuda
that cannot load (numba-cuda 0.30 with numpy >= 2.5 fails on its first kernel
compile with ``module 'numpy' has no attribute 'row_stack'``).  :func:`require`
does the import, probes the target once, and raises
:class:`fastconv.CudaUnavailableError` saying what to install or why the
target cannot load.

Settings (``SETTINGS``: :data:`fastconv._config.CUDA`, defaults from the environment)
-------------------------------------------------------------------------------------
FASTCONV_CUDA_BLOCK (``SETTINGS.block``)
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

import itertools
import os
import threading

import numpy as np

from .. import _config
from ..errors import CudaUnavailableError
from ._views import DevView

INSTALL_HINT = "pip install 'fastconv[cuda]' (numba-cuda with numpy < 2.5, and an NVIDIA driver)"


# The CUDA settings live in the package's one config module (fastconv._config.CUDA, a
# dataclass with reset()); fitted and checked here, where the CUDA target is first imported.
SETTINGS = _config.CUDA
SETTINGS.fit()

# Options of every @cuda.jit kernel, from the package's one config module.
CUDA_JIT = _config.CUDA_JIT

# Dynamic shared memory a block may use without an opt-in (every GPU since sm_20).
SHARED_BYTES = 48 * 1024

_lock = threading.Lock()
_ptx_lock = threading.Lock()
_state: dict = {}


def simulator() -> bool:
    """True when numba's CUDA simulator is enabled (NUMBA_ENABLE_CUDASIM=1)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")


# --- kernel specialisations ------------------------------------------------------------------

def nbtype(dtype):
    """The numba scalar type of a numpy dtype (for shared/local arrays)."""
    import numba
    return numba.from_dtype(np.dtype(dtype))


def array_type(dtype, ndim: int = 1, layout: str = "C"):
    """The numba type of a kernel's array argument: C-contiguous 1-D unless told otherwise."""
    from numba import types
    return types.Array(nbtype(dtype), ndim, layout)


def int64_type():
    from numba import types
    return types.int64


def arg_types(fn, **arrays):
    """Argument types of kernel ``fn``: ``arrays`` maps array argument names to their numba
    types; every other argument is an int64 scalar."""
    names = fn.__code__.co_varnames[:fn.__code__.co_argcount]
    unknown = set(arrays) - set(names)
    if unknown:
        raise ValueError(f"{fn.__name__} has no argument(s) {sorted(unknown)}")
    return tuple(arrays.get(n, int64_type()) for n in names)


class KernelSpec:
    """One specialisation of a CUDA kernel: its Python function, argument types, constants.

    Kernel factories (``lru_cache``'d functions in each kernel module) return
    one of these per combination of dtype and compile-time constants.  The
    argument types are fixed, so the kernel is compiled for exactly one
    signature, on its first launch (:meth:`dispatcher`), and launched without
    numba's per-call type dispatch.  :meth:`ptx` compiles the same
    specialisation without a GPU (NVVM only): ``python -m fastconv check
    --cuda-compile`` uses it to type-check every kernel the dispatcher can
    launch.

    Scalar arguments are ``int64`` (numba's type of a Python int); array
    arguments are 1-D C-contiguous unless a kernel needs strides (the copy
    kernel).  ``register_blocked`` marks kernels whose accumulators must stay
    in registers: the compile check fails on any local-memory use in them.
    """

    def __init__(self, fn, argtypes, constants=None, register_blocked=False):
        self.fn = fn
        self.name = fn.__name__
        self.argtypes = tuple(argtypes)
        self.constants = dict(constants or {})
        self.register_blocked = register_blocked
        self._lock = threading.Lock()
        self._dispatcher = None
        self._core = {}
        # Per array argument: its dimensionality, for the launcher's packing.
        self.array_ndims = tuple(getattr(t, "ndim", 0) for t in self.argtypes)

    def launch_words(self) -> int:
        """How many 8-byte kernel parameters the fast launcher packs (numba's kernel ABI)."""
        return sum(5 + 2 * nd if nd else 1 for nd in self.array_ndims)

    def signature(self):
        from numba import types
        return types.void(*self.argtypes)

    def dispatcher(self):
        """The compiled kernel (numba's dispatcher, one signature), compiled on first use."""
        d = self._dispatcher
        if d is None:
            with self._lock:
                if self._dispatcher is None:
                    from numba import cuda
                    self._dispatcher = cuda.jit(self.signature(), **CUDA_JIT)(self.fn)
                d = self._dispatcher
        return d

    def overload(self):
        """numba's compiled kernel object for the one signature."""
        disp = self.dispatcher()
        return next(iter(disp.overloads.values()))

    def core_kernel(self, device: int):
        """The ``cuda.core`` kernel handle of this specialisation on ``device`` (cached)."""
        k = self._core.get(device)
        if k is None:
            k = self._core[device] = self.overload()._codelibrary.get_cufunc().kernel
        return k

    def ptx(self, cc):
        """PTX for compute capability ``cc`` under the same typing as a GPU (no GPU needed).

        numba-cuda types a jitable helper called by a kernel (the shared GEMM
        slice of :mod:`fastconv.cuda._gemm_tile`) by compiling it for the
        current GPU's compute capability; without a GPU that lookup fails, so
        for this compilation it answers ``cc``.  The helper is inlined into the
        kernel's IR, and the kernel itself is compiled for ``cc``.
        """
        from unittest import mock

        from numba import cuda
        from numba.cuda import dispatcher

        class _Target:
            compute_capability = tuple(cc)

        with _ptx_lock, mock.patch.object(dispatcher, "get_current_device", lambda: _Target):
            ptx, _ = cuda.compile_ptx(self.fn, self.argtypes, cc=cc,
                                      fastmath=CUDA_JIT.get("fastmath", False))
        return ptx

    def __repr__(self):
        consts = ", ".join(f"{k}={v}" for k, v in sorted(self.constants.items()))
        return f"{self.name}[{consts}]"


# --- launching ---------------------------------------------------------------------------------
#
# Three ways to launch a KernelSpec, chosen once per process by the probe:
# "fast"        the arguments are packed straight from DevViews (numba's kernel ABI: an array is
#               meminfo, parent, size, itemsize, data, shape..., strides..., each 8 bytes; an
#               int64 is 8 bytes) and launched with cuda.core, the launcher numba-cuda itself
#               uses.  The probe checks it against the values numba's own launch path writes.
# "dispatcher"  numba's compiled kernel launches itself from numba device arrays made from the
#               views (numba's own argument handling; slower per call).
# "simulator"   NUMBA_ENABLE_CUDASIM=1: the simulator's kernels on its numpy-backed arrays.

_core_launch = None
_LaunchConfig = None
_configs: dict = {}


def _launch_config(grid, block, shared):
    key = (grid, block, shared)
    cfg = _configs.get(key)
    if cfg is None:
        if len(_configs) > 4096:
            _configs.clear()
        cfg = _configs[key] = _LaunchConfig(grid=grid, block=block, shmem_size=shared)
    return cfg


def _pack(spec, args):
    words = []
    for a in args:
        if type(a) is DevView:
            words += (0, 0, a.size, a.dtype.itemsize, a.ptr)
            words += a.shape
            words += a.strides
        elif type(a) is int:
            words.append(a)
        else:
            words.append(int(a))
    return words


def send(ctx, config, spec, words):
    """One launch with packed parameter words on ``ctx``'s stream and device.

    The driver launches into the calling thread's current context.  A thread
    that has none yet (a new thread handed numba arrays, say) gets the
    device's primary context, the one numba and torch share, and the launch
    is sent again.
    """
    try:
        _core_launch(ctx.core_stream(), config, spec.core_kernel(ctx.device), *words)
    except Exception:
        from numba.cuda.cudadrv import devices
        devices.get_context(ctx.device)
        _core_launch(ctx.core_stream(), config, spec.core_kernel(ctx.device), *words)


def _launch_fast(spec, grid, block, ctx, args, shared):
    send(ctx, _launch_config(grid, block, shared), spec, _pack(spec, args))


def _numba_view(view):
    """A numba device array over a DevView's memory (no copy)."""
    from numba import cuda
    desc = {"shape": view.shape, "strides": view.strides, "typestr": view.dtype.str,
            "data": (view.ptr, False), "version": 3}
    return cuda.from_cuda_array_interface(desc, owner=view.owner, sync=False)


def _launch_dispatcher(spec, grid, block, ctx, args, shared):
    from numba.cuda.cudadrv.driver import _to_core_stream

    nargs = [_numba_view(a) if type(a) is DevView else a for a in args]
    # The compiled kernel's own launch (numba's argument handling), without the dispatcher's
    # launch configuration object, which warns about small grids on every small-batch call.
    spec.overload().launch(nargs, grid, block, _to_core_stream(ctx.numba_stream()), shared)


def _launch_simulator(spec, grid, block, ctx, args, shared):
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    nargs = [FakeCUDAArray(a.host) if type(a) is DevView else a for a in args]
    spec.dispatcher()[grid, block, 0, shared](*nargs)


_LAUNCHERS = {"fast": _launch_fast, "dispatcher": _launch_dispatcher, "simulator": _launch_simulator}


def launch(spec: KernelSpec, grid, block, ctx, args, shared: int = 0) -> None:
    """Launch ``spec`` on ``ctx``'s stream: ``kernel[grid, block, stream, shared](*args)``.

    ``args`` are DevViews (array arguments) and Python ints, in the kernel's
    order.  ``grid`` and ``block`` are tuples; empty grid axes are raised to 1.
    """
    grid = tuple(g if g > 0 else 1 for g in grid)
    if ctx.recorder is not None:
        ctx.recorder.append((spec, grid, block, int(shared), tuple(args)))
        return
    _LAUNCHERS[_state["mode"]](spec, grid, block, ctx, args, int(shared))


# --- the probe -----------------------------------------------------------------------------

# numba.cuda as a module global (the simulator swaps globals, not closures).
cuda_g = None


def _probe_kernel(a, n, k, b):
    """a[i] = i + k for i < n; b[i, j, l, m] = 1000 i + 100 j + 10 l + m (b strided)."""
    i = cuda_g.grid(1)
    if i < n:
        a[i] = i + k
    if i < b.size:
        m = i % b.shape[3]
        t = i // b.shape[3]
        l = t % b.shape[2]
        t = t // b.shape[2]
        j = t % b.shape[1]
        t = t // b.shape[1]
        b[t, j, l, m] = 1000 * t + 100 * j + 10 * l + m


def _probe_spec():
    global cuda_g
    if cuda_g is None:
        from numba import cuda
        cuda_g = cuda
    return KernelSpec(_probe_kernel, (array_type(np.float32), int64_type(), int64_type(),
                                      array_type(np.float32, 4, "A")))


def _check_launcher(mode: str, cuda) -> None:
    """Run the probe kernel through launcher ``mode``; raise if anything is off."""
    spec = _probe_spec()
    ctx = Context(stream=0, device=_current_device_id(cuda))
    a = ctx.empty((37,), np.float32)
    base = ctx.empty((3, 5, 2, 4), np.float32)  # the probe writes it through a permuted view
    view = base.permute((0, 2, 3, 1))
    prev = _state.get("mode")
    _state["mode"] = mode
    try:
        launch(spec, (2,), (64,), ctx, (a, 37, 7, view))
    finally:
        _state["mode"] = prev
    cuda.synchronize()
    got_a = a.owner.copy_to_host()
    got_b = base.owner.copy_to_host().transpose(0, 2, 3, 1)
    i = np.indices(got_b.shape)
    want_b = (1000 * i[0] + 100 * i[1] + 10 * i[2] + i[3]).astype(np.float32)
    if not np.array_equal(got_a, np.arange(37, dtype=np.float32) + 7) or not np.array_equal(got_b, want_b):
        raise RuntimeError(f"the {mode} launcher wrote wrong values in the probe kernel")


def _current_device_id(cuda) -> int:
    if simulator():
        return 0
    return int(cuda.get_current_device().id)


def _probe() -> dict:
    info = {"available": False, "reason": "", "device": None, "compute_capability": None,
            "numba_cuda_version": None, "simulator": simulator(), "launcher": None}
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
    global cuda_g
    cuda_g = cuda
    if info["simulator"]:
        modes = ["simulator"]
    else:
        modes = ["dispatcher"]
        try:
            global _core_launch, _LaunchConfig
            from cuda.core import LaunchConfig, launch as core_launch
            _core_launch, _LaunchConfig = core_launch, LaunchConfig
            modes.insert(0, "fast")
        except Exception:
            pass
    # Compile and run one tiny kernel: numba-cuda fails only here when it is incompatible with
    # the installed numpy.  The fast launcher must reproduce numba's own launch exactly; if it
    # does not, every call uses numba's launch path instead (slower per call, same results).
    errors = []
    for mode in modes:
        try:
            _check_launcher(mode, cuda)
        except Exception as exc:
            errors.append(f"{mode}: {type(exc).__name__}: {exc}")
            continue
        _state["mode"] = mode
        info["launcher"] = mode
        info["available"] = True
        info["reason"] = "simulator (NUMBA_ENABLE_CUDASIM=1)" if info["simulator"] else "ok"
        if errors:
            info["launcher_note"] = "; ".join(errors)
        return info
    msg = "; ".join(errors)
    hint = ""
    if "row_stack" in msg or np.lib.NumpyVersion(np.__version__) >= "2.5.0":
        hint = (f" numba-cuda {info['numba_cuda_version']} does not work with numpy "
                f"{np.__version__}; install numpy < 2.5 (pip install 'numpy<2.5').")
    info["reason"] = f"the numba CUDA target cannot compile or launch kernels ({msg}).{hint}"
    return info


def status() -> dict:
    """Probe the CUDA target once per process and return what was found."""
    info = _state.get("info")
    if info is None:
        with _lock:
            if "info" not in _state:
                _state["info"] = _probe()
            info = _state["info"]
    return dict(info)


def require():
    """The ``numba.cuda`` module, or :class:`CudaUnavailableError` saying why not."""
    info = _state.get("info")
    if info is None or not info["available"]:
        info = status()
        if not info["available"]:
            raise CudaUnavailableError(f"CUDA arrays were passed but the CUDA backend cannot run: "
                                       f"{info['reason']}")
    return cuda_g


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


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --- where a call runs ---------------------------------------------------------------------------

_core_streams: dict = {}


class Context:
    """Where one call's kernels run and how it allocates device memory.

    ``stream`` is the handle of the caller's stream (torch's / CuPy's current
    stream; 0, the default stream, for numba arrays), so kernels are ordered
    after the producer of the inputs without a host synchronisation.
    ``device`` is the GPU's index.  ``empty`` allocates through the caller's
    framework (its caching allocator) when there is one; without one,
    :meth:`workspace` reuses a per-thread device buffer, because numba's
    allocator calls cudaMalloc/cudaFree every time.  Buffers of one thread
    are reused only by that thread's later calls, which the default stream
    orders after the earlier ones.

    ``events``, when a list, receives ``(label, event)`` pairs recorded by
    :meth:`mark` after each phase (the benchmark's per-phase timings).
    """

    __slots__ = ("stream", "device", "_empty", "events", "recorder")

    def __init__(self, stream=0, device=0, empty=None, events=None):
        self.stream = int(stream or 0)
        self.device = device
        self._empty = empty
        self.events = events
        self.recorder = None

    def epoch(self) -> int:
        """This call's non-finite flag epoch (see :func:`next_epoch`)."""
        return next_epoch()

    def core_stream(self):
        """The stream as a ``cuda.core`` object (cached per handle)."""
        s = _core_streams.get(self.stream)
        if s is None:
            from cuda.core import Stream
            if len(_core_streams) > 256:
                _core_streams.clear()
            s = _core_streams[self.stream] = Stream.from_handle(self.stream)
        return s

    def numba_stream(self):
        from numba import cuda
        return cuda.external_stream(self.stream) if self.stream else cuda.default_stream()

    def empty(self, shape, dtype) -> DevView:
        """An uninitialised C-contiguous device array (a DevView owning its memory)."""
        if self._empty is not None:
            return self._empty(tuple(shape), np.dtype(dtype))
        cuda = cuda_module()
        if simulator():
            arr = cuda.device_array(tuple(shape), dtype=np.dtype(dtype))
            return DevView.of_host(arr._ary, owner=arr)
        arr = cuda.device_array(tuple(shape), dtype=np.dtype(dtype),
                                stream=0 if not self.stream else self.numba_stream())
        return DevView(arr.device_ctypes_pointer.value or 0, arr.shape, arr.strides, arr.dtype,
                       owner=arr, kind="numba")

    def workspace(self, key: str, n: int, dtype) -> DevView:
        """A 1-D device scratch array of ``n`` elements (contents undefined)."""
        return self.workspaces(key, ((n, dtype),))[0]

    def workspaces(self, key: str, parts) -> list:
        """Scratch arrays ``[(n, dtype), ...]`` carved out of one allocation (256-byte aligned).

        One allocation per call through the caller's framework; for numba
        arrays one buffer per (thread, device, key), grown when too small.
        """
        offsets, total = [], 0
        for n, dtype in parts:
            offsets.append(total)
            total += -(-max(int(n), 1) * np.dtype(dtype).itemsize // 256) * 256
        if self._empty is not None or simulator():
            buf = self.empty((total,), np.uint8)
        else:
            cache = getattr(_workspaces, "buffers", None)
            if cache is None:
                cache = _workspaces.buffers = {}
            ck = (self.device, key)
            buf = cache.get(ck)
            if buf is None or buf.size < total:
                cache.pop(ck, None)
                buf = cache[ck] = self.empty((total,), np.uint8)
        out = []
        for (n, dtype), off in zip(parts, offsets):
            dtype = np.dtype(dtype)
            n = int(n)
            host = None
            if buf.host is not None:
                host = buf.host[off:off + max(n, 1) * dtype.itemsize].view(dtype)[:n]
            out.append(DevView(buf.ptr + off, (n,), (dtype.itemsize,), dtype, owner=buf.owner,
                               kind=buf.kind, host=host))
        return out

    def mark(self, label: str) -> None:
        if self.events is not None:
            ev = cuda_module().event()
            ev.record(self.numba_stream())
            self.events.append((label, ev))


_workspaces = threading.local()


def empty_cache() -> None:
    """Release the device workspaces this thread's calls on numba arrays keep for reuse."""
    _workspaces.buffers = {}


def threads_1d() -> int:
    """Threads per block of the one-dimensional (element-wise) kernels: BLOCK^2 (256 by default)."""
    return SETTINGS.block * SETTINGS.block


# Non-finite flags: a kernel that finds NaN/inf writes the call's epoch into the flag, and the
# gated fallback runs when the flag holds that epoch.  Epochs are unique in the process (a random
# start, then consecutive), so the flag needs no clearing launch: a stale value from an earlier
# call is another epoch, and stale memory that happens to hold this call's epoch only makes the
# exact fallback run once for nothing.
_epochs = itertools.count(int.from_bytes(os.urandom(6), "little") << 12)


def next_epoch() -> int:
    return next(_epochs)


_dummies: dict = {}


def dummy(dtype, ctx: Context) -> DevView:
    """A one-element device array standing in for an absent optional argument (never read)."""
    key = (np.dtype(dtype).str, ctx.device)
    view = _dummies.get(key)
    if view is None:
        view = _dummies[key] = Context(device=ctx.device).empty((1,), dtype)
    return view
