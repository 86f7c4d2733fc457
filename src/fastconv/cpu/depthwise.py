"""Width-vectorised direct convolution: depthwise and few-output-channel layers.

When a group has fewer output channels than a vector has lanes (depthwise
convolution, channel multipliers ``K = m * C``, LeNet's 6-map first layer),
blocking over output channels leaves lanes idle.  This kernel vectorises
along the output row instead: ``V`` consecutive outputs ``y[n, k, p, q:q+V]``
form one vector, and every kernel tap is one FMA of a broadcast weight with
a contiguous input vector.

Layout and blocking
-------------------
The zero-padded input is split into horizontal stride phases,
``[N, C, Hp, sw, Wq]`` with ``phase[f][i] = xpad[i * sw + f]``
(:func:`fastconv.cpu._blocked.pack_input_phases`), so the input under ``V``
consecutive outputs of tap ``s`` is contiguous for any stride and dilation:
phase ``(s * dw) % sw`` starting at ``q + (s * dw) // sw``.  The
micro-kernel holds ``NKO x NQV`` accumulators: ``NKO`` output channels of
one group (sharing every input load) times ``NQV`` vectors of one output
row.  Output is stored straight into NCHW, the row's last vector with a
masked store.  Work items are (image, channel block, output row), run in
parallel.

Summation order and error bound are those of :mod:`fastconv.cpu.direct`:
bias first, then input channel, kernel row, kernel column, each output
reduced by one thread.
"""

from __future__ import annotations

import numba
import numpy as np

from .._config import JIT, PJIT
from ._blocked import (lanes, pack_input_phases, sget, sset, stack_ints, stack_vectors,
                       vbcast, vfma, vstore, vstore_masked, vload)

MAX_ACCUMULATORS = 24

_DRIVERS: dict = {}


def _make_width_driver(NKO: int, NQV: int):
    """Compile the width-vectorised driver for ``NKO`` channels x ``NQV`` vectors.

    Missing channels or vectors of a short block repeat the block's first
    one (in-bounds work) and are never stored, so the hot loop has no
    branch; loops over ``NKO`` and ``NQV`` have constant trip counts and are
    unrolled, their accumulators promoted to registers.
    """
    NACC = NKO * NQV

    @numba.njit(**JIT)
    def micro(xq, wf, bias, y, taps, xbase, kbase, nko, q0, nqv, C, Cg, Hp, sw, Wq,
              R, S, p, sh, dh, yrow, PQ, Q, V):
        acc = stack_vectors(y, NACC)
        wv = stack_vectors(y, NKO)
        qo = stack_ints(NQV)
        ko = stack_ints(NKO)
        for j in range(NQV):
            sset(qo, j, q0 + (j if j < nqv else 0) * V)
        for i in range(NKO):
            sset(ko, i, kbase + (i if i < nko else 0))
        for i in range(NKO):
            b = vbcast(bias, sget(ko, i))
            for j in range(NQV):
                sset(acc, i * NQV + j, b)
        row = sw * Wq
        for c in range(Cg):
            xc = xbase + c * Hp * row
            for r in range(R):
                xr = xc + (p * sh + r * dh) * row
                for s in range(S):
                    xo = xr + taps[s]
                    for i in range(NKO):
                        sset(wv, i, vbcast(wf, ((sget(ko, i) * Cg + c) * R + r) * S + s))
                    for j in range(NQV):
                        xv = vload(xq, xo + sget(qo, j))
                        for i in range(NKO):
                            sset(acc, i * NQV + j, vfma(sget(wv, i), xv, sget(acc, i * NQV + j)))
        for i in range(NKO):
            if i < nko:
                yo = yrow + sget(ko, i) * PQ
                for j in range(NQV):
                    if j < nqv:
                        q = sget(qo, j)
                        if q + V <= Q:
                            vstore(y, yo + q, sget(acc, i * NQV + j))
                        else:
                            vstore_masked(y, yo + q, sget(acc, i * NQV + j), Q - q)

    @numba.njit(**PJIT)
    def driver(xq, wf, bias, y, taps, N, C, K, G, Hp, sw, Wq, R, S, P, Q, sh, dh, V):
        Cg = C // G
        Kg = K // G
        nkb = (Kg + NKO - 1) // NKO
        nqt = (Q + V - 1) // V
        PQ = P * Q
        for task in numba.prange(N * G * nkb * P):
            p = task % P
            rest = task // P
            kb = rest % nkb
            ng = rest // nkb
            g = ng % G
            n = ng // G
            kbase = g * Kg + kb * NKO
            nko = min(NKO, Kg - kb * NKO)
            xbase = (n * C + g * Cg) * Hp * sw * Wq
            yrow = n * K * PQ + p * Q
            for qv0 in range(0, nqt, NQV):
                micro(xq, wf, bias, y, taps, xbase, kbase, nko, qv0 * V, min(NQV, nqt - qv0),
                      C, Cg, Hp, sw, Wq, R, S, p, sh, dh, yrow, PQ, Q, V)

    return driver


def width_driver(NKO: int, NQV: int):
    """The (lazily compiled, disk-cached) width-vectorised driver for one register blocking."""
    key = (NKO, NQV)
    drv = _DRIVERS.get(key)
    if drv is None:
        drv = _DRIVERS.setdefault(key, _make_width_driver(NKO, NQV))
    return drv


def width_plan(p):
    """Register blocking ``(NKO, NQV)`` for ``p``."""
    V = lanes(p.dtype)
    Kg = p.Kg
    best = None
    for nko in (4, 3, 2, 1):
        fill = Kg / (-(-Kg // nko) * nko)
        if best is None or fill > best[0] + 1e-9:
            best = (fill, nko)
    NKO = best[1]
    nqt = -(-p.Q // V)
    NQV = 1
    while NQV < nqt and 2 * NQV * NKO <= MAX_ACCUMULATORS and NQV < 8:
        NQV *= 2
    return NKO, NQV


def run(x, w, bias, p, y):
    """Width-vectorised direct convolution of NCHW ``x`` into NCHW ``y`` (any configuration)."""
    V = lanes(p.dtype)
    NKO, NQV = width_plan(p)
    sw, dw = p.stride[1], p.dilation[1]
    nqt = -(-p.Q // V)
    min_cols = nqt * V + ((p.S - 1) * dw) // sw
    xq, Hp, Wq = pack_input_phases(x, p.padding, sw, min_cols)
    taps = np.array([((s * dw) % sw) * Wq + (s * dw) // sw for s in range(p.S)], dtype=np.int64)
    b = np.zeros(p.K, dtype=p.dtype) if bias is None else bias
    width_driver(NKO, NQV)(xq, w.ravel(), b, y.reshape(-1), taps, p.N, p.C, p.K, p.groups,
                           Hp, sw, Wq, p.R, p.S, p.P, p.Q, p.stride[0], p.dilation[0], V)
