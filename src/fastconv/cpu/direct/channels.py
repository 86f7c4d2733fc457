"""The channels path of :mod:`fastconv.cpu.direct`: one input channel per group, over channels.

Depthwise convolution and its channel multipliers (``Cg = C / groups = 1``,
``K = Kg * groups``) reduce over ``R * S`` taps of a single input channel.
The width path vectorises such layers along the output row, which leaves
most lanes idle on small maps (a 5-wide row fills 5 of 16); the blocked
path vectorises over the output channels of one group (1 of 16 lanes for
depthwise).  This path, oneDNN's layout for depthwise convolution, puts
``V`` groups side by side in a vector instead: lane ``l`` of channel block
``cb`` is group ``g = cb * V + l``, so a vector is full whenever there are
``V`` groups, however small the map.

Layout and blocking
-------------------
Work items are (image, channel block, tile of output pixels).  Each item
first packs the padded input rows its tile reads into a per-thread buffer
``[rows, Wp, V]`` (zero-padded spatially; lane ``l`` is channel ``cb * V +
l``, zero past the last channel), so the ``V`` groups' inputs at one padded
pixel are one contiguous vector (oneDNN's ``nChw16c`` layout, built per
item: no pass over the whole input, and no batch-sized workspace).  The
input pixels of those rows, contiguous in NCHW, go ``V`` at a time through
a ``V x V`` register transpose.  Each group's ``Kg`` output channels share
that packing: the weights are packed to ``[Kg, CB, R, S, V]`` (lane ``l``
of block ``(j, cb)`` holds the kernel of output channel ``(cb * V + l) * Kg
+ j``; zeros past the last group) and the bias to ``[Kg, CB * V]`` the same
way, and the item runs the multipliers ``j`` one after the other on its
packed rows.

The pixels of an image are taken in row-major order through ``P*Q``, so a
tile may span rows and a small map fills whole register blocks.  The
micro-kernel holds ``NPX`` vector accumulators, one per output pixel; per
tap it loads one weight vector and issues ``NPX`` FMAs, each with the
input vector under one pixel (a memory operand), so any stride, dilation
and padding costs nothing extra: the pixel's input offset is ``p * sh *
Wp + q * sw`` and the tap's ``r * dh * Wp + s * dw`` (times ``V``).  A
short last block repeats its first pixel (in bounds, never stored), so the
hot loop has no branch.  Accumulators go to a per-thread tile buffer
``[tile, V]`` and the item writes its NCHW rows from it by ``V x V``
register transposes (:func:`fastconv.cpu.packing.unpack_block`, lane
stride ``Kg * P * Q``): no separate output pass.

That loop issues one load per multiply-add, so the load ports, not the FMA
units, bound it.  Where the kernel rows are ``S`` taps wide with unit
horizontal stride and dilation, and ``NPX`` accumulators plus a window of
``NPX + S - 1`` vectors fit the target's registers (:func:`window_width`:
up to 16 taps with AVX-512's 32 registers, none with AVX2's 16), blocks
end with their output row (on rows shorter than ``NPX`` pixels, one block
per row) and a block loads that window once per kernel row, each vector
serving up to ``S`` multiply-adds.  The products and their order per
output are the same, so the results are bitwise those of the loop above.

Summation order and error bound are those of :mod:`fastconv.cpu.direct`:
bias first, then kernel row, kernel column, each output reduced by one
thread, so results do not depend on the thread count.  Padding zeros are
real zeros that get multiplied; the zero lanes past the last group are
never stored.
"""

from __future__ import annotations

import numba
import numpy as np

from ... import _weight_cache
from ..._config import JIT, PJIT
from ..._epilogue import NONE
from .. import _scratch, epilogue
from ..epilogue import finish_rows
from ..packing import unpack_block
from ..simd import (ACCUMULATORS, REGISTERS, lanes, sget, sload, sset, sstore, stack_ints,
                    stack_vectors, vfma, vload, vload_masked, vsplat, vstore, vtranspose)

