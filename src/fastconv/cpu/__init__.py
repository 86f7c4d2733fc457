"""CPU kernels and the CPU ``auto`` rule.

Importing this package registers ``direct``, ``im2col``,
``winograd_f2x2_3x3`` and ``winograd_f4x4_3x3``, and the alias ``winograd``.

The ``auto`` rule (:func:`auto_rule`)
-------------------------------------
With ``Cg = C / groups``, ``Kg = K / groups`` and ``small = min(P, Q)`` (the
output map's shorter side), in this order:

1. 1x1 kernels, except depthwise: ``direct`` where it needs no help
   (:func:`fastconv.cpu.direct.serves_1x1`: no padding, ``Cg >= 16``; its
   pointwise path, a GEMM micro-kernel on NCHW without packing, measured
   4-19% faster than ``im2col`` on all ten 1x1 shapes of the sets below,
   and with two threads and full vectors of output channels its blocked
   path, 1.1-1.5x faster again), else ``im2col`` (each group one GEMM, no
   unfold);
2. 3x3, stride 1, dilation 1, ``groups == 1``, ``Kg >= 16``, and

   a. ``small >= 16`` and either ``Cg >= 32`` or (``Cg >= 16`` and at least
      3072 output pixels over the batch): Winograd F(4x4, 3x3)
      (:func:`winograd_rule`).  The transforms cost about as much as a
      direct pass over few channels; they pay off once the products over
      ``Cg`` dominate, or the map is large;
   b. ``Cg >= 64`` and ``small >= 12``, or at least 16 4x4 tiles over the
      batch, or ``small >= 6`` and ``Cg >= 128``, or ``small >= 3`` and
      ``Cg >= 256`` (3x3 to 5x5 maps over 512 to 1024 channels: F(2x2)
      1.03x-1.53x faster than ``direct``), on the channel-vectorised
      path (maps up to 60 outputs wide, :mod:`fastconv.cpu.winograd_vec`):
      F(4x4) or F(2x2) by a cost model (:func:`small_map_winograd`:
      products per tile against reading the transformed weights once, or,
      where F(4x4) transforms its kernels inside the products -- the stream
      schedule, up to 8 tiles -- its cost per group of 4 tiles).  ResNet-50's
      14x14 layer: F(4x4), 1.7x faster than ``direct``; its 7x7 layer over
      512 channels: F(4x4) streaming, 2.3x (F(2x2) 1.5x); one 4x4 map over
      512 channels: F(2x2).  Last arm (:data:`STREAM4_OVER_DIRECT`): from
      128 channels on maps of 3x3 and more, F(4x4) where it streams and
      ``direct``'s ``9 N P Q`` products per pair of channels are at least
      1.3x its modelled cost (four 3x3 maps over 128 channels: 1.2x faster
      than ``direct``); from 64 channels with at least 8192 pairs of
      channels, on one group of at most 4 tiles, at least 2x
      (:data:`STREAM4_OVER_DIRECT_64`: one 7x7 or 8x8 map over 80-112
      channels, 1.15x-1.33x);
   c. ``Cg`` = 2 to 4: Winograd F(4x4) on its few-channel schedule
      (:mod:`fastconv.cpu.winograd_few`) where :func:`few_channel_winograd`
      holds -- maps at least 33 wide and ``Kg >= 40``, or ``Kg >= 20`` from
      100 wide -- else ``direct``.  VGG-16 conv1_1 (3 -> 64 channels,
      224x224): 1.1x-1.45x faster than ``direct``; with one channel
      ``direct`` stays faster;
3. everything else (depthwise and grouped, strided, dilated, 5x5 and 7x7,
   few channels, maps under 6x6): ``direct``, the register-blocked loop
   nest.

``auto`` never picks an algorithm that does not support the call: Winograd is
chosen only where its ``supports`` accepts the call, and ``direct`` and
``im2col`` support every configuration.

How it was fitted, and how often it is right
--------------------------------------------
``benchmarks/fit_auto_rule.py`` times every algorithm on the 18 layers of
``fastconv/bench/conv_layers.json`` and on 19 other shapes (C and K from 1 to
1024, maps from 4x4 to 224x224, batch 1-32, kernels 1/3/5/7, stride 2,
dilation 2, groups 4 and 32, depthwise 3x3 and 5x5), float32, two threads,
wall clock on a quiet machine (fastest of 9 interleaved rounds), on a 2-core
AMD EPYC VM (AVX-512, measured FMA peak 234 GFLOP/s) with OpenBLAS 0.3.30
(SkylakeX kernel) and Numba 0.68.  The 3x3 clauses were refitted on
2026-11-26 after the channel-vectorised Winograd path got its own GEMM
micro-kernel and split schedule (Winograd then won down to 32 channels on
16x16 maps and on 7x7 maps over 512 channels), on those data and on four
held-out sets measured earlier (``heldout`` to ``heldout4``, 43 shapes;
``heldout3``'s one miss, 40 -> 80 channels on a 30x30 map, moved clause 2a
from 64 to 32 channels; ``heldout4`` was measured blind -- 8/10 fastest,
worst 1.31x -- and its two misses, a 6x6 map over 384 channels and two 7x7
maps over 256, led to the F(2x2)/F(4x4) cost model of clause 2b); clause 1
after the pointwise path of ``direct`` beat ``im2col`` on all ten 1x1
shapes of those sets.  On these training data the rule picks the fastest
algorithm on 17/18 suite layers, 18/19 other shapes and 43/43 held-out
shapes, and is within 5% of the fastest on 18/18, 18/19 and 43/43 (suite
and other shapes re-measured at the end of 2026-11-26; worst 1.16x: 512
channels on a 4x4 map, where F(2x2) now beats ``direct``).  A
fifth set (``heldout5``, 10 shapes) was defined after the cost model,
measured once and never used to change the rule: fastest on 8/10, worst
1.42x (96 -> 128 channels on an 11x11 map, where F(4x4) beats ``direct``;
and 1.09x on a 5x5 map over 768 channels, where F(2x2) beats ``direct``):
below 128 channels and 12x12, and under 6x6, the rule still leaves
Winograd wins on the table.  Clause 2c came with the few-channel Winograd
schedule (evening of 2026-11-26): fitted on 11 shapes (``few``), then
measured blind on ``heldout6`` (6/10 fastest, worst 1.37x: every miss a
Winograd win left out) and, after widening, ``heldout7`` (4/10, 6/10 within
5%, worst 1.46x); refitted on those 31 shapes (within 5% of the fastest on
all of them), and measured blind once more on ``heldout8``: fastest on
5/10, within 5% on 7/10, geometric mean 1.05x of the fastest, worst 1.21x
(32 outputs over 4 channels at 80x80, where Winograd wins).  The two
algorithms are within 10-20% of each other over most of this region, and
the run-to-run spread on this machine is of that size.  Last, with F(2x2)'s
stream schedule (no transformed weights kept on deep, small maps) and the
blocked 1x1 path for two threads, the 19 other shapes were measured again
(``auto_rule_other_stream.json``: 18/19, the miss 512 channels on a 4x4
map, F(2x2) now 1.53x faster than ``direct``); with ``heldout``'s 1024
channels on 3x3 and ``heldout5``'s 768 on 5x5 (so ``heldout5`` is training
data from here on) that gave the ``small >= 3`` arm of clause 2b: 19/19
there, 9/10 on ``heldout5`` (the 11x11 miss stands).  F(4x4)'s stream
schedule (2026-11-26, night) moved the F(2x2)/F(4x4) line: its cost terms
(:data:`STREAM4_GROUP_COST`, :data:`STREAM4_FIXED_COST`) and the stream arm
of clause 2b were fitted on 16 deep small-map shapes (``small``: 12/16
fastest, 14/16 within 5% before the stream arm, 14/16 and 16/16 after) and
on ``heldout9``, measured blind with the cost terms alone (8/10 fastest,
9/10 within 5%; its one loss, 1.83x, four 4x4 maps over 192 channels,
led to the stream arm: 9/10 and 10/10 after); the eight stored shapes
whose choice the change moved were measured again
(``auto_rule_stream4_changed.json``: 8/8 fastest, among them
``resnet50_3x3_512``, now F(4x4), and the 6x6 to 8x8 maps over 320-768
channels).  ``heldout10``, defined after that and measured once, blind:
8/10 fastest and within 5%, worst 1.22x (one 7x7 map over 96 channels,
where F(4x4) streaming beats ``direct``: below 128 channels the stream arm
did not reach), and 1.07x (a 5x5 map over 224 channels).  That led to the
arm's 64-channel part, fitted on 12 shapes of 64-112 channels (``small64``:
10/12 -> 12/12) and ``heldout10``; ``heldout11``, blind: 8/10 fastest,
9/10 within 5%, worst 1.18x (two 7x7 maps over 96 channels, where the
arm's F(4x4) lost: two groups of tiles redo the kernel transform), so the
part was limited to one group; ``heldout12``, blind after that: 8/10
fastest and within 5%, worst 1.25x and 1.20x, both F(4x4) wins the arm
leaves to ``direct`` (80 channels, 6400 pairs; two 6x6 maps), while its
four F(4x4) picks there won by 1.2x-1.33x.  Below about 0.15 ms (these
shapes) the run-to-run spread is 10-20%, the size of most of these
differences.
Data: ``benchmarks/results/auto_rule_fit.json``, ``auto_rule_heldout.json``,
``auto_rule_heldout2.json`` to ``auto_rule_heldout12.json``, ``auto_rule_few.json``,
``auto_rule_other_stream.json``, ``auto_rule_small.json``, ``auto_rule_small64.json``,
``auto_rule_stream4_changed.json``.  Like
:func:`scipy.signal.choose_conv_method` this is a cost model for one machine:
on another one, with other thread counts, or to settle a close call, measure
with ``fastconv.tuning.choose(..., measure=True)`` (``algorithm="tuned"``).
"""

