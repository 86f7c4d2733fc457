"""Zero-copy interop between CUDA array libraries and fastconv's device views.

Accepted device arrays: numba ``DeviceNDArray`` (and the simulator's
``FakeCUDAArray``), CuPy arrays, torch CUDA tensors, and anything else with
``__cuda_array_interface__``; objects that only speak DLPack on a CUDA device
are imported through CuPy or torch (whichever is installed).  Each is
described once as a :class:`~fastconv.cuda._views.DevView` (address, shape,
byte strides, dtype) read from the library's own attributes, without
synchronising the producer's stream from the host: every kernel of the call
is launched on the caller's current stream (torch's or CuPy's), which orders
it after the producer on the device.

Results are allocated by the caller's framework (``torch.empty`` /
``cupy.empty``: its caching allocator, its stream semantics) and returned as
that framework's array; numba in gives numba out.
"""

from __future__ import annotations

import functools

import numpy as np

from ._runtime import (
    Context, KernelSpec, arg_types, array_type, bind_cuda, cdiv, launch, simulator, threads_1d,
)
from .._placement import is_device_array
from ._views import DevView

# numba.cuda, bound on first use.  Kernels must see it as a module global:
# the CUDA simulator swaps module globals that are numba.cuda for its fake.
cuda = None


def _bind():
    return bind_cuda(globals())


def _kind(obj) -> str:
    if getattr(obj, "__cuda_ndarray__", False):
        return "numba"
    mod = type(obj).__module__.split(".")[0]
    if mod == "torch":
        return "torch"
    if mod == "cupy":
        return "cupy"
    return "other"


def _describe(obj) -> str:
    t = type(obj)
    return f"{t.__module__.split('.')[0]}.{t.__name__}"


@functools.lru_cache(maxsize=None)
def _torch_dtypes():
    import torch
    table = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64),
             torch.float16: np.dtype(np.float16), torch.int32: np.dtype(np.int32),
             torch.int64: np.dtype(np.int64), torch.uint8: np.dtype(np.uint8),
             torch.int8: np.dtype(np.int8), torch.int16: np.dtype(np.int16),
             torch.bool: np.dtype(np.bool_)}
    return table, {v: k for k, v in table.items()}


def view_of(obj, name: str) -> DevView:
    """Describe the caller's device array ``obj`` (argument ``name``) as a DevView (no copy)."""
    kind = _kind(obj)
    if kind == "torch":
        return _torch_view(obj, name)
    if kind == "numba" and simulator():
        return DevView.of_host(obj._ary, owner=obj, kind="numba")
    if kind == "cupy":
        return DevView(obj.data.ptr, obj.shape, obj.strides, obj.dtype, owner=obj, kind="cupy")
    if not hasattr(obj, "__cuda_array_interface__"):
        obj = _from_dlpack(obj, name)
        return view_of(obj, name)
    try:
        desc = obj.__cuda_array_interface__
    except Exception as exc:
        raise TypeError(f"{name} could not be viewed as a CUDA array ({_describe(obj)}): {exc}") from None
    if desc.get("mask") is not None:
        raise TypeError(f"{name} is a masked CUDA array; pass the data without a mask")
    try:
        dtype = np.dtype(desc["typestr"])
    except TypeError:
        raise TypeError(f"{name} must have dtype float32 or float64, got {desc['typestr']!r}") from None
    ptr, readonly = desc["data"]
    return DevView(ptr or 0, desc["shape"], desc.get("strides"), dtype, owner=obj, kind=kind,
                   readonly=readonly)


def _torch_view(t, name):
    if not t.is_cuda:
        raise TypeError(f"{name} is a torch tensor on {t.device}, not on a CUDA device")
    to_np, _ = _torch_dtypes()
    dtype = to_np.get(t.dtype)
    if dtype is None:
        raise TypeError(f"{name} must have dtype float32 or float64, got {t.dtype}; "
                        f"cast explicitly, e.g. {name}.float()")
    if simulator():  # no CUDA tensors exist under the simulator; kept for completeness
        raise TypeError(f"{name}: torch CUDA tensors cannot be used under the CUDA simulator")
    item = dtype.itemsize
    return DevView(t.data_ptr(), t.shape, tuple(s * item for s in t.stride()), dtype, owner=t,
                   kind="torch")


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


