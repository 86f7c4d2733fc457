"""CPU kernels and the CPU ``auto`` rule.

This package lists ``direct``, ``im2col``, ``winograd_f2x2_3x3`` and
``winograd_f4x4_3x3`` in ``ALGORITHMS``, and the aliases ``winograd`` and
``tuned`` in ``ALIASES``; :mod:`fastconv._dispatch` reads them on first use.

The ``auto`` rule (:func:`auto_rule`)
-------------------------------------
With ``Cg = C / groups``, ``Kg = K / groups`` and ``small = min(P, Q)`` (the
output map's shorter side), in this order:

1. 1x1 kernels, except depthwise: ``direct`` where it needs no help
   (:func:`fastconv.cpu.direct.serves_1x1`: no padding, ``Cg >= 16``; it
   runs its pointwise path, a GEMM micro-kernel on NCHW that needs no
   packing, or, with several threads and full vectors of output channels,
   its blocked path, which scales better across threads), else ``im2col``
   (each group one GEMM, no unfold);
2. 3x3, stride 1, dilation 1, ``groups == 1``, ``Kg >= 16``, and

   a. ``small >= 16`` and either ``Cg >= 32`` or (``Cg >= 16`` and at least
      3072 output pixels over the batch): Winograd F(4x4, 3x3)
      (:func:`winograd_rule`).  The transforms cost about as much as a
      direct pass over few channels; they pay off once the products over
      ``Cg`` dominate, or the map is large;
   b. ``Cg >= 64`` and ``small >= 12``, or at least 16 4x4 tiles over the
      batch, or ``small >= 6`` and ``Cg >= 128``, or ``small >= 3`` and
      ``Cg >= 256`` (the deeper the layer, the fewer tiles it takes for the
      products to repay the transforms), on the channel-vectorised
      path (maps up to 60 outputs wide, :mod:`fastconv.cpu.winograd_vec`):
      F(4x4) or F(2x2) by a cost model (:func:`small_map_winograd`:
      products per tile against reading the transformed weights once, or,
      where F(4x4) transforms its kernels inside the products -- the stream
      schedule, up to 8 tiles -- its cost per group of 4 tiles).  So
      ResNet-50's 14x14 and 7x7 layers get F(4x4) (on 7x7 over 512
      channels, streaming) and one 4x4 map over 512 channels gets F(2x2).
      Last arm (:data:`STREAM4_OVER_DIRECT`): from 128 channels on maps of
      3x3 and more, F(4x4) where it streams and ``direct``'s ``9 N P Q``
      products per pair of channels are at least 1.3 times its modelled
      cost; from 64 channels with at least 8192 pairs of channels, on one
      group of at most 4 tiles, at least 2 times
      (:data:`STREAM4_OVER_DIRECT_64`: with fewer channels the call's fixed
      costs weigh more, and a second group of tiles would transform the
      kernels again);
   c. ``Cg`` = 2 to 4: Winograd F(4x4) on its few-channel schedule
      (:mod:`fastconv.cpu.winograd_few`) where :func:`few_channel_winograd`
      holds -- maps at least 33 wide and ``Kg >= 40``, or ``Kg >= 20`` from
      100 wide -- else ``direct``.  VGG-16 conv1_1 (3 -> 64 channels,
      224x224) takes this path; one input channel is left to ``direct``;
3. everything else (depthwise and grouped, strided, dilated, 5x5 and 7x7,
   few channels, maps under 6x6): ``direct``, the register-blocked loop
   nest.

``auto`` never picks an algorithm that does not support the call: Winograd is
chosen only where its ``supports`` accepts the call, and ``direct`` and
``im2col`` support every configuration.

How it was fitted
-----------------
The clauses, thresholds and cost terms were fitted on timings of every
algorithm on the benchmark suite's layers and on further sets of shapes,
taken by ``benchmarks/fit_auto_rule.py`` on one machine (two threads,
float32) and stored in ``benchmarks/results/auto_rule_*.json``; after each
change the rule was scored on a new set of shapes it had not been fitted
on.  ``docs/cpu_auto.md`` gives the data sets, the scores and what bounds
each threshold; ``python benchmarks/fit_auto_rule.py --from-json FILE``
re-scores the current rule on stored timings.  Like
:func:`scipy.signal.choose_conv_method` this is a cost model for one machine:
on another one, with other thread counts, or to settle a close call, time
the candidates with ``fastconv.tuning.choose(..., measure=True)``
(``algorithm="tuned"``).
"""

from __future__ import annotations

