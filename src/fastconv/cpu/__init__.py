"""CPU kernels and the CPU ``auto`` rule.

This package lists ``direct``, ``im2col``, ``winograd_f2x2_3x3``,
``winograd_f4x4_3x3`` and ``fft`` in ``ALGORITHMS``, and the aliases ``winograd`` and
``tuned`` in ``ALIASES``; :mod:`fastconv._dispatch` reads them on first use.

How ``auto`` chooses (:func:`auto_rule`)
----------------------------------------
By one of two methods (:func:`auto_method`): the cost model of
:mod:`fastconv.cpu.cost` (predicted seconds of every algorithm on this
machine; the lowest wins), or the fitted rule below (:func:`fitted_rule`).
The rule was fitted on an AVX-512 machine and is used where the target is
AVX-512; the model everywhere else.  ``docs/cpu_auto.md`` scores both, and
:func:`fastconv.explain` shows for one call what each would pick and why.

The fitted rule
---------------
With ``Cg = C / groups``, ``Kg = K / groups`` and ``small = min(P, Q)`` (the
output map's shorter side), in this order:

1. 1x1 kernels, except depthwise: ``direct`` where it needs no help
   (:func:`fastconv.cpu.direct.serves_1x1`: no padding, ``Cg >= 16``; it
   runs its pointwise path, a GEMM micro-kernel on NCHW that needs no
   packing, or, with several threads and full vectors of output channels,
   its blocked path, which scales better across threads), else ``im2col``
   (each group one GEMM, no unfold);
2. 3x3, stride 1, ``groups == 1``, ``Kg >= 16``, and (for a dilated kernel,
   the clauses read the undilated call on its phases stacked in the batch,
   :func:`fastconv.cpu.winograd.phase_params`: ``dh * dw`` times the images,
   maps ``dh`` and ``dw`` times smaller, and leave it to ``direct`` where
   those maps are narrower than ``dilated_min_side``)

   a. ``small >= 16`` and either ``Cg >= 32`` or (``Cg >= 16`` and at least
      3072 output pixels over the batch): Winograd F(4x4, 3x3)
      (:func:`winograd_rule`).  The transforms cost about as much as a
      direct pass over few channels; they pay off once the products over
      ``Cg`` dominate, or the map is large;
   b. ``Cg >= 64`` and ``small >= 12``, or at least 16 4x4 tiles over the
      batch, or ``small >= 6`` and ``Cg >= 128``, or ``Cg >= 256`` and
      ``small >= 3`` or at least 2 images (the deeper the layer, the fewer
      tiles it takes for the products to repay the transforms; on a batch
      of 2x2 or 1x1 maps, the last stage of a small-image network, so does a
      kernel's one pass of direct's packing or Winograd's transform, which
      training repeats every call), on the channel-vectorised
      path (maps up to 60 outputs wide, :mod:`fastconv.cpu.winograd.vec`):
      F(4x4) or F(2x2) by a cost model (:func:`small_map_winograd`:
      products per tile against reading the transformed weights once, or,
      where F(4x4) transforms its kernels inside the products -- the stream
      schedule, up to 8 tiles -- its cost per group of 4 tiles).  So
      ResNet-50's 14x14 and 7x7 layers get F(4x4) (on 7x7 over 512
      channels, streaming) and one 4x4 map over 512 channels gets F(2x2).
      Last arm (``stream4_over_direct``): from 128 channels on maps of
      3x3 and more, F(4x4) where it streams and ``direct``'s ``9 N P Q``
      products per pair of channels are at least 1.3 times its modelled
      cost; from 64 channels with at least 8192 pairs of channels, on one
      group of at most 4 tiles, at least 2 times
      (``stream4_over_direct_64``: with fewer channels the call's fixed
      costs weigh more, and a second group of tiles would transform the
      kernels again);
   c. ``Cg`` = 2 to 4: Winograd F(4x4) on its few-channel schedule
      (:mod:`fastconv.cpu.winograd.few`) where :func:`few_channel_winograd`
      holds -- maps at least 33 wide and ``Kg >= 40``, or ``Kg >= 20`` from
      100 wide -- else ``direct``.  VGG-16 conv1_1 (3 -> 64 channels,
      224x224) takes this path; one input channel is left to ``direct``;
3. kernels of at least ``fft_min_taps`` (25) taps, except depthwise:
   ``fft`` where the cost model (:mod:`fastconv.cpu.cost`) predicts it
   ``fft_over_direct`` (1.15) times faster than ``direct`` -- dense 7x7
   and larger kernels over tens of channels, 5x5 kernels on large maps over
   many channels.  The prediction assumes the weight cache keeps the
   kernels' spectra (inference); a call whose weights are new to it (a
   training step) runs ``direct`` unless ``fft`` pays with their transforms
   too (:func:`fastconv.cpu.fft.run_auto`).  Depthwise kernels stay with
   ``direct``: each channel's transforms (a few times ``log2`` of the
   tile's points per pixel, at SciPy's FFT speed, far below the FMA peak)
   cost more than its ``R * S`` vectorised products, up to 31x31 kernels;
4. everything else (depthwise and grouped, strided, dilated, 5x5 and 7x7 that
   ``fft`` does not repay, few channels, maps under 6x6): ``direct``, the
   register-blocked loop nest.

``auto`` never picks an algorithm that does not support the call: Winograd is
chosen only where its ``supports`` accepts the call, and ``direct``,
``im2col`` and ``fft`` support every configuration.

The thresholds
--------------
The numbers above are the defaults of the rule's thresholds.  Each is a
field of the one table of CPU thresholds, :class:`fastconv._config.CpuSettings`
(section "auto rule", in the order of the clauses, with a line on what each
trades off; ``fastconv._config.CPU`` holds the values in use), and the rule
reads them at call time.  Only ``alpha^2`` (36 products per tile for F(4x4),
16 for F(2x2)), the ``9`` products of a 3x3 kernel and the kernels' own
limits (``winograd_few.MAX_CG``, ``winograd_vec.STREAM4_TILES``) are written
into the code.

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
from .._config import CPU
from . import direct, fft, im2col, winograd
from .winograd import few as winograd_few, vec as winograd_vec


def winograd_rule(p) -> str:
    """F(4x4, 3x3) on outputs at least 8x8; below, the tile size :func:`small_map_winograd` picks.

    On small maps with many channels F(2x2) can win where F(4x4) has to
    read its transformed weights (4x4 tiles leave a 7-wide map one partial
    tile per row, F(4x4) has 2.25 times as many transformed weights to read,
    and its 6x6 transforms cost more per output); where F(4x4) transforms
    its kernels inside the products (the stream schedule,
    :mod:`fastconv.cpu.winograd.vec`) it reads no transformed weights and
    wins from a few tiles on, ResNet-50's 7x7 layer over 512 channels among
    them.
    """
    p = winograd.phase_params(p)
    if min(p.P, p.Q) >= CPU.f4x4_min_side:
        return "winograd_f4x4_3x3"
    return small_map_winograd(p)


def stream4_cost(p):
    """F(4x4)'s modelled cost on ``p`` in its stream schedule (see :func:`small_map_winograd`),
    or None where it would not stream.

    In the unit of :func:`small_map_winograd`'s model, the products of one
    tile for one of the ``alpha^2`` elements: ``stream4_tile_cost`` (36) per
    tile, plus ``stream4_group_cost`` per group of ``winograd_vec.STREAM4_TILES``
    tiles (the register block: 4 tiles with AVX-512's registers, whose kernels
    are transformed in registers once per group -- 16 more, about a ninth of
    the group's 4 x 36 products), plus ``stream4_fixed_cost`` (gathering the
    weights).
    """
    vec = winograd_vec.plan(p, 4)
    if vec is None or vec.mode != "stream":
        return None
    tiles4 = p.N * -(-p.P // 4) * -(-p.Q // 4)
    TB = winograd_vec.STREAM4_TILES
    groups = -(-tiles4 // TB)
    return (groups * (CPU.stream4_tile_cost * TB + CPU.stream4_group_cost)
            + CPU.stream4_fixed_cost)


def small_map_winograd(p) -> str:
    """F(4x4) or F(2x2) on a map under 16x16: the one with the lower modelled cost.

    Per pair of channels, F(m x m) costs ``alpha^2 * (tiles + u_read_tiles)``:
    ``alpha^2`` products per tile, plus streaming its ``alpha^2`` transformed
    weights once per call (the split schedule; F(2x2)'s stream schedule
    transforms them for about as much).  F(4x4) has 2.25x fewer products per
    output but 2.25x more weights and more partial tiles, so the model picks
    F(2x2) on few tiles (7x7 maps of one image, 6x6, 8-10 wide maps) and
    F(4x4) once the batch or the map adds tiles -- unless F(4x4) takes the
    stream schedule (at most ``vec_stream4_max_tiles`` tiles), where it
    reads no transformed weights and costs ``stream4_tile_cost`` per tile,
    ``stream4_group_cost`` per group of ``STREAM4_TILES`` tiles and
    ``stream4_fixed_cost`` (:func:`stream4_cost`; the fields
    of :class:`fastconv._config.CpuSettings`): then the model picks it
    from 2 tiles up (two 3x3 or 4x4 maps, one 5x5 to 8x8), F(2x2) on one
    tile.
    """
    tiles4 = p.N * -(-p.P // 4) * -(-p.Q // 4)
    tiles2 = p.N * -(-p.P // 2) * -(-p.Q // 2)
    cost4 = stream4_cost(p)
    if cost4 is None:
        cost4 = 36 * (tiles4 + CPU.u_read_tiles)
    if cost4 < 16 * (tiles2 + CPU.u_read_tiles):
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
    if not (p.Q >= CPU.few_channel_q
            and (p.Kg >= CPU.few_channel_kg
                 or p.Kg >= CPU.few_channel_wide_kg and p.Q >= CPU.few_channel_wide_q)):
        return False
    tiles_w = -(-p.Q // 4)
    return winograd.tile_row._fused_rows(p, 4, tiles_w, p.N * -(-p.P // 4)) > 0


def auto_method() -> str:
    """How ``auto`` chooses in this process: ``"rule"`` or ``"model"`` (``CPU.auto_method``;
    when that is empty, the rule on an AVX-512 target and the cost model elsewhere)."""
    method = CPU.auto_method
    if method not in ("", "rule", "model"):
        raise ValueError(f"fastconv._config.CPU.auto_method must be 'rule', 'model' or '', "
                         f"got {method!r}")
    if method:
        return method
    from .target import detect

    return "rule" if detect().isa == "avx512" else "model"


def auto_rule(p) -> str:
    """The algorithm ``algorithm="auto"`` runs for ``p``: :func:`fastconv.cpu.cost.choose`
    or :func:`fitted_rule`, as :func:`auto_method` says."""
    if auto_method() == "model":
        from . import cost

        return cost.choose(p)
    return fitted_rule(p)


def fitted_rule(p) -> str:
    """The fitted rule (see the module docstring; the thresholds are the "auto rule"
    fields of :class:`fastconv._config.CpuSettings`)."""
    p_call = p
    if p.R == 1 and p.S == 1 and not p.depthwise:
        return "direct" if direct.serves_1x1(p) else "im2col"
    if winograd.supports(p) is None and p.groups == 1 and p.Kg >= CPU.winograd_min_kg:
        p = winograd.phase_params(p)
        if p is not p_call and min(p.P, p.Q) < CPU.dilated_min_side:
            return "direct"
        if CPU.few_channel_min_cg <= p.Cg <= winograd_few.MAX_CG and few_channel_winograd(p):
            return "winograd_f4x4_3x3"
        small = min(p.P, p.Q)
        if small >= CPU.large_map_side and (
                p.Cg >= CPU.large_map_cg
                or (p.Cg >= CPU.large_map_few_cg and p.N * p.P * p.Q >= CPU.large_map_pixels)):
            return winograd_rule(p)
        tiles4 = p.N * -(-p.P // 4) * -(-p.Q // 4)
        if (p.Cg >= CPU.small_map_cg
                and (small >= CPU.small_map_side or tiles4 >= CPU.small_map_tiles
                     or (small >= CPU.small_map_deep_side and p.Cg >= CPU.small_map_deep_cg)
                     or (p.Cg >= CPU.small_map_deeper_cg
                         and (small >= CPU.small_map_deeper_side
                              or p.N >= CPU.small_map_tiny_images)))
                and winograd_vec.plan(p, 4) is not None):
            return small_map_winograd(p)
        # the stream arm: F(4x4) transforming its kernels inside the products
        need = None
        if small >= CPU.stream4_side and p.Cg >= CPU.stream4_cg:
            need = CPU.stream4_over_direct
        elif (small >= CPU.stream4_side and p.Cg >= CPU.stream4_cg_64
              and p.Cg * p.Kg >= CPU.stream4_pairs_64
              and tiles4 <= winograd_vec.STREAM4_TILES):
            need = CPU.stream4_over_direct_64
        cost4 = stream4_cost(p) if need is not None else None
        if cost4 is not None and 9 * p.N * p.P * p.Q >= need * cost4:
            return "winograd_f4x4_3x3"
    if p_call.R * p_call.S >= CPU.fft_min_taps and not p_call.depthwise and fft_pays(p_call):
        return "fft"
    return "direct"


def fft_pays(p, fresh: bool = False) -> bool:
    """Clause 3: the cost model predicts ``fft`` ``fft_over_direct`` times faster than ``direct``.

    ``fresh``: with the kernels' spectra computed for the call
    (:func:`fastconv.cpu.cost.fft_weight_seconds`), as when the weights are new
    to it: a training step, the gradients' derived kernels.  Decided once per
    ``ConvParams`` (its memo).
    """
    from . import cost

    def pays():
        t = cost.predict(p, "fft") + (cost.fft_weight_seconds(p) if fresh else 0.0)
        return CPU.fft_over_direct * t < cost.predict(p, "direct")

    return p.remembered(("fft_pays", fresh), pays)


def fresh_weights_rule(p) -> str:
    """``auto``'s choice for ``p`` when its kernels are new on every call.

    The gradients' derived convolutions (the input gradient's flipped
    kernels) meet new kernels on every call, so Winograd transforms them for
    that call alone.  Where F(4x4) keeps a transformed U for the call (its
    fused or split schedule, not the stream schedule, which transforms
    kernels in registers: :func:`fastconv.cpu.winograd.vec.plan` with
    ``fresh``) on maps of at most ``fresh_direct_max_side`` on a side, writing
    and reading those 36 values per kernel outweighs the multiply-adds F(4x4)
    saves over ``direct`` (8x8 and 14x14 maps of 64-192 channels), and this
    rule takes ``direct``.  Elsewhere it is ``auto``'s choice.  Decided once
    per ``ConvParams`` (its memo).
    """
    from .._dispatch import concrete

    def choose():
        alg = concrete("auto", p, "cpu")
        if alg == "fft":
            return alg if fft_pays(p, fresh=True) else "direct"
        if alg != "winograd_f4x4_3x3":
            return alg
        pw = winograd.phase_params(p)
        if min(pw.P, pw.Q) > CPU.fresh_direct_max_side:
            return alg
        vec = winograd_vec.plan(pw, 4, fresh=True)
        return alg if vec is not None and vec.mode == "stream" else "direct"

    return p.remembered("fresh_weights_rule", choose)


def tuned_rule(p) -> str:
    """What ``algorithm="tuned"`` runs: :func:`fastconv.tuning.tuned_algorithm`."""
    from ..tuning import tuned_algorithm

    return tuned_algorithm(p)


# Read by fastconv._dispatch when the CPU is first used (see its BACKENDS).
ALGORITHMS = (
    Algorithm("direct", "cpu", direct.supports, direct.run,
              "direct loop nest; every configuration", epilogue=True),
    Algorithm("im2col", "cpu", im2col.supports, im2col.run,
              "im2col + BLAS GEMM with a bounded workspace; every configuration",
              epilogue=True),
    Algorithm("winograd_f2x2_3x3", "cpu", winograd.supports, winograd.run_f2x2,
              "Winograd F(2x2,3x3); 3x3, stride 1 (dilation through its phases)",
              prepare=winograd.prepare_f2x2, run_prepared=winograd.run_prepared,
              epilogue=True),
    Algorithm("winograd_f4x4_3x3", "cpu", winograd.supports, winograd.run_f4x4,
              "Winograd F(4x4,3x3); 3x3, stride 1 (dilation through its phases)",
              prepare=winograd.prepare_f4x4, run_prepared=winograd.run_prepared,
              epilogue=True),
    Algorithm("fft", "cpu", fft.supports, fft.run,
              "FFT of overlap-save tiles, a contraction per frequency; every configuration",
              prepare=fft.prepare, run_prepared=fft.run_prepared, run_auto=fft.run_auto,
              epilogue=True),
)
ALIASES = {"winograd": winograd_rule, "tuned": tuned_rule}
