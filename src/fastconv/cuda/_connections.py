"""``connections=`` on the GPU: weights of unconnected (k, c) pairs read as zero.

As on the CPU (:func:`fastconv.conv2d`), the table is applied by zeroing the
unconnected weights in a copy (``w`` is untouched; a NaN in an unconnected
weight is dropped, not multiplied), and every algorithm then runs its dense
kernel.  The table lives on the host; its device copy is made once per
distinct table and GPU and kept (a few bytes per (k, c) pair), so a call
with a table adds one small launch and no host-to-device copy.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from ._runtime import (
    Context, KernelSpec, arg_types, array_type, bind_cuda, cdiv, launch, simulator, threads_1d,
)
from ._views import DevView

cuda = None

_MAX_TABLES = 64
_tables: dict = {}
_lock = threading.Lock()


@functools.lru_cache(maxsize=None)
def _mask_kernel(dtype_str: str) -> KernelSpec:
    bind_cuda(globals())

    def mask_weights_kernel(w, mask, out, RS, total):
        """out[i] = w[i] where mask[i // RS] != 0, else 0 (w flat KCRS, mask flat (K, Cg))."""
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < total:
            v = w[i]
            if mask[i // RS] == 0:
                v = 0
            out[i] = v
            i += step

    a = array_type(dtype_str)
    return KernelSpec(mask_weights_kernel,
                      arg_types(mask_weights_kernel, w=a, mask=array_type(np.uint8), out=a),
                      dict(dtype=dtype_str))


def specializations():
    """The masking kernel for float32 and float64 weights."""
    for dt in ("<f4", "<f8"):
        yield _mask_kernel(dt)


def _device_table(mask: np.ndarray, ctx: Context) -> DevView:
    """The (K, Cg) table as a flat uint8 device array, uploaded once per table and GPU."""
    flat = np.ascontiguousarray(mask, dtype=np.uint8).reshape(-1)
    key = (ctx.device, mask.shape, flat.tobytes())
    view = _tables.get(key)
    if view is None:
        bind_cuda(globals())
        with _lock:
            view = _tables.get(key)
            if view is None:
                arr = cuda.to_device(flat)  # a one-off synchronous copy of a small table
                view = (DevView.of_host(arr._ary, owner=arr) if simulator() else
                        DevView(arr.device_ctypes_pointer.value or 0, arr.shape, arr.strides,
                                arr.dtype, owner=arr, kind="numba"))
                if len(_tables) >= _MAX_TABLES:
                    _tables.pop(next(iter(_tables)))
                _tables[key] = view
    return view


def masked_weights(wc: DevView, mask: np.ndarray, p, ctx: Context) -> DevView:
    """A contiguous copy of the weights ``wc`` with unconnected pairs set to zero."""
    table = _device_table(mask, ctx)
    out = ctx.empty(wc.shape, wc.dtype)
    total = wc.size
    if total:
        threads = threads_1d()
        blocks = min(cdiv(total, threads), 65535)
        launch(_mask_kernel(wc.dtype.str), (blocks,), (threads,), ctx,
               (wc.flat(), table, out.flat(), p.R * p.S, total))
    return out
