"""Kernel transforms on vectors of output channels, for the channel-vectorised path.

The channel-vectorised path (:mod:`fastconv.cpu.winograd.vec`) needs the
kernel transform ``U = G w G^T`` laid out ``(alpha^2, KB, Cp, L)``: for each
of the ``alpha^2`` products, ``KB`` blocks of ``L`` output channels (16
float32 / 8 float64), each a ``Cp x L`` panel.  This module computes it in
two ways:

* kept: :func:`transform_weights` transforms all the weights once
  (:func:`_make_kernel_transform`, one job per block of output channels and
  :data:`_KT_CHANNELS` input channels); the weight cache keeps the result
  for the fused and split schedules;
* streamed: in the stream schedule (a split call in one slice, see
  :func:`fastconv.cpu.winograd.vec.plan`) the products transform their own
  kernels from the caller's KCRS weights.  No transformed weights are
  prepared or kept, so neither the weight cache's check (weights, snapshot
  and ``U`` of ResNet-50's 512-channel layer: 35.6 MB for F(2x2), more than
  the 32 MB L3) nor new weights on every call (training) cost more than the
  transform itself.  F(2x2): each product job (4 blocks of output channels)
  transforms its kernels into a per-thread ``U`` of 2 MiB
  (:func:`_make_transform_block`), then runs its 16 products.  F(4x4), on at
  most ``vec_stream4_max_tiles`` tiles: each job (one block of output
  channels) gathers its weights (:func:`_gather_kernels`), and every ``U'``
  vector is computed where the products use it, in registers, for a group
  of :data:`STREAM4_TILES` tiles (:func:`_make_stream4_row`,
  :func:`_stream4_products`); nothing of ``U`` is stored at all.  The
  scratch per Numba thread is :func:`stream_scratch`.

Roundings
---------
Each job transposes the ``L x 9`` weights of 16 input channels in registers
(:func:`_gather_kernels`) and computes ``G w G^T`` on vectors of ``L``
output channels.  For F(2x2) it stores ``G' w G'^T`` with
``G = diag(F2_SCALE) G'``: ``G'`` has entries 0 and +-1 only, so its rows
are two additions (``(w0 + w2) +- w1``), and the scale (signs and halves,
exact) is folded into ``A``; for F(4x4), whose ``G`` has inexact entries
such as 1/6, it accumulates in float64 and rounds once.  Either way each
entry has at most four roundings, within the ``2 r`` the bound allows the
kernel transform.  F(4x4)'s stream schedule uses ``G' w G'^T`` too
(:data:`F4_SCALE`; ``G'`` of 0, +-1, +-2 and 4, so two roundings per pass),
with the scale folded into ``A``, where it is inexact: each
output-transform term gains one rounding per pass, the two left of the
kernel transform's ``2 r = 6``.
"""

from __future__ import annotations

import numba
import numpy as np

from ... import _weight_cache
from ..._config import CPU, JIT, PJIT
from ...winograd_math import transform_matrices
from .. import _scratch
from ..simd import (ACCUMULATORS, REGISTERS, F64_LANES, VECTOR_BYTES, lanes, sget, sset, stack_vectors, vadd, vbcast, vfma, vload,
                    vload_f64, vmul, vsplat, vstore, vstore_f64, vsub, vtranspose)

#: F(4x4)'s stream schedule transforms each kernel once per group of this many tiles
#: (the products' register block: 6 x STREAM4_TILES accumulators beside the row pass's 3
#: vectors, the 6 column values and 3 constants, compiled in: 4 tiles with AVX-512's 32
#: registers; 1 with 16, where 2 tiles spill -- benchmarks/spill_check.py).
STREAM4_TILES = 4 if REGISTERS >= 32 else 1


