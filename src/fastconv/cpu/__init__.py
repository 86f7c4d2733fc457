"""CPU kernels and the CPU ``auto`` rule.

Importing this package registers ``direct``, ``im2col``,
``winograd_f2x2_3x3`` and ``winograd_f4x4_3x3``, and the alias ``winograd``.

The ``auto`` rule (:func:`auto_rule`)
-------------------------------------
With ``Cg = C / groups`` and ``Kg = K / groups``, in this order:

1. 1x1 kernels, except depthwise: ``im2col`` (each group is one GEMM; the
   im2col kernel skips the unfold);
2. 3x3, stride 1, dilation 1, ``groups == 1``, ``Kg >= 16``, an output of at
   least 16x16, and either ``Cg >= 64`` or (``Cg >= 16`` and at least 64x64
   output pixels): Winograd F(4x4, 3x3) (:func:`winograd_rule`).  The
   transforms cost about as much as a direct pass over few channels; they pay
   off once the GEMM over ``Cg`` dominates, or the map is large;
3. everything else (depthwise and grouped, strided, dilated, 5x5 and 7x7,
   few channels, small maps): ``direct``, the register-blocked loop nest.

The fit below had a third clause, ``im2col`` for a deep reduction over a tiny
output (``Cg*R*S >= 1024`` and ``N*P*Q < 100``, e.g. ResNet-50's 3x3 layer
over 512 channels at 7x7), chosen on single-threaded CPU time.  With two
threads on a quiet machine (08:10 UTC) that layer ran at 29 GFLOP/s with
``im2col`` and 100-110 with ``direct``: im2col's unfold runs in Numba's
OpenMP pool and its GEMM in OpenBLAS's own threads, and each hand-over waits
for the other pool's spinning threads to yield a core.  The clause was
dropped; such calls now go to ``direct``.

``auto`` never picks an algorithm that does not support the call: Winograd is
chosen only where its ``supports`` accepts the call, and ``direct`` and
``im2col`` support every configuration.

How it was fitted, and how often it is right
--------------------------------------------
``benchmarks/fit_auto_rule.py`` times every algorithm on the 18 layers of
``fastconv/bench/conv_layers.json`` and on 19 other shapes (C and K from 1 to
1024, maps from 4x4 to 224x224, batch 1-32, kernels 1/3/5/7, stride 2,
dilation 2, groups 4 and 32, depthwise 3x3 and 5x5), float32, on a 2-core AMD
EPYC (Zen 5, AVX-512) with OpenBLAS 0.3.31 (SkylakeX kernel), Numba 0.68 and
the kernels of 2026-11-26 07:16 UTC, and re-measured on those of 07:26
(commit efafe72) with the same result.  The machine was shared with other heavy
jobs (load average 10-20), so wall-clock times were dominated by waiting for
a core; the rule was therefore fitted on single-threaded process CPU time
(``--threads 1 --cpu-time``, fastest of 7 interleaved rounds), which measures
what each algorithm costs.  On those 37 shapes (the fitting set) it picks the
fastest algorithm on 18 of 18 suite layers and 19 of 19 other shapes: a
training-set figure.  On 10 held-out shapes measured afterwards (``--only
heldout``: 32-1024 channels, 3x3 to 300x300 maps, batch 1-16, stride 2,
depthwise 5x5, grouped 1x1) it picked the fastest on 6, was within 5% of the
fastest on 8, and its worst choice took 2.81x the fastest time: a grouped
1x1 convolution sent to ``direct``.  Rule 1, which then excluded grouped 1x1
kernels, was widened after that measurement, giving 7 of 10, 9 of 10 within
5%, and at worst 1.14x (a stride-2 3x3 over 256 channels on a 7x7 output,
where ``direct`` beats ``im2col``); the held-out figure is therefore no
longer blind for that clause.  Data: ``benchmarks/results/auto_rule_fit.json``
and ``auto_rule_heldout.json``.  Like
:func:`scipy.signal.choose_conv_method` this is a cost model for one machine:
on another one, with several threads, or to settle a close call, measure with
``fastconv.tuning.choose(..., measure=True)``.
"""

from __future__ import annotations

from .._dispatch import Algorithm, register_algorithm, register_alias
from . import direct, im2col, winograd


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
        return "im2col"
    if (winograd.supports(p) is None and p.groups == 1 and p.Kg >= 16 and min(p.P, p.Q) >= 16
            and (p.Cg >= 64 or (p.Cg >= 16 and p.P * p.Q >= 4096))):
        return winograd_rule(p)
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
