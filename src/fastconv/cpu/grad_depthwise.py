"""The weight gradient as one vectorised reduction per pair of input and output maps.

For ``groups == C == K`` (one input and one output map per group)
:mod:`fastconv.grad`'s derived convolution has one input map and one
``P x Q`` kernel per channel and a ``R x S`` output: a shape no forward
kernel is blocked for; so has a layer of a few maps in all (a first layer on
one input channel, LeNet-5's C1 with 6 pairs).  Here each tap's gradient of
a pair ``(k, c)`` is a dot product over the images and output pixels,

    ``grad_w[k, c', r, s] = sum_{n, p, q} gy[n, k, p, q] * xpad[n, c, p*sh + r*dh, q*sw + s*dw]``,

(``c`` the ``c'``-th input map of ``k``'s group), computed with vectors
along ``q``: ``x`` is first padded and split into its ``sw`` column phases
(:func:`fastconv.cpu.packing.pack_input_phases`), so the ``x`` values under
consecutive ``q`` are consecutive for any stride and dilation.  One parallel
job per pair keeps up to ``TAPS`` taps in vector accumulators (a 3x3
kernel's nine in one pass), streams the pair's ``gy`` map once per pass and
loads one ``x`` vector per tap and ``gy`` vector; the ragged end of a row is
read with masked loads (lanes past ``Q`` read nothing and stay zero, so an inf or NaN
outside the window never enters a sum).

Summation order and error bound: each tap sums its ``n = N*P*Q`` products
lane-wise in ``(n, p, q)`` order with one rounding per fused multiply-add,
then the ``L`` lanes in lane order; the order depends on the shapes
only, never on the thread count, and ``|g - g_exact| <= gamma_n * sum |gy| |x|``
with ``gamma_n = n u / (1 - n u)`` (Higham, *Accuracy and Stability of
Numerical Algorithms*, sec. 3.1).  ``tests/test_grad.py`` holds it.
"""

from __future__ import annotations

import numba
import numpy as np

from .._config import CPU, PJIT
from .packing import pack_input_phases
from .simd import (ACCUMULATORS, lanes, sget, sset, stack_ints, stack_vectors, vfma, vload,
                   vload_masked, vsplat, vstore)

#: Taps kept in vector accumulators per pass over a channel's ``gy`` (larger
#: kernels take several passes of equal size).  Each step over ``q`` loads one
#: ``gy`` vector and one ``x`` vector per tap at a run-time offset; beyond 12 taps
#: LLVM spills accumulators in that loop on AVX-512, and AVX2 leaves room for 10
#: (``benchmarks/spill_check.py`` counts).  A 3x3 kernel's nine fit either.
TAPS = min(12, ACCUMULATORS - 2)


