"""``activation=`` and ``residual=`` on the GPU (:mod:`fastconv._epilogue`).

One elementwise kernel applies ``y = act(y + residual)`` to the laid-out
result, on the caller's stream, after the convolution's kernels: one
read-modify-write of the output in device memory, where the CPU kernels fuse
the epilogue into their stores.  The order of operations and the activations'
definitions are the CPU's, so relu and relu6 give the unfused expression's
values bitwise.  Both arrays may have any strides (the result may be a
strided ``out=``); the residual is first converted to the result's dtype.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .._epilogue import CODES, RESIDUAL, Epilogue
from ._runtime import Context, KernelSpec, arg_types, array_type, bind_cuda, cdiv, launch, threads_1d
from ._views import DevView

# numba.cuda, bound on first use (a module global: the simulator swaps those).
cuda = None


@functools.lru_cache(maxsize=None)
def _epilogue_kernel(dtype_str: str) -> KernelSpec:
    bind_cuda(globals())
    dt = np.dtype(dtype_str).type
    # Typed constants (closure values are compile-time constants of their numpy type), so
    # the arithmetic stays in the result's precision.
    ZERO, SIX, HALF, RSQRT2, ONE = dt(0), dt(6), dt(0.5), dt(1 / np.sqrt(2)), dt(1)
    RELU, RELU6, SILU, GELU = CODES["relu"], CODES["relu6"], CODES["silu"], CODES["gelu"]
    RES = RESIDUAL

    def epilogue4d_kernel(y, r, mode, D1, D2, D3, total):
        """y[a, b, c, d] = act(y[a, b, c, d] + r[a, b, c, d]) (``mode``: the activation's code,
        plus RESIDUAL when r is read); any strides, one thread per element, grid-stride."""
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        act = mode & 7
        while i < total:
            d = i % D3
            t = i // D3
            c = t % D2
            t = t // D2
            b = t % D1
            a = t // D1
            v = y[a, b, c, d]
            if mode & RES:
                v = v + r[a, b, c, d]
            if act == RELU:
                if v < ZERO:
                    v = ZERO
            elif act == RELU6:
                if v < ZERO:
                    v = ZERO
                elif v > SIX:
                    v = SIX
            elif act == SILU:
                v = v / (ONE + math.exp(-v))
            elif act == GELU:
                v = HALF * v * (ONE + math.erf(v * RSQRT2))
            y[a, b, c, d] = v
            i += step

    a4 = array_type(dtype_str, 4, "A")
    return KernelSpec(epilogue4d_kernel, arg_types(epilogue4d_kernel, y=a4, r=a4),
                      dict(dtype=dtype_str))


def specializations():
    """The epilogue kernel for float32 and float64 results."""
    for dt in ("<f4", "<f8"):
        yield _epilogue_kernel(dt)


def apply(result: DevView, residual: "DevView | None", epi: Epilogue, ctx: Context) -> None:
    """``act(result + residual)`` in place; ``residual`` a view of the result's shape (or None).

    ``residual`` must not overlap ``result`` unless it is the same view (the caller copies a
    residual that is ``out`` before the convolution writes ``out``).
    """
    if not epi.active:
        return
    y4 = result.expand(4)
    r4 = y4 if residual is None else residual.expand(4)
    if r4.dtype != y4.dtype:
        from ._arrays import as_contiguous

        r4 = as_contiguous(r4, y4.dtype, ctx)
    shape = y4.shape
    total = shape[0] * shape[1] * shape[2] * shape[3]
    if total == 0:
        return
    threads = threads_1d()
    blocks = min(cdiv(total, threads), 65535 * 4)
    launch(_epilogue_kernel(y4.dtype.str), (blocks,), (threads,), ctx,
           (y4, r4, epi.mode, shape[1], shape[2], shape[3], total))
