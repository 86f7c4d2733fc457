"""Winograd F(4x4, 3x3) for layers with few input channels: the products inside the output transform.

With ``Cg`` = 1 to 4 input channels per group (an RGB image layer such as
VGG-16 conv1_1), the ``alpha^2`` products ``M = U V`` of the tile-row path
(:mod:`fastconv.cpu.winograd.tile_row`) are GEMMs with a reduction only ``Cg`` deep,
which BLAS runs far below the machine's peak (each output element costs a
load and a store for ``Cg`` multiply-adds), and ``M`` (36 values per tile
and output channel) is written and read back once more by the output
transform, which then dominates the call.

Here one job takes 16 (8 for float64) neighbouring tiles of a tile row -- a
vector of tiles, the contiguous axis of ``V`` -- and :data:`NK` = 4 output
channels, and

1. forms each column ``b`` of ``M`` in registers: ``M[a, b] = sum_c U[a, b, c] V[a, b, c]``
   (``6 Cg`` fused multiply-adds per column and channel; each vector of ``V``
   loaded serves the 4 channels, whose weights are broadcast from memory;
   with one channel per job the loads of ``V`` would bound the job);
2. applies ``A^T`` down the column at once (the row pass of the output
   transform) and keeps the ``4 x 6`` results per channel on the stack;
3. applies ``A`` across them, adds the bias, and writes the ``4 x 4``
   outputs of the 16 tiles as four interleaved rows straight into the NCHW
   result (:func:`fastconv.cpu.simd.vstore_interleave4`).

``M`` is never stored.  The input transform and the item schedule are those
of the tile-row path's fused schedule.  Every product and sum is one IEEE
operation (fused multiply-adds where the tile-row path rounds twice), so the
error bound of :mod:`fastconv.winograd_math` holds unchanged
(``tests/test_cpu_winograd_few.py`` checks it on this path).  Each job adds its
outputs into a running sum; a sum that is not finite -- a NaN or inf
output, or (harmlessly) a sum that overflows -- makes the call fall back to
``direct``, as on the other Winograd paths.

Vectors of tiles stay within a tile row, so maps under 33 outputs wide (8 tiles or fewer a row) leave at
least half of each vector empty; :func:`fastconv.cpu.few_channel_winograd`
keeps ``auto`` off them.
"""

from __future__ import annotations

import numba

from ..._config import JIT
from ..simd import (ACCUMULATORS, REGISTERS, all_finite, sget, sset, stack_vectors, vadd, vbcast, vfma, vload_masked, vsplat,
                   vstore_interleave4)

#: Largest number of input channels per group this path takes.
MAX_CG = 4
#: Output channels per job: each loaded vector of ``V`` meets this many broadcast weights
#: (6 NK accumulators: 4 with AVX-512's 32 registers; 1 with 16, where the transform's
#: temporaries beside 12 accumulators spill -- benchmarks/spill_check.py).
NK = 4 if REGISTERS >= 32 else 1


