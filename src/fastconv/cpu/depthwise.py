"""Width-vectorised direct convolution: depthwise and few-output-channel layers.

When a group has fewer output channels than a vector has lanes (depthwise
convolution, channel multipliers ``K = m * C``, LeNet's 6-map first layer),
blocking over output channels leaves lanes idle.  This kernel vectorises
along the output row instead: ``V`` consecutive outputs ``y[n, k, p, q:q+V]``
form one vector, and every kernel tap is one FMA of a broadcast weight with
a contiguous input vector.

Layout and blocking
-------------------
Each work item (image, group, block of output rows) copies the input rows
it needs, zero-padded and split into horizontal stride phases, into an
L2-sized buffer ``[Cg, rows, sw, Wq]`` with ``phase[f][i] = xpad[i * sw + f]``
(the layout of :func:`fastconv.cpu._blocked.pack_input_phases`), so the
input under ``V`` consecutive outputs of tap ``s`` is contiguous for any
stride and dilation:
phase ``(s * dw) % sw`` starting at ``q + (s * dw) // sw``.  The
micro-kernel holds ``NKO x NQV`` accumulators: ``NKO`` output channels of
one group (sharing every input load) times ``NQV`` vectors of one output
row.  Output is stored straight into NCHW, the row's last vector with a
masked store.  Work items run in parallel; all output channels of the
item's group are computed from its buffer.

Summation order and error bound are those of :mod:`fastconv.cpu.direct`:
bias first, then input channel, kernel row, kernel column, each output
reduced by one thread.
"""

from __future__ import annotations

import numba
import numpy as np

from .._config import PJIT
from ._blocked import (lanes, sget, sload, sstore, sset, stack_ints, stack_vectors,
                       vbcast, vfma, vstore, vstore_masked, vload)

MAX_ACCUMULATORS = 16

_DRIVERS: dict = {}


def _make_width_driver(NKO: int, NQV: int):
    """Compile the width-vectorised driver for ``NKO`` channels x ``NQV`` vectors.

    Missing channels or vectors of a short block repeat the block's first
    one (in-bounds work) and are never stored, so the hot loop has no
    branch; loops over ``NKO`` and ``NQV`` have constant trip counts and are
    unrolled, their accumulators promoted to registers.
    """
    NACC = NKO * NQV

    # The micro-kernel is written inline in the driver: a driver closing over
    # a separate micro-kernel dispatcher would get a new on-disk cache key in
    # every process (Numba keys closures by their pickled cell contents).
    @numba.njit(**PJIT)
    def driver(x, wf, bias, y, taps, G, pt, pl, sw, Wq, R, S, P, Q, sh, dh, V, PB):
        N, C, H, W = x.shape
        K = y.size // max(1, N * P * Q)
        Cg = C // G
        Kg = K // G
        nkb = (Kg + NKO - 1) // NKO
        nqt = (Q + V - 1) // V
        PQ = P * Q
        npb = (P + PB - 1) // PB
        yf = y.reshape(-1)
        xf = x.reshape(-1)
        zero = x.dtype.type(0)
        for task in numba.prange(N * G * npb):
            pb = task % npb
            ng = task // npb
            g = ng % G
            n = ng // G
            p0 = pb * PB
            p1 = min(P, p0 + PB)
            h0 = p0 * sh  # first padded input row of the block
            HL = (p1 - 1 - p0) * sh + (R - 1) * dh + 1
            # The block's input rows, zero-padded and split into stride phases.
            xl = np.empty(Cg * HL * sw * Wq, dtype=x.dtype)
            for c in range(Cg):
                for hl in range(HL):
                    base = (c * HL + hl) * sw * Wq
                    hi = h0 + hl - pt
                    if hi < 0 or hi >= H:
                        for i in range(sw * Wq):
                            sstore(xl, base + i, zero)
                        continue
                    # Raw loads and stores: Numba's indexing of a signed index
                    # checks for wraparound, which turns a copy into gathers
                    # and scatters.
                    for f in range(sw):
                        i0 = (pl - f + sw - 1) // sw if pl > f else 0
                        i1 = (pl + W - f + sw - 1) // sw if pl + W > f else 0
                        i0 = min(i0, Wq)
                        i1 = max(i0, min(i1, Wq))
                        o = base + f * Wq
                        src = ((n * C + g * Cg + c) * H + hi) * W + f - pl
                        for i in range(i0):
                            sstore(xl, o + i, zero)
                        if sw == 1:
                            for i in range(i0, i1):
                                sstore(xl, o + i, sload(xf, src + i))
                        elif sw == 2:  # a constant stride LLVM vectorises with shuffles
                            for i in range(i0, i1):
                                sstore(xl, o + i, sload(xf, src + 2 * i))
                        else:
                            for i in range(i0, i1):
                                sstore(xl, o + i, sload(xf, src + i * sw))
                        for i in range(i1, Wq):
                            sstore(xl, o + i, zero)
            acc = stack_vectors(y, NACC)
            wv = stack_vectors(y, NKO)
            qo = stack_ints(NQV)
            ko = stack_ints(NKO)
            row = sw * Wq
            for kb in range(nkb):
                kbase = g * Kg + kb * NKO
                nko = min(NKO, Kg - kb * NKO)
                for p in range(p0, p1):
                    yrow = n * K * PQ + p * Q
                    rl = (p - p0) * sh
                    for qv0 in range(0, nqt, NQV):
                        # --- micro-kernel: NKO channels x NQV vectors of row p
                        q0 = qv0 * V
                        nqv = min(NQV, nqt - qv0)
                        for j in range(NQV):
                            sset(qo, j, q0 + (j if j < nqv else 0) * V)
                        for i in range(NKO):
                            sset(ko, i, kbase + (i if i < nko else 0))
                        for i in range(NKO):
                            b = vbcast(bias, sget(ko, i))
                            for j in range(NQV):
                                sset(acc, i * NQV + j, b)
                        for c in range(Cg):
                            xc = c * HL * row
                            for r in range(R):
                                xr = xc + (rl + r * dh) * row
                                for s in range(S):
                                    xo = xr + taps[s]
                                    for i in range(NKO):
                                        sset(wv, i, vbcast(wf, ((sget(ko, i) * Cg + c) * R + r) * S + s))
                                    for j in range(NQV):
                                        xv = vload(xl, xo + sget(qo, j))
                                        for i in range(NKO):
                                            sset(acc, i * NQV + j,
                                                 vfma(sget(wv, i), xv, sget(acc, i * NQV + j)))
                        for i in range(NKO):
                            if i < nko:
                                yo = yrow + sget(ko, i) * PQ
                                for j in range(NQV):
                                    if j < nqv:
                                        q = sget(qo, j)
                                        if q + V <= Q:
                                            vstore(yf, yo + q, sget(acc, i * NQV + j))
                                        else:
                                            vstore_masked(yf, yo + q, sget(acc, i * NQV + j), Q - q)

    return driver