from __future__ import annotations

from .._dispatch import Algorithm, register_algorithm, register_alias
from . import direct, im2col, winograd, winograd_few, winograd_vec


def winograd_rule(p) -> str:
    """F(4x4, 3x3) on outputs at least 8x8; below, the tile size :func:`small_map_winograd` picks.

    On small maps with many channels F(2x2) measured up to 2x faster when
    F(4x4) had to read its transformed weights (4x4 tiles leave a 7-wide map
    one partial tile per row and the 6x6 transforms cost more per output);
    where F(4x4) transforms its kernels inside the products (the stream
    schedule, :mod:`fastconv.cpu.winograd_vec`) it wins from about 4 tiles
    (ResNet-50's 7x7 layer over 512 channels: 0.70 ms, F(2x2) 1.1 ms).
    """
    if min(p.P, p.Q) >= 8:
        return "winograd_f4x4_3x3"
    return small_map_winograd(p)


#: Clause 2b's cost model: reading the transformed weights once costs as much as the
#: products of this many tiles (fitted: between 5.6 and 7.6 separates every measured
#: F(2x2) / F(4x4) winner on maps under 16x16).
U_READ_TILES = 6.7
#: ... and F(4x4) in the stream schedule (kernels transformed inside the products, in
#: groups of 4 tiles): the cost of one group and the fixed cost (gathering the weights),
#: in the same unit, the products of one tile for one of the alpha^2 elements (fitted on
#: ``auto_rule_small.json``; a group's 144 products cost about 1.1x as much as in the
#: split schedule).
STREAM4_GROUP_COST = 160
STREAM4_FIXED_COST = 48