from .._algorithm import Algorithm
from . import direct, im2col, winograd, winograd_few, winograd_vec


def winograd_rule(p) -> str:
    """F(4x4, 3x3) on outputs at least 8x8; below, the tile size :func:`small_map_winograd` picks.

    On small maps with many channels F(2x2) can win where F(4x4) has to
    read its transformed weights (4x4 tiles leave a 7-wide map one partial
    tile per row, F(4x4) has 2.25 times as many transformed weights to read,
    and its 6x6 transforms cost more per output); where F(4x4) transforms
    its kernels inside the products (the stream schedule,
    :mod:`fastconv.cpu.winograd_vec`) it reads no transformed weights and
    wins from a few tiles on, ResNet-50's 7x7 layer over 512 channels among
    them.
    """
    if min(p.P, p.Q) >= 8:
        return "winograd_f4x4_3x3"
    return small_map_winograd(p)


#: Clause 2b's cost model: reading the transformed weights once costs as much as the
#: products of this many tiles (a fitted constant: it sets where F(2x2), with fewer
#: weights to read, gives way to F(4x4), with fewer products per output; the range
#: the data allow is in ``docs/cpu_auto.md``).
U_READ_TILES = 6.7
#: ... and F(4x4) in the stream schedule (kernels transformed inside the products, in
#: groups of 4 tiles): the cost of one group and the fixed cost (gathering the weights),
#: in the same unit, the products of one tile for one of the alpha^2 elements (fitted on
#: ``auto_rule_small.json``; 160 against the 4 x 36 = 144 of four tiles in the split
#: schedule: transforming the kernels in registers adds about a ninth).
STREAM4_GROUP_COST = 160
STREAM4_FIXED_COST = 48


#: Clause 2b's stream arm: from 128 channels, F(4x4)'s stream schedule beats ``direct``
#: when ``direct``'s 9 N P Q products per pair of channels are at least this many times
#: its modelled cost (fitted on ``auto_rule_small.json`` and one more set of deep layers on
#: small maps, see ``docs/cpu_auto.md``; the margin above 1 covers the costs the model
#: leaves out: packing, the output transform, the call's fixed costs) ...
STREAM4_OVER_DIRECT = 1.3
#: ... and from 64 channels, where the call's fixed costs weigh more, on one group of tiles
#: (at most 4), when that ratio is at least ``STREAM4_OVER_DIRECT_64`` and there are at
#: least ``STREAM4_MIN_PAIRS_64`` pairs of channels (fewer pairs leave too few products
#: to repay the kernel transform, and a second group of tiles would redo it; fitted on
#: ``auto_rule_small64.json``, see ``docs/cpu_auto.md``).
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
    output but 2.25x more weights and more partial tiles, so the model picks
    F(2x2) on few tiles (7x7 maps of one image, 6x6, 8-10 wide maps) and
    F(4x4) once the batch or the map adds tiles -- unless F(4x4) takes the
    stream schedule (at most ``winograd_vec.STREAM4_MAX_TILES`` tiles), where
    it reads no transformed weights and costs ``STREAM4_GROUP_COST`` per
    group of 4 tiles plus ``STREAM4_FIXED_COST``: then the model picks it
    from 2 tiles up (two 3x3 or 4x4 maps, one 5x5 to 8x8), F(2x2) on one
    tile.
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


def tuned_rule(p) -> str:
    """What ``algorithm="tuned"`` runs: :func:`fastconv.tuning.tuned_algorithm`."""
    from ..tuning import tuned_algorithm

    return tuned_algorithm(p)


# Read by fastconv._dispatch when the CPU is first used (see its BACKENDS).
ALGORITHMS = (
    Algorithm("direct", "cpu", direct.supports, direct.run,
              "direct loop nest; every configuration"),
    Algorithm("im2col", "cpu", im2col.supports, im2col.run,
              "im2col + BLAS GEMM with a bounded workspace; every configuration"),
    Algorithm("winograd_f2x2_3x3", "cpu", winograd.supports, winograd.run_f2x2,
              "Winograd F(2x2,3x3); 3x3, stride 1, dilation 1",
              prepare=winograd.prepare_f2x2, run_prepared=winograd.run_prepared),
    Algorithm("winograd_f4x4_3x3", "cpu", winograd.supports, winograd.run_f4x4,
              "Winograd F(4x4,3x3); 3x3, stride 1, dilation 1",
              prepare=winograd.prepare_f4x4, run_prepared=winograd.run_prepared),
)
ALIASES = {"winograd": winograd_rule, "tuned": tuned_rule}
