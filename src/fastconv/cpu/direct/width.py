"""The width path of :mod:`fastconv.cpu.direct`: depthwise and few-output-channel layers.

When a group has fewer output channels than a vector has lanes (depthwise
convolution, channel multipliers ``K = m * C``, LeNet's 6-map first layer),
blocking over output channels leaves lanes idle.  This kernel vectorises
along the output row instead: ``V`` consecutive outputs ``y[n, k, p, q:q+V]``
form one vector, and every kernel tap is one FMA of a broadcast weight with
a contiguous input vector.

Layout and blocking
-------------------
Horizontal strides 1 and 2 (every CNN layer) read the input straight from
NCHW ``x``: the ``V`` inputs under ``V`` consecutive outputs of tap ``s``
are one contiguous load (stride 1) or one double-width load and a permute
(stride 2, keeping the even lanes); a vector that meets the left or right
padding is a masked load whose missing lanes are zeros, and a padding row
is a zero vector.  No pass over the input is added.

Other strides pack: each work item (image, group, block of output rows)
copies the input rows it needs, zero-padded and split into horizontal
stride phases, into an L2-sized buffer ``[Cg, rows, sw, Wq]`` with
``phase[f][i] = xpad[i * sw + f]`` (the layout of
:func:`fastconv.cpu.packing.pack_input_phases`; ``Wq`` a multiple of
``V``), so the input under ``V`` consecutive outputs of tap ``s`` is
contiguous for any stride and dilation: phase ``(s * dw) % sw`` starting
at ``q + (s * dw) // sw``.  Rows are copied in whole vectors and only when
the item's first row block that needs them is reached, so the input
streams in while earlier rows compute.

The micro-kernel holds ``NKO x PR x NQV`` accumulators: ``NKO`` output
channels of one group (sharing every input load) times ``PR`` output rows
times ``NQV`` vectors of one row.  It walks the input rows of its ``PR``
output rows once, top to bottom, and multiplies each input vector into
every output row whose kernel row meets it, so one load serves up to
``R`` rows and the ``PR * NQV`` independent accumulators hide the FMA
latency.  Output is stored straight into NCHW, a row's last vector with a
masked store.  Work items run in parallel.  MobileNet's 3x3 layers
(vertical stride 1 or 2) get a build with the kernel shape and vertical
stride compiled in.

Summation order and error bound are those of :mod:`fastconv.cpu.direct`:
bias first, then input channel, kernel row, kernel column, each output
reduced by one thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ..._config import CPU, JIT, PJIT
from ..._epilogue import NONE
from .. import epilogue
from ..epilogue import finish
from ..simd import (SimdVector, lanes, sget, sload, sstore, sset, stack_ints, stack_vectors,
                    vbcast, vfma, vsplat, vstore, vstore_masked, vload)

# Register blocking of the micro-kernel (each blocking is a compiled driver): at most this
# many vector accumulators, and output rows and row vectors: 4 x 4 rather than 2 x 8
# (fewer loads per FMA, less row-tail waste).  16 on every target: with AVX2's 16
# registers a few accumulators spill per tap (benchmarks/spill_check.py), but the
# row blocking it allows -- each input vector used for up to 4 output rows -- saves
# more loads than the spills add, which 8 accumulators (one row) do not.
MAX_ACCUMULATORS = 16
MAX_ROWS = 4
MAX_VECTORS = 4


def _masked_load(context, builder, arrty, arr, idx, count, lo, hi):
    """``<count x T>`` load of lanes ``lo <= l < hi`` of ``arr[idx :]`` (``llvm.masked.load``).

    Other lanes are zero and never read, so the vector may start before or
    end after the array.
    """
    ary = context.make_array(arrty)(context, builder, arr)
    scalar = context.get_value_type(arrty.dtype)
    vt = ir.VectorType(scalar, count)
    vptr = builder.bitcast(builder.gep(ary.data, [idx]), vt.as_pointer())
    i32 = ir.IntType(32)
    lanes_ = ir.Constant(ir.VectorType(i32, count), list(range(count)))

    def splat(v):
        # Bounds are clamped to [-1, count] first, so 32-bit lanes hold them.
        lim = ir.Constant(v.type, count)
        v = builder.select(builder.icmp_signed(">", v, lim), lim, v)
        neg = ir.Constant(v.type, -1)
        v = builder.trunc(builder.select(builder.icmp_signed("<", v, neg), neg, v), i32)
        vec = ir.Constant(ir.VectorType(i32, count), ir.Undefined)
        vec = builder.insert_element(vec, v, ir.Constant(i32, 0))
        return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(i32, count),
                                                            [0] * count))

    mask = builder.and_(builder.icmp_signed(">=", lanes_, splat(lo)),
                        builder.icmp_signed("<", lanes_, splat(hi)))
    bits = arrty.dtype.bitwidth
    fnty = ir.FunctionType(vt, [vptr.type, i32, mask.type, vt])
    fn = cgutils.get_or_insert_function(builder.module, fnty,
                                        f"llvm.masked.load.v{count}f{bits}.p0")
    return builder.call(fn, [vptr, ir.Constant(i32, bits // 8), mask, ir.Constant(vt, None)])


def _is_float_array(a):
    return isinstance(a, types.Array) and isinstance(a.dtype, types.Float)


def _int_args(*args):
    return all(isinstance(a, types.Integer) for a in args)


@intrinsic
def _vload_window(typingctx, arr, idx, lo, hi):
    """Vector with lane ``l`` = ``arr[idx + l]`` for ``lo <= l < hi``, zero elsewhere."""
    if not (_is_float_array(arr) and _int_args(idx, lo, hi)):
        return None
    vty = SimdVector(arr.dtype)

    def codegen(context, builder, sig, args):
        lo64 = context.cast(builder, args[2], sig.args[2], types.int64)
        hi64 = context.cast(builder, args[3], sig.args[3], types.int64)
        return _masked_load(context, builder, sig.args[0], args[0], args[1], vty.count,
                            lo64, hi64)

    return vty(arr, idx, lo, hi), codegen


@intrinsic
def _vload_even_window(typingctx, arr, idx, lo, hi):
    """Vector with lane ``l`` = ``arr[idx + 2 l]`` for ``lo <= l < hi``, zero elsewhere.

    One masked double-width load (reading only the lanes' elements) and one
    permute: the stride-2 phase split costs a vector per ``L`` elements
    instead of ``L`` scalar copies.
    """
    if not (_is_float_array(arr) and _int_args(idx, lo, hi)):
        return None
    vty = SimdVector(arr.dtype)
    count = vty.count

    def codegen(context, builder, sig, args):
        lo64 = context.cast(builder, args[2], sig.args[2], types.int64)
        hi64 = context.cast(builder, args[3], sig.args[3], types.int64)
        one = ir.Constant(ir.IntType(64), 1)
        v = _masked_load(context, builder, sig.args[0], args[0], args[1], 2 * count,
                         builder.add(lo64, lo64), builder.sub(builder.add(hi64, hi64), one))
        mask = ir.Constant(ir.VectorType(ir.IntType(32), count), [2 * i for i in range(count)])
        return builder.shuffle_vector(v, v, mask)

    return vty(arr, idx, lo, hi), codegen


@intrinsic
def _vload_even(typingctx, arr, idx):
    """Lanes ``arr[idx + 2 l]`` (reads ``arr[idx : idx + 2 L]``: one element past the last lane)."""
    if not (_is_float_array(arr) and isinstance(idx, types.Integer)):
        return None
    vty = SimdVector(arr.dtype)
    count = vty.count

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        wide = ir.VectorType(context.get_value_type(arr.dtype), 2 * count)
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), wide.as_pointer())
        v = builder.load(ptr, align=arr.dtype.bitwidth // 8)
        mask = ir.Constant(ir.VectorType(ir.IntType(32), count), [2 * i for i in range(count)])
        return builder.shuffle_vector(v, v, mask)

    return vty(arr, idx), codegen


@numba.njit(**JIT)
def _phase_bounds(ph, sw, Wq, pl, W):
    """``ph[2 f : 2 f + 2]`` = the phase-``f`` indices ``[i0, i1)`` that hold input columns."""
    for f in range(sw):
        i0 = (pl - f + sw - 1) // sw if pl > f else 0
        i1 = (pl + W - f + sw - 1) // sw if pl + W > f else 0
        i0 = min(i0, Wq)
        ph[2 * f] = i0
        ph[2 * f + 1] = max(i0, min(i1, Wq))


@numba.njit(**JIT)
def _pack_row(xf, xl, base, src, ph, sw, Wq, pl, W, V):
    """One input row ``xf[src : src + W]`` -> ``sw`` zero-padded phases of ``Wq`` at ``xl[base]``.

    ``phase[f][i] = xpad[i * sw + f]`` (bounds ``ph`` from :func:`_phase_bounds`).
    For strides 1 and 2 (``Wq`` a multiple of ``V``) every vector of a phase
    is one load (masked at the row's ends, lanes outside the input zero)
    and one store.  Other strides copy element by element.
    """
    zero = xf.dtype.type(0)
    for f in range(sw):
        i0 = ph[2 * f]
        i1 = ph[2 * f + 1]
        o = base + f * Wq
        s0 = src + f - pl  # row element of phase index 0 (only lanes in [i0, i1) are read)
        if sw == 1:
            for i in range(0, Wq, V):
                if i >= i0 and i + V <= i1:
                    vstore(xl, o + i, vload(xf, s0 + i))
                else:
                    vstore(xl, o + i, _vload_window(xf, s0 + i, i0 - i, i1 - i))
        elif sw == 2:
            for i in range(0, Wq, V):
                # The plain double-width load also reads the element after the
                # vector's last lane: only where that is still in the row.
                if i >= i0 and i + V <= i1 and s0 + 2 * (i + V) <= src + W:
                    vstore(xl, o + i, _vload_even(xf, s0 + 2 * i))
                else:
                    vstore(xl, o + i, _vload_even_window(xf, s0 + 2 * i, i0 - i, i1 - i))
        else:
            for i in range(i0):
                sstore(xl, o + i, zero)
            for i in range(i0, i1):
                sstore(xl, o + i, sload(xf, s0 + i * sw))
            for i in range(i1, Wq):
                sstore(xl, o + i, zero)


_DRIVERS: dict = {}


def _make_width_driver(NKO: int, NQV: int, PR: int, FIX: tuple, SWC: int, EPI: bool = False):
    """Compile the width-vectorised driver for ``NKO`` channels x ``PR`` rows x ``NQV`` vectors.

    Row blocking: the micro-kernel holds the accumulators of ``PR`` output
    rows and walks the input rows they read once, top to bottom; each input
    vector loaded for tap ``s`` is multiplied into every row of the block
    whose kernel row ``r`` meets it.  For one output the terms still arrive
    in the order bias, channel, kernel row, kernel column.  Missing
    channels, rows or vectors of a short block repeat in-bounds work (rows
    past the item's last read zero rows appended to its buffer) and are
    never stored, so the hot loop has no branch on the block shape; loops
    over ``NKO``, ``PR`` and ``NQV`` have constant trip counts and are
    unrolled, their accumulators promoted to registers.
    """
    NACC = NKO * PR * NQV
    # Kernel height, width, vertical stride and dilation fixed at compile
    # time (0: read from the arguments): constant trip counts and no row
    # arithmetic on runtime values in the hot loop.
    RC, SC, SHC, DHC = FIX
    # SWC = 1 or 2: no packing; the micro-kernel loads the input straight
    # from NCHW ``x`` (horizontal stride SWC), with masked loads where a
    # vector meets the left or right padding and zero vectors for padding
    # rows.  SWC = 0: the packed-phase buffer (any stride).
    DIRECT = SWC > 0

    # The micro-kernel is written inline in the driver: a driver closing over
    # a separate micro-kernel dispatcher would get a new on-disk cache key in
    # every process (Numba keys closures by their pickled cell contents).
    @numba.njit(**PJIT)
    def driver(x, wf, bias, y, taps, G, pt, pl, sw, Wq, R_, S_, P, Q, sh_, dh_, dw, V, PB,
               rf, ep, mode):
        R = RC if RC > 0 else R_
        S = SC if SC > 0 else S_
        sh = SHC if SHC > 0 else sh_
        dh = DHC if DHC > 0 else dh_
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
        row = sw * Wq
        HB = (PR - 1) * sh + (R - 1) * dh + 1  # input rows of one row block
        zv = vsplat(0, x)
        ph = np.empty(2 * sw, dtype=np.int64)
        _phase_bounds(ph, sw, Wq, pl, W)
        for task in numba.prange(N * G * npb):
            pb = task % npb
            ng = task // npb
            g = ng % G
            n = ng // G
            p0 = pb * PB
            p1 = min(P, p0 + PB)
            h0 = p0 * sh  # first padded input row of the item
            HL = (p1 - 1 - p0) * sh + (R - 1) * dh + 1
            # Rows a short last row block reads past HL (results never stored).
            nblk = (p1 - p0 + PR - 1) // PR
            HA = max(HL, (nblk - 1) * PR * sh + HB)
            # The item's input rows, zero-padded and split into stride phases;
            # packed as the first channel block's row blocks reach them, so
            # the input streams in while the FMAs of earlier rows run.
            # V spare elements: the last row's vectors may read past its end.
            xl = np.empty(0 if DIRECT else Cg * HA * row + V, dtype=x.dtype)
            for i in range(0 if DIRECT else Cg * HA * row, xl.size):
                sstore(xl, i, zero)
            packed = HA if DIRECT else 0
            acc = stack_vectors(y, NACC)
            xv = stack_vectors(y, NQV)
            qo = stack_ints(NQV)
            ko = stack_ints(NKO)
            for kb in range(nkb):
                kbase = g * Kg + kb * NKO
                nko = min(NKO, Kg - kb * NKO)
                for i in range(NKO):
                    sset(ko, i, kbase + (i if i < nko else 0))
                for pr0 in range(p0, p1, PR):
                    npr = min(PR, p1 - pr0)
                    rl0 = (pr0 - p0) * sh
                    need = HA if pr0 + PR >= p1 else rl0 + HB
                    if need > packed:
                        for c in range(Cg):
                            for hl in range(packed, need):
                                base = (c * HA + hl) * row
                                hi = h0 + hl - pt
                                if hi < 0 or hi >= H or hl >= HL:
                                    for i in range(row):
                                        sstore(xl, base + i, zero)
                                else:
                                    _pack_row(xf, xl, base, ((n * C + g * Cg + c) * H + hi) * W,
                                              ph, sw, Wq, pl, W, V)
                        packed = need
                    for qv0 in range(0, nqt, NQV):
                        # --- micro-kernel: NKO channels x PR rows x NQV vectors
                        q0 = qv0 * V
                        nqv = min(NQV, nqt - qv0)
                        for j in range(NQV):
                            sset(qo, j, q0 + (j if j < nqv else 0) * V)
                        for i in range(NKO):
                            b = vbcast(bias, sget(ko, i))
                            for t in range(PR * NQV):
                                sset(acc, i * PR * NQV + t, b)
                        for c in range(Cg):
                            xc = (c * HA + rl0) * row
                            xn = ((n * C + g * Cg + c) * H + pr0 * sh - pt) * W
                            for hb in range(HB):
                                xr = xc + hb * row
                                hi = pr0 * sh + hb - pt  # input row (DIRECT)
                                xh = xn + hb * W
                                for s in range(S):
                                    if not DIRECT:
                                        xo = xr + taps[s]
                                        for j in range(NQV):
                                            sset(xv, j, vload(xl, xo + sget(qo, j)))
                                    elif hi < 0 or hi >= H:
                                        for j in range(NQV):
                                            sset(xv, j, zv)
                                    else:
                                        for j in range(NQV):
                                            # Input column of lane 0 for tap s.
                                            off = SWC * sget(qo, j) + s * dw - pl
                                            if SWC == 1:
                                                if off >= 0 and off + V <= W:
                                                    sset(xv, j, vload(xf, xh + off))
                                                else:
                                                    sset(xv, j, _vload_window(xf, xh + off, -off,
                                                                              W - off))
                                            else:
                                                # The plain double-width load reads 2 V elements.
                                                if off >= 0 and off + 2 * V <= W:
                                                    sset(xv, j, _vload_even(xf, xh + off))
                                                else:
                                                    sset(xv, j, _vload_even_window(
                                                        xf, xh + off, (1 - off) // 2,
                                                        (W - off + 1) // 2))
                                    for pr in range(PR):
                                        d = hb - pr * sh
                                        if d >= 0 and d < R * dh and (dh == 1 or d % dh == 0):
                                            r = d // dh if dh != 1 else d
                                            for i in range(NKO):
                                                wv = vbcast(wf, ((sget(ko, i) * Cg + c) * R + r)
                                                            * S + s)
                                                for j in range(NQV):
                                                    a = (i * PR + pr) * NQV + j
                                                    sset(acc, a, vfma(wv, sget(xv, j),
                                                                      sget(acc, a)))
                        for i in range(NKO):
                            if i < nko:
                                for pr in range(PR):
                                    if pr < npr:
                                        yo = n * K * PQ + sget(ko, i) * PQ + (pr0 + pr) * Q
                                        for j in range(NQV):
                                            if j < nqv:
                                                q = sget(qo, j)
                                                a = (i * PR + pr) * NQV + j
                                                if q + V <= Q:
                                                    vstore(yf, yo + q, sget(acc, a))
                                                else:
                                                    vstore_masked(yf, yo + q, sget(acc, a), Q - q)

            if EPI:  # the item's rows are complete (and in this core's L2): the epilogue
                for k in range(g * Kg, g * Kg + Kg):
                    yo = (n * K + k) * PQ
                    finish(yf, rf, ep, mode, yo + p0 * Q, yo + p1 * Q)

    return driver


def width_driver(NKO: int, NQV: int, PR: int, FIX: tuple = (0, 0, 0, 0), SWC: int = 0,
                 epi: bool = False):
    """The (lazily compiled, disk-cached) width-vectorised driver for one blocking.

    ``FIX`` = (R, S, sh, dh) compiled in as constants, 0 for any; ``SWC``
    the horizontal stride (1 or 2) of a driver that reads ``x`` directly,
    0 for the packed one; ``epi``: the variant that applies the fused
    epilogue (``rf, ep, mode``) to each work item's output rows once they
    are complete (the plain variant compiles none of its code).
    """
    key = (NKO, NQV, PR, FIX, SWC) + ((True,) if epi else ())
    drv = _DRIVERS.get(key)
    if drv is None:
        drv = _DRIVERS.setdefault(key, _make_width_driver(NKO, NQV, PR, FIX, SWC, epi))
    return drv


@dataclass(frozen=True)
class WidthPlan:
    """Register blocking of the width path's micro-kernel (:func:`width_plan`).

    ``NKO`` output channels of one group x ``PR`` output rows x ``NQV``
    vectors of one row: ``NKO * PR * NQV`` accumulators; each blocking is a
    compiled driver (:func:`width_driver`).
    """

    NKO: int
    NQV: int
    PR: int


def width_plan(p) -> WidthPlan:
    """Register blocking for ``p``.

    A few blockings only (each is a separate compilation): ``NKO`` in 1, 2,
    4 output channels, ``NQV`` a power of two covering the row if it can,
    then ``PR`` in 1, 2, 4 output rows, at most 16 accumulators in all.
    Row blocking gives the FMAs of a tap independent accumulators to
    overlap (FMA latency, not loads, bounds a 1 x NQV block) and reuses
    each input vector for up to ``R`` output rows.
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
    while NQV < min(nqt, MAX_VECTORS) and 2 * NQV * NKO <= MAX_ACCUMULATORS:
        NQV *= 2
    PR = 1
    while 2 * PR <= min(MAX_ROWS, p.P) and 2 * PR * NQV * NKO <= MAX_ACCUMULATORS:
        PR *= 2
    return WidthPlan(NKO, NQV, PR)


def run(x, w, bias, p, y, epi=NONE):
    """Width-vectorised direct convolution of NCHW ``x`` into NCHW ``y`` (any configuration).

    ``epi`` (NCHW residual) is applied to each work item's output rows as they are finished.
    """
    V = lanes(p.dtype)
    plan = width_plan(p)
    sw, dw = p.stride[1], p.dilation[1]
    Wp = p.W + p.padding[2] + p.padding[3]
    # Phases in whole vectors.  The lanes of a row's last vector past Q may
    # read the next phase or row (or the item buffer's V spare elements):
    # they are never stored.  Lanes below Q read only padded-row columns.
    Wq = -(-(-(-Wp // sw)) // V) * V
    taps = np.array([((s * dw) % sw) * Wq + (s * dw) // sw for s in range(p.S)], dtype=np.int64)
    b = np.zeros(p.K, dtype=p.dtype) if bias is None else bias
    PB = row_block(p, Wq, plan.PR)
    # Strides 1 and 2 read x directly (no copy of the input); others pack.
    SWC = sw if (sw <= 2 and CPU.width_direct_loads) else 0
    drv = width_driver(plan.NKO, plan.NQV, plan.PR, fixed_shape(p), SWC, epi.active)
    drv(x, w.reshape(-1), b, y, taps, p.groups, p.padding[0], p.padding[2], sw, Wq, p.R, p.S,
        p.P, p.Q, p.stride[0], p.dilation[0], dw, V, PB, *epilogue.args(epi, dtype=p.dtype))


def fixed_shape(p):
    """``(R, S, sh, dh)`` to compile in for ``p`` (MobileNet-style 3x3 layers), else zeros."""
    if (p.R, p.S, p.dilation[0]) == (3, 3, 1) and p.stride[0] in (1, 2):
        return (3, 3, p.stride[0], 1)
    return (0, 0, 0, 0)


def row_block(p, Wq, PR=1):
    """Output rows per work item (a multiple of ``PR`` below ``P``): enough items, rows in L2."""
    want = 4 * max(1, numba.get_num_threads())
    PB = max(1, min(p.P, -(-p.N * p.groups * p.P // want)))
    item = np.dtype(p.dtype).itemsize
    while PB > PR and p.Cg * ((PB - 1) * p.stride[0] + (p.R - 1) * p.dilation[0] + 1) \
            * p.stride[1] * Wq * item > CPU.row_block_bytes:
        PB = (PB + 1) // 2
    if PB < p.P:
        PB = -(-PB // PR) * PR
    return PB
