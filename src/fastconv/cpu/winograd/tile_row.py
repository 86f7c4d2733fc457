"""The tile-row path of Winograd F(m x m, 3 x 3): transform, GEMM, inverse transform.

It runs the calls that the channel-vectorised path
(:mod:`fastconv.cpu.winograd.vec`) does not take; the front end,
:mod:`fastconv.cpu.winograd`, chooses.  Phases (timed separately by
:func:`fastconv.cpu.winograd.profile_phases`, as NNPACK does):

1. kernel transform ``U = G w G^T`` (computed in float64, rounded once):
   ``(alpha^2, groups, Kg, Cg)``;
2. input transform ``V = B^T d B`` of every ``alpha x alpha`` input tile
   (tiles overlap by 2): ``(alpha^2, groups, Cg, tiles)``;
3. ``alpha^2 * groups`` independent GEMMs ``M = U @ V``, spread over the
   Numba threads, each a single-threaded BLAS call (:mod:`fastconv.cpu._gemm`;
   depthwise groups use an elementwise product);
4. output transform ``Y = A^T M A`` into ``m x m`` output tiles, plus bias.

Layout and blocking
-------------------
Tiles are numbered row-major over ``(n, tile_row, tile_col)`` and processed
in groups of whole tile rows.  The transforms are specialised, unrolled
F(2,3) / F(4,3) formulas (no multiplications by 0 or 1) applied first along
the contiguous image rows (vectorised over the row) and then across tiles
(vectorised over the tile index, which is the contiguous axis of ``V`` and
``M``).  Padding is applied on the fly while a tile row is copied into a
small per-job buffer: the input is never padded as a whole.

Two schedules, chosen from the shapes only (never from the thread count):

* fused (maps with many tiles): one parallel loop over *items* of a few tile
  rows (``V + M`` at most ``tile_row_item_bytes`` = 4 MiB, within a core's
  share of the cache, and at least ``tile_row_min_item_tiles`` tiles, sized
  to balance two threads); each item runs the input transform, its
  ``alpha^2 * groups`` GEMMs (single-threaded BLAS) and the output transform
  on private buffers.  The kernel transform is one parallel loop before it.
* phase by phase (small maps, and
  :func:`fastconv.cpu.winograd.profile_phases`): blocks of tile
  rows (``V + M`` at most ``tile_row_block_bytes`` = 8 MiB, last-level cache); per
  block one parallel loop runs the input transform (and, for the first
  block, the kernel transform beside it), and a second one runs, per group
  and block of output channels, the GEMMs of that slice and its output
  transform.

On F(4x4) with ``Cg <= 4`` the fused schedule runs the few-channel kernel
of :mod:`fastconv.cpu.winograd.few` instead of BLAS products and a separate
output transform (``M`` is never stored).

Either way a call synchronises the threads twice per block, the GEMMs never
nest a multi-threaded BLAS inside Numba's threads (:mod:`fastconv.cpu._gemm`),
and every parallel job writes disjoint outputs with no sum split across
threads, so results do not depend on the number of threads.

Workspace bound
---------------
``V`` and ``M`` take ``alpha^2 * (C + K)`` elements per tile.  Phase by
phase, one block of them is allocated, sized to fit ``FASTCONV_WORKSPACE_MB``
(one tile row is the minimum block).  Fused, one item per Numba thread is
alive at a time, and the fused schedule is only used when
``NUMBA_NUM_THREADS`` items fit ``FASTCONV_WORKSPACE_MB``; those per-thread
``V`` / ``M`` rows are kept between calls by each calling Python thread (at
most ``NUMBA_NUM_THREADS * tile_row_item_bytes``, 8 MiB on two cores), so that their
pages are not faulted in again on every call.  On top come the
transformed kernel ``U`` (``alpha^2 * K * Cg`` elements) and per-job row
buffers (``O(alpha * W)`` elements).  For VGG-16 conv1_2 at batch 32
(C = K = 64, 224 x 224) that is at most 4 MiB per thread plus 0.6 MiB.

The ``tile_row_*`` limits are fields of :class:`fastconv._config.CpuSettings`
(``fastconv._config.CPU``), read at call time.

Non-finite values: the transforms mix a whole tile, so one inf would turn its
neighbours into NaN.  The output transform flags any tile whose (uncropped)
result is not finite -- every non-finite input value, weight, or overflow
reaches such a result, since every column of ``B^T``, ``G`` and ``A^T`` has a
non-zero entry -- and :func:`_execute` then returns False: the front end
recomputes the call with the direct kernel, which propagates NaN/inf exactly.
Error bound: :mod:`fastconv.winograd_math`.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from ..._config import CPU, JIT, PJIT
from ...winograd_math import transform_matrices
from .. import _scratch
from .._gemm import batched_matmul, matmul_into, single_threaded_blas
from ..simd import lanes
from . import few


# ----------------------------------------------------------------------------------------------
# Kernel transform


_KT_CHUNK = 1024  # kernels per job of the kernel transform


@numba.njit(**JIT)
def _kernel_chunk(wT, Gm, U, ch):
    # U[a*alpha + b, j] = (G w_j G^T)[a, b] for the 3x3 kernels w_j = wT[:, j] (j = k*Cg + c)
    # of chunk ch, computed in float64 and rounded once (vectorised over j).  Loops run over
    # 0-based ranges of sliced views: Numba then needs no negative-index wraparound, which
    # would block vectorisation.
    J = wT.shape[1]
    alpha = Gm.shape[0]
    j0 = ch * _KT_CHUNK
    j1 = min(J, j0 + _KT_CHUNK)
    L = j1 - j0
    T = np.empty((alpha * 3, _KT_CHUNK), dtype=np.float64)
    for a in range(alpha):
        g0, g1, g2 = Gm[a, 0], Gm[a, 1], Gm[a, 2]
        for s in range(3):
            row = T[a * 3 + s]
            w0, w1, w2 = wT[s, j0:j1], wT[3 + s, j0:j1], wT[6 + s, j0:j1]
            for j in range(L):
                row[j] = g0 * w0[j] + g1 * w1[j] + g2 * w2[j]
    for a in range(alpha):
        t0, t1, t2 = T[a * 3], T[a * 3 + 1], T[a * 3 + 2]
        for b in range(alpha):
            h0, h1, h2 = Gm[b, 0], Gm[b, 1], Gm[b, 2]
            u = U[a * alpha + b, j0:j1]
            for j in range(L):
                u[j] = t0[j] * h0 + t1[j] * h1 + t2[j] * h2


@numba.njit(**PJIT)
def _kernel_transform(wT, Gm, U):
    for ch in numba.prange((wT.shape[1] + _KT_CHUNK - 1) // _KT_CHUNK):
        _kernel_chunk(wT, Gm, U, numba.int64(ch))  # one compilation: see packing.task_coords


def _transform_weights(w, m, groups, dtype):
    """``U`` as ``(alpha^2, groups, Kg, Cg)`` of the call's dtype."""
    _, Gm, _ = transform_matrices(m)
    alpha = m + 2
    K, Cg = w.shape[0], w.shape[1]
    wT = np.ascontiguousarray(w.reshape(K * Cg, 9).T)
    U = np.empty((alpha * alpha, groups, K // groups, Cg), dtype=dtype)
    _kernel_transform(wT, Gm, U.reshape(alpha * alpha, K * Cg))
    return U


# ----------------------------------------------------------------------------------------------
# Input transforms.  x is unpadded NCHW; V is (alpha^2, G, Cg, nrows * tiles_w) for the tile
# rows r0 .. r0 + nrows - 1 (tile row r is image r // tiles_h, row r % tiles_h).  The unrolled
# formulas are B^T of transform_matrices(m) (checked by tests/test_cpu_winograd_tile_row.py);
# constants come typed from `cst` so float32 code stays float32.


@numba.njit(**JIT)
def _load_rows(x, n, cc, h0, pl, d):
    # d[i, pl + j] = x[n, cc, h0 + i, j] where the row exists; zero elsewhere (the padding).
    H, W = x.shape[2], x.shape[3]
    width = min(W, d.shape[1] - pl)
    d[:, :] = 0
    for i in range(d.shape[0]):
        h = h0 + i
        if 0 <= h < H:
            src = x[n, cc, h, :width]
            dst = d[i, pl:pl + width]
            for j in range(width):
                dst[j] = src[j]


@numba.njit(**JIT)
def _input_job_f2(x, V, cst, r0, i, cc, tiles_h, tiles_w, pt, pl, d, t):
    # Tile row r0 + i of channel cc into V[:, g, c, i*tiles_w:(i+1)*tiles_w]; d (4, WP) and
    # t (WP,) are scratch.
    Cg = V.shape[2]
    WP = tiles_w * 2 + 2
    g, c = cc // Cg, cc % Cg
    r = r0 + i
    n, th = r // tiles_h, r % tiles_h
    _load_rows(x, n, cc, th * 2 - pt, pl, d)
    d0, d1, d2, d3 = d[0], d[1], d[2], d[3]
    lo, hi = i * tiles_w, (i + 1) * tiles_w
    for a in range(4):
        # rows of B^T: [-1 0 1 0] [0 1 1 0] [0 -1 1 0] [0 -1 0 1]
        if a == 0:
            for j in range(WP):
                t[j] = d2[j] - d0[j]
        elif a == 1:
            for j in range(WP):
                t[j] = d1[j] + d2[j]
        elif a == 2:
            for j in range(WP):
                t[j] = d2[j] - d1[j]
        else:
            for j in range(WP):
                t[j] = d3[j] - d1[j]
        v0 = V[a * 4 + 0, g, c, lo:hi]
        v1 = V[a * 4 + 1, g, c, lo:hi]
        v2 = V[a * 4 + 2, g, c, lo:hi]
        v3 = V[a * 4 + 3, g, c, lo:hi]
        for tw in range(tiles_w):
            f0, f1, f2, f3 = t[2 * tw], t[2 * tw + 1], t[2 * tw + 2], t[2 * tw + 3]
            v0[tw] = f2 - f0
            v1[tw] = f1 + f2
            v2[tw] = f2 - f1
            v3[tw] = f3 - f1


@numba.njit(**JIT)
def _input_job_f4(x, V, cst, r0, i, cc, tiles_h, tiles_w, pt, pl, d, t):
    # As _input_job_f2; d is (6, WP).
    Cg = V.shape[2]
    WP = tiles_w * 4 + 2
    c2, c4, c5 = cst[2], cst[4], cst[5]
    g, c = cc // Cg, cc % Cg
    r = r0 + i
    n, th = r // tiles_h, r % tiles_h
    _load_rows(x, n, cc, th * 4 - pt, pl, d)
    d0, d1, d2, d3, d4, d5 = d[0], d[1], d[2], d[3], d[4], d[5]
    lo, hi = i * tiles_w, (i + 1) * tiles_w
    for a in range(6):
        # rows of B^T: [4 0 -5 0 1 0] [0 -4 -4 1 1 0] [0 4 -4 -1 1 0]
        #              [0 -2 -1 2 1 0] [0 2 -1 -2 1 0] [0 4 0 -5 0 1]
        if a == 0:
            for j in range(WP):
                t[j] = c4 * d0[j] - c5 * d2[j] + d4[j]
        elif a == 1:
            for j in range(WP):
                t[j] = (d3[j] + d4[j]) - c4 * (d1[j] + d2[j])
        elif a == 2:
            for j in range(WP):
                t[j] = (d4[j] - d3[j]) + c4 * (d1[j] - d2[j])
        elif a == 3:
            for j in range(WP):
                t[j] = (d4[j] - d2[j]) + c2 * (d3[j] - d1[j])
        elif a == 4:
            for j in range(WP):
                t[j] = (d4[j] - d2[j]) - c2 * (d3[j] - d1[j])
        else:
            for j in range(WP):
                t[j] = c4 * d1[j] - c5 * d3[j] + d5[j]
        v0 = V[a * 6 + 0, g, c, lo:hi]
        v1 = V[a * 6 + 1, g, c, lo:hi]
        v2 = V[a * 6 + 2, g, c, lo:hi]
        v3 = V[a * 6 + 3, g, c, lo:hi]
        v4 = V[a * 6 + 4, g, c, lo:hi]
        v5 = V[a * 6 + 5, g, c, lo:hi]
        for tw in range(tiles_w):
            f0, f1, f2 = t[4 * tw], t[4 * tw + 1], t[4 * tw + 2]
            f3, f4, f5 = t[4 * tw + 3], t[4 * tw + 4], t[4 * tw + 5]
            v0[tw] = c4 * f0 - c5 * f2 + f4
            v1[tw] = (f3 + f4) - c4 * (f1 + f2)
            v2[tw] = (f4 - f3) + c4 * (f1 - f2)
            v3[tw] = (f4 - f2) + c2 * (f3 - f1)
            v4[tw] = (f4 - f2) - c2 * (f3 - f1)
            v5[tw] = c4 * f1 - c5 * f3 + f5


def _make_input_transform(m: int):
    """The input transform of F(m x m, 3 x 3) over a block of tile rows (``m`` a closure
    constant: only its own formulas are compiled in)."""

    @numba.njit(**PJIT)
    def input_transform(x, V, cst, r0, nrows, tiles_h, tiles_w, pt, pl, wT, Gm, U2):
        # Also runs the kernel transform of wT into U2 (when wT has columns) in the same
        # parallel loop: the two are independent, and one loop is one thread synchronisation.
        C = x.shape[1]
        alpha = m + 2
        WP = tiles_w * m + 2
        # Half of the kernel-transform jobs go first and half last, so that Numba's static
        # split of the loop gives each of two threads an equal share of them.
        nk = (wT.shape[1] + _KT_CHUNK - 1) // _KT_CHUNK
        front = nk // 2
        total = nk + nrows * C
        for task in numba.prange(total):
            job = numba.int64(task)  # one compilation of the callees: see packing.task_coords
            if job < front:
                _kernel_chunk(wT, Gm, U2, job)
                continue
            if job >= total - (nk - front):
                _kernel_chunk(wT, Gm, U2, job - (total - nk))
                continue
            i, cc = (job - front) // C, (job - front) % C
            d = np.empty((alpha, WP), dtype=x.dtype)
            t = np.empty(WP, dtype=x.dtype)
            if m == 2:
                _input_job_f2(x, V, cst, r0, i, cc, tiles_h, tiles_w, pt, pl, d, t)
            else:
                _input_job_f4(x, V, cst, r0, i, cc, tiles_h, tiles_w, pt, pl, d, t)

    return input_transform


_INPUT_TRANSFORM = {2: _make_input_transform(2), 4: _make_input_transform(4)}


# ----------------------------------------------------------------------------------------------
# Output transforms.  M is (alpha^2, G, Kg, nrows * tiles_w); each job (tile row, output
# channel) first combines the alpha rows of every tile (contiguous over tiles), then the
# columns, into an m x (tiles_w * m) buffer that is cropped into y with the bias.  `bad[job]`
# is set when a tile's uncropped result is not finite (NaN/inf in, or overflow).


@numba.njit(**JIT)
def _store_rows(out, y, n, kk, p0, b, Q):
    P = y.shape[2]
    for i in range(out.shape[0]):
        p = p0 + i
        if p < P:
            src = out[i, :Q]
            dst = y[n, kk, p, :Q]
            for q in range(Q):
                dst[q] = src[q] + b


@numba.njit(**JIT)
def _any_nonfinite(out):
    flag = False
    for i in range(out.shape[0]):
        row = out[i]
        for j in range(row.shape[0]):
            flag |= row[j] - row[j] != 0
    return flag


@numba.njit(**JIT)
def _output_job_f2(M, y, bias, cst, r0, i, kk, tiles_h, tiles_w, s, out):
    # Tile row r0 + i of output channel kk from M[:, g, k, i*tiles_w:(i+1)*tiles_w]; s (2, 4,
    # tiles_w) and out (2, 2*tiles_w) are scratch.  Returns True if a result is not finite.
    Kg = M.shape[2]
    Q = y.shape[3]
    g, k = kk // Kg, kk % Kg
    r = r0 + i
    n, th = r // tiles_h, r % tiles_h
    lo, hi = i * tiles_w, (i + 1) * tiles_w
    for b in range(4):
        m0, m1 = M[0 * 4 + b, g, k, lo:hi], M[1 * 4 + b, g, k, lo:hi]
        m2, m3 = M[2 * 4 + b, g, k, lo:hi], M[3 * 4 + b, g, k, lo:hi]
        s0, s1 = s[0, b], s[1, b]
        # rows of A^T: [1 1 1 0] [0 1 -1 1]
        for tw in range(tiles_w):
            s0[tw] = m0[tw] + m1[tw] + m2[tw]
            s1[tw] = m1[tw] - m2[tw] + m3[tw]
    for i2 in range(2):
        e0, e1, e2, e3 = s[i2, 0], s[i2, 1], s[i2, 2], s[i2, 3]
        o = out[i2]
        for tw in range(tiles_w):
            o[2 * tw] = e0[tw] + e1[tw] + e2[tw]
            o[2 * tw + 1] = e1[tw] - e2[tw] + e3[tw]
    _store_rows(out, y, n, kk, th * 2, bias[kk], Q)
    return _any_nonfinite(out)


@numba.njit(**JIT)
def _output_job_f4(M, y, bias, cst, r0, i, kk, tiles_h, tiles_w, s, out):
    # As _output_job_f2; s is (4, 6, tiles_w), out (4, 4*tiles_w).
    Kg = M.shape[2]
    Q = y.shape[3]
    c2, c4, c8 = cst[2], cst[4], cst[8]
    g, k = kk // Kg, kk % Kg
    r = r0 + i
    n, th = r // tiles_h, r % tiles_h
    lo, hi = i * tiles_w, (i + 1) * tiles_w
    for b in range(6):
        m0, m1 = M[0 * 6 + b, g, k, lo:hi], M[1 * 6 + b, g, k, lo:hi]
        m2, m3 = M[2 * 6 + b, g, k, lo:hi], M[3 * 6 + b, g, k, lo:hi]
        m4, m5 = M[4 * 6 + b, g, k, lo:hi], M[5 * 6 + b, g, k, lo:hi]
        s0, s1, s2, s3 = s[0, b], s[1, b], s[2, b], s[3, b]
        # rows of A^T: [1 1 1 1 1 0] [0 1 -1 2 -2 0] [0 1 1 4 4 0] [0 1 -1 8 -8 1]
        for tw in range(tiles_w):
            a12 = m1[tw] + m2[tw]
            d12 = m1[tw] - m2[tw]
            a34 = m3[tw] + m4[tw]
            d34 = m3[tw] - m4[tw]
            s0[tw] = m0[tw] + a12 + a34
            s1[tw] = d12 + c2 * d34
            s2[tw] = a12 + c4 * a34
            s3[tw] = d12 + c8 * d34 + m5[tw]
    for i4 in range(4):
        e0, e1, e2, e3, e4, e5 = s[i4, 0], s[i4, 1], s[i4, 2], s[i4, 3], s[i4, 4], s[i4, 5]
        o = out[i4]
        for tw in range(tiles_w):
            a12 = e1[tw] + e2[tw]
            d12 = e1[tw] - e2[tw]
            a34 = e3[tw] + e4[tw]
            d34 = e3[tw] - e4[tw]
            o[4 * tw] = e0[tw] + a12 + a34
            o[4 * tw + 1] = d12 + c2 * d34
            o[4 * tw + 2] = a12 + c4 * a34
            o[4 * tw + 3] = d12 + c8 * d34 + e5[tw]
    _store_rows(out, y, n, kk, th * 4, bias[kk], Q)
    return _any_nonfinite(out)


def _make_output_transform(m: int):
    """The output transform of F(m x m, 3 x 3) over a block of tile rows (``m`` a closure
    constant)."""

    @numba.njit(**PJIT)
    def output_transform(M, y, bias, cst, bad, r0, nrows, tiles_h, tiles_w):
        K = M.shape[1] * M.shape[2]
        for job in numba.prange(nrows * K):
            i, kk = job // K, job % K
            s = np.empty((m, m + 2, tiles_w), dtype=M.dtype)
            out = np.empty((m, m * tiles_w), dtype=M.dtype)
            if m == 2:
                bad[job] = _output_job_f2(M, y, bias, cst, r0, i, kk, tiles_h, tiles_w, s, out)
            else:
                bad[job] = _output_job_f4(M, y, bias, cst, r0, i, kk, tiles_h, tiles_w, s, out)

    return output_transform


_OUTPUT_TRANSFORM = {2: _make_output_transform(2), 4: _make_output_transform(4)}


def _make_gemm_output(m: int):
    """The GEMMs and output transform of F(m x m, 3 x 3) by blocks of output channels (``m``
    a closure constant)."""

    @numba.njit(**PJIT)
    def gemm_output(U, V, M, y, bias, cst, bad, kb, r0, nrows, tiles_h, tiles_w):
        # One job per (group, block of kb output channels): the alpha^2 GEMMs of that K slice
        # (single-threaded BLAS), then the output transform of its channels.  bad[job] flags
        # non-finite results.
        A2, G, Kg, Cg = U.shape
        nt = V.shape[3]
        nkb = (Kg + kb - 1) // kb
        for job in numba.prange(G * nkb):
            g, k0 = job // nkb, (job % nkb) * kb
            k1 = min(Kg, k0 + kb)
            for a in range(A2):
                if Kg == 1 and Cg == 1:
                    u = U[a, g, 0, 0]
                    v = V[a, g, 0]
                    mm = M[a, g, 0]
                    for j in range(nt):
                        mm[j] = u * v[j]
                else:
                    np.dot(U[a, g, k0:k1], V[a, g], M[a, g, k0:k1])
            s = np.empty((m, m + 2, tiles_w), dtype=M.dtype)
            out = np.empty((m, m * tiles_w), dtype=M.dtype)
            flag = False
            for i in range(nrows):
                for k in range(k0, k1):
                    kk = g * Kg + k
                    args = (M, y, bias, cst, r0, i, kk, tiles_h, tiles_w, s, out)
                    if m == 2:
                        flag |= _output_job_f2(*args)
                    else:
                        flag |= _output_job_f4(*args)
            bad[job] = flag

    return gemm_output


_GEMM_OUTPUT = {2: _make_gemm_output(2), 4: _make_gemm_output(4)}


def _make_fused(m: int):
    """The fused schedule of F(m x m, 3 x 3) (``m`` a closure constant: only its own
    transforms are compiled in)."""

    @numba.njit(**PJIT)
    def fused(x, U, y, bias, cst, bad, rows_per_item, rows_total, tiles_h, tiles_w, pt, pl, vwork,
              mwork):
        # One parallel loop over items of `rows_per_item` tile rows; each item runs all three
        # phases on V and M (sized to stay in a core's cache) with single-threaded BLAS.  V and M
        # live in row get_thread_id() of vwork / mwork: a thread runs its items one after the
        # other, and reusing the rows avoids fresh pages (and their faults) for every item.
        A2, G, Kg, Cg = U.shape
        C, K = G * Cg, G * Kg
        alpha = m + 2
        WP = tiles_w * m + 2
        U3 = U.reshape(A2 * G, Kg, Cg)
        nitems = (rows_total + rows_per_item - 1) // rows_per_item
        for item in numba.prange(nitems):
            r0 = item * rows_per_item
            nr = min(rows_per_item, rows_total - r0)
            nt = nr * tiles_w
            tid = numba.get_thread_id()
            V = vwork[tid, :A2 * G * Cg * nt].reshape((A2, G, Cg, nt))
            M = mwork[tid, :A2 * G * Kg * nt].reshape((A2, G, Kg, nt))
            d = np.empty((alpha, WP), dtype=x.dtype)
            t = np.empty(WP, dtype=x.dtype)
            for i in range(nr):
                for cc in range(C):
                    if m == 2:
                        _input_job_f2(x, V, cst, r0, i, cc, tiles_h, tiles_w, pt, pl, d, t)
                    else:
                        _input_job_f4(x, V, cst, r0, i, cc, tiles_h, tiles_w, pt, pl, d, t)
            V3 = V.reshape(A2 * G, Cg, nt)
            M3 = M.reshape(A2 * G, Kg, nt)
            for a in range(A2 * G):
                matmul_into(U3[a], V3[a], M3[a])
            s = np.empty((m, alpha, tiles_w), dtype=x.dtype)
            out = np.empty((m, m * tiles_w), dtype=x.dtype)
            flag = False
            for i in range(nr):
                for kk in range(K):
                    args = (M, y, bias, cst, r0, i, kk, tiles_h, tiles_w, s, out)
                    if m == 2:
                        flag |= _output_job_f2(*args)
                    else:
                        flag |= _output_job_f4(*args)
            bad[item] = flag

    return fused


_FUSED = {2: _make_fused(2), 4: _make_fused(4)}


@numba.njit(**PJIT)
def _fused_few(x, U, y, bias, cst, bad, rows_per_item, rows_total, tiles_h, tiles_w, pt, pl,
               vwork, L, upto=2):
    # The fused schedule for F(4x4) with Cg <= few.MAX_CG: per item the input
    # transform into V, then the products and the output transform together
    # (fastconv.cpu.winograd.few); no M.  upto=1 stops after the input transform (timing).
    A2, G, Kg, Cg = U.shape
    C = G * Cg
    WP = tiles_w * 4 + 2
    nitems = (rows_total + rows_per_item - 1) // rows_per_item
    for item in numba.prange(nitems):
        r0 = item * rows_per_item
        nr = min(rows_per_item, rows_total - r0)
        nt = nr * tiles_w
        V = vwork[numba.get_thread_id(), :A2 * G * Cg * nt].reshape((A2, G, Cg, nt))
        d = np.empty((6, WP), dtype=x.dtype)
        t = np.empty(WP, dtype=x.dtype)
        for i in range(nr):
            for cc in range(C):
                _input_job_f4(x, V, cst, r0, i, cc, tiles_h, tiles_w, pt, pl, d, t)
        if upto > 1:
            tmp = np.empty(L, dtype=x.dtype)
            bad[item] = not few.products_and_output(U, V, y, bias, r0, nr, tiles_h,
                                                     tiles_w, tmp)


# ----------------------------------------------------------------------------------------------
# Schedules


def _constants(dtype):
    return np.arange(9, dtype=dtype)  # cst[k] == k, typed like the data


def _block_rows(p, m, tiles_w):
    """Tile rows per block: V + M within the LLC target and the workspace bound."""
    alpha2 = (m + 2) ** 2
    per_row = alpha2 * (p.C + p.K) * tiles_w * p.dtype.itemsize
    return max(1, min(CPU.tile_row_block_bytes, CPU.workspace_bytes) // per_row)


def _fused_rows(p, m, tiles_w, rows_total):
    """Tile rows per item of the fused path, or 0 when the phase-by-phase path is better.

    Items hold at most ``tile_row_item_bytes`` of V + M and at least
    ``tile_row_min_item_tiles`` tiles (narrower GEMMs waste BLAS).  Among
    those sizes the one that splits the rows most evenly between the
    ``NUMBA_NUM_THREADS`` threads of Numba's pool (each gets whole items)
    wins, then the larger.  At most one item per Numba thread is alive, so
    the workspace is ``NUMBA_NUM_THREADS`` items.  The choice depends on the
    shapes and the pool's size, never on the number of threads in use
    (``numba.set_num_threads``), so neither do the results.
    """
    per_row = (m + 2) ** 2 * (p.C + p.K) * tiles_w * p.dtype.itemsize
    if (m + 2) ** 2 * p.K * p.Cg * p.dtype.itemsize > CPU.tile_row_fused_max_u_bytes:
        return 0  # every item reads all of U: with a large U, slice the GEMMs by channels
    T = max(2, numba.config.NUMBA_NUM_THREADS)  # (a one-thread pool: items of half the rows)
    hi = min(CPU.tile_row_item_bytes // per_row, -(-rows_total // 2),
             CPU.workspace_bytes // (per_row * numba.config.NUMBA_NUM_THREADS))
    lo = max(1, -(-CPU.tile_row_min_item_tiles // tiles_w))
    best, best_load = 0, None
    for rows in range(lo, hi + 1):
        items = -(-rows_total // rows)
        load = min(rows_total, -(-items // T) * rows)  # rows of the busiest thread
        if best_load is None or load <= best_load:
            best, best_load = rows, load
    return int(best)


def _execute(x, w, U, m, bias, p, y, timings=None):
    """Kernel transform (when ``U`` is None) -> input transform -> GEMMs -> output transform.

    Returns True if every result was finite.  With ``timings`` (a dict) the
    phases run one by one and their seconds are added into it; otherwise
    independent phases share parallel loops (fewer thread synchronisations).
    """
    alpha2 = (m + 2) ** 2
    dt = p.dtype
    G, Kg, Cg = p.groups, p.Kg, p.Cg
    tiles_h, tiles_w = -(-p.P // m), -(-p.Q // m)
    rows_total = p.N * tiles_h
    pt, pl = p.padding[0], p.padding[2]
    cst = _constants(dt)
    b = np.zeros(p.K, dtype=dt) if bias is None else bias
    clock = time.perf_counter
    Gm = transform_matrices(m)[1]
    no_kernels = np.empty((9, 0), dtype=dt)
    if U is None:
        U = np.empty((alpha2, G, Kg, Cg), dtype=dt)
        wT = np.ascontiguousarray(w.reshape(p.K * Cg, 9).T)
    else:
        wT = no_kernels
    U2 = U.reshape(alpha2, p.K * Cg)
    item_rows = _fused_rows(p, m, tiles_w, rows_total)
    few_channels = bool(item_rows) and m == 4 and Cg <= few.MAX_CG
    if timings is not None and not few_channels:
        item_rows = 0  # profiled phase by phase
    if wT.shape[1] and (timings is not None or item_rows):
        t0 = clock()
        _kernel_transform(wT, Gm, U2)
        if timings is not None:
            timings["kernel_transform"] += clock() - t0
        wT = no_kernels
    if item_rows:
        bad = np.zeros(-(-rows_total // item_rows), dtype=np.bool_)
        nt = item_rows * tiles_w
        vwork = _scratch.per_thread("winograd.V", dt, alpha2 * G * Cg * nt)
        if few_channels:
            args = (x, U, y, b, cst, bad, item_rows, rows_total, tiles_h, tiles_w, pt, pl, vwork,
                    lanes(dt))
            if timings is not None:  # the input transform alone, then the whole call
                t0 = clock()
                _fused_few(*args, 1)
                t1 = clock()
                _fused_few(*args)
                timings["input_transform"] += t1 - t0
                # products and output transform are one step (fastconv.cpu.winograd.few)
                del timings["gemm"], timings["output_transform"]
                timings["gemm_and_output_transform"] = max(0.0, clock() - t1 - (t1 - t0))
            else:
                _fused_few(*args)
            return not bad.any()
        mwork = _scratch.per_thread("winograd.M", dt, alpha2 * G * Kg * nt)
        with single_threaded_blas():
            _FUSED[m](x, U, y, b, cst, bad, item_rows, rows_total, tiles_h, tiles_w, pt, pl,
                      vwork, mwork)
        return not bad.any()
    rows = int(min(rows_total, _block_rows(p, m, tiles_w)))
    kb = max(16, -(-Kg // 4))  # output channels per GEMM + output job (4 jobs per group)
    vbuf = _scratch.buffer("winograd.V", dt, alpha2 * G * Cg * rows * tiles_w)
    mbuf = _scratch.buffer("winograd.M", dt, alpha2 * G * Kg * rows * tiles_w)
    bad = np.zeros(max(rows * p.K, G * -(-Kg // kb)), dtype=np.bool_)
    for r0 in range(0, rows_total, rows):
        nr = min(rows, rows_total - r0)
        nt = nr * tiles_w
        V = vbuf[: alpha2 * G * Cg * nt].reshape(alpha2, G, Cg, nt)
        M = mbuf[: alpha2 * G * Kg * nt].reshape(alpha2, G, Kg, nt)
        bad[:] = False
        t0 = clock()
        # The first block also carries the kernel transform, when still pending.
        _INPUT_TRANSFORM[m](x, V, cst, r0, nr, tiles_h, tiles_w, pt, pl, wT, Gm, U2)
        wT = no_kernels
        t1 = clock()
        if timings is None:
            with single_threaded_blas():
                _GEMM_OUTPUT[m](U, V, M, y, b, cst, bad, kb, r0, nr, tiles_h, tiles_w)
        else:
            batched_matmul(U.reshape(alpha2 * G, Kg, Cg), V.reshape(alpha2 * G, Cg, nt),
                           M.reshape(alpha2 * G, Kg, nt))
            t2 = clock()
            _OUTPUT_TRANSFORM[m](M, y, b, cst, bad, r0, nr, tiles_h, tiles_w)
            timings["input_transform"] += t1 - t0
            timings["gemm"] += t2 - t1
            timings["output_transform"] += clock() - t2
        if bad.any():
            return False
    return True