def _make_job(CG: int):
    """The job for ``CG`` input channels (a closure over ints: unrolled, disk-cacheable)."""
    NM, NS = 6 * NK, 24 * NK  # vectors of one column of M and of A^T M, for NK channels

    @numba.njit(**JIT)
    def job(Uf, ub, ustride, Vf, vb, vstride, nt, ntiles, bias, k0, nk, y, ybase, plane, Q, rows,
            width, chk):
        # L tiles x output channels k0 .. k0 + nk - 1 (nk <= NK; the others are computed from
        # channel k0 and not stored).  Uf[ub + a * ustride + q * CG + c] = U[a, g, k0 + q, c];
        # Vf[vb + a * vstride + c * nt + l] = V[a, g, c, tile l] for l < ntiles.  Writes output
        # rows i < rows of channel k0 + q at y[ybase + q * plane + i * Q :][:width]; returns chk
        # plus every output (not finite if an output is not).
        zero = vsplat(0, Vf)
        neg1, c2, c4, c8 = vsplat(-1, Vf), vsplat(2, Vf), vsplat(4, Vf), vsplat(8, Vf)
        mcol = stack_vectors(Vf, NM)
        s = stack_vectors(Vf, NS)
        for b in range(6):
            for a in range(6):
                for q in range(NK):
                    sset(mcol, a * NK + q, zero)
                for c in range(CG):
                    v = vload_masked(Vf, vb + (a * 6 + b) * vstride + c * nt, ntiles)
                    for q in range(NK):
                        u = vbcast(Uf, ub + (a * 6 + b) * ustride + (q if q < nk else 0) * CG + c)
                        sset(mcol, a * NK + q, vfma(u, v, sget(mcol, a * NK + q)))
            # rows of A^T: [1 1 1 1 1 0] [0 1 -1 2 -2 0] [0 1 1 4 4 0] [0 1 -1 8 -8 1]
            for q in range(NK):
                m1, m2 = sget(mcol, 1 * NK + q), sget(mcol, 2 * NK + q)
                m3, m4 = sget(mcol, 3 * NK + q), sget(mcol, 4 * NK + q)
                a12, d12 = vadd(m1, m2), vfma(neg1, m2, m1)
                a34, d34 = vadd(m3, m4), vfma(neg1, m4, m3)
                sset(s, (q * 4 + 0) * 6 + b, vadd(vadd(sget(mcol, q), a12), a34))
                sset(s, (q * 4 + 1) * 6 + b, vfma(c2, d34, d12))
                sset(s, (q * 4 + 2) * 6 + b, vfma(c4, a34, a12))
                sset(s, (q * 4 + 3) * 6 + b, vadd(vfma(c8, d34, d12), sget(mcol, 5 * NK + q)))
        for q in range(NK):
            bv = vsplat(bias[k0 + (q if q < nk else 0)], Vf)
            for i in range(4):
                e = (q * 4 + i) * 6
                e1, e2, e3, e4 = sget(s, e + 1), sget(s, e + 2), sget(s, e + 3), sget(s, e + 4)
                a12, d12 = vadd(e1, e2), vfma(neg1, e2, e1)
                a34, d34 = vadd(e3, e4), vfma(neg1, e4, e3)
                o0 = vadd(vadd(vadd(sget(s, e), a12), a34), bv)
                o1 = vadd(vfma(c2, d34, d12), bv)
                o2 = vadd(vfma(c4, a34, a12), bv)
                o3 = vadd(vadd(vfma(c8, d34, d12), sget(s, e + 5)), bv)
                # Not finite -> the sum is not finite (a sum that overflows only flags a fallback).
                chk = vadd(chk, vadd(vadd(o0, o1), vadd(o2, o3)))
                if i < rows and q < nk:
                    vstore_interleave4(y, ybase + q * plane + i * Q, o0, o1, o2, o3, width)
        return chk

    return job


_JOB1, _JOB2, _JOB3, _JOB4 = (_make_job(cg) for cg in range(1, MAX_CG + 1))


@numba.njit(**JIT)
def _job(Cg, Uf, ub, ustride, Vf, vb, vstride, nt, ntiles, bias, k0, nk, y, ybase, plane, Q, rows,
         width, chk):
    if Cg == 1:
        return _JOB1(Uf, ub, ustride, Vf, vb, vstride, nt, ntiles, bias, k0, nk, y, ybase, plane, Q,
                     rows, width, chk)
    if Cg == 2:
        return _JOB2(Uf, ub, ustride, Vf, vb, vstride, nt, ntiles, bias, k0, nk, y, ybase, plane, Q,
                     rows, width, chk)
    if Cg == 3:
        return _JOB3(Uf, ub, ustride, Vf, vb, vstride, nt, ntiles, bias, k0, nk, y, ybase, plane, Q,
                     rows, width, chk)
    return _JOB4(Uf, ub, ustride, Vf, vb, vstride, nt, ntiles, bias, k0, nk, y, ybase, plane, Q, rows,
                 width, chk)


@numba.njit(**JIT)
def products_and_output(U, V, y, bias, r0, nr, tiles_h, tiles_w, tmp):
    """Steps 1-3 for tile rows ``r0 .. r0 + nr`` of an item whose input transform is in ``V``.

    ``U`` is ``(36, G, Kg, Cg)``, ``V`` ``(36, G, Cg, nr * tiles_w)`` (C-contiguous), ``y``
    the NCHW result; ``tmp`` has at least one vector of scratch.  Returns False if an
    output (cropped or not) is not finite.
    """
    A2, G, Kg, Cg = U.shape
    N, K, P, Q = y.shape
    nt = V.shape[3]
    L = tmp.shape[0]
    Uf, Vf, yf = U.reshape(-1), V.reshape(-1), y.reshape(-1)
    ustride, vstride = G * Kg * Cg, G * Cg * nt
    chk = vsplat(0, Vf)
    for i in range(nr):
        r = r0 + i
        n, th = r // tiles_h, r % tiles_h
        p0 = th * 4
        rows = min(4, P - p0)
        for t0 in range(0, tiles_w, L):
            ntiles = min(L, tiles_w - t0)
            width = min(4 * ntiles, Q - 4 * t0)
            for g in range(G):
                for k in range(0, Kg, NK):
                    kk = g * Kg + k
                    chk = _job(Cg, Uf, (g * Kg + k) * Cg, ustride, Vf, g * Cg * nt + i * tiles_w + t0,
                               vstride, nt, ntiles, bias, kk, min(NK, Kg - k), yf,
                               ((n * K + kk) * P + p0) * Q + 4 * t0, P * Q, Q, rows, width, chk)
    return all_finite(chk, tmp)