def check_placement(args: dict) -> None:
    """Raise TypeError when some arguments live on the host and others on the GPU."""
    dev = {k: v for k, v in args.items() if v is not None and is_device_array(v)}
    if len(dev) == sum(v is not None for v in args.values()):
        return
    host = {k: v for k, v in args.items() if v is not None and k not in dev}
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


_gpu_count: list = []


def device_of(obj):
    """A context manager selecting the GPU that ``obj`` lives on (torch/CuPy), else a no-op.

    On a machine with one GPU that is always device 0, whose context numba
    keeps current, so nothing needs switching.
    """
    import contextlib

    _bind()
    kind = _kind(obj)
    if simulator() or kind not in ("torch", "cupy"):
        return contextlib.nullcontext()
    if not _gpu_count:
        _gpu_count.append(len(cuda.gpus))
    index = _device_index(obj) or 0
    if _gpu_count[0] == 1 and index == 0:
        return contextlib.nullcontext()
    return cuda.gpus[index]


def context_for(obj, view: DevView) -> Context:
    """The launch context of a call whose ``x`` is ``obj``: the caller's stream and allocator.

    Call it inside :func:`device_of`'s context (streams belong to a device).
    """
    kind = view.kind
    if simulator() or kind not in ("torch", "cupy"):
        _bind()
        device = 0 if simulator() else int(cuda.get_current_device().id)
        return Context(stream=0, device=device)
    if kind == "torch":
        import torch

        dev = obj.device
        index = dev.index if dev.index is not None else 0
        _, to_torch = _torch_dtypes()

        def empty(shape, dtype):
            t = torch.empty(shape, dtype=to_torch[dtype], device=dev)
            return DevView(t.data_ptr(), shape, None, dtype, owner=t, kind="torch")

        return Context(stream=torch.cuda.current_stream(dev).cuda_stream, device=index, empty=empty)
    import cupy

    dev_id = obj.device.id
    with cupy.cuda.Device(dev_id):
        ptr = cupy.cuda.get_current_stream().ptr

    def empty(shape, dtype):
        with cupy.cuda.Device(dev_id):
            a = cupy.empty(shape, dtype=dtype)
        return DevView(a.data.ptr, shape, None, dtype, owner=a, kind="cupy")

    return Context(stream=ptr, device=dev_id, empty=empty)


# --- copies ----------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _copy_kernel(src_dtype: str, dst_dtype: str) -> KernelSpec:
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

    return KernelSpec(copy4d_kernel, arg_types(copy4d_kernel, src=array_type(src_dtype, 4, "A"),
                                               dst=array_type(dst_dtype, 4, "A")),
                      dict(src=src_dtype, dst=dst_dtype))


def specializations():
    """Every copy kernel the dispatcher can launch: float32/float64 to float32/float64."""
    for s in ("<f4", "<f8"):
        for d in ("<f4", "<f8"):
            yield _copy_kernel(s, d)


def copy4d(src: DevView, dst: DevView, ctx: Context) -> DevView:
    """Copy (and cast) one 4-D device view into another of the same shape, on the device."""
    shape = dst.shape
    total = shape[0] * shape[1] * shape[2] * shape[3]
    if total == 0:
        return dst
    threads = threads_1d()
    blocks = min(cdiv(total, threads), 65535 * 4)
    launch(_copy_kernel(src.dtype.str, dst.dtype.str), (blocks,), (threads,), ctx,
           (src, dst, shape[1], shape[2], shape[3], total))
    return dst


def as_contiguous(view: DevView, dtype, ctx: Context) -> DevView:
    """``view`` if C-contiguous of ``dtype``, else a contiguous device copy (any rank <= 4)."""
    dtype = np.dtype(dtype)
    if view.dtype == dtype and view.is_c_contiguous():
        return view
    out = ctx.empty(view.shape, dtype)
    copy4d(view.expand(4), out.expand(4), ctx)
    return out
