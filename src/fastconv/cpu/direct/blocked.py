"""The blocked path of :mod:`fastconv.cpu.direct`: channel-blocked, register-tiled micro-kernels.

The oneDNN/NNPACK layout: input packed to ``[N, G, CB, Hp, Wp, Vc]``
(zero-padded spatially; channel blocks of ``Vc`` between 16 and 128, long
for 1x1 kernels), weights to ``[G, KB/NKB, CB, R, S, Vc, NKB, V]`` (``V`` =
16 float32 / 8 float64 output channels contiguous, the ``NKB`` blocks one
broadcast meets adjacent), output accumulated in ``[N, G, KB, P*Q, V]`` and
unpacked to NCHW by each work item as it finishes (the layouts of
:mod:`fastconv.cpu.packing`).  The micro-kernel
(:func:`_make_blocked_driver`) holds ``NKB x NPX`` vector accumulators and,
for each input element, broadcasts one value and issues ``NKB`` FMAs against
contiguous weight vectors.  :func:`blocked_plan` chooses the register
blocking, the channel blocks, the reduction chunks and the pixel tiles;
:func:`run` packs, slices the batch within the workspace budget and calls
the driver.  Summation order and error bound are those of
:mod:`fastconv.cpu.direct`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ... import _weight_cache
from ..._config import CPU, PJIT
from ..._epilogue import NONE
from .. import _scratch, epilogue
from ..packing import (finish_task, pack_input_blocked, pack_weights_blocked, padded_bias,
                       subsample_pointwise, task_coords, unpack_task)
from ..simd import ACCUMULATORS, REGISTERS, lanes, sget, sset, stack_ints, stack_vectors, vbcast, vfma, vload, vstore

# The thresholds of the blocked path's plan (chunk_weight_bytes and the like) are fields of
# fastconv._config.CpuSettings ("direct schedules"), read at call time.

# Register blocking of the blocked path: output-channel blocks -> pixels.
# NKB * NPX accumulators (at most the target's ACCUMULATORS: 24 of AVX-512's 32
# registers, 12 of AVX2's 16) + NKB weight vectors + 1 broadcast <= its REGISTERS.
# The first choice is the widest; narrower ones (5/6 and 2/3 of it) are taken when
# they waste fewer pixel slots on the tiles of a small map (LeNet's 10x10 outputs on
# AVX-512: 20 pixels per block, five blocks with no empty slot, instead of 24).
# With 32 registers LLVM does not keep a 2 x 11 or 2 x 12 block in registers although
# 2*12 + 2 + 1 would fit: its hot loop spills (24 moves per 96 multiply-adds for 2 x 12,
# benchmarks/spill_check.py), and 2 x 10 runs faster; 2 x 10 is the widest 2-block there.
_NPX_CAP = {2: 10} if REGISTERS >= 32 else {}
_NPX_MAX = {nkb: min(ACCUMULATORS // nkb, (REGISTERS - nkb - 1) // nkb, _NPX_CAP.get(nkb, REGISTERS))
            for nkb in (1, 2, 4)}
BLOCKED_NPX = {nkb: tuple(dict.fromkeys(max(1, n * f // 6) for f in (6, 5, 4)))
               for nkb, n in _NPX_MAX.items()}


# Relative speed of each output-channel blocking per padded block, for choosing among
# them.  With 32 registers every blocking holds ACCUMULATORS accumulators and at most
# about one load per multiply-add: all run the FMA units full.  With 16 registers the
# 4-block holds only 8 accumulators (fewer independent chains than FMA latency times
# pipes) and the 1-block issues a broadcast load for every multiply-add, so the 2-block
# (12 accumulators) is ahead of both.
NKB_SPEED = ({4: 1.0, 2: 1.0, 1: 1.0} if REGISTERS >= 32 else {4: 0.73, 2: 1.0, 1: 0.75})

_DRIVERS: dict = {}


def _make_blocked_driver(NKB: int, NPX: int, V: int, EPI: bool = False):
    """Compile the blocked driver for ``NKB`` channel blocks x ``NPX`` pixels of ``V`` lanes.

    ``EPI``: the variant that applies the fused epilogue (``rf, ep, mode``;
    :mod:`fastconv.cpu.epilogue`) to each task's outputs after unpacking them
    (a compile-time constant, so the plain variant compiles none of its code).

    The micro-kernel's accumulator and offset arrays live on the stack and
    are indexed only inside loops of constant trip count (``NKB``, ``NPX``),
    which LLVM unrolls fully and then promotes to registers.  The last
    pixel block of a tile may be short (``npx < NPX``): its missing pixels
    repeat the first pixel's input (in bounds) and are never stored, so the
    hot loop carries no branch.  With unit horizontal dilation the kernel
    columns and channels of one kernel row are adjacent in both packed
    layouts, so the innermost loop runs over ``S * Vc`` of them at once.
    """
    NACC = NKB * NPX
    WV = NKB * V  # weights per input element

    # The micro-kernel is written inline in the driver: a driver closing over
    # a separate micro-kernel dispatcher would get a new on-disk cache key in
    # every process (Numba keys closures by their pickled cell contents).
    @numba.njit(**PJIT)
    def driver(xb, wb, bb, yb, N, G, KBp, CB, xcb, xrow, xcol, xch, Vc, R, S, P, Q,
               sh, sw, dh, dw, ntiles, tile_px, ccb, tiles_outer, yf, Kg, rf, ep, mode):
        # Input element (block cb, channel c of the block, row h, column w) of image and
        # group ng is xb[(ng * CB + cb) * xcb + h * xrow + w * xcol + c * xch].
        # Each task ends by writing its outputs to yf (the NCHW result, flat; Kg output
        # channels per group) from its cache (unpack_task), then with EPI the epilogue
        # on them: no separate unpacking or epilogue pass.
        PQ = P * Q
        nkg = KBp // NKB
        ykb = PQ * V
        RSW = R * S * Vc * WV
        if dw == 1 and xch == 1 and xcol == Vc:  # (s, c) of a kernel row are adjacent
            SL, L = 1, S * Vc
        else:
            SL, L = S, Vc
        for task in numba.prange(N * G * nkg * ntiles):
            kg, tile, ng = task_coords(numba.int64(task), nkg, ntiles, tiles_outer)
            g = ng % G
            n = ng // G
            kb0 = kg * NKB
            xbase = ng * CB * xcb
            wbase = (g * nkg + kg) * CB * RSW
            ybase = (ng * KBp + kb0) * ykb
            bbase = (g * KBp + kb0) * V
            t_begin = tile * tile_px
            t_end = min(PQ, t_begin + tile_px)
            acc = stack_vectors(yb, NACC)
            wv = stack_vectors(yb, NKB)
            offs = stack_ints(NPX)
            for cb0 in range(0, CB, ccb):
                cb1 = min(CB, cb0 + ccb)
                for t0 in range(t_begin, t_end, NPX):
                    # --- micro-kernel: NKB x NPX accumulators over channels cb0:cb1
                    npx = min(NPX, t_end - t0)
                    p = t0 // Q
                    q = t0 - p * Q
                    for j in range(NPX):
                        if j < npx:
                            sset(offs, j, p * sh * xrow + q * sw * xcol)
                        else:
                            sset(offs, j, sget(offs, 0))
                        q += 1
                        if q == Q:
                            q = 0
                            p += 1
                    for i in range(NKB):
                        for j in range(NPX):
                            if cb0 == 0 or j >= npx:
                                sset(acc, i * NPX + j, vload(bb, bbase + i * V))
                            else:
                                sset(acc, i * NPX + j, vload(yb, ybase + i * ykb + (t0 + j) * V))
                    for cb in range(cb0, cb1):
                        xc = xbase + cb * xcb
                        wc = wbase + cb * RSW
                        for r in range(R):
                            for s in range(SL):
                                xo = xc + r * dh * xrow + s * dw * xcol
                                wo = wc + (r * S + s) * Vc * WV
                                for u in range(L):
                                    for i in range(NKB):
                                        sset(wv, i, vload(wb, wo + u * WV + i * V))
                                    xu = xo + u * xch
                                    for j in range(NPX):
                                        xv = vbcast(xb, xu + sget(offs, j))
                                        for i in range(NKB):
                                            sset(acc, i * NPX + j,
                                                 vfma(xv, sget(wv, i), sget(acc, i * NPX + j)))
                    for i in range(NKB):
                        for j in range(NPX):
                            if j < npx:
                                vstore(yb, ybase + i * ykb + (t0 + j) * V, sget(acc, i * NPX + j))
            unpack_task(yb, ybase, ykb, yf, (n * G + g) * Kg * PQ, PQ, kb0, NKB, Kg,
                        t_begin, t_end, V)
            if EPI:
                finish_task(yf, (n * G + g) * Kg * PQ, PQ, kb0, NKB, Kg, t_begin, t_end, V,
                            rf, ep, mode)

    return driver


def blocked_driver(NKB: int, NPX: int, V: int, epi: bool = False):
    """The (lazily compiled, disk-cached) blocked driver for one register blocking
    (``epi``: the variant with the fused epilogue)."""
    key = (NKB, NPX, V) + ((True,) if epi else ())
    drv = _DRIVERS.get(key)
    if drv is None:
        drv = _DRIVERS.setdefault(key, _make_blocked_driver(NKB, NPX, V, epi))
    return drv


@dataclass(frozen=True)
class BlockedPlan:
    """Register and cache blocking of the blocked path for one call (:func:`blocked_plan`).

    ``NKB`` blocks of ``V`` output channels by ``NPX`` pixels is the
    micro-kernel's register block (a compiled driver each); ``Vc`` input
    channels per packed channel block; ``KBp`` output-channel blocks per group,
    padded to a multiple of ``NKB``; the ``P*Q`` pixels of an image are cut
    into ``ntiles`` tiles of ``tile_px`` pixels (work items); the reduction
    runs in chunks of ``ccb`` channel blocks whose packed weights stay in L1.
    """

    NKB: int
    NPX: int
    Vc: int
    KBp: int
    ntiles: int
    tile_px: int
    ccb: int


def blocked_plan(p, N=None) -> BlockedPlan:
    """Register and cache blocking of the blocked path for ``p`` (batch ``N`` if given).

    Kept in ``p.memo`` per batch size and thread count.
    """
    N = p.N if N is None else N
    return p.remembered(("direct.blocked_plan", N, numba.get_num_threads()),
                        lambda: _blocked_plan(p, N))


def _blocked_plan(p, N):
    V = lanes(p.dtype)
    Cg, Kg = p.Cg, p.Kg
    KB = -(-Kg // V)
    # The register block over output channels: the least time for the padded channel
    # blocks (each padded block is V lanes of wasted multiply-adds) at the blocking's
    # NKB_SPEED, then the widest (fewer loads per multiply-add).
    NKB = min((c for c in (4, 2, 1) if c <= KB or c == 1),
              key=lambda c: (-(-KB // c) * c / NKB_SPEED[c], -c))
    KBp = -(-KB // NKB) * NKB
    item = np.dtype(p.dtype).itemsize
    # Channel blocks: as long as the weights of one block fit the chunk
    # budget (a long innermost loop for 1x1 kernels), at least 16, with
    # less than one channel of zero padding per block.
    per_channel = NKB * p.R * p.S * V * item
    target = min(128, max(16, CPU.chunk_weight_bytes // per_channel))
    CB = -(-Cg // target)
    Vc = -(-Cg // CB)
    chunk = NKB * p.R * p.S * Vc * V * item
    ccb = max(1, min(CB, CPU.chunk_weight_bytes // max(chunk, 1)))
    ccb = -(-CB // -(-CB // ccb))  # equal chunks
    PQ = p.P * p.Q
    outer = N * p.groups * (KBp // NKB)
    want = 4 * max(1, numba.get_num_threads())
    best = None
    for NPX in BLOCKED_NPX[NKB]:
        blocks = -(-PQ // NPX)
        ntiles = max(1, min(blocks, -(-want // outer)))
        tile_px = -(-blocks // ntiles) * NPX
        ntiles = -(-PQ // tile_px)
        last = PQ - (ntiles - 1) * tile_px
        calls = (ntiles - 1) * (tile_px // NPX) + -(-last // NPX)
        cost = calls * (NPX + CPU.blocked_call_overhead_px)
        if best is None or cost < best[0]:
            best = (cost, NPX, ntiles, tile_px)
    _, NPX, ntiles, tile_px = best
    return BlockedPlan(NKB, NPX, Vc, KBp, ntiles, tile_px, ccb)


def _unit_stride(p):
    """The stride-1 1x1 call on the pixels the strided unpadded 1x1 call ``p`` reads."""
    from ..._params import normalize

    return p.remembered(("direct.blocked.unit_stride",), lambda: normalize(
        (p.N, p.C, p.P, p.Q), (p.K, p.Cg, 1, 1), None, p.dtype, groups=p.groups,
        check_memory=False))


def _reads_in_place(p) -> bool:
    """Whether :func:`run` reads ``p``'s NCHW input in place (no packing pass)."""
    if not (CPU.read_nchw_in_place and p.padding == (0, 0, 0, 0)):
        return False
    Vc = blocked_plan(p).Vc
    return -(-p.Cg // Vc) * Vc == p.Cg


def run(x, w, bias, p, y, epi=NONE):
    """Blocked direct convolution of NCHW ``x`` into NCHW ``y`` (any configuration).

    ``epi`` (:class:`fastconv._epilogue.Epilogue`, NCHW residual) is applied in each
    task's store.
    """
    if (CPU.subsample_strided_1x1 and p.R == p.S == 1 and p.stride != (1, 1)
            and p.padding == (0, 0, 0, 0) and (REGISTERS < 32 or not _reads_in_place(p))):
        # A strided 1x1 reads every sh-th row and sw-th column.  Where the input would be
        # packed, packing all of it would copy the pixels it skips; with 16 registers
        # its blocking has too few accumulators to hide the strided broadcasts of an
        # in-place read.  One copy of the pixels it reads (as the pointwise path makes)
        # turns it into a stride-1 call.
        xs = subsample_pointwise(x, p, _scratch.buffer("blocked.xs", p.dtype,
                                                       p.N * p.C * p.P * p.Q))
        return run(xs, w, bias, _unit_stride(p), y, epi)
    V = lanes(p.dtype)
    G = p.groups
    plan = blocked_plan(p)
    NKB, Vc, KBp = plan.NKB, plan.Vc, plan.KBp
    # Packed weights of unchanged weights come from the (content-verified) weight cache.
    wb = _weight_cache.CACHE.get(w, ("blocked", G, Vc, NKB, V),
                                 lambda snap: pack_weights_blocked(snap, G, Vc, NKB, V)[0])
    bb = padded_bias(bias, G, p.Kg, KBp * V, p.dtype)
    # Packed input and blocked output of a batch slice stay within the
    # workspace budget (FASTCONV_WORKSPACE_MB); images are independent.
    Hp, Wp = p.padded_hw
    CB = -(-p.Cg // Vc)
    per_image = (G * CB * Hp * Wp * Vc + G * KBp * p.P * p.Q * V) * np.dtype(p.dtype).itemsize
    nb = max(1, min(p.N, CPU.workspace_bytes // max(per_image, 1)))
    # A batch slice keeps the call's register blocking; its pixel tiles are its own.
    tiling = plan if nb == p.N else blocked_plan(p, N=nb)
    drv = blocked_driver(NKB, plan.NPX, V, epi.active)
    # Without padding, and when the channel blocks cover the channels exactly, the
    # kernel reads NCHW in place (on small layers the packing pass is a large share of the call).
    in_place = _reads_in_place(p)
    # Within an image, share the work out by pixel tiles when the activations outweigh the
    # weights (each core then packs, computes and unpacks the same rows), else by blocks
    # of output channels (each core reads half the weights).
    tiles_outer = p.Kg * p.Cg * p.R * p.S < p.C * p.H * p.W + p.K * p.P * p.Q
    for n0 in range(0, p.N, nb):
        n1 = min(p.N, n0 + nb)
        if in_place:
            xb = x[n0:n1].reshape(-1)
            HW = p.H * p.W
            # One channel per block: its stride is never used, and 1 lets the driver run
            # a kernel row's taps as one contiguous loop (the packed layout's fast case).
            strides = (Vc * HW, p.W, 1, HW if Vc > 1 else 1)
        else:
            xb, CB, Hp, Wp = pack_input_blocked(x[n0:n1], G, Vc, p.padding, scratch="direct.xb",
                                                rows_outer=tiles_outer)
            strides = (Hp * Wp * Vc, Wp * Vc, Vc, 1)
        yb = _scratch.buffer("direct.yb", p.dtype, (n1 - n0) * G * KBp * p.P * p.Q * V)
        yf = y[n0:n1].reshape(-1)
        drv(xb, wb, bb, yb, n1 - n0, G, KBp, CB, *strides, Vc, p.R, p.S, p.P, p.Q,
            p.stride[0], p.stride[1], p.dilation[0], p.dilation[1], tiling.ntiles,
            tiling.tile_px, plan.ccb, tiles_outer, yf, p.Kg,
            *epilogue.args(epi, n0 * p.K * p.P * p.Q, yf.size, p.dtype))
