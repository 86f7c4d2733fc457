"""Winograd F(m x m, 3 x 3) convolution (Lavin & Gray 2016): transform, GEMM, inverse transform.

Phases (timed separately by the benchmark, as NNPACK does):

1. kernel transform ``U = G w G^T``: ``(alpha^2, groups, Kg, Cg)``;
2. input transform ``V = B^T d B`` of every ``alpha x alpha`` input tile
   (tiles overlap by 2): ``(alpha^2, groups, Cg, tiles)``;
3. ``alpha^2 * groups`` independent GEMMs ``M = U @ V`` (BLAS);
4. output transform ``Y = A^T M A`` into ``m x m`` output tiles, plus bias.

Constraints: 3x3 kernels, stride 1, dilation 1; any padding, groups, dtype.
Workspace: ``alpha^2 * (C + K) * tiles_per_block`` elements, bounded by
``FASTCONV_WORKSPACE_MB``; tiles are processed in blocks.

Non-finite values: the transforms mix a whole tile, so one inf would turn
its neighbours into NaN.  When the input or the weights hold a non-finite
value, or a transform overflowed, the call is computed by the direct kernel
instead, which propagates NaN/inf exactly.  Error bound:
:mod:`fastconv.winograd_math`.
"""

from __future__ import annotations

import numba
import numpy as np

from .._config import PJIT, WORKSPACE_BYTES
from ..winograd_math import transform_matrices
from . import direct
from ._layout import pad_nchw


@numba.njit(**PJIT)
def _input_transform(xp, V, BT, t0, ntiles, tiles_h, tiles_w, m, Cg):
    # V[a*alpha + b, g, c, t] = (BT d BT^T)[a, b] for the tile t0 + t of channel g*Cg + c.
    alpha = BT.shape[0]
    C = xp.shape[1]
    for t in numba.prange(ntiles):
        tile = t0 + t
        n = tile // (tiles_h * tiles_w)
        th = (tile // tiles_w) % tiles_h
        tw = tile % tiles_w
        h0, w0 = th * m, tw * m
        tmp = np.empty((alpha, alpha), dtype=xp.dtype)
        for cc in range(C):
            g, c = cc // Cg, cc % Cg
            for a in range(alpha):
                for j in range(alpha):
                    acc = 0.0
                    for i in range(alpha):
                        acc += BT[a, i] * xp[n, cc, h0 + i, w0 + j]
                    tmp[a, j] = acc
            for a in range(alpha):
                for b in range(alpha):
                    acc = 0.0
                    for j in range(alpha):
                        acc += tmp[a, j] * BT[b, j]
                    V[a * alpha + b, g, c, t] = acc


@numba.njit(**PJIT)
def _output_transform(M, AT, bias, y, t0, ntiles, tiles_h, tiles_w, has_bias):
    m, alpha = AT.shape
    G, Kg = M.shape[1], M.shape[2]
    P, Q = y.shape[2], y.shape[3]
    for t in numba.prange(ntiles):
        tile = t0 + t
        n = tile // (tiles_h * tiles_w)
        th = (tile // tiles_w) % tiles_h
        tw = tile % tiles_w
        tmp = np.empty((m, alpha), dtype=M.dtype)
        for kk in range(G * Kg):
            g, k = kk // Kg, kk % Kg
            for i in range(m):
                for b in range(alpha):
                    acc = 0.0
                    for a in range(alpha):
                        acc += AT[i, a] * M[a * alpha + b, g, k, t]
                    tmp[i, b] = acc
            for i in range(m):
                p = th * m + i
                if p >= P:
                    break
                for j in range(m):
                    q = tw * m + j
                    if q >= Q:
                        break
                    acc = 0.0
                    for b in range(alpha):
                        acc += tmp[i, b] * AT[j, b]
                    if has_bias:
                        acc += bias[kk]
                    y[n, kk, p, q] = acc


def kernel_transform(w, m, dtype):
    """``U = G w G^T`` as ``(alpha^2, groups... )``-ready array ``(alpha, alpha, K, Cg)``."""
    _, G, _ = transform_matrices(m)
    return np.einsum("ar,kcrs,bs->abkc", G, w.astype(np.float64), G).astype(dtype)


def supports(p):
    if not p.is_3x3_unit:
        return (f"Winograd needs a 3x3 kernel with stride 1 and dilation 1; got "
                f"R x S = {p.R}x{p.S}, stride={p.stride}, dilation={p.dilation}")
    return None


def _run(x, w, bias, p, y, m):
    if not (np.isfinite(x).all() and np.isfinite(w).all()):
        return direct.run(x, w, bias, p, y)
    AT, _, BT = transform_matrices(m)
    alpha = m + 2
    dt = p.dtype
    tiles_h, tiles_w = -(-p.P // m), -(-p.Q // m)
    pt, _, pl, _ = p.padding
    xp = pad_nchw(x, pt, tiles_h * m + 2 - p.H - pt, pl, tiles_w * m + 2 - p.W - pl)
    G, Kg, Cg = p.groups, p.Kg, p.Cg
    U = np.ascontiguousarray(kernel_transform(w, m, dt).reshape(alpha * alpha, G, Kg, Cg))
    T = p.N * tiles_h * tiles_w
    per_tile = alpha * alpha * (p.C + p.K) * dt.itemsize
    tb = int(max(1, min(T, WORKSPACE_BYTES // per_tile)))
    V = np.empty((alpha * alpha, G, Cg, tb), dtype=dt)
    Mbuf = np.empty((alpha * alpha, G, Kg, tb), dtype=dt)
    ATd, BTd = AT.astype(dt), BT.astype(dt)
    b = np.zeros(p.K, dtype=dt) if bias is None else bias
    for t0 in range(0, T, tb):
        nt = min(tb, T - t0)
        Vv, Mv = V[..., :nt], Mbuf[..., :nt]
        _input_transform(xp, Vv, BTd, t0, nt, tiles_h, tiles_w, m, Cg)
        np.matmul(U, Vv, out=Mv)
        _output_transform(Mv, ATd, b, y, t0, nt, tiles_h, tiles_w, bias is not None)
    if not np.isfinite(y).all():  # a transform overflowed: fall back to the exact loop
        direct.run(x, w, bias, p, y)


def run_f2x2(x, w, bias, p, y):
    _run(x, w, bias, p, y, 2)


def run_f4x4(x, w, bias, p, y):
    _run(x, w, bias, p, y, 4)
