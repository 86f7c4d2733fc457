"""Parallel conversions between the 16-bit float types and float32 (:mod:`fastconv._half`).

numpy converts float16 element by element in software and ``ml_dtypes`` does
bfloat16 in one thread; a 16-bit convolution's widening of its input and
rounding of its result would then cost as much as the convolution.  These
kernels run on Numba's threads:

* float16: LLVM's ``fpext`` / ``fptrunc`` between ``half`` and ``float``
  (:func:`_h2f`, :func:`_f2h`), which vectorise to the F16C instructions
  where the target has them; IEEE rounding to nearest, ties to even, as numpy's;
* bfloat16: the upper half of a float32's bits; rounding to nearest, ties to
  even, by adding ``0x7FFF`` plus the lowest kept bit before the shift (NaN
  kept quiet), as ``ml_dtypes`` rounds.

Each takes C-contiguous arrays viewed flat; the 16-bit side as ``uint16``.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

from .._config import PJIT

#: Elements per task.
CHUNK = 1 << 15


@intrinsic
def _h2f(typingctx, u):
    """The float16 whose bits are ``u`` (uint16), as float32 (exact)."""
    if not (isinstance(u, types.Integer) and u.bitwidth == 16):
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(u), codegen


@intrinsic
def _f2h(typingctx, f):
    """The bits (uint16) of float32 ``f`` rounded to float16 (to nearest, ties to even)."""
    if not (isinstance(f, types.Float) and f.bitwidth == 32):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))

    return types.uint16(f), codegen


@numba.njit(**PJIT)
def _widen_f16(src, dst, chunk):
    n = src.size
    for t in numba.prange((n + chunk - 1) // chunk):
        for i in range(t * chunk, min(n, (t + 1) * chunk)):
            dst[i] = _h2f(src[i])


@numba.njit(**PJIT)
def _narrow_f16(src, dst, chunk):
    n = src.size
    for t in numba.prange((n + chunk - 1) // chunk):
        for i in range(t * chunk, min(n, (t + 1) * chunk)):
            dst[i] = _f2h(src[i])


@numba.njit(**PJIT)
def _widen_bf16(src, dst, chunk):
    n = src.size
    for t in numba.prange((n + chunk - 1) // chunk):
        for i in range(t * chunk, min(n, (t + 1) * chunk)):
            dst[i] = numba.uint32(src[i]) << 16


@numba.njit(**PJIT)
def _narrow_bf16(src, dst, chunk):
    n = src.size
    for t in numba.prange((n + chunk - 1) // chunk):
        for i in range(t * chunk, min(n, (t + 1) * chunk)):
            b = src[i]
            if (b & numba.uint32(0x7FFFFFFF)) > numba.uint32(0x7F800000):  # NaN: keep it quiet
                dst[i] = numba.uint16((b >> 16) | numba.uint32(0x40))
            else:
                dst[i] = numba.uint16((b + numba.uint32(0x7FFF) + ((b >> 16) & numba.uint32(1)))
                                      >> 16)


def widen(a: np.ndarray) -> np.ndarray:
    """A new C-contiguous float32 array with ``a``'s values (``a`` float16 or bfloat16)."""
    a = np.ascontiguousarray(a)
    out = np.empty(a.shape, np.float32)
    if a.size:
        if a.dtype == np.float16:
            _widen_f16(a.reshape(-1).view(np.uint16), out.reshape(-1), CHUNK)
        else:
            _widen_bf16(a.reshape(-1).view(np.uint16), out.reshape(-1).view(np.uint32), CHUNK)
    return out


def narrow(y: np.ndarray, dtype) -> np.ndarray:
    """A new array of 16-bit ``dtype`` with ``y``'s float32 values rounded to nearest, ties to even."""
    y = np.ascontiguousarray(y, dtype=np.float32)
    out = np.empty(y.shape, dtype)
    if y.size:
        if np.dtype(dtype) == np.float16:
            _narrow_f16(y.reshape(-1), out.reshape(-1).view(np.uint16), CHUNK)
        else:
            _narrow_bf16(y.reshape(-1).view(np.uint32), out.reshape(-1).view(np.uint16), CHUNK)
    return out
