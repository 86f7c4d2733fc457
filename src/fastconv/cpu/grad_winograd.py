"""The weight gradient of a 3x3 stride-1 layer by Winograd's F(3x3, 2x2).

``grad_w[k, c, r, s] = sum_{n, p, q} gy[n, k, p, q] * xpad[n, c, p + r, q + s]``
splits over 2x2 tiles of ``gy``: one tile ``g`` (``gy[n, k, 2i:2i+2, 2j:2j+2]``)
and the 4x4 block ``d`` of ``xpad`` under it contribute a 3x3 correlation of
``d`` with the 2-tap filter ``g``, which Winograd's minimal filtering
computes with 16 products instead of 36 (Lavin & Gray 2016; the transforms
are :func:`fastconv.winograd_math.transform_matrices` ``(3, 2)``)::

    Y = A^T [ (G g G^T) * (B^T d B) ] A.

The output transform is linear, so the sum over tiles moves inside it: per
position ``xi`` of the 4x4 transform domain the tiles' products add up as
one matrix product,

    ``M_xi[k, c] = sum_tiles (G g G^T)_xi[k, tile] * (B^T d B)_xi[c, tile]``,

16 GEMMs of ``(K x T) @ (T x C)`` over the ``T = N * ceil(P/2) * ceil(Q/2)``
tiles (odd ``P`` or ``Q``: ``gy`` gets a zero row or column), then one
``A^T M A`` per ``(k, c)``.  That is 16/36 of the direct sum's multiply-adds
plus two transforms of cost linear in the data (``x`` is read as 4x4 blocks
with a stride of 2, so ``B^T d B`` makes four values per input pixel).

Layout: ``x`` and ``gy`` are packed with their channels in vector lanes
(:func:`fastconv.cpu.packing.pack_input_blocked`), so both transforms run on
whole vectors of channels, and their results are stored per ``xi`` as
``[channel block][tile][lane]``.  The GEMM's register tile is
:data:`fastconv.cpu._gemm.PANEL_ROWS` output channels ``k`` (broadcast from
their lane) times :data:`fastconv.cpu._gemm.PANEL_VECS` vectors of input
channels ``c``.  Tiles are transformed and multiplied in chunks of whole tile
rows (:data:`CHUNK_BYTES` of transformed data); the accumulators carry the
running sum from one chunk to the next, so every entry of ``M`` is one sum
over all tiles in tile order, whatever the chunking or the thread count.

Error bound: per output, the first-order bound of
:func:`fastconv.winograd_math.error_bound` with ``m = 3``, ``r = 2``, the
tiles in place of the channels (``n = T + 20``; ``beta = 36``)::

    |g_hat - g| <= gamma_n * 36 * T * max|xpad| * max|gy|.

``tests/test_grad.py`` holds it.

Non-finite values: the transforms mix a whole tile, so an inf could become a
NaN in outputs it should not reach.  The output transform folds every entry
of ``M`` into a running sum; where that is not finite (an inf or NaN in
``x`` or ``gy``, or an overflow) :func:`winograd_weight` returns None and the
caller computes the gradient by a route that propagates them exactly.
"""

from __future__ import annotations

import numba
import numpy as np

from .._config import CPU, PJIT
from . import _scratch
from ._gemm import PANEL_ROWS, PANEL_VECS
from .packing import pack_input_blocked, swap_middle
from .simd import (lanes, sget, sset, stack_ints, stack_vectors, vadd, vbcast, vfma, vload, vmul,
                   vsplat, vstore, vsub)

#: Bytes of transformed ``x`` and ``gy`` per chunk of tile rows: the GEMM of a
#: chunk re-reads them from cache once per register tile.
CHUNK_BYTES = 4 << 20
_PANEL_ACC = PANEL_ROWS * PANEL_VECS


