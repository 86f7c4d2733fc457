"""The CPU side of the fused epilogue (:mod:`fastconv._epilogue`).

A kernel that owns its stores calls :func:`finish` (one contiguous span) or
:func:`finish_rows` (a block of rows) on the outputs it has just written,
from the same task: the block is still in that core's cache, so the
epilogue costs arithmetic, not a second trip through memory.  Kernels
receive three arguments for it, the same types whether or not an epilogue
is asked for (so no second specialisation is compiled):

* ``rf``: the residual, flat, indexed like the kernel's flat output (or
  ``ep`` itself when there is no residual; it is then never read);
* ``ep``: the constants the activations use, in the call's dtype
  (:func:`constants`);
* ``mode``: the activation's code plus ``RESIDUAL`` (0: nothing to do).

:func:`apply` is the same epilogue as one parallel pass over a finished
output, for the paths that do not fuse it (and for NHWC results, which are
laid out after the kernel).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from .._config import JIT, PJIT
from .._epilogue import CODES, RESIDUAL, Epilogue
from .simd import (VECTOR_BYTES, sload, sstore, vadd, vclamp, vcount, vdiv, vfloor, vfma, vload,
                   vload_masked, vmul, vpow2, vselect_lt, vsplat, vstore, vstore_masked, vsub)

RELU, RELU6, SILU, GELU = CODES["relu"], CODES["relu6"], CODES["silu"], CODES["gelu"]

_CONSTANTS: dict = {}

# Numerical Recipes' erfc (Press et al., "Numerical Recipes", 2nd ed., section 6.2):
# erfc(z) = t exp(-z^2 + P(t)), t = 1 / (1 + z/2), z >= 0, fractional error below 1.2e-7.
_ERFC = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807,
         -1.13520398, 1.48851587, -0.82215223, 0.17087277)

# Indices into the constants (constants()).
_LOG2E, _LN2HI, _LN2LO, _EXPLO, _EXPHI, _INF, _TAYLOR, _NR = 5, 6, 7, 8, 9, 10, 11, 23


def constants(dtype) -> np.ndarray:
    """The activations' constants in ``dtype``, typed like the output.

    ``[0, 6, 1/2, 1/sqrt(2), 1]``, then :func:`_vexp`'s (``log2(e)``, ``ln 2``
    split in two parts as in Cephes, the range bounds, ``inf``, ``1/n!`` for
    ``n = 2..13``) and Numerical Recipes' ``erfc`` coefficients.  One array per
    dtype, shared by every call; kernels only read it.  It stays flagged
    writeable because the kernels are compiled for writeable arrays (a
    read-only one would be another type, and another compilation).
    """
    dtype = np.dtype(dtype)
    c = _CONSTANTS.get(dtype)
    if c is None:
        if dtype == np.float32:  # Cephes expf's split of ln 2; 2**k stays normal
            ln2 = (0.693359375, -2.12194440e-4)
            bounds = (-87.0, 88.0)
        else:  # Cephes exp's split
            ln2 = (6.93145751953125e-1, 1.42860682030941723212e-6)
            bounds = (-708.0, 709.0)
        values = ([0.0, 6.0, 0.5, 1.0 / math.sqrt(2.0), 1.0, 1.0 / math.log(2.0), *ln2, *bounds,
                   math.inf] + [1.0 / math.factorial(n) for n in range(2, 14)] + list(_ERFC))
        c = _CONSTANTS.setdefault(dtype, np.array(values, dtype=dtype))
    return c


@numba.njit(inline="always", **JIT)
def _vexp(x, ep, f32):
    """Lane-wise ``exp(x)`` of a vector, without a library call.

    ``x = k ln 2 + r`` with ``|r| <= ln(2)/2`` (``ln 2`` in two parts, as in
    Cephes, so ``r`` is exact to a few units in the last place), ``exp(r)`` by
    its Taylor polynomial in fused multiply-adds (degree 7 in float32, 13 in
    float64: truncation below ``u/10``), scaled by ``2**k`` from the exponent
    bits.  Within 3 ulp of ``exp``; 0 below ``-87`` (float32) / ``-708``
    (float64), ``inf`` above ``88`` / ``709`` (the range where ``2**k`` is a
    normal number), NaN for NaN.  ``f32``: the dtype is float32 (a constant).
    """
    lo = vsplat(ep[_EXPLO], ep)
    hi = vsplat(ep[_EXPHI], ep)
    xc = vclamp(x, lo, hi, True)
    k = vfloor(vfma(xc, vsplat(ep[_LOG2E], ep), vsplat(ep[2], ep)))
    r = vsub(vsub(xc, vmul(k, vsplat(ep[_LN2HI], ep))), vmul(k, vsplat(ep[_LN2LO], ep)))
    top = 5 if f32 else 11
    p = vsplat(ep[_TAYLOR + top], ep)
    for n in range(top - 1, -1, -1):
        p = vfma(p, r, vsplat(ep[_TAYLOR + n], ep))
    one = vsplat(ep[4], ep)
    p = vfma(vfma(p, r, one), r, one)
    y = vmul(p, vpow2(k))
    y = vselect_lt(hi, x, vsplat(ep[_INF], ep), y)
    return vselect_lt(x, lo, vsplat(ep[0], ep), y)


@numba.njit(inline="always", **JIT)
def _vone_plus_erf(w, ep):
    """Lane-wise ``1 + erf(w)`` (float32) from Numerical Recipes' ``erfc`` (fractional
    error below 1.2e-7, about 2 ulp, plus the rounding of its evaluation):
    ``2 - erfc(w)`` for ``w >= 0``, ``erfc(-w)`` below, so no cancellation for
    negative ``w``."""
    zero = vsplat(ep[0], ep)
    one = vsplat(ep[4], ep)
    z = vselect_lt(w, zero, vsub(zero, w), w)
    t = vdiv(one, vfma(vsplat(ep[2], ep), z, one))
    q = vsplat(ep[_NR + 9], ep)
    for n in range(8, -1, -1):
        q = vfma(q, t, vsplat(ep[_NR + n], ep))
    ans = vmul(t, _vexp(vsub(q, vmul(z, z)), ep, True))
    return vselect_lt(w, zero, ans, vsub(vadd(one, one), ans))


@numba.njit(inline="always", **JIT)
def _vact(v, ep, act, f32):
    """silu or (float32) gelu of a vector."""
    if act == SILU:
        return vdiv(v, vadd(vsplat(ep[4], ep), _vexp(vsub(vsplat(ep[0], ep), v), ep, f32)))
    return vmul(vmul(vsplat(ep[2], ep), v), _vone_plus_erf(vmul(v, vsplat(ep[3], ep)), ep))


def args(epi: Epilogue, y_flat_offset: int = 0, size: int = -1, dtype=np.float32):
    """``(rf, ep, mode)`` for a kernel writing the flat output from ``y_flat_offset`` on.

    ``rf`` is the residual's matching flat slice (the residual is C-contiguous
    in the kernel's layout); without a residual it is ``ep``.
    """
    ep = constants(dtype)
    if epi.residual is None:
        return ep, ep, epi.mode
    rf = epi.residual.reshape(-1)
    end = rf.size if size < 0 else y_flat_offset + size
    return rf[y_flat_offset:end], ep, epi.mode


@numba.njit(inline="always", **JIT)
def finish(yf, rf, ep, mode, i0, i1):
    """``yf[i] = act(yf[i] + rf[i])`` for ``i0 <= i < i1`` (``mode`` says which; 0: nothing).

    One pass: each element is loaded, gets its residual and activation, and is
    stored once.  The residual, relu and relu6 run on whole vectors of the
    target (:func:`~fastconv.cpu.simd.vclamp`: compare and select, so NaN stays
    NaN), the last partial vector masked: the spans the kernels hand over are
    short (a tile's row), where a compiler-vectorised loop would spend most
    of its time in its set-up and scalar remainder.  silu and gelu too, with
    :func:`_vexp` and, in float32, :func:`_vone_plus_erf` (no library calls);
    float64 gelu calls ``erf`` element by element.
    """
    if mode == 0:
        return
    res = (mode & RESIDUAL) != 0
    act = mode & 7
    if act == 0 or act == RELU or act == RELU6:
        V = vcount(yf)
        lo = vsplat(ep[0], yf)
        hi = vsplat(ep[1], yf)
        clamp = act != 0
        upper = act == RELU6
        i = i0
        while i + V <= i1:
            v = vload(yf, i)
            if res:
                v = vadd(v, vload(rf, i))
            if clamp:
                v = vclamp(v, lo, hi, upper)
            vstore(yf, i, v)
            i += V
        if i < i1:
            v = vload_masked(yf, i, i1 - i)
            if res:
                v = vadd(v, vload_masked(rf, i, i1 - i))
            if clamp:
                v = vclamp(v, lo, hi, upper)
            vstore_masked(yf, i, v, i1 - i)
        return
    f32 = vcount(yf) * 4 == VECTOR_BYTES  # a compile-time constant
    if act == GELU and not f32:  # float64 gelu: the C library's erf, element by element
        for i in range(i0, i1):
            v = sload(yf, i) + sload(rf, i) if res else sload(yf, i)
            sstore(yf, i, ep[2] * v * (ep[4] + math.erf(v * ep[3])))
        return
    V = vcount(yf)
    i = i0
    while i + V <= i1:
        v = vload(yf, i)
        if res:
            v = vadd(v, vload(rf, i))
        vstore(yf, i, _vact(v, ep, act, f32))
        i += V
    if i < i1:
        v = vload_masked(yf, i, i1 - i)
        if res:
            v = vadd(v, vload_masked(rf, i, i1 - i))
        vstore_masked(yf, i, _vact(v, ep, act, f32), i1 - i)


@numba.njit(inline="always", **JIT)
def finish_rows(yf, rf, ep, mode, dst, stride, rows, t0, t1):
    """:func:`finish` on ``rows`` spans ``yf[dst + l * stride + t]``, ``t0 <= t < t1``."""
    if mode == 0:
        return
    for lane in range(rows):
        finish(yf, rf, ep, mode, dst + lane * stride + t0, dst + lane * stride + t1)


#: Elements per task of :func:`apply`'s pass: a few L1-sized pages.
CHUNK = 16384


@numba.njit(**PJIT)
def _apply(yf, rf, ep, mode, chunk):
    n = yf.size
    for t in numba.prange((n + chunk - 1) // chunk):
        finish(yf, rf, ep, mode, t * chunk, min(n, (t + 1) * chunk))


def apply(y: np.ndarray, epi: Epilogue) -> None:
    """The epilogue as one parallel in-place pass over ``y`` (C-contiguous, the residual's layout)."""
    if not epi.active or y.size == 0:
        return
    rf, ep, mode = args(epi, dtype=y.dtype)
    _apply(y.reshape(-1), rf, ep, mode, CHUNK)
