"""Zero-copy interop between CUDA array libraries and numba device arrays.

Accepted device arrays: numba ``DeviceNDArray`` (and the simulator's
``FakeCUDAArray``), CuPy arrays, torch CUDA tensors, and anything else with
``__cuda_array_interface__``; objects that only speak DLPack on a CUDA device
are imported through CuPy or torch (whichever is installed).  Views are taken
with ``sync=False``: instead of synchronising the producer's stream from the
host, every kernel of the call is launched on the caller's current stream
(torch's or CuPy's), which orders it after the producer on the device.

Results are allocated by the caller's framework (``torch.empty`` /
``cupy.empty``: its caching allocator, its stream semantics) and returned as
that framework's array; numba in gives numba out.
"""

from __future__ import annotations

import numpy as np

from ._runtime import (
    CUDA_JIT, bind_cuda, cdiv, Context, cuda_module, launch, simulator, threads_1d,
)

_DLPACK_CUDA = (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged

# numba.cuda, bound on first use.  Kernels must see it as a module global:
# the CUDA simulator swaps module globals that are numba.cuda for its fake.
cuda = None


def _bind():
    return bind_cuda(globals())



def is_device_array(obj) -> bool:
    if obj is None:
        return False
    if getattr(obj, "__cuda_ndarray__", False):  # numba arrays, including the simulator's
        return True
    try:
        if hasattr(obj, "__cuda_array_interface__"):
            return True
    except Exception:  # torch raises for tensors that require grad
        return True
    dev = getattr(obj, "__dlpack_device__", None)
    if dev is not None:
        try:
            return int(dev()[0]) in _DLPACK_CUDA
        except Exception:
            return False
    return False


def _kind(obj) -> str:
    mod = type(obj).__module__.split(".")[0]
    if getattr(obj, "__cuda_ndarray__", False):
        return "numba"
    if mod == "torch":
        return "torch"
    if mod == "cupy":
        return "cupy"
    return "other"


def _describe(obj) -> str:
    t = type(obj)
    return f"{t.__module__.split('.')[0]}.{t.__name__}"


class DeviceArg:
    """One argument: the caller's object, its library, and a numba view of it."""

    def __init__(self, obj, name):
        self.obj = obj
        self.name = name
        self.kind = _kind(obj)
        self.arr = _as_numba(obj, self.kind, name)

    @property
    def shape(self):
        return tuple(int(d) for d in self.arr.shape)

    @property
    def dtype(self):
        return np.dtype(self.arr.dtype)


def _from_dlpack(obj, name):
    try:
        import cupy
        return cupy.from_dlpack(obj)
    except ImportError:
        pass
    try:
        import torch
        return torch.from_dlpack(obj)
    except ImportError:
        raise TypeError(f"{name} is a DLPack CUDA array without __cuda_array_interface__; "
                        f"importing it needs CuPy or torch, neither is installed") from None


def _as_numba(obj, kind, name):
    if kind == "numba":
        return obj
    _bind()
    if kind == "torch":
        if obj.requires_grad:
            obj = obj.detach()
        if not obj.is_cuda:
            raise TypeError(f"{name} is a torch tensor on {obj.device}, not on a CUDA device")
    if not hasattr(obj, "__cuda_array_interface__"):
        obj = _from_dlpack(obj, name)
    try:
        return cuda.as_cuda_array(obj, sync=False)
    except Exception as exc:
        raise TypeError(f"{name} could not be viewed as a CUDA array ({_describe(obj)}): {exc}") from None


def check_placement(args: dict) -> None:
    """Raise TypeError when some arguments live on the host and others on the GPU."""
    dev = {k: v for k, v in args.items() if v is not None and is_device_array(v)}
    host = {k: v for k, v in args.items() if v is not None and not is_device_array(v)}
    if dev and host:
        d = ", ".join(f"{k} ({_describe(v)})" for k, v in dev.items())
        h = ", ".join(f"{k} ({_describe(v)})" for k, v in host.items())
        raise TypeError(f"arguments are on different devices: {d} on the GPU but {h} on the host; "
                        f"move them to the same device first (e.g. cupy.asarray / tensor.cuda() / "
                        f"numba.cuda.to_device for the GPU, or .get() / .cpu() for the host)")


def _device_index(obj):
    kind = _kind(obj)
    try:
        if kind == "torch":
            return obj.device.index if obj.device.index is not None else 0
        if kind == "cupy":
            return int(obj.device.id)
    except Exception:
        return None
    return None


def check_same_gpu(args: dict) -> None:
    """ValueError when torch/CuPy arguments live on different GPUs."""
    where = {k: _device_index(v) for k, v in args.items() if v is not None}
    where = {k: v for k, v in where.items() if v is not None}
    if len(set(where.values())) > 1:
        text = ", ".join(f"{k} on cuda:{v}" for k, v in where.items())
        raise ValueError(f"arguments are on different GPUs ({text}); move them to one device")


def device_of(obj):
    """A context manager selecting the GPU that ``obj`` lives on (torch/CuPy), else a no-op."""
    import contextlib

    _bind()
    kind = _kind(obj)
    if simulator() or kind not in ("torch", "cupy"):
        return contextlib.nullcontext()
    if kind == "torch":
        index = obj.device.index
        return cuda.gpus[index if index is not None else 0]
    return cuda.gpus[obj.device.id]


def context_for(obj) -> Context:
    """The launch context of a call whose ``x`` is ``obj``: the caller's stream and allocator.

    Call it inside :func:`device_of`'s context (streams belong to a device).
    """
    _bind()
    kind = _kind(obj)
    if simulator() or kind not in ("torch", "cupy"):
        return Context(stream=cuda.default_stream())
    if kind == "torch":
        import torch

        dev = obj.device
        ptr = torch.cuda.current_stream(dev).cuda_stream
        tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64,
                  np.dtype(np.int32): torch.int32}

        def empty(shape, dtype):
            return _keep(torch.empty(shape, dtype=tdtype[np.dtype(dtype)], device=dev))

        return _ctx(ptr, empty)
    import cupy

    dev_id = obj.device.id
    with cupy.cuda.Device(dev_id):
        ptr = cupy.cuda.get_current_stream().ptr

    def empty(shape, dtype):
        with cupy.cuda.Device(dev_id):
            return _keep(cupy.empty(shape, dtype=dtype))

    return _ctx(ptr, empty)