@numba.njit(**PJIT)
def _transform(xb, CB, Hp, Wp, gb, KB, TP, TQ, row0, nrows, Dt, Gt, Tc, L):
    # Tile rows row0 .. row0 + nrows - 1 (row = n * TP + i).  Dt[((xi*CB + cb)*Tc + t)*L + l]
    # = (B^T d B)[xi] of channel cb*L + l, Gt likewise (G g G^T) of output channel kb*L + l,
    # t = (row - row0) * TQ + j.  xb: [N, CB, Hp, Wp, L]; gb: [N, KB, 2*TP, 2*TQ, L].
    for job in numba.prange(nrows * (CB + KB)):
        half, zero = vsplat(0.5, xb), vsplat(0, xb)
        d = stack_vectors(xb, 16)
        e = stack_vectors(xb, 16)
        rr, blk = job // (CB + KB), job % (CB + KB)
        row = row0 + rr
        n, i = row // TP, row % TP
        if blk < CB:
            cb = blk
            base = ((n * CB + cb) * Hp + 2 * i) * Wp * L
            for j in range(TQ):
                t = rr * TQ + j
                o = base + 2 * j * L
                for a in range(4):
                    for b in range(4):
                        sset(d, a * 4 + b, vload(xb, o + (a * Wp + b) * L))
                # B^T rows: [-1 0 1 0] [0 1 1 0] [0 -1 1 0] [0 -1 0 1], over rows, then columns.
                for b in range(4):
                    d0, d1, d2, d3 = sget(d, b), sget(d, 4 + b), sget(d, 8 + b), sget(d, 12 + b)
                    sset(e, b, vsub(d2, d0))
                    sset(e, 4 + b, vadd(d1, d2))
                    sset(e, 8 + b, vsub(d2, d1))
                    sset(e, 12 + b, vsub(d3, d1))
                for a in range(4):
                    e0, e1 = sget(e, 4 * a), sget(e, 4 * a + 1)
                    e2, e3 = sget(e, 4 * a + 2), sget(e, 4 * a + 3)
                    out = ((a * 4 * CB + cb) * Tc + t) * L
                    step = CB * Tc * L
                    vstore(Dt, out, vsub(e2, e0))
                    vstore(Dt, out + step, vadd(e1, e2))
                    vstore(Dt, out + 2 * step, vsub(e2, e1))
                    vstore(Dt, out + 3 * step, vsub(e3, e1))
        else:
            kb = blk - CB
            base = ((n * KB + kb) * 2 * TP + 2 * i) * 2 * TQ * L
            for j in range(TQ):
                t = rr * TQ + j
                o = base + 2 * j * L
                g00, g01 = vload(gb, o), vload(gb, o + L)
                g10, g11 = vload(gb, o + 2 * TQ * L), vload(gb, o + (2 * TQ + 1) * L)
                # G rows: [-1 0] [1/2 1/2] [1/2 -1/2] [0 1], over rows, then columns.
                for b in range(2):
                    h0, h1 = (g00, g10) if b == 0 else (g01, g11)
                    sset(e, b, vsub(zero, h0))
                    sset(e, 2 + b, vmul(half, vadd(h0, h1)))
                    sset(e, 4 + b, vmul(half, vsub(h0, h1)))
                    sset(e, 6 + b, h1)
                for a in range(4):
                    e0, e1 = sget(e, 2 * a), sget(e, 2 * a + 1)
                    out = ((a * 4 * KB + kb) * Tc + t) * L
                    step = KB * Tc * L
                    vstore(Gt, out, vsub(zero, e0))
                    vstore(Gt, out + step, vmul(half, vadd(e0, e1)))
                    vstore(Gt, out + 2 * step, vmul(half, vsub(e0, e1)))
                    vstore(Gt, out + 3 * step, e1)