@numba.njit(**PJIT)
def _pair_weight(xq, gy, gw, part, N, C, K, Cg, P, Q, R, S, Hp, Wq, sh, sw, dh, dw, L):
    # gw[(k*Cg + cg)*R*S + t] for tap t = r*S + s of output map k and input map cg of its
    # group (input channel c = (k // Kg)*Cg + cg): the sum of the L lanes of its
    # accumulator, stored to part[((k*Cg + cg)*R*S + t)*L + l] and added in lane order.
    # xq is [N, C, Hp, sw, Wq] (padded rows; column j of a padded row at j % sw, j // sw);
    # gy is [N, K, P, Q].
    Kg = K // (C // Cg)
    nfull, tail = Q // L, Q % L
    RS = R * S
    npass = (RS + TAPS - 1) // TAPS
    per = (RS + npass - 1) // npass
    zero = vsplat(0, xq)
    row = sw * Wq
    for job in numba.prange(K * Cg * npass):
        pair, t0 = job // npass, (job % npass) * per
        k, cg = pair // Cg, pair % Cg
        c = (k // Kg) * Cg + cg
        nt = min(per, RS - t0)
        acc = stack_vectors(xq, TAPS)
        offs = stack_ints(TAPS)
        for t in range(TAPS):
            sset(acc, t, zero)
            if t < nt:
                r, s = (t0 + t) // S, (t0 + t) % S
                j = s * dw
                sset(offs, t, r * dh * row + (j % sw) * Wq + j // sw)
        for n in range(N):
            gbase = (n * K + k) * P * Q
            xbase = (n * C + c) * Hp * row
            for p in range(P):
                g0 = gbase + p * Q
                x0 = xbase + p * sh * row
                for qv in range(nfull):
                    gv = vload(gy, g0 + qv * L)
                    for t in range(TAPS):
                        if t < nt:
                            xv = vload(xq, x0 + sget(offs, t) + qv * L)
                            sset(acc, t, vfma(gv, xv, sget(acc, t)))
                if tail:
                    gv = vload_masked(gy, g0 + nfull * L, tail)
                    for t in range(TAPS):
                        if t < nt:
                            xv = vload_masked(xq, x0 + sget(offs, t) + nfull * L, tail)
                            sset(acc, t, vfma(gv, xv, sget(acc, t)))
        for t in range(TAPS):
            if t < nt:
                vstore(part, (pair * RS + t0 + t) * L, sget(acc, t))
        for t in range(nt):
            i = pair * RS + t0 + t
            total = part[i * L]
            for l in range(1, L):
                total += part[i * L + l]
            gw[i] = total


def pays(x_shape, gy_shape, RS, groups) -> bool:
    """Whether :func:`depthwise_weight` computes this weight gradient.

    It applies to depthwise layers (one map in and out per group).  With one
    image and a kernel of more than ``TAPS`` taps :mod:`fastconv.grad`'s derived
    convolution is left to do it: that is the forward depthwise kernel with the
    groups in vector lanes and ``gy``'s map as a kernel, which streams each map once,
    where this reduction takes one pass over ``gy`` per ``TAPS`` taps.

    It also applies to layers of at most ``CPU.grad_pairs_max`` pairs of input
    and output maps (a first layer on one input channel, LeNet-5's C1): each
    pair is one job, too few pairs for a GEMM or the derived convolution to
    keep their register blocks full.
    """
    N, C = x_shape[0], x_shape[1]
    if N == 0:
        return False
    if groups == C == gy_shape[1]:
        return N > 1 or RS[0] * RS[1] <= TAPS
    return gy_shape[1] * (C // groups) <= CPU.grad_pairs_max


def depthwise_weight(x, gy, RS, pads, stride, dilation, groups=None):
    """``grad_w`` (K, C/groups, R, S) as one reduction per pair of maps; x (N, C, H, W),
    gy (N, K, P, Q); ``groups`` defaults to ``C`` (depthwise).

    ``pads`` are the forward call's ``(top, bottom, left, right)``; only the
    padded rows and columns the forward call read take part.
    """
    N, C, H, W = x.shape
    _, K, P, Q = gy.shape
    Cg = C // (C if groups is None else groups)
    R, S = RS
    (sh, sw), (dh, dw) = stride, dilation
    dtype = np.result_type(x.dtype, gy.dtype)
    L = lanes(dtype)
    gw = np.zeros((K, Cg, R, S), dtype=dtype)
    if P == 0 or Q == 0:
        return gw
    # The padded input, cut to the rows and columns the forward call read.
    need_h, need_w = (P - 1) * sh + (R - 1) * dh + 1, (Q - 1) * sw + (S - 1) * dw + 1
    pt, _, pl, _ = pads
    rows, cols = max(0, min(H, need_h - pt)), max(0, min(W, need_w - pl))
    if rows == 0 or cols == 0:
        return gw
    top, left = min(pt, need_h), min(pl, need_w)
    xc = np.ascontiguousarray(x[:, :, :rows, :cols], dtype=dtype)
    xq, Hp, Wq = pack_input_phases(xc, (top, need_h - top - rows, left, need_w - left - cols),
                                   sw, 0)
    part = np.empty(K * Cg * R * S * L, dtype=dtype)
    _pair_weight(xq, np.ascontiguousarray(gy, dtype=dtype).reshape(-1), gw.reshape(-1), part,
                 N, C, K, Cg, P, Q, R, S, Hp, Wq, sh, sw, dh, dw, L)
    return gw