@numba.njit(**JIT)
def _apart(n, L):
    """Elements between consecutive ``alpha^2`` panels (of V, M or U) of ``n`` elements each.

    ``n``, plus 7 vectors when ``n`` elements are a multiple of 4 KiB: the
    ``alpha^2`` vectors a transform stores or loads at once would otherwise
    fall into one L1 set (12 ways) and evict each other.
    """
    if (n * (VECTOR_BYTES // L)) % 4096 == 0:
        return n + 7 * L
    return n


#: Input channels per job of the kernel transform: their 9 * 16 weights per output
#: channel are a whole number of vectors (float32 and float64).
_KT_CHANNELS = 16
#: F(2x2, 3x3): ``G = diag(F2_SCALE) G'`` with ``G' = [[1, 0, 0], [1, 1, 1], [1, -1, 1],
#: [0, 0, 1]]``.  This path stores ``U' = G' w G'^T`` (additions only) and applies the
#: scale in the output transform: ``A^T M A = (A^T D) M' (D A)``, ``D = diag(F2_SCALE)``,
#: exactly (signs and powers of two).
F2_SCALE = (-1.0, 0.5, 0.5, 1.0)


@numba.njit(**JIT)
def _lanes_of(a):
    return VECTOR_BYTES // a.itemsize


@numba.njit(**JIT)
def _gather_kernels(wf, C, k0, nk, c0, c1, wl):
    # wl[((c - c0) * 9 + rs) * L + l] = w[k0 + l, c, rs] from the flat KCRS weights wf, for
    # c0 <= c < min(C, c1) and l < nk, and 0 for l >= nk (L = lanes).  Whole L x L blocks
    # are transposed in registers (vtranspose), the rest copied one by one.
    L = _lanes_of(wl)
    C9 = C * 9
    j0, j1 = c0 * 9, min(C, c1) * 9  # columns (c, r, s) of the rows wf[k0 + l]
    j = j0
    if nk == L:
        while j + L <= j1:
            vtranspose(wf, k0 * C9 + j, C9, wl, (j - j0) * L, L)
            j += L
    for jj in range(j, j1):
        for l in range(nk):
            wl[(jj - j0) * L + l] = wf[(k0 + l) * C9 + jj]
        for l in range(nk, L):
            wl[(jj - j0) * L + l] = 0


@numba.njit(**JIT)
def _transform_f2(wl, nc, U, ubase, astride):
    # U[ubase + a * astride + i * L :][:L] = (G' w_i G'^T)[a] (see F2_SCALE), i < nc, where
    # w_i is the 3 x 3 of vectors at wl[i * 9 * L]: rows (w0, (w0 + w2) + w1, (w0 + w2) - w1,
    # w2), then the same on the columns; two roundings per pass.
    L = _lanes_of(wl)
    t = stack_vectors(wl, 12)
    for i in range(nc):
        b = i * 9 * L
        for s in range(3):
            w0, w1, w2 = vload(wl, b + s * L), vload(wl, b + (3 + s) * L), vload(wl, b + (6 + s) * L)
            e = vadd(w0, w2)
            sset(t, s, w0)
            sset(t, 3 + s, vadd(e, w1))
            sset(t, 6 + s, vsub(e, w1))
            sset(t, 9 + s, w2)
        for a in range(4):
            t0, t1, t2 = sget(t, 3 * a), sget(t, 3 * a + 1), sget(t, 3 * a + 2)
            o = ubase + 4 * a * astride + i * L
            e = vadd(t0, t2)
            vstore(U, o, t0)
            vstore(U, o + astride, vadd(e, t1))
            vstore(U, o + 2 * astride, vsub(e, t1))
            vstore(U, o + 3 * astride, t2)


def _make_transform_dense(A: int):
    """The dense kernel transform for ``alpha = A``."""

    @numba.njit(**JIT)
    def transform(wl, nc, Gm, U, ubase, astride):
        # U[ubase + a * astride + i * L :][:L] = (G w_i G^T)[a] for any G (F(4x4): entries
        # such as -1/6 are inexact in float32), the three-term sums ((g0 w0 + g1 w1) + g2 w2)
        # of both passes evaluated in float64, F64_LANES lanes at a time, and rounded once.
        # Per row a of G, its three row-pass vectors are plain values and the nine inputs
        # are indexed by constants only, so everything stays in registers.
        L = _lanes_of(wl)
        w = stack_vectors(Gm, 9)
        for i in range(nc):
            for h in range(0, L, F64_LANES):
                b = i * 9 * L + h
                for rs in range(9):
                    sset(w, rs, vload_f64(wl, b + rs * L))
                for a in range(A):
                    g0, g1, g2 = vsplat(Gm[a, 0], Gm), vsplat(Gm[a, 1], Gm), vsplat(Gm[a, 2], Gm)
                    t0 = vadd(vadd(vmul(g0, sget(w, 0)), vmul(g1, sget(w, 3))), vmul(g2, sget(w, 6)))
                    t1 = vadd(vadd(vmul(g0, sget(w, 1)), vmul(g1, sget(w, 4))), vmul(g2, sget(w, 7)))
                    t2 = vadd(vadd(vmul(g0, sget(w, 2)), vmul(g1, sget(w, 5))), vmul(g2, sget(w, 8)))
                    o = ubase + a * A * astride + i * L + h
                    for c in range(A):
                        h0, h1, h2 = vsplat(Gm[c, 0], Gm), vsplat(Gm[c, 1], Gm), vsplat(Gm[c, 2], Gm)
                        vstore_f64(U, o + c * astride,
                                   vadd(vadd(vmul(t0, h0), vmul(t1, h1)), vmul(t2, h2)))

    return transform


#: F(4x4)'s kernel transform (alpha = 6).
_transform_f4 = _make_transform_dense(6)

#: F(4x4, 3x3) in the stream schedule: ``G = diag(F4_SCALE) G'`` with ``G' = [[1, 0, 0],
#: [1, 1, 1], [1, -1, 1], [1, 2, 4], [1, -2, 4], [0, 0, 1]]``; the products use
#: ``U' = G' w G'^T`` (additions and exact doublings: at most two roundings per pass)
#: and the output transform ``A^T diag(F4_SCALE)``, whose entries (such as -1/6) are
#: rounded: one rounding more per term of each output-transform pass, which the
#: bound's ``2 r`` for the kernel transform leaves room for (its four plus these two).
F4_SCALE = (0.25, -1.0 / 6.0, -1.0 / 6.0, 1.0 / 24.0, 1.0 / 24.0, 1.0)


def _make_stream4_row(A: int):
    """The products of row ``A`` of F(4x4)'s ``alpha x alpha`` elements, kernels transformed inline.

    For one block of ``L`` output channels and up to ``STREAM4_TILES`` tiles:
    ``M[6A + b][t, k] = sum_c V[6A + b][t, c] U'[6A + b][c, k]`` for ``b < 6``,
    where each ``U'`` vector is computed from the gathered weights when it is
    needed (row pass ``G'[A] w``, then the six columns) and used by the
    ``STREAM4_TILES`` tiles at once: 6 x ``STREAM4_TILES`` vector accumulators.  ``A`` is a
    closure constant, so each row's pass compiles to its own few additions.
    """
    TB = STREAM4_TILES
    NACC = 6 * TB  # a closure constant: stack_vectors needs the count as a literal

    @numba.njit(**JIT)
    def row(wl, nc, V, vbase, cbs, M, mbase, ms, Kp, nt):
        # wl[(c * 9 + rs) * L :][:L]: the weights w[k0 .. k0 + L - 1, c, rs]; the V scalar of
        # (alpha, tile t, channel c) at vbase + (c // L) * cbs + (alpha * TB + t) * L + c % L;
        # M[mbase + alpha * ms + t * Kp :][:L] for t < nt.
        L = _lanes_of(wl)
        acc = stack_vectors(wl, NACC)
        zero = vsplat(0, wl)
        for i in range(NACC):
            sset(acc, i, zero)
        two, mtwo, four = vsplat(2, wl), vsplat(-2, wl), vsplat(4, wl)
        tv = stack_vectors(wl, 3)
        for c in range(nc):
            wb = c * 9 * L
            vb = vbase + (c // L) * cbs + c % L + 6 * A * TB * L
            for s in range(3):  # row pass: t_s = (G' w)[A, s]
                if A == 0:
                    sset(tv, s, vload(wl, wb + s * L))
                elif A == 5:
                    sset(tv, s, vload(wl, wb + (6 + s) * L))
                else:
                    w0, w1, w2 = (vload(wl, wb + s * L), vload(wl, wb + (3 + s) * L),
                                  vload(wl, wb + (6 + s) * L))
                    if A == 1:
                        sset(tv, s, vadd(vadd(w0, w2), w1))
                    elif A == 2:
                        sset(tv, s, vsub(vadd(w0, w2), w1))
                    elif A == 3:
                        sset(tv, s, vfma(two, w1, vfma(four, w2, w0)))
                    else:
                        sset(tv, s, vfma(mtwo, w1, vfma(four, w2, w0)))
            t0, t1, t2 = sget(tv, 0), sget(tv, 1), sget(tv, 2)
            e = vadd(t0, t2)
            f = vfma(four, t2, t0)
            u = (t0, vadd(e, t1), vsub(e, t1), vfma(two, t1, f), vfma(mtwo, t1, f), t2)
            for b in range(6):
                ub = u[b]
                for t in range(TB):
                    sset(acc, b * TB + t,
                         vfma(vbcast(V, vb + (b * TB + t) * L), ub, sget(acc, b * TB + t)))
        for b in range(6):
            for t in range(TB):
                if t < nt:
                    vstore(M, mbase + (6 * A + b) * ms + t * Kp, sget(acc, b * TB + t))

    return row


_S4R0, _S4R1, _S4R2, _S4R3, _S4R4, _S4R5 = (_make_stream4_row(a) for a in range(6))


@numba.njit(**JIT)
def _stream4_products(wf, K, C, kb, wl, V, T, Cp, M, ms, Kp):
    # F(4x4) stream schedule, one block kb of L output channels: gather its weights
    # (all C input channels) into wl, then the 36 products of every group of
    # STREAM4_TILES tiles, each kernel transformed where it is used (_make_stream4_row).
    # V: (CB, groups, 36, STREAM4_TILES, L); M: 36 panels of T x Kp, ms apart.
    L = _lanes_of(wl)
    TB = STREAM4_TILES
    nk = max(0, min(L, K - kb * L))
    for c0 in range(0, C, _KT_CHANNELS):
        _gather_kernels(wf, C, kb * L, nk, c0, c0 + _KT_CHANNELS, wl[c0 * 9 * L:])
    ng = (T + TB - 1) // TB
    cbs = ng * 36 * TB * L
    for g in range(ng):
        nt = min(TB, T - g * TB)
        vb, mb = g * 36 * TB * L, kb * L + g * TB * Kp
        _S4R0(wl, C, V, vb, cbs, M, mb, ms, Kp, nt)
        _S4R1(wl, C, V, vb, cbs, M, mb, ms, Kp, nt)
        _S4R2(wl, C, V, vb, cbs, M, mb, ms, Kp, nt)
        _S4R3(wl, C, V, vb, cbs, M, mb, ms, Kp, nt)
        _S4R4(wl, C, V, vb, cbs, M, mb, ms, Kp, nt)
        _S4R5(wl, C, V, vb, cbs, M, mb, ms, Kp, nt)


def _make_transform_block(m: int):
    """The kernel transform of one block of F(m x m, 3 x 3) (``m`` a closure constant:
    only that transform is compiled in)."""
    A2 = (m + 2) * (m + 2)

    @numba.njit(**JIT)
    def transform_block(wf, K, C, Gm, k0, c0, c1, wl, U, ubase, astride):
        # U[ubase + a * astride + (c - c0) * L :][:L] = (G w[k0 .. k0 + L - 1, c] G^T)[a] (G'
        # for F(2x2): see F2_SCALE) for c0 <= c < c1 (c1 - c0 <= _KT_CHANNELS), zero for the
        # padding (k >= K or c >= C); wl: scratch of 9 * _KT_CHANNELS vectors.
        L = _lanes_of(wl)
        nk = max(0, min(L, K - k0))
        _gather_kernels(wf, C, k0, nk, c0, c1, wl)
        nc = max(0, min(C, c1) - c0)
        if m == 2:
            _transform_f2(wl, nc, U, ubase, astride)
        else:
            _transform_f4(wl, nc, Gm, U, ubase, astride)
        zero = vsplat(0, wl)
        for a in range(A2):
            for c in range(c0 + nc, c1):
                vstore(U, ubase + a * astride + (c - c0) * L, zero)

    return transform_block


#: The kernel transform of one block (:func:`_make_transform_block`) for F(2x2) and F(4x4).
_TB2, _TB4 = _make_transform_block(2), _make_transform_block(4)


def _make_kernel_transform(m: int):
    """The parallel kernel transform of F(m x m, 3 x 3) into the ``(alpha^2, KB, Cp, L)`` layout."""

    @numba.njit(**PJIT)
    def kernel_transform(wf, K, C, Gm, Uv, wlwork):
        # Uv[a, kb, c, l] = (G w[kb * L + l, c] G^T)[a] (G' for F(2x2)) from the flat KCRS
        # weights wf, zero for the padding (so Uv may be np.empty); one job per (block of L
        # output channels, _KT_CHANNELS input channels).
        KB, Cp, L = Uv.shape[1], Uv.shape[2], Uv.shape[3]
        Uf = Uv.reshape(-1)
        ncb = (Cp + _KT_CHANNELS - 1) // _KT_CHANNELS
        for job in numba.prange(KB * ncb):
            kb, cb = job // ncb, job % ncb
            c0 = cb * _KT_CHANNELS
            args = (wf, K, C, Gm, kb * L, c0, min(Cp, c0 + _KT_CHANNELS),
                    wlwork[numba.get_thread_id()], Uf, (kb * Cp + c0) * L, KB * Cp * L)
            if m == 2:
                _TB2(*args)
            else:
                _TB4(*args)

    return kernel_transform


_KERNEL_TRANSFORM = {2: _make_kernel_transform(2), 4: _make_kernel_transform(4)}


def stream_scratch(C, m, dtype) -> int:
    """Elements per Numba thread of the stream schedule's kernels.

    F(2x2): the transformed kernels of ``vec_split_kchunk`` blocks of output
    channels; F(4x4): the gathered weights of one block (``9 L`` per input
    channel).  See :func:`fastconv.cpu.winograd.vec._split`.
    """
    L = lanes(dtype)
    Cp = -(-C // L) * L
    if m == 2:
        return 16 * _apart(CPU.vec_split_kchunk * Cp * L, L)
    return 9 * L * (-(-C // _KT_CHANNELS) * _KT_CHANNELS)


def transform_weights(w, m):
    """``U = G w G^T`` of ``(K, C, 3, 3)`` weights in the channel-vectorised layout, zero-padded.

    The layout is ``(alpha^2, KB, Cp, L)``: for each of the ``alpha^2``
    products, ``KB`` blocks of ``L`` output channels, each a ``Cp x L`` panel
    (:func:`fastconv.cpu._gemm.panel_gemm` streams one panel per vector of
    output channels).
    """
    K, C = w.shape[0], w.shape[1]
    L = lanes(w.dtype)
    _, Gm, _ = transform_matrices(m)
    Uv = _weight_cache.prepared_empty("winograd_vec.Uv", ((m + 2) ** 2, -(-K // L), -(-C // L) * L, L),
                                      w.dtype)
    if Uv.size:
        _KERNEL_TRANSFORM[m](np.ascontiguousarray(w).reshape(-1), K, C, Gm, Uv, _kt_scratch(w.dtype))
    return Uv


def _kt_scratch(dtype):
    """Per-Numba-thread scratch of the kernel transform (its transposed weights)."""
    return _scratch.per_thread("winograd_vec.wl", dtype, 9 * _KT_CHANNELS * lanes(dtype))
