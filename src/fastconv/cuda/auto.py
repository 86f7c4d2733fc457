"""The CUDA ``auto`` rule: which CUDA algorithm ``algorithm="auto"`` runs.

Like ``scipy.signal.choose_conv_method`` or NNPACK's ``auto`` algorithm, the
choice is a few comparisons on the shape of the call (a
:class:`fastconv._params.ConvParams`); nothing is timed when a call is made.
The first clause that holds decides:

1. ``direct`` when each output is a short reduction: a depthwise layer, or
   fewer than ``direct_max_depth`` multiply-adds per output (``Cg * R * S``).
   The implicit GEMM puts the ``Kg`` output channels of a group on the rows
   of its tiles and walks ``Cg * R * S`` in slices, so with one output
   channel per group most of each tile is idle and a short reduction is all
   slice set-up; the direct kernel keeps each output's dot product in
   registers.
2. ``direct`` when the whole layer is small: fewer than ``direct_max_macs``
   multiply-adds (``N * K * P * Q * Cg * R * S``).  Such a call costs what
   its launches cost, not what its arithmetic costs, and ``direct`` is one
   kernel; ``im2col`` adds a split-K reduction kernel when the output is
   small, and Winograd runs at least four kernels and fills a workspace.
3. Winograd (:func:`winograd_rule` picks the tile size) when it applies
   (:func:`fastconv.cuda.winograd.supports`: 3x3, stride 1, dilation 1), the
   layer has at least ``winograd_min_channels`` input and output channels
   per group, and at least ``winograd_min_macs`` multiply-adds.  Winograd
   does 2.25x (F(2x2)) or 4x (F(4x4)) fewer multiplies than the definition,
   but in at least four kernels whose transforms move the input, the weights
   and the output through device memory; the saving only pays for them when
   the batched GEMM dominates, i.e. when the GEMM is large (much work) and deep
   (transforms cost ``O(Cg + Kg)`` per tile, the GEMM ``O(Cg * Kg)``).
4. ``im2col`` (implicit GEMM) otherwise: the general-purpose choice.

Every threshold is an entry of :data:`THRESHOLDS`.
``benchmarks/fit_cuda_auto.py`` scores the rule on stored GPU timings (the
JSON written by ``benchmarks/gpu_check.py``) and sweeps these thresholds
over a grid; ``docs/cuda_auto.md`` describes how they were fitted.

Importing this module does not import numba.cuda.
"""

from __future__ import annotations

from . import winograd

#: The thresholds of :func:`auto_rule` and :func:`winograd_rule`.  Multiply-adds
#: ("MACs") are those of the definition: ``N * K * P * Q * Cg * R * S`` for a layer.
THRESHOLDS = {
    # MACs per output below which direct's in-register dot product beats im2col's sliced GEMM.
    "direct_max_depth": 16,
    # Layer MACs below which launch cost (direct: one kernel) outweighs im2col's faster arithmetic.
    "direct_max_macs": 250_000_000,
    # Channels per group (in and out) below which Winograd's transforms outweigh its GEMM saving.
    "winograd_min_channels": 32,
    # Layer MACs from which Winograd's fewer multiplies pay for its transform kernels and workspace.
    "winograd_min_macs": 10_000_000_000,
    # Output side below which F(4x4)'s 4x4 tiles are mostly padding, so F(2x2) does less work.
    "winograd_f4_min_output": 4,
}

#: The names :func:`auto_rule` can return (the concrete CUDA algorithms).
ALGORITHMS = ("direct", "im2col", "winograd_f2x2_3x3", "winograd_f4x4_3x3")


def macs(p) -> int:
    """Multiply-adds of the definition of the convolution ``p`` (``p.flops / 2``)."""
    return p.N * p.K * p.P * p.Q * p.Cg * p.R * p.S


def winograd_rule(p, thresholds=None) -> str:
    """The Winograd variant for ``p`` (also what the ``"winograd"`` alias resolves to).

    F(4x4, 3x3) unless the output is narrower or shorter than
    ``winograd_f4_min_output``; then F(2x2, 3x3), whose smaller tiles waste
    less of their area beyond the output's edge.
    """
    t = THRESHOLDS if thresholds is None else thresholds
    if min(p.P, p.Q) >= t["winograd_f4_min_output"]:
        return "winograd_f4x4_3x3"
    return "winograd_f2x2_3x3"


def auto_rule(p, thresholds=None) -> str:
    """The CUDA ``auto`` choice for ``p`` (a ``ConvParams``): one of :data:`ALGORITHMS`.

    The clauses are those of the module docstring, in order.  ``thresholds``
    replaces :data:`THRESHOLDS` (a dict with the same keys); the fit script
    uses it to sweep them.
    """
    t = THRESHOLDS if thresholds is None else thresholds
    if p.depthwise or p.Cg * p.R * p.S < t["direct_max_depth"]:
        return "direct"
    work = macs(p)
    if work < t["direct_max_macs"]:
        return "direct"
    if (winograd.supports(p) is None and min(p.Cg, p.Kg) >= t["winograd_min_channels"]
            and work >= t["winograd_min_macs"]):
        return winograd_rule(p, t)
    return "im2col"
