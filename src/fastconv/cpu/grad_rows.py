"""The input gradient of layers with narrow maps and few input channels, a row per vector.

:mod:`fastconv.grad` computes the input gradient as a convolution of
``grad_y`` (zero-inserted and re-padded into a buffer ``B`` of
``H + (R-1)*dh`` rows of ``W + (S-1)*dw``) with the flipped kernels, whose
output channels are the layer's *input* channels.  A layer with few input
channels (LeNet-5's C3: 6) gives that convolution a few output maps, too
few for the forward kernels, which vectorise over output channels or keep
several of them in registers; and a map at most one vector wide (14 pixels
in C3) leaves the pixel-vectorised kernels most of a vector empty on the
last column block.  Here every output row is one vector (two for maps up to
two vectors wide: C3 on AVX2's 8 lanes):

    ``gx[n, c, h, :W] = sum_{k, r, s} w[k, c, R-1-r, S-1-s] * B[n, k, h + r*dh, s*dw : s*dw + W]``,

one job per image, pair of input channels and band of rows, the band's
rows of both channels in vector accumulators (:data:`BAND` rows of one
vector per channel, half as many of two), each load of ``B`` meeting a
broadcast weight of each channel (a row's last vector masked to its ``W``
lanes: lanes past ``W`` are not read, so nothing beyond a row enters a
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
from .simd import (ACCUMULATORS, REGISTERS, VECTOR_BYTES, lanes, sget, sset, stack_vectors,
                   vbcast, vfma, vload, vload_masked, vsplat, vstore, vstore_masked)

#: Input channels per job: every loaded row of ``B`` meets the weights of both.
PAIR = 2
#: Output rows per job and channel of one vector each, all in vector accumulators; the
#: other registers hold the two broadcast weights, the loaded row and its lane mask: 11
#: rows with AVX-512's 32 registers, 4 with AVX2's 16 (5 spills two values;
#: ``benchmarks/spill_check.py``).  Rows of two vectors take half as many.
BAND = (ACCUMULATORS - 2) // PAIR if REGISTERS >= 32 else (ACCUMULATORS - 4) // PAIR
#: Most vectors per output row (the kernel has a body for one and for two).
MAX_VECTORS = 2


def _make_rows(NV: int):
    """The kernel for output rows of ``NV`` vectors (a closure constant): ``BAND // NV`` rows
    per job and channel, the last vector of a row masked to the row's end."""
    band = max(1, BAND // NV)
    nacc = PAIR * band * NV  # a literal for stack_vectors

    @numba.njit(**PJIT)
    def rows(B, wf, gx, K, C, R, S, Hb, Wb, H, W, dh, dw):
        # gx[n, c, h, :W] = sum_{k, r, s} wf[((k*C + c)*R + R-1-r)*S + S-1-s] * B[n, k,
        # h + r*dh, s*dw : s*dw + W]; B is [N, K, Hb, Wb] flat, gx [N, C, H, W] flat.  One
        # job per (n, pair of channels c0, c0 + 1, band of rows); a lone last channel
        # computes c0 twice and stores it once.  Accumulator (channel j, row i, vector v)
        # is (j * band + i) * NV + v.
        N = gx.size // (C * H * W)
        L = VECTOR_BYTES // gx.itemsize
        tail = W - (NV - 1) * L  # lanes of a row's last vector
        nband = (H + band - 1) // band
        npair = (C + PAIR - 1) // PAIR
        for job in numba.prange(N * npair * nband):
            np_, bnd = job // nband, job % nband
            n, c0 = np_ // npair, (np_ % npair) * PAIR
            c1 = min(c0 + 1, C - 1)
            h0 = bnd * band
            nh = min(band, H - h0)
            acc = stack_vectors(B, nacc)
            zero = vsplat(0, B)
            for i in range(nacc):
                sset(acc, i, zero)
            for k in range(K):
                plane = ((n * K + k) * Hb + h0) * Wb
                for r in range(R):
                    for s in range(S):
                        tap = (R - 1 - r) * S + S - 1 - s
                        w0 = vbcast(wf, (k * C + c0) * R * S + tap)
                        w1 = vbcast(wf, (k * C + c1) * R * S + tap)
                        base = plane + r * dh * Wb + s * dw
                        # NV is a closure constant: Numba keeps one of the two bodies, and
                        # the band loop has no inner loop left for LLVM to weigh before it
                        # unrolls it (the accumulators must stay in registers).
                        for i in range(band):
                            if i < nh:
                                if NV == 1:
                                    row = vload_masked(B, base + i * Wb, tail)
                                    sset(acc, i, vfma(w0, row, sget(acc, i)))
                                    sset(acc, band + i, vfma(w1, row, sget(acc, band + i)))
                                else:
                                    row = vload(B, base + i * Wb)
                                    rest = vload_masked(B, base + i * Wb + L, tail)
                                    a, b = 2 * i, 2 * (band + i)
                                    sset(acc, a, vfma(w0, row, sget(acc, a)))
                                    sset(acc, a + 1, vfma(w0, rest, sget(acc, a + 1)))
                                    sset(acc, b, vfma(w1, row, sget(acc, b)))
                                    sset(acc, b + 1, vfma(w1, rest, sget(acc, b + 1)))
            for i in range(band):
                if i < nh:
                    o0 = ((n * C + c0) * H + h0 + i) * W
                    o1 = ((n * C + c1) * H + h0 + i) * W
                    if NV == 1:
                        vstore_masked(gx, o0, sget(acc, i), tail)
                        if c1 > c0:
                            vstore_masked(gx, o1, sget(acc, band + i), tail)
                    else:
                        a, b = 2 * i, 2 * (band + i)
                        vstore(gx, o0, sget(acc, a))
                        vstore_masked(gx, o0 + L, sget(acc, a + 1), tail)
                        if c1 > c0:
                            vstore(gx, o1, sget(acc, b))
                            vstore_masked(gx, o1 + L, sget(acc, b + 1), tail)

    return rows


#: The kernels by vectors per row.
_ROWS = {nv: _make_rows(nv) for nv in range(1, MAX_VECTORS + 1)}


def rows_pay(gy_shape, w_shape, out_hw, stride, groups, dtype) -> bool:
    """Whether :func:`input_rows` computes this input gradient (CPU, ``"auto"``).

    It does for ungrouped stride-1 layers whose input rows fit ``MAX_VECTORS``
    vectors and that have at most ``CPU.grad_rows_max_channels`` input
    channels (the derived convolution's output maps).
    """
    _, Cg, _, _ = w_shape
    return (groups == 1 and tuple(stride) == (1, 1) and Cg <= CPU.grad_rows_max_channels
            and 0 < out_hw[1] <= MAX_VECTORS * lanes(dtype) and out_hw[0] > 0
            and gy_shape[0] > 0)


def input_rows(buf, w, out_hw, dilation):
    """``grad_x`` (N, C, H, W) from the zero-inserted, re-padded ``grad_y`` buffer ``buf``
    (N, K, H + (R-1)*dh, W + (S-1)*dw) and the forward kernels ``w`` (K, C, R, S)."""
    N, K, Hb, Wb = buf.shape
    _, C, R, S = w.shape
    H, W = out_hw
    dtype = np.result_type(buf.dtype, w.dtype)
    gx = np.empty((N, C, H, W), dtype=dtype)
    _ROWS[-(-W // lanes(dtype))](np.ascontiguousarray(buf, dtype=dtype).reshape(-1),
          np.ascontiguousarray(w, dtype=dtype).reshape(-1), gx.reshape(-1), K, C, R, S, Hb, Wb,
          H, W, dilation[0], dilation[1])
    return gx
