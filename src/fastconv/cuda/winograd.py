"""Winograd F(2x2, 3x3) and F(4x4, 3x3) convolution on the GPU.

Four kernels per call, every intermediate in device memory (Lavin & Gray
2016, "Fast Algorithms for Convolutional Neural Networks", section 4):

1. ``winograd_weight_kernel``: ``U[xi, g, c, k] = (G w[k, c] G^T)[xi]``, one
   thread per (c, k) with k fastest (coalesced stores);
2. ``winograd_input_kernel``: ``V[xi, g, c, t] = (B^T d B)[xi]`` for every
   ``alpha x alpha`` input tile ``d`` (tiles overlap by 2, zero outside the
   image), one thread per (channel, tile) with the tile fastest;
3. ``winograd_gemm_kernel``: ``alpha^2 * groups`` independent GEMMs
   ``M[xi, g] = U[xi, g]^T V[xi, g]`` (Kg x Cg times Cg x tiles), tiled like
   :mod:`fastconv.cuda.implicit_gemm` (shared-memory slices multiplied by the
   same register-tiled slice product, :mod:`fastconv.cuda._gemm_tile`;
   register prefetch); both operands are read along their
   contiguous axis, so the loads are coalesced and the stores to shared
   memory conflict-free;
4. ``winograd_output_kernel``: ``y = A^T M A`` plus bias, one thread per
   (k, tile).

Transform matrices come from :func:`fastconv.winograd_math.transform_matrices`
and are compiled in as constant arrays.  Workspace: ``alpha^2 (Cg K + (C + K)
T_chunk)`` elements; tiles are processed in chunks so that it stays under
``FASTCONV_CUDA_WORKSPACE_MB``.

Non-finite values: a transform mixes a whole tile, so one inf would turn
its neighbours into NaN.  The weight transform flags weights that hold
NaN/inf, the input transform flags tiles whose patch holds one, and the
output transform flags non-finite results (a transform overflowed); each
writes the call's epoch into a device flag, nothing is copied to the host.
The gated direct kernel then recomputes the whole call exactly, still
without a host round trip (its blocks exit at once unless the flag holds
this call's epoch, see :func:`fastconv.cuda._runtime.next_epoch`).

Constraints: 3x3 kernels, stride 1, dilation 1; any padding, groups, dtype.
Error bound: :func:`fastconv.winograd_math.error_bound`.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..winograd_math import transform_matrices
from . import direct
from ._gemm_tile import slice_product
from .implicit_gemm import _row_tile, col_tile
from ._runtime import (
    SETTINGS, KernelSpec, arg_types, array_type, bind_cuda, cdiv, launch, nbtype, threads_1d,
)

# numba.cuda, bound on first use.  Kernels must see it as a module global:
# the CUDA simulator swaps module globals that are numba.cuda for its fake.
cuda = None


def _bind():
    return bind_cuda(globals())



def supports(p):
    if not p.is_3x3_unit:
        return (f"Winograd needs a 3x3 kernel with stride 1 and dilation 1; got R x S = {p.R}x{p.S}, "
                f"stride={p.stride}, dilation={p.dilation}")
    if 36 * p.groups > 65535:
        return f"groups={p.groups} exceeds the CUDA grid's z limit for the Winograd GEMM"
    return None


@functools.lru_cache(maxsize=None)
def _transform_kernels(dtype_str: str, m: int):
    _bind()
    nb = nbtype(dtype_str)
    dtype = np.dtype(dtype_str)
    AT64, G64, BT64 = transform_matrices(m)
    AT_c = np.ascontiguousarray(AT64, dtype=dtype)
    G_c = np.ascontiguousarray(G64, dtype=dtype)
    BT_c = np.ascontiguousarray(BT64, dtype=dtype)
    ALPHA = m + 2
    A2 = ALPHA * ALPHA
    M_OUT = m

    def winograd_weight_kernel(w, U, flag, epoch, Cg, Kg, groups):
        """U[((xi*groups + g)*Cg + c)*Kg + k] = (G w[g*Kg+k, c] G^T)[xi]; w flat KCRS (3x3).

        flag[0] = epoch when w[k, c] holds NaN or inf."""
        i = cuda.grid(1)
        if i >= groups * Cg * Kg:
            return
        Gm = cuda.const.array_like(G_c)
        k = i % Kg
        t = i // Kg
        c = t % Cg
        g = t // Cg
        base = ((g * Kg + k) * Cg + c) * 9
        bad = False
        for e in range(9):
            v = w[base + e]
            if math.isinf(v) or math.isnan(v):
                bad = True
        if bad:
            flag[0] = epoch
        tmp = cuda.local.array((ALPHA, 3), nb)
        for a in range(ALPHA):
            for s in range(3):
                acc = nb(0)
                for r in range(3):
                    acc += Gm[a, r] * w[base + r * 3 + s]
                tmp[a, s] = acc
        for a in range(ALPHA):
            for b in range(ALPHA):
                acc = nb(0)
                for s in range(3):
                    acc += tmp[a, s] * Gm[b, s]
                U[(((a * ALPHA + b) * groups + g) * Cg + c) * Kg + k] = acc

    def winograd_input_kernel(x, V, flag, epoch, C, H, W, Cg, groups, pt, pl, tiles_h, tiles_w, t0,
                              Tc):
        """V[((xi*groups + g)*Cg + c)*Tc + t] = (B^T d B)[xi] for tile t0 + t of channel g*Cg + c.

        flag[0] = epoch when the tile's patch d holds NaN or inf."""
        i = cuda.grid(1)
        if i >= C * Tc:
            return
        Bm = cuda.const.array_like(BT_c)
        t = i % Tc
        cc = i // Tc
        g = cc // Cg
        c = cc - g * Cg
        tile = t0 + t
        n = tile // (tiles_h * tiles_w)
        rem = tile - n * (tiles_h * tiles_w)
        th = rem // tiles_w
        tw = rem - th * tiles_w
        h0 = th * M_OUT - pt
        w0 = tw * M_OUT - pl
        xbase = (n * C + cc) * H * W
        d = cuda.local.array((ALPHA, ALPHA), nb)
        bad = False
        for a in range(ALPHA):
            ih = h0 + a
            for b in range(ALPHA):
                iw = w0 + b
                v = nb(0)
                if ih >= 0 and ih < H and iw >= 0 and iw < W:
                    v = x[xbase + ih * W + iw]
                    if math.isinf(v) or math.isnan(v):
                        bad = True
                d[a, b] = v
        if bad:
            flag[0] = epoch
        tmp = cuda.local.array((ALPHA, ALPHA), nb)
        for a in range(ALPHA):
            for b in range(ALPHA):
                acc = nb(0)
                for l in range(ALPHA):
                    acc += Bm[a, l] * d[l, b]
                tmp[a, b] = acc
        stride_xi = groups * Cg * Tc
        base = (g * Cg + c) * Tc + t
        for a in range(ALPHA):
            for b in range(ALPHA):
                acc = nb(0)
                for l in range(ALPHA):
                    acc += tmp[a, l] * Bm[b, l]
                V[(a * ALPHA + b) * stride_xi + base] = acc

    def winograd_output_kernel(Mw, y, bias, has_bias, flag, epoch, K, Kg, groups, P, Q, tiles_h,
                               tiles_w, t0, Tc):
        """y[n, k, th*m + i, tw*m + j] = (A^T M A)[i, j] + bias[k]; flag[0] = epoch on a
        non-finite result (an overflowing transform)."""
        i = cuda.grid(1)
        if i >= K * Tc:
            return
        Am = cuda.const.array_like(AT_c)
        t = i % Tc
        k = i // Tc
        tile = t0 + t
        n = tile // (tiles_h * tiles_w)
        rem = tile - n * (tiles_h * tiles_w)
        th = rem // tiles_w
        tw = rem - th * tiles_w
        stride_xi = K * Tc  # (xi, g, kk, t) with g*Kg + kk == k
        mv = cuda.local.array((ALPHA, ALPHA), nb)
        for a in range(A2):
            mv[a // ALPHA, a % ALPHA] = Mw[a * stride_xi + k * Tc + t]
        tmp = cuda.local.array((M_OUT, ALPHA), nb)
        for r in range(M_OUT):
            for b in range(ALPHA):
                acc = nb(0)
                for a in range(ALPHA):
                    acc += Am[r, a] * mv[a, b]
                tmp[r, b] = acc
        bv = nb(0)
        if has_bias != 0:
            bv = bias[k]
        bad = False
        for r in range(M_OUT):
            p = th * M_OUT + r
            if p < P:
                ybase = ((n * K + k) * P + p) * Q
                for s in range(M_OUT):
                    q = tw * M_OUT + s
                    if q < Q:
                        acc = nb(0)
                        for b in range(ALPHA):
                            acc += tmp[r, b] * Am[s, b]
                        v = acc + bv
                        if math.isinf(v) or math.isnan(v):
                            bad = True
                        y[ybase + q] = v
        if bad:
            flag[0] = epoch

    a = array_type(dtype_str)
    f = array_type(np.int64)
    consts = dict(dtype=dtype_str, ALPHA=ALPHA, M_OUT=M_OUT)
    return (KernelSpec(winograd_weight_kernel, arg_types(winograd_weight_kernel, w=a, U=a, flag=f),
                       consts),
            KernelSpec(winograd_input_kernel, arg_types(winograd_input_kernel, x=a, V=a, flag=f),
                       consts),
            KernelSpec(winograd_output_kernel,
                       arg_types(winograd_output_kernel, Mw=a, y=a, bias=a, flag=f), consts))


@functools.lru_cache(maxsize=None)
def _gemm_kernel(dtype_str: str, TB: int, RTM: int, RT: int, BK: int):
    _bind()
    nb = nbtype(dtype_str)
    BM = TB * RTM
    BN = TB * RT
    NT = TB * TB
    ROWS_A = NT // BM   # rows (input channels) of the U slice loaded per pass
    A_PER = BK // ROWS_A
    ROWS_B = NT // BN
    B_PER = BK // ROWS_B
    NACC = RTM * RT
    gemm_slice = slice_product(dtype_str, TB, RTM, RT, BK)

    def winograd_gemm_kernel(U, V, Mw, Cg, Kg, Tc):
        """Mw[z, k, t] = sum_c U[z, c, k] V[z, c, t] for z = xi*groups + g (grid z).

        U (z, Cg, Kg), V (z, Cg, Tc), Mw (z, Kg, Tc), all flat and C-contiguous;
        grid (ceil(Tc/BN), ceil(Kg/BM), alpha^2 * groups), block (TB, TB).
        """
        As = cuda.shared.array((BK, BM), nb)
        Bs = cuda.shared.array((BK, BN), nb)
        a_pf = cuda.local.array(A_PER, nb)
        b_pf = cuda.local.array(B_PER, nb)
        acc = cuda.local.array(NACC, nb)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TB + tx
        z = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * BM
        j0 = cuda.blockIdx.x * BN
        for i in range(NACC):
            acc[i] = 0
        ubase = z * Cg * Kg
        vbase = z * Cg * Tc
        acol = tid % BM
        arow0 = tid // BM
        bcol = tid % BN
        brow0 = tid // BN
        m = m0 + acol
        j = j0 + bcol
        nslices = (Cg + BK - 1) // BK
        for l in range(A_PER):
            c = arow0 + l * ROWS_A
            v = nb(0)
            if m < Kg and c < Cg:
                v = U[ubase + c * Kg + m]
            a_pf[l] = v
        for l in range(B_PER):
            c = brow0 + l * ROWS_B
            v = nb(0)
            if j < Tc and c < Cg:
                v = V[vbase + c * Tc + j]
            b_pf[l] = v
        for t in range(nslices):
            for l in range(A_PER):
                As[arow0 + l * ROWS_A, acol] = a_pf[l]
            for l in range(B_PER):
                Bs[brow0 + l * ROWS_B, bcol] = b_pf[l]
            cuda.syncthreads()
            if t + 1 < nslices:
                c1 = (t + 1) * BK
                for l in range(A_PER):
                    c = c1 + arow0 + l * ROWS_A
                    v = nb(0)
                    if m < Kg and c < Cg:
                        v = U[ubase + c * Kg + m]
                    a_pf[l] = v
                for l in range(B_PER):
                    c = c1 + brow0 + l * ROWS_B
                    v = nb(0)
                    if j < Tc and c < Cg:
                        v = V[vbase + c * Tc + j]
                    b_pf[l] = v
            gemm_slice(As, Bs, acc, ty, tx)
            cuda.syncthreads()
        mbase = z * Kg * Tc
        for i in range(RTM):
            mo = m0 + ty + i * TB
            if mo < Kg:
                for jj in range(RT):
                    jo = j0 + tx + jj * TB
                    if jo < Tc:
                        Mw[mbase + mo * Tc + jo] = acc[i * RT + jj]

    a = array_type(dtype_str)
    return KernelSpec(winograd_gemm_kernel, arg_types(winograd_gemm_kernel, U=a, V=a, Mw=a),
                      dict(dtype=dtype_str, TB=TB, RTM=RTM, RT=RT, BK=BK), register_blocked=True)


def specializations():
    """Every kernel specialisation :func:`run_tiles` can launch under the current settings."""
    from .implicit_gemm import row_tiles

    TB, BK = SETTINGS.block, SETTINGS.bk
    for dt in ("<f4", "<f8"):
        for m in (2, 4):
            yield from _transform_kernels(dt, m)
        RT = col_tile(dt)
        for RTM in row_tiles(dt):
            yield _gemm_kernel(dt, TB, RTM, RT, BK)


def run_tiles(x, w, bias, p, y, ctx, m):
    """Winograd F(m x m, 3 x 3) of flat device arrays, then the gated exact fallback."""
    alpha = m + 2
    A2 = alpha * alpha
    dtype = p.dtype
    itemsize = dtype.itemsize
    G, Cg, Kg = p.groups, p.Cg, p.Kg
    tiles_h, tiles_w = cdiv(p.P, m), cdiv(p.Q, m)
    T = p.N * tiles_h * tiles_w
    per_tile = A2 * (p.C + p.K) * itemsize
    budget = max(SETTINGS.workspace_bytes - A2 * Cg * p.K * itemsize, per_tile)
    Tc = max(1, min(T, budget // per_tile))
    wk, ik, ok = _transform_kernels(dtype.str, m)
    TB, BK = SETTINGS.block, SETTINGS.bk
    RT = col_tile(dtype)
    RTM = _row_tile(Kg, TB, RT, BK)
    gk = _gemm_kernel(dtype.str, TB, RTM, RT, BK)
    pt, _, pl, _ = p.padding
    has_bias = 0 if bias is None else 1
    bias_arg = w if bias is None else bias

    epoch = ctx.epoch()
    U, V, Mw, flag = ctx.workspaces("winograd", ((A2 * Cg * p.K, dtype), (A2 * p.C * Tc, dtype),
                                                 (A2 * p.K * Tc, dtype), (1, np.int64)))
    ctx.mark("start")
    threads = threads_1d()
    launch(wk, (cdiv(G * Cg * Kg, threads),), (threads,), ctx, (w, U, flag, epoch, Cg, Kg, G))
    ctx.mark("kernel transform")
    for t0 in range(0, T, Tc):
        n_t = min(Tc, T - t0)
        launch(ik, (cdiv(p.C * n_t, threads),), (threads,), ctx,
               (x, V, flag, epoch, p.C, p.H, p.W, Cg, G, pt, pl, tiles_h, tiles_w, t0, n_t))
        ctx.mark("input transform")
        grid = (cdiv(n_t, TB * RT), cdiv(Kg, TB * RTM), A2 * G)
        launch(gk, grid, (TB, TB), ctx, (U, V, Mw, Cg, Kg, n_t))
        ctx.mark("GEMM")
        launch(ok, (cdiv(p.K * n_t, threads),), (threads,), ctx,
               (Mw, y, bias_arg, has_bias, flag, epoch, p.K, Kg, G, p.P, p.Q, tiles_h, tiles_w,
                t0, n_t))
        ctx.mark("output transform")
    # Exact recomputation when a transform saw a non-finite value (no-op blocks otherwise).
    direct.run(x, w, bias, p, y, ctx, flag=flag, epoch=epoch)
    ctx.mark("non-finite fallback")


def run_f2x2(x, w, bias, p, y, ctx):
    run_tiles(x, w, bias, p, y, ctx, 2)


def run_f4x4(x, w, bias, p, y, ctx):
    run_tiles(x, w, bias, p, y, ctx, 4)
