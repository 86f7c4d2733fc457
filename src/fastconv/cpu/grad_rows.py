"""The input gradient of layers with narrow maps and few input channels, a row per vector.

:mod:`fastconv.grad` computes the input gradient as a convolution of
``grad_y`` (zero-inserted and re-padded into a buffer ``B`` of
``H + (R-1)*dh`` rows of ``W + (S-1)*dw``) with the flipped kernels, whose
output channels are the layer's *input* channels.  A layer with few input
channels (LeNet-5's C3: 6) gives that convolution a few output maps, too
few for the forward kernels, which vectorise over output channels or keep
several of them in registers; and a map at most one vector wide (14 pixels
in C3) leaves the pixel-vectorised kernels most of a vector empty on the
last column block.  Here every output row is one vector:

    ``gx[n, c, h, :W] = sum_{k, r, s} w[k, c, R-1-r, S-1-s] * B[n, k, h + r*dh, s*dw : s*dw + W]``,

one job per image, pair of input channels and band of rows, the band's
rows of both channels in vector accumulators (:data:`BAND` per channel),
each masked load of ``W`` lanes of ``B`` meeting a broadcast weight of each
channel (lanes past ``W`` are not read, so nothing beyond a row enters a
sum).

Summation order and error bound: each output sums its ``K*R*S`` products in
``(k, r, s)`` order with one fused multiply-add per term, however the work
is split, so ``|g - g_exact| <= gamma_n * sum |w| |gy|`` with ``n = K*R*S``
(Higham, *Accuracy and Stability of Numerical Algorithms*, sec. 3.1);
results do not depend on the thread count.  ``tests/test_grad.py`` holds it.
"""

from __future__ import annotations

import numba
import numpy as np

from .._config import CPU, PJIT
from .simd import (ACCUMULATORS, REGISTERS, lanes, sget, sset, stack_vectors, vbcast, vfma,
                   vload_masked, vsplat, vstore_masked)

#: Input channels per job: every loaded row of ``B`` meets the weights of both.
PAIR = 2
#: Output rows per job and channel, all in vector accumulators; the other registers hold
#: the two broadcast weights, the loaded row and its lane mask: 11 rows with AVX-512's 32
#: registers, 4 with AVX2's 16 (5 spills two values; ``benchmarks/spill_check.py``).
BAND = (ACCUMULATORS - 2) // PAIR if REGISTERS >= 32 else (ACCUMULATORS - 4) // PAIR
_ACC = PAIR * BAND  # a literal for stack_vectors


@numba.njit(**PJIT)
def _rows(B, wf, gx, K, C, R, S, Hb, Wb, H, W, dh, dw):
    # gx[n, c, h, :W] = sum_{k, r, s} wf[((k*C + c)*R + R-1-r)*S + S-1-s] * B[n, k, h + r*dh,
    # s*dw : s*dw + W]; B is [N, K, Hb, Wb] flat, gx [N, C, H, W] flat.  One job per (n, pair
    # of channels c0, c0 + 1, band of BAND rows); a lone last channel computes c0 twice and
    # stores it once.
    N = gx.size // (C * H * W)
    nband = (H + BAND - 1) // BAND
    npair = (C + PAIR - 1) // PAIR
    for job in numba.prange(N * npair * nband):
        np_, band = job // nband, job % nband
        n, c0 = np_ // npair, (np_ % npair) * PAIR
        c1 = min(c0 + 1, C - 1)
        h0 = band * BAND
        nh = min(BAND, H - h0)
        acc = stack_vectors(B, _ACC)
        zero = vsplat(0, B)
        for i in range(_ACC):
            sset(acc, i, zero)
        for k in range(K):
            plane = ((n * K + k) * Hb + h0) * Wb
            for r in range(R):
                for s in range(S):
                    tap = (R - 1 - r) * S + S - 1 - s
                    w0 = vbcast(wf, (k * C + c0) * R * S + tap)
                    w1 = vbcast(wf, (k * C + c1) * R * S + tap)
                    base = plane + r * dh * Wb + s * dw
                    for i in range(BAND):
                        if i < nh:
                            row = vload_masked(B, base + i * Wb, W)
                            sset(acc, i, vfma(w0, row, sget(acc, i)))
                            sset(acc, BAND + i, vfma(w1, row, sget(acc, BAND + i)))
        for i in range(BAND):
            if i < nh:
                vstore_masked(gx, ((n * C + c0) * H + h0 + i) * W, sget(acc, i), W)
                if c1 > c0:
                    vstore_masked(gx, ((n * C + c1) * H + h0 + i) * W, sget(acc, BAND + i), W)


def rows_pay(gy_shape, w_shape, out_hw, stride, groups, dtype) -> bool:
    """Whether :func:`input_rows` computes this input gradient (CPU, ``"auto"``).

    It does for ungrouped stride-1 layers whose input rows fit one vector and
    that have at most ``CPU.grad_rows_max_channels`` input channels (the
    derived convolution's output maps).
    """
    _, Cg, _, _ = w_shape
    return (groups == 1 and tuple(stride) == (1, 1) and Cg <= CPU.grad_rows_max_channels
            and 0 < out_hw[1] <= lanes(dtype) and out_hw[0] > 0 and gy_shape[0] > 0)


def input_rows(buf, w, out_hw, dilation):
    """``grad_x`` (N, C, H, W) from the zero-inserted, re-padded ``grad_y`` buffer ``buf``
    (N, K, H + (R-1)*dh, W + (S-1)*dw) and the forward kernels ``w`` (K, C, R, S)."""
    N, K, Hb, Wb = buf.shape
    _, C, R, S = w.shape
    H, W = out_hw
    dtype = np.result_type(buf.dtype, w.dtype)
    gx = np.empty((N, C, H, W), dtype=dtype)
    _rows(np.ascontiguousarray(buf, dtype=dtype).reshape(-1),
          np.ascontiguousarray(w, dtype=dtype).reshape(-1), gx.reshape(-1), K, C, R, S, Hb, Wb,
          H, W, dilation[0], dilation[1])
    return gx