# Output pixels per register block: one accumulator each.  Enough independent FMAs to cover
# the FMA latency on both targets (a third of AVX-512's accumulators, two thirds of AVX2's),
# and short, so the last block of a small map wastes few slots.
NPX = min(8, ACCUMULATORS)
# Most bytes of one work item's output tile [tile, V]: it stays in the core's cache until
# it is unpacked.  (Larger tiles pack fewer input rows twice at tile edges.)
MAX_TILE_BYTES = 32 * 1024

_DRIVERS: dict = {}


@numba.njit(**JIT)
def _pack_rows(xf, xl, tmp, n, cb, C, H, W, Wp, pt, pl, prow0, nrows, V):
    """Padded rows ``prow0 .. prow0 + nrows - 1`` of channel block ``cb`` of image ``n`` -> ``xl``.

    ``xl[(hl * Wp + w) * V + l]`` = padded input of channel ``cb * V + l`` at
    padded row ``prow0 + hl``, column ``w`` (zero in the padding and past the
    last channel).  The input pixels, flattened over the rows (contiguous in
    NCHW), go ``V`` at a time through a ``V x V`` register transpose into
    ``tmp`` and from there to their padded places as whole vectors.  The last
    block of channels transposes the last ``V`` channels instead and shifts
    them into place with a masked load.
    """
    zero = xf.dtype.type(0)
    zv = vsplat(0, xf)
    HW = H * W
    for hl in range(nrows):
        hi = prow0 + hl - pt
        base = hl * Wp * V
        if hi < 0 or hi >= H:
            for u in range(Wp):
                vstore(xl, base + u * V, zv)
        else:
            for u in range(pl):
                vstore(xl, base + u * V, zv)
            for u in range(pl + W, Wp):
                vstore(xl, base + u * V, zv)
    h0 = max(0, prow0 - pt)
    h1 = min(H, prow0 + nrows - pt)
    if h1 <= h0:
        return
    vmax = min(V, C - cb * V)
    c0 = cb * V if vmax == V else C - V  # first channel transposed
    shift = V - vmax
    t0 = h0 * W
    t1 = h1 * W
    if C >= V and t1 - t0 >= V:
        src = (n * C + c0) * HW
        t = t0
        while t < t1:
            t = min(t, t1 - V)  # the last V pixels overlap the previous ones
            vtranspose(xf, src + t, HW, tmp, 0, V)
            h = t // W
            w = t - h * W
            for i in range(V):
                d = ((h + pt - prow0) * Wp + w + pl) * V
                if shift == 0:
                    vstore(xl, d, vload(tmp, i * V))
                else:
                    vstore(xl, d, vload_masked(tmp, i * V + shift, vmax))
                w += 1
                if w == W:
                    w = 0
                    h += 1
            t += V
    else:
        for t in range(t0, t1):
            h = t // W
            w = t - h * W
            d = ((h + pt - prow0) * Wp + w + pl) * V
            for lane in range(vmax):
                sstore(xl, d + lane, sload(xf, (n * C + cb * V + lane) * HW + t))
            for lane in range(vmax, V):
                sstore(xl, d + lane, zero)


