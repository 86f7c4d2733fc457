"""Direct convolution on the CPU: register-blocked SIMD micro-kernels.

``direct`` supports every configuration (stride, dilation, any padding,
groups, depthwise with any channel multiplier, non-square kernels, float32
and float64, any N including 0).  A call takes one of five paths:

``blocked`` (:mod:`fastconv.cpu.direct.blocked`)
    The oneDNN/NNPACK layout: input packed to ``[N, G, CB, Hp, Wp, Vc]``
    (zero-padded spatially; channel blocks of ``Vc`` between 16 and 128,
    long for 1x1 kernels), weights to ``[G, KB/NKB, CB, R, S, Vc, NKB, V]``
    (``V`` = 16 float32 / 8 float64 output channels contiguous, the
    ``NKB`` blocks one broadcast meets adjacent), output accumulated in
    ``[N, G, KB, P*Q, V]`` and unpacked to NCHW by each work item as it
    finishes.  The micro-kernel holds
    ``NKB x NPX`` vector accumulators (the target's
    :data:`~fastconv.cpu.simd.ACCUMULATORS`: 4 x 6, 2 x 12 or 1 x 24 of
    AVX-512's 32 registers, half as many pixels on AVX2); for each input element it broadcasts one value
    and issues ``NKB`` FMAs against contiguous weight vectors.  Pixels run
    through ``P*Q`` in row-major order, so a block may span output rows and
    any stride or dilation costs nothing extra; with unit horizontal
    dilation the innermost loop runs over a kernel row's ``S * Vc``
    adjacent elements.  The reduction over input channels is cut into
    chunks whose packed weights stay in L1, the partial sums parked in the
    blocked output between chunks.  Work items are (image, group, block of
    ``NKB * V`` output channels, pixel tile), so both cores work at N = 1.
    Unpadded calls whose channel blocks cover the channels exactly (no
    zero channels) skip the input packing: the same loop nest reads NCHW in
    place through strides.  Preferred when the output channels fill the
    vector lanes and the reduction is long.
``pointwise`` (:mod:`fastconv.cpu.direct.pointwise`)
    Unpadded 1x1 kernels over at least 16 channels per group, with one
    thread or output channels that do not fill the vectors: a GEMM
    micro-kernel on NCHW itself, vectorised along the pixels, with neither
    input packing nor output unpacking.  (With several threads and full
    vectors the blocked path, reading NCHW in place, scales better.)
``width`` (:mod:`fastconv.cpu.direct.width`)
    Vectorised along the output row: depthwise, channel multipliers, few
    output channels per group or short reductions (3-channel inputs).
    Each work item packs its own input rows (L2-resident), so no pass over
    the whole input is added.
``channels`` (:mod:`fastconv.cpu.direct.channels`)
    One input channel per group (depthwise, channel multipliers), vectorised
    over groups: ``V`` groups side by side in a vector, so the lanes are
    full on any map size.  Each work item (image, block of ``V`` groups,
    tile of output pixels) packs its input rows to ``[rows, Wp, V]``
    (zero-padded) and writes its NCHW outputs by register transposes;
    ``NPX`` pixel accumulators per register block, one weight vector per
    tap.  Preferred on small maps, whose rows leave the width path's vectors
    part-empty.
``simple`` (:mod:`fastconv.cpu.direct.simple`)
    The textbook loop nest, for tiny problems where packing would cost more
    than it saves.

:func:`choose_path` takes ``pointwise`` for the 1x1 calls it serves and
otherwise picks with a short cost model (lane fill times the fraction of
work that is multiply-adds); ``channels`` competes only where ``Cg == 1``.

Summation order and error bound
-------------------------------
Every output is one dot product ``y = b + sum_{c, r, s} w * x`` whose terms
are added in an order fixed by the configuration alone (channel chunk,
channel, kernel row, kernel column; the bias first).  No output's reduction
is ever split between threads, so results do not depend on the number of
Numba threads.  Padding zeros are real zeros that get multiplied (``inf *
0`` gives NaN exactly as in the plain loop), and no zero weight is skipped.
The only extra terms are ``0 * 0`` products of zero-filled channel padding.
Multiply-adds may be fused (one rounding instead of two), which only
tightens the classical bound (Higham, *Accuracy and Stability of Numerical
Algorithms*, 2nd ed., sec. 3.1): with ``n = Cg*R*S + 1`` and unit roundoff
``u`` of the dtype,

    |y_hat - y| <= gamma_n * (|w| (*) |x| + |b|),   gamma_n = n u / (1 - n u),

elementwise, where ``(*)`` is the same convolution applied to absolute
values.  ``tests/test_cpu_direct.py`` holds this bound elementwise.
"""

