"""im2col + GEMM: unfold receptive fields into columns, then one matrix product per group.

For a block of output positions the workspace ``cols`` holds, for each
``(c, r, s)`` of a group, the input value under that tap for every output
position: a ``(Cg*R*S, positions)`` matrix.  The output block of group ``g``
is then ``w_g (Kg, Cg*R*S) @ cols``, computed by BLAS (``np.matmul``).

Paths
-----
* 1x1 kernels, no padding: no unfolding at all.  With stride 1 the input
  ``(N, C, H*W)`` already is the column matrix, so the convolution is one
  GEMM per image and group straight into ``y``; with a larger stride the
  input is first subsampled into a contiguous ``(N, C, P*Q)`` copy.
* Everything else: :func:`_unfold` builds ``cols`` for a block of images
  (all groups), applying the zero padding on the fly (the input is never
  padded as a whole), and the products go straight into ``y``.  When one
  image's columns exceed the workspace, blocks of output rows of one image
  are unfolded instead and the product is copied into ``y``.

The GEMMs run in Numba's thread pool (:func:`fastconv.cpu._gemm.grouped_matmul`):
each job is a single-threaded BLAS call on a block of output-channel rows,
so a call never wakes BLAS's own threads (which busy-wait for tens of
milliseconds after a call and then steal the cores of whatever runs next),
and the unfold and the GEMM share one pool.

Workspace bound
---------------
``cols`` never exceeds ``FASTCONV_WORKSPACE_MB`` (default 256 MiB; one
output row of one image is the minimum block).  Blocks span whole images when
they fit and rows of one image otherwise (plus a ``K * rows * Q`` product
buffer for the copy).  The strided 1x1 path needs the subsampled input
(``N * C * P * Q`` elements, no more than the input itself) instead.  For
VGG-16 conv1_2 at batch 32 (C = 64, 224 x 224, 3x3) one image's ``cols``
takes 115 MiB, so two images per block use 231 MiB.

Bias is added in a final pass over ``y``.  The unfold writes disjoint slices
of ``cols`` per parallel job and each output is one BLAS dot product, so
results do not depend on the number of Numba threads.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from .. import _config
from .._config import PJIT
from .._epilogue import NONE
from . import _scratch, epilogue
from .packing import subsample_pointwise
from ._gemm import grouped_matmul

@numba.njit(**PJIT)
def _unfold(x, cols, n0, R, S, p0, p1, Q, sh, sw, dh, dw, pt, pl):
    # cols[i, (c*R + r)*S + s, (p - p0)*Q + q]
    #     = x[n0 + i, c, p*sh + r*dh - pt, q*sw + s*dw - pl]   (0 outside x)
    # for every channel c of every group.  One job per (image, row of cols); loops
    # run over 0-based ranges of views so Numba needs no negative-index wraparound
    # (which would block vectorisation).
    H, W = x.shape[2], x.shape[3]
    nimg, nrows = cols.shape[0], cols.shape[1]
    nrow = p1 - p0
    for job in numba.prange(nimg * nrows):
        i, row = job // nrows, job % nrows
        c, rs = row // (R * S), row % (R * S)
        r, s = rs // S, rs % S
        off = s * dw - pl  # input column of output column q is q*sw + off
        qlo = 0 if off >= 0 else min(Q, (-off + sw - 1) // sw)
        qhi = 0 if W - 1 - off < 0 else min(Q, (W - 1 - off) // sw + 1)
        qhi = max(qhi, qlo)
        dst = cols[i, row]
        for pp in range(nrow):
            h = (p0 + pp) * sh + r * dh - pt
            d = dst[pp * Q:(pp + 1) * Q]
            if h < 0 or h >= H:
                for q in range(Q):
                    d[q] = 0
                continue
            for q in range(qlo):
                d[q] = 0
            for q in range(qhi, Q):
                d[q] = 0
            if qhi > qlo:
                src = x[n0 + i, c, h, qlo * sw + off:(qhi - 1) * sw + off + 1:sw]
                dv = d[qlo:qhi]
                for q in range(qhi - qlo):
                    dv[q] = src[q]


def supports(p):
    return None  # every configuration


def _is_pointwise(p):
    return p.R == 1 and p.S == 1 and p.padding == (0, 0, 0, 0)


def _execute(x, w, bias, p, y, t):
    """The whole convolution; adds seconds per phase into ``t``."""
    clock = time.perf_counter
    G, Cg, Kg = p.groups, p.Cg, p.Kg
    P, Q, PQ = p.P, p.Q, p.P * p.Q
    rows = Cg * p.R * p.S
    w3 = np.ascontiguousarray(w.reshape(G, Kg, rows))
    yv = y.reshape(p.N, G, Kg, PQ)
    sh, sw = p.stride
    if _is_pointwise(p):
        t0 = clock()
        xs = subsample_pointwise(x, p)  # a strided 1x1 reads every sh-th row and sw-th column
        t1 = clock()
        grouped_matmul(w3, xs.reshape(p.N, G, Cg, PQ), yv)
        t["unfold"] += t1 - t0
        t["gemm"] += clock() - t1
        return
    itemsize = p.dtype.itemsize
    geo = (sh, sw, p.dilation[0], p.dilation[1], p.padding[0], p.padding[2])
    per_image = G * rows * PQ * itemsize
    ws = _config.CPU.workspace_bytes
    if per_image <= ws:
        nb = int(max(1, min(p.N, ws // per_image)))
        cols = _scratch.buffer("im2col.cols", p.dtype, nb * G * rows * PQ)
        for n0 in range(0, p.N, nb):
            m = min(nb, p.N - n0)
            t0 = clock()
            c = cols[: m * G * rows * PQ].reshape(m, G * rows, PQ)
            _unfold(x, c, n0, p.R, p.S, 0, P, Q, *geo)
            t1 = clock()
            grouped_matmul(w3, c.reshape(m, G, rows, PQ), yv[n0:n0 + m])
            t["unfold"] += t1 - t0
            t["gemm"] += clock() - t1
    else:  # blocks of output rows of one image
        rb = int(max(1, ws // (G * rows * Q * itemsize)))
        cols = _scratch.buffer("im2col.cols", p.dtype, G * rows * min(rb, P) * Q)
        res = _scratch.buffer("im2col.res", p.dtype, G * Kg * min(rb, P) * Q)
        y5 = y.reshape(p.N, G, Kg, P, Q)
        for n in range(p.N):
            for p0 in range(0, P, rb):
                p1 = min(P, p0 + rb)
                npq = (p1 - p0) * Q
                t0 = clock()
                c = cols[: G * rows * npq].reshape(1, G * rows, npq)
                _unfold(x, c, n, p.R, p.S, p0, p1, Q, *geo)
                t1 = clock()
                r = res[: G * Kg * npq].reshape(1, G, Kg, npq)
                grouped_matmul(w3, c.reshape(1, G, rows, npq), r)
                y5[n, :, :, p0:p1] = r.reshape(G, Kg, p1 - p0, Q)
                t["unfold"] += t1 - t0
                t["gemm"] += clock() - t1


def _add_bias(y, bias):
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)


def run(x, w, bias, p, y, epi=NONE):
    """im2col + GEMM of NCHW ``x`` into NCHW ``y``, then the bias and ``epi`` (NCHW residual).

    BLAS writes the GEMM's result, so bias and epilogue follow as passes over ``y``.
    """
    _execute(x, w, bias, p, y, {"unfold": 0.0, "gemm": 0.0})
    _add_bias(y, bias)
    epilogue.apply(y, epi)


def profile_phases(x, w, bias, p, y):
    """Run once, write ``y``, and return seconds per phase: ``unfold``, ``gemm``, ``bias``."""
    t = {"unfold": 0.0, "gemm": 0.0, "bias": 0.0}
    x = np.ascontiguousarray(x, dtype=p.dtype)
    w = np.ascontiguousarray(w, dtype=p.dtype)
    with _config.parallel_section():
        _execute(x, w, bias, p, y, t)
        t0 = time.perf_counter()
        _add_bias(y, bias)
        t["bias"] = time.perf_counter() - t0
    return t