def _make_channels_driver(NPX: int, SR: int = 0, EPI: bool = False):
    """Compile the channel-vectorised driver with ``NPX`` pixel accumulators.

    ``EPI``: the variant that applies the fused epilogue (``rf, ep, mode``) to each
    tile right after its store (a compile-time constant: the plain variant
    compiles none of its code).

    The accumulator and offset arrays live on the stack and are indexed only
    inside loops of constant trip count, which LLVM unrolls and promotes to
    registers.

    ``SR > 0``: kernels ``SR`` taps wide with unit horizontal stride and
    dilation (:func:`window_width`).  Blocks of up to ``NPX`` pixels then end
    with their output row, and a block reads, per kernel row, one window of
    ``NPX + SR - 1`` adjacent input vectors, each loaded once into a register
    and used by up to ``SR`` multiply-adds (the generic loop loads the input under every pixel and
    tap: one load per multiply-add, which bounds it by the load ports, not
    the FMA units).  Same products in the same order per output, so the
    same results bitwise.
    """
    WIN = NPX + SR - 1 if SR > 0 else 1

    @numba.njit(**PJIT)
    def driver(xf, wb, bb, yf, xt, yt, N, C, Kg, H, W, pt, pl, Wp, R, S, P, Q, sh, sw, dh, dw,
               ntiles, tile_px, V, rf, ep, mode):
        # The item's packed rows: xl[(hl * Wp + w) * V + l], padded row prow0 + hl of
        # channel block cb; xf and yf are the NCHW input and output, flat.
        PQ = P * Q
        K = C * Kg
        CB = (C + V - 1) // V
        xrow = Wp * V
        RS = R * S
        for task in numba.prange(N * CB * ntiles):
            tile = task % ntiles
            rest = task // ntiles
            cb = rest % CB
            n = rest // CB
            t_begin = tile * tile_px
            t_end = min(PQ, t_begin + tile_px)
            if t_begin >= t_end:
                continue
            tid = numba.get_thread_id()
            xl = xt[tid]
            yl = yt[tid]
            prow0 = (t_begin // Q) * sh
            nrows = ((t_end - 1) // Q) * sh + (R - 1) * dh + 1 - prow0
            _pack_rows(xf, xl, yl, n, cb, C, H, W, Wp, pt, pl, prow0, nrows, V)
            acc = stack_vectors(yt, NPX)
            xw = stack_vectors(yt, WIN)
            offs = stack_ints(NPX)
            for j in range(Kg):
                wbase = (j * CB + cb) * RS * V
                b = vload(bb, (j * CB + cb) * V)
                t0 = t_begin
                while t0 < t_end:
                    # --- micro-kernel: NPX pixels x V channels
                    p = t0 // Q
                    q = t0 - p * Q
                    npx = min(NPX, t_end - t0)
                    if SR > 0:
                        npx = min(npx, Q - q)  # blocks end with their output row
                    for i in range(NPX):
                        if i < npx:
                            sset(offs, i, (p * sh - prow0) * xrow + q * sw * V)
                        else:
                            sset(offs, i, sget(offs, 0))
                        q += 1
                        if q == Q:
                            q = 0
                            p += 1
                    for i in range(NPX):
                        sset(acc, i, b)
                    if SR > 0:
                        # one output row: the window of each kernel row in registers (the
                        # accumulators past npx read past the row's end, into the next
                        # packed row or the buffer's slack, and are never stored)
                        for r in range(R):
                            xo = r * dh * xrow + sget(offs, 0)
                            for u in range(WIN):
                                sset(xw, u, vload(xl, xo + u * V))
                            for s in range(SR):
                                wv = vload(wb, wbase + (r * SR + s) * V)
                                for i in range(NPX):
                                    sset(acc, i, vfma(sget(xw, i + s), wv, sget(acc, i)))
                    else:
                        for r in range(R):
                            for s in range(S):
                                wv = vload(wb, wbase + (r * S + s) * V)
                                xo = r * dh * xrow + s * dw * V
                                for i in range(NPX):
                                    sset(acc, i, vfma(vload(xl, xo + sget(offs, i)), wv,
                                                      sget(acc, i)))
                    for i in range(NPX):
                        if i < npx:
                            vstore(yl, (t0 - t_begin + i) * V, sget(acc, i))
                    t0 += npx
                # Lane l of the tile is output channel (cb * V + l) * Kg + j.
                dst = (n * K + cb * V * Kg + j) * PQ
                unpack_block(yl, -t_begin * V, yf, dst, Kg * PQ, min(V, C - cb * V), t_begin,
                             t_end, V)
                if EPI:
                    finish_rows(yf, rf, ep, mode, dst, Kg * PQ, min(V, C - cb * V), t_begin,
                                t_end)

    return driver


def channels_driver(NPX: int = NPX, SR: int = 0, epi: bool = False):
    """The (lazily compiled, disk-cached) channel-vectorised driver for ``NPX`` accumulators
    and, with ``SR > 0``, register windows for ``SR``-tap kernel rows (``epi``: the variant
    with the fused epilogue)."""
    key = (NPX, SR) + ((True,) if epi else ())
    drv = _DRIVERS.get(key)
    if drv is None:
        drv = _DRIVERS.setdefault(key, _make_channels_driver(NPX, SR, epi))
    return drv


#: Widest kernel row whose window fits the registers with the accumulators and one
#: weight vector (16 taps with AVX-512's 32 registers; none with AVX2's 16).
MAX_WINDOW_TAPS = REGISTERS - 2 * NPX


def window_width(p) -> int:
    """The ``SR`` of :func:`channels_driver` for ``p``: its kernel width where the window
    variant applies (unit horizontal stride and dilation, 3 to ``MAX_WINDOW_TAPS`` taps),
    else 0."""
    if p.stride[1] == 1 and p.dilation[1] == 1 and 3 <= p.S <= MAX_WINDOW_TAPS:
        return p.S
    return 0


def _pack_weights(w, G, Kg, CB, V):
    """KCRS ``w`` (``C/groups = 1``) -> flat ``[Kg, CB, R, S, V]`` (see the module docstring)."""
    R, S = w.shape[2:]
    wp = np.zeros((Kg, CB * V, R, S), dtype=w.dtype)
    wp[:, :G] = w.reshape(G, Kg, R, S).transpose(1, 0, 2, 3)
    return np.ascontiguousarray(wp.reshape(Kg, CB, V, R, S).transpose(0, 1, 3, 4, 2)).reshape(-1)


def tiling(p):
    """``(ntiles, tile_px, rows)``: the pixel tiles of an image (enough items, a tile's output
    buffer in L1) and the most padded input rows a tile reads."""
    V = lanes(p.dtype)
    PQ = p.P * p.Q
    blocks = -(-PQ // NPX)
    outer = p.N * -(-p.groups // V)
    want = 4 * max(1, numba.get_num_threads())
    max_blocks = max(1, MAX_TILE_BYTES // (NPX * V * np.dtype(p.dtype).itemsize))
    ntiles = max(1, min(blocks, max(-(-want // outer), -(-blocks // max_blocks))))
    tile_px = -(-blocks // ntiles) * NPX
    ntiles = -(-PQ // tile_px)
    # A tile starting at the end of a row spans this many output rows at most.
    out_rows = min(p.P, -(-(tile_px - 1) // p.Q) + 1)
    rows = (out_rows - 1) * p.stride[0] + (p.R - 1) * p.dilation[0] + 1
    return ntiles, tile_px, rows


def run(x, w, bias, p, y, epi=NONE):
    """Channel-vectorised direct convolution of NCHW ``x`` into NCHW ``y`` (``Cg == 1`` only).

    ``epi`` (NCHW residual) is applied in each task's store.
    """
    V = lanes(p.dtype)
    G, Kg = p.groups, p.Kg
    CB = -(-G // V)
    wb = _weight_cache.CACHE.get(w, ("channels", G, V),
                                 lambda snap: _pack_weights(snap, G, Kg, CB, V))
    bb = np.zeros((Kg, CB * V), dtype=p.dtype)
    if bias is not None:
        bb[:, :G] = bias.reshape(G, Kg).T
    ntiles, tile_px, rows = tiling(p)
    Wp = p.padded_hw[1]
    # Per Numba thread: the item's packed input rows, and its output tile (which first
    # serves the packing as a V x V transpose buffer).
    # (plus NPX vectors of slack, zeroed: the register window of a block at the end of the
    # last row reads up to NPX vectors past it, into accumulators that are not stored)
    xt = _scratch.per_thread("direct.channels.xt", p.dtype, rows * Wp * V + NPX * V)
    xt[:, rows * Wp * V:] = 0
    yt = _scratch.per_thread("direct.channels.yt", p.dtype, max(tile_px, V) * V)
    drv = channels_driver(NPX, window_width(p), epi.active)
    drv(np.ascontiguousarray(x).reshape(-1), wb, bb.reshape(-1), y.reshape(-1), xt, yt, p.N, G,
        Kg, p.H, p.W, p.padding[0], p.padding[2], Wp, p.R, p.S, p.P, p.Q, p.stride[0],
        p.stride[1], p.dilation[0], p.dilation[1], ntiles, tile_px, V,
        *epilogue.args(epi, dtype=p.dtype))