#: Clause 2b's stream arm: from 128 channels, F(4x4)'s stream schedule beats ``direct``
#: when ``direct``'s 9 N P Q products per pair of channels are at least this many times
#: its modelled cost (fitted on ``auto_rule_small.json`` and ``auto_rule_heldout9.json``:
#: 1.38x and more won by 1.1x-2.1x, 1.22x and less lost by 6-15%) ...
STREAM4_OVER_DIRECT = 1.3
#: ... and from 64 channels, where the call's fixed costs weigh more, on one group of tiles
#: (at most 4), when that ratio is at least ``STREAM4_OVER_DIRECT_64`` and there are at
#: least ``STREAM4_MIN_PAIRS_64`` pairs of channels (``auto_rule_small64.json``,
#: ``auto_rule_heldout10.json`` and ``auto_rule_heldout11.json``: one 7x7 or 8x8 map over
#: 80-112 channels won by 1.15x-1.22x; 64 x 64 channels tied or lost, as did ratios of
#: 1.56 and less and two images, whose two groups of tiles redo the kernel transform).
STREAM4_OVER_DIRECT_64 = 2.0
STREAM4_MIN_PAIRS_64 = 8192


def stream4_cost(p):
    """F(4x4)'s modelled cost on ``p`` in its stream schedule (see :func:`small_map_winograd`),
    or None where it would not stream."""
    vec = winograd_vec.plan(p, 4)
    if vec is None or vec[0] != "stream":
        return None
    tiles4 = p.N * -(-p.P // 4) * -(-p.Q // 4)
    return STREAM4_GROUP_COST * -(-tiles4 // winograd_vec.STREAM4_TILES) + STREAM4_FIXED_COST


def small_map_winograd(p) -> str:
    """F(4x4) or F(2x2) on a map under 16x16: the one with the lower modelled cost.

    Per pair of channels, F(m x m) costs ``alpha^2 * (tiles + U_READ_TILES)``:
    ``alpha^2`` products per tile, plus streaming its ``alpha^2`` transformed
    weights once per call (the split schedule; F(2x2)'s stream schedule
    transforms them for about as much).  F(4x4) has 2.25x fewer products per
    output but 2.25x more weights and more partial tiles, so F(2x2) wins on
    few tiles (7x7 maps of one image, 6x6, 8-10 wide maps) and F(4x4) once
    the batch or the map adds tiles -- unless F(4x4) takes the stream
    schedule (at most ``winograd_vec.STREAM4_MAX_TILES`` tiles), where it
    reads no transformed weights and costs ``STREAM4_GROUP_COST`` per group
    of 4 tiles plus ``STREAM4_FIXED_COST``: then it wins from 2 tiles up
    (two 3x3 or 4x4 maps, one 5x5 to 8x8), F(2x2) on one tile.
    """
    tiles4 = p.N * -(-p.P // 4) * -(-p.Q // 4)
    tiles2 = p.N * -(-p.P // 2) * -(-p.Q // 2)
    cost4 = stream4_cost(p)
    if cost4 is None:
        cost4 = 36 * (tiles4 + U_READ_TILES)
    if cost4 < 16 * (tiles2 + U_READ_TILES):
        return "winograd_f4x4_3x3"
    return "winograd_f2x2_3x3"


def few_channel_winograd(p) -> bool:
    """Clause 2c: F(4x4) on its few-channel schedule beats ``direct`` for ``p`` (2-4 channels).

    Its transforms are shared by the output channels and its vectors hold 16
    tiles of one tile row, so it needs enough output channels and maps wide
    enough to fill more than half of those vectors: ``Q >= 33`` (9 tiles)
    and ``Kg >= 40``, or ``Kg >= 20`` from 100 wide (on smaller maps the
    call's fixed costs decide); and the fused schedule (rows enough for two
    items).
    """
    if not (p.Q >= 33 and (p.Kg >= 40 or p.Kg >= 20 and p.Q >= 100)):
        return False
    tiles_w = -(-p.Q // 4)
    return winograd._fused_rows(p, 4, tiles_w, p.N * -(-p.P // 4)) > 0


def auto_rule(p) -> str:
    """The algorithm ``algorithm="auto"`` runs for ``p`` (see the module docstring)."""
    if p.R == 1 and p.S == 1 and not p.depthwise:
        return "direct" if direct.serves_1x1(p) else "im2col"
    if winograd.supports(p) is None and p.groups == 1 and p.Kg >= 16:
        if 2 <= p.Cg <= winograd_few.MAX_CG and few_channel_winograd(p):
            return "winograd_f4x4_3x3"
        small = min(p.P, p.Q)
        if small >= 16 and (p.Cg >= 32 or (p.Cg >= 16 and p.N * p.P * p.Q >= 3072)):
            return winograd_rule(p)
        tiles4 = p.N * -(-p.P // 4) * -(-p.Q // 4)
        if (p.Cg >= 64 and (small >= 12 or tiles4 >= 16 or (small >= 6 and p.Cg >= 128)
                            or (small >= 3 and p.Cg >= 256))
                and winograd_vec.plan(p, 4) is not None):
            return small_map_winograd(p)
        # the stream arm: F(4x4) transforming its kernels inside the products
        need = None
        if small >= 3 and p.Cg >= 128:
            need = STREAM4_OVER_DIRECT
        elif (small >= 3 and p.Cg >= 64 and p.Cg * p.Kg >= STREAM4_MIN_PAIRS_64
              and tiles4 <= winograd_vec.STREAM4_TILES):
            need = STREAM4_OVER_DIRECT_64
        cost4 = stream4_cost(p) if need is not None else None
        if cost4 is not None and 9 * p.N * p.P * p.Q >= need * cost4:
            return "winograd_f4x4_3x3"
    return "direct"


register_algorithm(Algorithm("direct", "cpu", direct.supports, direct.run,
                             "direct loop nest; every configuration"))
register_algorithm(Algorithm("im2col", "cpu", im2col.supports, im2col.run,
                             "im2col + BLAS GEMM with a bounded workspace; every configuration"))
register_algorithm(Algorithm("winograd_f2x2_3x3", "cpu", winograd.supports, winograd.run_f2x2,
                             "Winograd F(2x2,3x3); 3x3, stride 1, dilation 1",
                             prepare=winograd.prepare_f2x2, run_prepared=winograd.run_prepared))
register_algorithm(Algorithm("winograd_f4x4_3x3", "cpu", winograd.supports, winograd.run_f4x4,
                             "Winograd F(4x4,3x3); 3x3, stride 1, dilation 1",
                             prepare=winograd.prepare_f4x4, run_prepared=winograd.run_prepared))
register_alias("cpu", "winograd", winograd_rule)
