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
from .simd import (sload, sstore, vadd, vclamp, vcount, vload, vload_masked, vsplat, vstore,
                   vstore_masked)

RELU, RELU6, SILU, GELU = CODES["relu"], CODES["relu6"], CODES["silu"], CODES["gelu"]

_CONSTANTS: dict = {}


def constants(dtype) -> np.ndarray:
    """``[0, 6, 1/2, 1/sqrt(2), 1]`` in ``dtype``: the activations' constants, typed like the output.

    One array per dtype, shared by every call; kernels only read it.  It stays
    flagged writeable because the kernels are compiled for writeable arrays (a
    read-only one would be another type, and another compilation).
    """
    dtype = np.dtype(dtype)
    c = _CONSTANTS.get(dtype)
    if c is None:
        c = _CONSTANTS.setdefault(
            dtype, np.array([0.0, 6.0, 0.5, 1.0 / math.sqrt(2.0), 1.0], dtype=dtype))
    return c


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
    of its time in its set-up and scalar remainder.  silu and gelu, whose
    ``exp`` and ``erf`` are library calls per element, are plain loops.
    """
    if mode == 0:
        return
    res = (mode & RESIDUAL) != 0
    act = mode & 7
    if act <= RELU6:
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
    half, rsqrt2, one = ep[2], ep[3], ep[4]
    if act == SILU:
        for i in range(i0, i1):
            v = sload(yf, i) + sload(rf, i) if res else sload(yf, i)
            sstore(yf, i, v / (one + math.exp(-v)))
    elif act == GELU:
        for i in range(i0, i1):
            v = sload(yf, i) + sload(rf, i) if res else sload(yf, i)
            sstore(yf, i, half * v * (one + math.erf(v * rsqrt2)))


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
