"""CPU kernels and the CPU ``auto`` rule.

Importing this package registers ``direct``, ``im2col``,
``winograd_f2x2_3x3`` and ``winograd_f4x4_3x3``, and the alias ``winograd``.

The ``auto`` rule (:func:`auto_rule`)
-------------------------------------
1. 3x3, stride 1, dilation 1 with at least 16 input and output channels per
   group: Winograd (``winograd_rule`` picks the tile);
2. few multiply-adds per output (``Cg * R * S < 32``: depthwise, 1-3 input
   channels): ``direct``;
3. everything else: ``im2col``.
"""

from __future__ import annotations

from .._dispatch import Algorithm, register_algorithm, register_alias
from . import direct, im2col, winograd


def winograd_rule(p) -> str:
    """F(4x4, 3x3) unless the output is too small to fill 4x4 tiles."""
    return "winograd_f4x4_3x3" if min(p.P, p.Q) >= 4 else "winograd_f2x2_3x3"


def auto_rule(p) -> str:
    if winograd.supports(p) is None and p.Cg >= 16 and p.Kg >= 16:
        return winograd_rule(p)
    if p.Cg * p.R * p.S < 32:
        return "direct"
    return "im2col"


register_algorithm(Algorithm("direct", "cpu", direct.supports, direct.run,
                             "direct loop nest; every configuration"))
register_algorithm(Algorithm("im2col", "cpu", im2col.supports, im2col.run,
                             "im2col + BLAS GEMM with a bounded workspace; every configuration"))
register_algorithm(Algorithm("winograd_f2x2_3x3", "cpu", winograd.supports, winograd.run_f2x2,
                             "Winograd F(2x2,3x3); 3x3, stride 1, dilation 1"))
register_algorithm(Algorithm("winograd_f4x4_3x3", "cpu", winograd.supports, winograd.run_f4x4,
                             "Winograd F(4x4,3x3); 3x3, stride 1, dilation 1"))
register_alias("cpu", "winograd", winograd_rule)
