"""CPU kernels and the CPU ``auto`` rule.

Importing this package registers ``direct``, ``im2col``,
``winograd_f2x2_3x3`` and ``winograd_f4x4_3x3``, and the alias ``winograd``.

The ``auto`` rule (:func:`auto_rule`)
-------------------------------------
With ``Cg = C / groups``, ``Kg = K / groups`` and ``small = min(P, Q)`` (the
output map's shorter side), in this order:

1. 1x1 kernels, except depthwise: ``direct`` where it takes its pointwise
   path (no padding, ``Cg >= 16``: a GEMM micro-kernel on NCHW without
   packing, measured 4-19% faster than ``im2col`` on all ten 1x1 shapes of
   the sets below), else ``im2col`` (each group one GEMM, no unfold);
2. 3x3, stride 1, dilation 1, ``groups == 1``, ``Kg >= 16``, and

   a. ``small >= 16`` and either ``Cg >= 64`` or (``Cg >= 16`` and at least
      3072 output pixels over the batch): Winograd F(4x4, 3x3)
      (:func:`winograd_rule`).  The transforms cost about as much as a
      direct pass over few channels; they pay off once the GEMM over ``Cg``
      dominates, or the map is large;
   b. ``small >= 12`` or at least 16 4x4 tiles over the batch, ``Cg >= 64``,
      and the channel-vectorised path takes the call (transformed weights at
      most 12 MiB, :mod:`fastconv.cpu.winograd_vec`): F(4x4, 3x3) (ResNet-50's
      14x14 layer: 1.2-1.6x faster than ``direct``; four 7x7 maps over 256
      channels: 1.6x);
   c. ``8 <= small < 12``, ``128 <= Cg <= 320`` and the channel-vectorised
      path takes F(2x2, 3x3): F(2x2, 3x3);
3. everything else (depthwise and grouped, strided, dilated, 5x5 and 7x7,
   few channels, tiny maps, 3x3 over 512 channels at 7x7 whose transformed
   weights no longer fit the caches): ``direct``, the register-blocked loop
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
wall clock on a quiet machine (fastest of 7 interleaved rounds), on a 2-core
AMD EPYC VM (AVX-512, measured FMA peak 234 GFLOP/s) with OpenBLAS 0.3.30
(SkylakeX kernel) and Numba 0.68.  The 3x3 clauses were fitted on 2026-11-26
(after the in-pool im2col GEMMs, the weight cache and the
channel-vectorised Winograd path) on those data and on two further sets
(``heldout``, 10 shapes, and ``heldout2``, 13 shapes: maps between the old
thresholds, batch, strided, grouped and 1x1 layers); clause 1 was changed
later, after the pointwise path of ``direct`` beat ``im2col`` on all ten
1x1 shapes of the four sets, and clause 2b's batch-wide tile count after the
vectorised path's GEMMs got faster (on the data below).  Re-measured with
the final kernels, the rule picks the fastest algorithm
on 17/18 suite layers, 17/19 other shapes, 8/10 and 12/13 of the two
held-out sets, and is within 5% of the fastest on 18/18, 18/19, 9/10 and
13/13 -- training-set figures (worst 1.07x: 1024 channels on a 3x3 map,
where ``im2col`` edges out ``direct``).  Before clauses 2c and the
batch-wide pixel count of 2a were added, ``heldout2`` was blind to the
rule: 11/13 fastest, 12/13 within 5%, worst 1.26x (a 320-channel 8x8 map
where F(2x2) wins).  A third set (``heldout3``, 10 shapes) was measured
after the 3x3 clauses were first fixed and never used to change them:
fastest on 9/10, within 5% on 9/10, worst 1.64x (40 -> 80 channels on a
30x30 map, where F(4x4) beats ``direct``: Winograd already pays below
``Cg = 64`` on mid-sized maps); its one 1x1 shape was among the ten
behind clause 1.
Data: ``benchmarks/results/auto_rule_fit.json``, ``auto_rule_heldout.json``,
``auto_rule_heldout2.json``, ``auto_rule_heldout3.json``.  Like
:func:`scipy.signal.choose_conv_method` this is a cost model for one machine:
on another one, with other thread counts, or to settle a close call, measure
with ``fastconv.tuning.choose(..., measure=True)`` (``algorithm="tuned"``).
"""

from __future__ import annotations

from .._dispatch import Algorithm, register_algorithm, register_alias
from . import direct, im2col, winograd, winograd_vec


def winograd_rule(p) -> str:
    """F(4x4, 3x3), or F(2x2, 3x3) on outputs smaller than 8x8.

    On small maps with many channels (7x7 and 4x4 outputs, 256-512 channels)
    F(2x2) measured up to 2x faster: 4x4 tiles leave a 7-wide map one
    partial tile per row and the 6x6 transforms cost more per output.
    """
    return "winograd_f4x4_3x3" if min(p.P, p.Q) >= 8 else "winograd_f2x2_3x3"


def auto_rule(p) -> str:
    """The algorithm ``algorithm="auto"`` runs for ``p`` (see the module docstring)."""
    if p.R == 1 and p.S == 1 and not p.depthwise:
        return "direct" if direct.choose_path(p) == "pointwise" else "im2col"
    if winograd.supports(p) is None and p.groups == 1 and p.Kg >= 16:
        small = min(p.P, p.Q)
        if small >= 16 and (p.Cg >= 64 or (p.Cg >= 16 and p.N * p.P * p.Q >= 3072)):
            return winograd_rule(p)
        tiles4 = p.N * -(-p.P // 4) * -(-p.Q // 4)
        if ((small >= 12 or tiles4 >= 16) and p.Cg >= 64
                and winograd_vec.plan(p, 4) is not None):
            return "winograd_f4x4_3x3"
        if small >= 8 and 128 <= p.Cg <= 320 and winograd_vec.plan(p, 2) is not None:
            return "winograd_f2x2_3x3"
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