from __future__ import annotations

import numba

from ..._config import CPU, parallel_section
from ..._epilogue import NONE
from .. import epilogue
from ..simd import lanes
from . import blocked, channels, pointwise, simple, width

# The thresholds of the path choice (simple_max_macs and the like) are fields of
# fastconv._config.CpuSettings ("direct schedules"), read at call time.


def choose_path(p) -> str:
    """Which kernel ``run`` uses for ``p``: "simple", "pointwise", "blocked", "width" or "channels".

    Kept in ``p.memo`` per number of Numba threads (the 1x1 choice depends on it).
    """
    threads = numba.get_num_threads()
    return p.remembered(("direct.path", threads), lambda: _choose_path(p, threads))


def serves_1x1(p) -> bool:
    """True if ``p`` is a 1x1 convolution that ``direct`` runs without im2col's help:
    unpadded, at least ``CPU.pointwise_min_cg`` channels per group (the pointwise
    kernel, or the blocked one reading NCHW in place)."""
    return pointwise.supports(p) is None and p.Cg >= CPU.pointwise_min_cg


def _choose_path(p, threads) -> str:
    macs = p.N * p.K * p.P * p.Q * p.Cg * p.R * p.S
    if macs <= CPU.simple_max_macs:
        return "simple"
    V = lanes(p.dtype)
    if serves_1x1(p):
        # With several threads the blocked kernel scales better when the output channels
        # fill its vectors; with one thread, or output channels that leave its vectors
        # part-empty, the pointwise kernel (no packing, no unpacking) is ahead.
        if threads > 1 and p.Kg % V == 0:
            return "blocked"
        return "pointwise"
    # Useful fraction of the vector lanes: output channels (blocked) or
    # output columns (width-vectorised), discounted by the per-output
    # overhead in multiply-add units (the blocked path packs and unpacks its
    # output; the width path stores vectors straight into NCHW).
    n = p.Cg * p.R * p.S
    fill_k = p.Kg / (-(-p.Kg // V) * V)
    fill_q = p.Q / (-(-p.Q // V) * V)
    blocked_score = fill_k * n / (n + CPU.blocked_overhead)
    width_score = CPU.width_speed * fill_q * n / (n + CPU.width_overhead)
    choice = "width" if width_score > blocked_score else "blocked"
    if p.Cg == 1:
        # One input channel per group: the channels path fills its lanes with groups
        # (any map size), packing and unpacking like the blocked path.
        fill_g = p.groups / (-(-p.groups // V) * V)
        channels_score = fill_g * n / (n + CPU.channels_overhead)
        if channels_score > max(width_score, blocked_score):
            choice = "channels"
    return choice


def supports(p):
    return None  # every configuration


PATHS = {"simple": simple.run, "blocked": blocked.run, "width": width.run,
         "pointwise": pointwise.run, "channels": channels.run}


#: The paths that apply the fused epilogue in their own stores; the others get
#: :func:`fastconv.cpu.epilogue.apply`'s pass after them.
FUSED_PATHS = ("blocked", "pointwise", "channels", "width")


def run(x, w, bias, p, y, path=None, epi=NONE):
    """Direct convolution of NCHW ``x`` into NCHW ``y``; ``path`` forces a kernel (tests).

    ``epi`` (:class:`fastconv._epilogue.Epilogue` with an NCHW residual) is
    applied to ``y`` before this returns, whatever the path.
    """
    if y.size == 0:
        return
    if path is None:
        path = choose_path(p)
    with parallel_section():
        if path in FUSED_PATHS:
            PATHS[path](x, w, bias, p, y, epi)
        else:
            PATHS[path](x, w, bias, p, y)
            epilogue.apply(y, epi)