@numba.njit(**PJIT)
def _products(Gt, Dt, M, K, KB, CB, Tc, T, L, first):
    # M[(xi*K + k)*Cp + c] (+)= sum_t Gt[xi, k, t] * Dt[xi, c, t] for the T tiles of a chunk,
    # in tile order after M's running value (``first``: from zero).  One job per (xi, tile of
    # PANEL_ROWS rows k, PANEL_VECS vector blocks of c).
    Cp = CB * L
    nkt = (K + PANEL_ROWS - 1) // PANEL_ROWS
    ncg = (CB + PANEL_VECS - 1) // PANEL_VECS
    for job in numba.prange(16 * nkt * ncg):
        acc = stack_vectors(Dt, _PANEL_ACC)
        uv = stack_vectors(Dt, PANEL_VECS)
        rows = stack_ints(PANEL_ROWS)
        zero = vsplat(0, Dt)
        xi, rest = job // (nkt * ncg), job % (nkt * ncg)
        k0, cb0 = (rest // ncg) * PANEL_ROWS, (rest % ncg) * PANEL_VECS
        nt, nv = min(PANEL_ROWS, K - k0), min(PANEL_VECS, CB - cb0)
        for i in range(PANEL_ROWS):
            k = k0 + (i if i < nt else 0)
            sset(rows, i, ((xi * KB + k // L) * Tc) * L + k % L)
            for j in range(PANEL_VECS):
                if first or i >= nt or j >= nv:
                    sset(acc, i * PANEL_VECS + j, zero)
                else:
                    sset(acc, i * PANEL_VECS + j,
                         vload(M, (xi * K + k0 + i) * Cp + (cb0 + j) * L))
        ubase = ((xi * CB + cb0) * Tc) * L
        for t in range(T):
            for j in range(PANEL_VECS):
                if j < nv:
                    sset(uv, j, vload(Dt, ubase + (j * Tc + t) * L))
            for i in range(PANEL_ROWS):
                if i < nt:
                    vv = vbcast(Gt, sget(rows, i) + t * L)
                    for j in range(PANEL_VECS):
                        if j < nv:
                            sset(acc, i * PANEL_VECS + j,
                                 vfma(vv, sget(uv, j), sget(acc, i * PANEL_VECS + j)))
        for i in range(PANEL_ROWS):
            if i < nt:
                for j in range(PANEL_VECS):
                    if j < nv:
                        vstore(M, (xi * K + k0 + i) * Cp + (cb0 + j) * L,
                               sget(acc, i * PANEL_VECS + j))


@numba.njit(**PJIT)
def _output(M, out, chk, K, CB, L):
    # out[(k*9 + r*3 + s)*Cp + c] = (A^T M[:, k, c] A)[r, s], A^T rows [1 1 1 0] [0 1 -1 0]
    # [0 1 1 1]; chk[k*L:] gets the running sum of every M entry of row k (not finite if one
    # is not).
    Cp = CB * L
    for k in numba.prange(K):
        m = stack_vectors(M, 16)
        s = stack_vectors(M, 12)
        run = vsplat(0, M)
        for cb in range(CB):
            for xi in range(16):
                v = vload(M, (xi * K + k) * Cp + cb * L)
                sset(m, xi, v)
                run = vadd(run, v)
            for a in range(4):
                m0, m1 = sget(m, 4 * a), sget(m, 4 * a + 1)
                m2, m3 = sget(m, 4 * a + 2), sget(m, 4 * a + 3)
                m12 = vadd(m1, m2)
                sset(s, 3 * a, vadd(m0, m12))
                sset(s, 3 * a + 1, vsub(m1, m2))
                sset(s, 3 * a + 2, vadd(m12, m3))
            for c in range(3):
                s0, s1, s2, s3 = sget(s, c), sget(s, 3 + c), sget(s, 6 + c), sget(s, 9 + c)
                s12 = vadd(s1, s2)
                o = (k * 9 + c) * Cp + cb * L
                vstore(out, o, vadd(s0, s12))
                vstore(out, o + 3 * Cp, vsub(s1, s2))
                vstore(out, o + 6 * Cp, vadd(s12, s3))
        vstore(chk, k * L, run)


def winograd_weight_pays(x_shape, gy_shape, RS, stride, dilation, groups) -> bool:
    """Whether :func:`winograd_weight` computes this weight gradient (CPU, ``"auto"``).

    It does for ungrouped 3x3 layers at stride 1 and dilation 1 with at least
    ``CPU.grad_winograd_min_channels`` input and output channels and more
    than ``CPU.grad_gemm_max_pixels`` output pixels (smaller reductions are
    :func:`fastconv.cpu.grad_gemm.tap_gemm_weight`'s): there the direct
    sum's 36 multiply-adds per 2x2 tile of ``gy`` and pair of channels
    dominate, and the transforms' 16 replace them.
    """
    N, C = x_shape[0], x_shape[1]
    _, K, P, Q = gy_shape
    return (tuple(RS) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1)
            and groups == 1 and min(C, K) >= CPU.grad_winograd_min_channels
            and N * P * Q > CPU.grad_gemm_max_pixels)


def winograd_weight(x, gy, pads):
    """``grad_w`` (K, C, 3, 3) of an ungrouped 3x3 stride-1 layer, or None if not finite.

    ``x`` (N, C, H, W), ``gy`` (N, K, P, Q) with ``P = H + pt + pb - 2`` (and
    likewise ``Q``), ``pads = (pt, pb, pl, pr)``.  See the module docstring
    for the method, its summation order and error bound.  None means some
    entry of the transform-domain sums was not finite; the caller then
    computes the gradient by a route that propagates inf and NaN exactly.
    """
    N, C, H, W = x.shape
    _, K, P, Q = gy.shape
    dtype = np.result_type(x.dtype, gy.dtype)
    L = lanes(dtype)
    x = np.ascontiguousarray(x, dtype=dtype)
    gy = np.ascontiguousarray(gy, dtype=dtype)
    TP, TQ = -(-P // 2), -(-Q // 2)
    pt, _, pl, _ = pads
    # xpad rows 0 .. 2*TP + 1 (the last ones beyond the forward padding read zeros, and meet
    # only gy's zero rows of an odd P); stride 1 reads every row of x.
    xb, CB, Hp, Wp = pack_input_blocked(x, 1, L, (pt, 2 * TP + 2 - pt - H, pl, 2 * TQ + 2 - pl - W),
                                        scratch="grad_winograd.x")
    gb, KB, _, _ = pack_input_blocked(gy, 1, L, (0, 2 * TP - P, 0, 2 * TQ - Q),
                                      scratch="grad_winograd.gy")
    rows_total = N * TP
    per_row = 16 * (CB + KB) * TQ * L * np.dtype(dtype).itemsize
    chunk = max(1, min(rows_total, CHUNK_BYTES // per_row))
    Tc = chunk * TQ
    Dt = _scratch.buffer("grad_winograd.Dt", dtype, 16 * CB * Tc * L)
    Gt = _scratch.buffer("grad_winograd.Gt", dtype, 16 * KB * Tc * L)
    M = _scratch.buffer("grad_winograd.M", dtype, 16 * K * CB * L)
    for row0 in range(0, rows_total, chunk):
        nrows = min(chunk, rows_total - row0)
        _transform(xb, CB, Hp, Wp, gb, KB, TP, TQ, row0, nrows, Dt, Gt, Tc, L)
        _products(Gt, Dt, M, K, KB, CB, Tc, nrows * TQ, L, row0 == 0)
    out = _scratch.buffer("grad_winograd.out", dtype, K * 9 * CB * L)
    chk = np.empty(K * L, dtype=dtype)
    _output(M, out, chk, K, CB, L)
    if not np.isfinite(chk).all():
        return None
    # out is [k, (r, s), c]; grad_w[k, c, r, s].
    gw = swap_middle(out.reshape(K, 9, CB * L, 1, 1))
    return np.ascontiguousarray(gw.reshape(K, CB * L, 9)[:, :C]).reshape(K, C, 3, 3)