def _keep(framework_array):
    view = cuda_module().as_cuda_array(framework_array, sync=False)
    view._fastconv_owner = framework_array  # the result returned to the caller
    return view


def _ctx(ptr, empty):
    stream = cuda.external_stream(ptr) if ptr else cuda.default_stream()
    return Context(stream=stream, empty=empty)


def owner(view):
    """The framework object behind a view made by a Context (or the view itself)."""
    return getattr(view, "_fastconv_owner", view)


def permute(arr, axes):
    """A strided view of a numba device array with its axes permuted (no copy)."""
    axes = tuple(axes)
    if axes == tuple(range(len(axes))):
        return arr
    if simulator():
        return arr.transpose(axes)
    _bind()
    desc = dict(arr.__cuda_array_interface__)
    strides = desc.get("strides") or _c_strides(arr.shape, np.dtype(arr.dtype).itemsize)
    desc["shape"] = tuple(arr.shape[a] for a in axes)
    desc["strides"] = tuple(strides[a] for a in axes)
    desc.pop("stream", None)
    return cuda.from_cuda_array_interface(desc, owner=arr, sync=False)


def reshape(arr, shape):
    """A contiguous array's view with a new shape."""
    return arr.reshape(*shape) if not simulator() else arr.reshape(shape)


def _c_strides(shape, itemsize):
    strides, acc = [], itemsize
    for d in reversed(shape):
        strides.append(acc)
        acc *= int(d)
    return tuple(reversed(strides))


