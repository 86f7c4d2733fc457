"""im2col + GEMM: unfold receptive fields into columns, then one matrix product per group.

For a block of output positions the workspace ``cols`` holds, for each
(c, r, s) of a group, the input value under that tap for every output
position: a ``(Cg*R*S, positions)`` matrix.  The output block of group ``g``
is then ``w_g (Kg, Cg*R*S) @ cols``, computed by BLAS.

Workspace bound: ``cols`` never exceeds ``FASTCONV_WORKSPACE_MB`` (default
256 MiB; one output row of one image is the minimum block).  Blocks span
whole images when they fit (small feature maps batch several images into one
GEMM) and rows of one image otherwise.
"""

from __future__ import annotations

import numba
import numpy as np

from .._config import PJIT, WORKSPACE_BYTES
from ._layout import pad_nchw


@numba.njit(**PJIT)
def _unfold_images(xp, cols, n0, c0, Cg, R, S, P, Q, sh, sw, dh, dw):
    # cols[(c*R + r)*S + s, i*P*Q + p*Q + q] = xp[n0+i, c0+c, p*sh + r*dh, q*sw + s*dw]
    nimg = cols.shape[1] // (P * Q)
    for row in numba.prange(Cg * R * S):
        c, rs = row // (R * S), row % (R * S)
        r, s = rs // S, rs % S
        for i in range(nimg):
            base = i * P * Q
            for p in range(P):
                h = p * sh + r * dh
                for q in range(Q):
                    cols[row, base + p * Q + q] = xp[n0 + i, c0 + c, h, q * sw + s * dw]


@numba.njit(**PJIT)
def _unfold_rows(xp, cols, n, c0, Cg, R, S, p0, p1, Q, sh, sw, dh, dw):
    for row in numba.prange(Cg * R * S):
        c, rs = row // (R * S), row % (R * S)
        r, s = rs // S, rs % S
        for p in range(p0, p1):
            h = p * sh + r * dh
            for q in range(Q):
                cols[row, (p - p0) * Q + q] = xp[n, c0 + c, h, q * sw + s * dw]


def supports(p):
    return None  # every configuration


def run(x, w, bias, p, y):
    xp = pad_nchw(x, *p.padding)
    G, Cg, Kg, PQ = p.groups, p.Cg, p.Kg, p.P * p.Q
    rows = Cg * p.R * p.S
    itemsize = p.dtype.itemsize
    w2 = w.reshape(G, Kg, rows)
    args = (p.R, p.S)
    strides = (p.stride[0], p.stride[1], p.dilation[0], p.dilation[1])
    per_image = rows * PQ * itemsize
    if per_image <= WORKSPACE_BYTES:
        nb = max(1, min(p.N, WORKSPACE_BYTES // per_image))
        cols = np.empty((rows, nb * PQ), dtype=p.dtype)
        for n0 in range(0, p.N, nb):
            m = min(nb, p.N - n0)
            c_view = cols[:, : m * PQ]
            for g in range(G):
                _unfold_images(xp, c_view, n0, g * Cg, Cg, *args, p.P, p.Q, *strides)
                res = (w2[g] @ c_view).reshape(Kg, m, p.P, p.Q)
                y[n0:n0 + m, g * Kg:(g + 1) * Kg] = res.transpose(1, 0, 2, 3)
    else:
        rb = max(1, WORKSPACE_BYTES // (rows * p.Q * itemsize))
        cols = np.empty((rows, rb * p.Q), dtype=p.dtype)
        for n in range(p.N):
            for p0 in range(0, p.P, rb):
                p1 = min(p.P, p0 + rb)
                c_view = cols[:, : (p1 - p0) * p.Q]
                for g in range(G):
                    _unfold_rows(xp, c_view, n, g * Cg, Cg, *args, p0, p1, p.Q, *strides)
                    y[n, g * Kg:(g + 1) * Kg, p0:p1] = (w2[g] @ c_view).reshape(Kg, p1 - p0, p.Q)
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