def width_driver(NKO: int, NQV: int):
    """The (lazily compiled, disk-cached) width-vectorised driver for one register blocking."""
    key = (NKO, NQV)
    drv = _DRIVERS.get(key)
    if drv is None:
        drv = _DRIVERS.setdefault(key, _make_width_driver(NKO, NQV))
    return drv


def width_plan(p):
    """Register blocking ``(NKO, NQV)`` for ``p``.

    A few blockings only (each is a separate compilation): ``NKO`` in 1, 2,
    4 output channels, ``NQV`` a power of two covering the row if it can,
    at most 16 accumulators - the loads of the width path (one input vector
    per ``NKO`` FMAs), not the register count, bound its speed.
    """
    V = lanes(p.dtype)
    Kg = p.Kg
    best = None
    for nko in (4, 2, 1):
        fill = Kg / (-(-Kg // nko) * nko)
        if best is None or fill > best[0] + 1e-9:
            best = (fill, nko)
    NKO = best[1]
    nqt = -(-p.Q // V)
    NQV = 1
    while NQV < nqt and 2 * NQV * NKO <= MAX_ACCUMULATORS:
        NQV *= 2
    return NKO, NQV


def run(x, w, bias, p, y):
    """Width-vectorised direct convolution of NCHW ``x`` into NCHW ``y`` (any configuration)."""
    V = lanes(p.dtype)
    NKO, NQV = width_plan(p)
    sw, dw = p.stride[1], p.dilation[1]
    Wp = p.W + p.padding[2] + p.padding[3]
    nqt = -(-p.Q // V)
    # Vector loads may run up to a vector past the last output: zero columns.
    Wq = max(-(-Wp // sw), nqt * V + ((p.S - 1) * dw) // sw)
    taps = np.array([((s * dw) % sw) * Wq + (s * dw) // sw for s in range(p.S)], dtype=np.int64)
    b = np.zeros(p.K, dtype=p.dtype) if bias is None else bias
    PB = row_block(p, Wq)
    width_driver(NKO, NQV)(x, w.reshape(-1), b, y, taps, p.groups, p.padding[0], p.padding[2],
                           sw, Wq, p.R, p.S, p.P, p.Q, p.stride[0], p.dilation[0], V, PB)


# Bytes of one work item's packed input rows (kept in L2).
ROW_BLOCK_BYTES = 256 * 1024


def row_block(p, Wq):
    """Output rows per work item: enough items for the threads, input rows within L2."""
    want = 4 * max(1, numba.get_num_threads())
    PB = max(1, min(p.P, -(-p.N * p.groups * p.P // want)))
    item = np.dtype(p.dtype).itemsize
    while PB > 1 and p.Cg * ((PB - 1) * p.stride[0] + (p.R - 1) * p.dilation[0] + 1) \
            * p.stride[1] * Wq * item > ROW_BLOCK_BYTES:
        PB = (PB + 1) // 2
    return PB