def is_c_contiguous(arr) -> bool:
    return bool(arr.is_c_contiguous())


def byte_extent(arr):
    """(first byte, one past the last byte) an array may touch, for overlap checks."""
    if simulator():
        a = arr._ary
        lo, hi = np.byte_bounds(a) if hasattr(np, "byte_bounds") else np.lib.array_utils.byte_bounds(a)
        return lo, hi
    desc = arr.__cuda_array_interface__
    ptr = desc["data"][0]
    itemsize = np.dtype(arr.dtype).itemsize
    strides = desc.get("strides") or _c_strides(arr.shape, itemsize)
    lo = hi = ptr
    for d, s in zip(arr.shape, strides):
        if d == 0:
            return ptr, ptr
        if s > 0:
            hi += (d - 1) * s
        else:
            lo += (d - 1) * s
    return lo, hi + itemsize


def overlaps(a, b) -> bool:
    alo, ahi = byte_extent(a)
    blo, bhi = byte_extent(b)
    return alo < bhi and blo < ahi


def read_only(obj) -> bool:
    try:
        desc = obj.__cuda_array_interface__
    except Exception:
        return False
    return bool(desc.get("data", (0, False))[1])


# --- copies ----------------------------------------------------------------

_COPY_CACHE: dict = {}


def _copy_kernel():
    k = _COPY_CACHE.get("copy4d")
    if k is None:
        _bind()

        def copy4d_kernel(src, dst, D1, D2, D3, total):
            """dst[a, b, c, d] = src[a, b, c, d] (cast to dst's dtype); any strides.

            One thread per element, grid-stride; the last axis is the fastest
            so that at least one side of a layout change is coalesced.
            """
            i = cuda.grid(1)
            step = cuda.gridsize(1)
            while i < total:
                d = i % D3
                t = i // D3
                c = t % D2
                t = t // D2
                b = t % D1
                a = t // D1
                dst[a, b, c, d] = src[a, b, c, d]
                i += step

        k = cuda.jit(**CUDA_JIT)(copy4d_kernel)
        _COPY_CACHE["copy4d"] = k
    return k


def copy4d(src, dst, ctx: Context):
    """Copy (and cast) one 4-D device array into another of the same shape, on the device."""
    shape = tuple(int(d) for d in dst.shape)
    total = shape[0] * shape[1] * shape[2] * shape[3]
    if total == 0:
        return dst
    threads = threads_1d()
    blocks = min(cdiv(total, threads), 65535 * 4)
    launch(_copy_kernel(), (blocks,), (threads,), ctx)(src, dst, shape[1], shape[2], shape[3], total)
    return dst


def as_contiguous(arr, dtype, ctx: Context):
    """``arr`` if C-contiguous of ``dtype``, else a contiguous device copy (any rank <= 4)."""
    dtype = np.dtype(dtype)
    if np.dtype(arr.dtype) == dtype and is_c_contiguous(arr):
        return arr
    shape = tuple(int(d) for d in arr.shape)
    out = ctx.empty(shape, dtype)
    pad = (1,) * (4 - len(shape))
    copy4d(reshape_any(arr, pad + shape), reshape(out, pad + shape), ctx)
    return out


def reshape_any(arr, shape):
    """Prepend unit axes to a possibly strided array (a view, no copy)."""
    shape = tuple(shape)
    extra = len(shape) - len(arr.shape)
    if extra == 0:
        return arr
    if simulator():
        return arr[(None,) * extra] if extra else arr
    _bind()
    desc = dict(arr.__cuda_array_interface__)
    itemsize = np.dtype(arr.dtype).itemsize
    strides = desc.get("strides") or _c_strides(arr.shape, itemsize)
    desc["shape"] = shape
    desc["strides"] = (itemsize,) * extra + tuple(strides)
    desc.pop("stream", None)
    return cuda.from_cuda_array_interface(desc, owner=arr, sync=False)
