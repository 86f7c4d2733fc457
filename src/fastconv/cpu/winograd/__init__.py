"""Winograd F(m x m, 3 x 3) convolution (Lavin & Gray 2016): the front end of every Winograd path.

A call runs four phases (timed separately by :func:`profile_phases`, as
NNPACK does): the kernel transform ``U = G w G^T``; the input transform
``V = B^T d B`` of every ``alpha x alpha`` input tile (``alpha = m + 2``,
tiles overlap by 2); ``alpha^2`` products ``M = U V``, summing over the
input channels of each group; and the output transform ``Y = A^T M A`` into
``m x m`` output tiles, plus bias.

Which path and schedule runs
----------------------------
Chosen from the shapes only, never from the thread count:

* the channel-vectorised path, :mod:`fastconv.cpu.winograd.vec`, where its
  :func:`~fastconv.cpu.winograd.vec.plan` takes the call: ``groups == 1``,
  output rows at most ``vec_max_q`` wide, one image's packed input and
  blocked output within half the workspace, and not F(4x4) on at most
  ``few.MAX_CG`` input channels.  The plan picks its schedule: *fused*
  (large maps and batches), *split* (deep layers on small maps, where the
  transformed weights outweigh the tiles) or *stream* (a split call whose
  products transform their own kernels; nothing is prepared or kept).  The
  kernel transforms in its layout, kept and streamed, are in
  :mod:`fastconv.cpu.winograd.stream`;
* otherwise the tile-row path, :mod:`fastconv.cpu.winograd.tile_row`: its
  fused schedule on maps with many tiles (where
  :func:`~fastconv.cpu.winograd.tile_row._fused_rows` finds items of whole
  tile rows for the threads), within which F(4x4) on at most
  ``few.MAX_CG`` input channels per group runs the few-channel kernel of
  :mod:`fastconv.cpu.winograd.few`; otherwise, and in
  :func:`profile_phases` (except on the few-channel kernel), phase by
  phase.

:class:`PreparedWeights` (from :func:`prepare`) holds a snapshot of the
weights and builds, on first use, the transform in the layout of the path
that needs it; :func:`run_f2x2` and :func:`run_f4x4` take theirs from the
weight cache (:mod:`fastconv._weight_cache`), except in the stream
schedule, which reads the caller's weights.

Constraints: 3x3 kernels, stride 1; any padding (asymmetric too),
dilation, groups, float32/float64.

Dilation
--------
A 3x3 kernel with dilation ``(dh, dw)`` at stride 1 reads, for the output
rows ``a, a + dh, a + 2 dh, ...``, only the rows ``a, a + dh, ...`` of the
padded input: every one of the ``dh * dw`` phases ``(a, b)`` of the output
is an undilated 3x3 "valid" convolution of the same phase of the padded
input.  :func:`phase_params` stacks the phases in the batch (the padded
input rounded up to whole phases with zeros), one parallel pass gathers
them (:func:`_gather_phases`), the undilated call runs on them with every
path above, and a second pass scatters the phases' outputs into ``y``
(the rounding's extra rows and columns are dropped).  Each output is the
same dot product as in the undilated convolution, so the error bound is
unchanged.

Non-finite values: the transforms mix a whole tile, so one inf would turn
its neighbours into NaN.  Every path reports whether all its (uncropped)
results were finite; where one is not -- a NaN/inf input value or weight,
or an overflow -- and where prepared weights are not finite, the call is
recomputed by the direct kernel (:mod:`fastconv.cpu.direct`), which
propagates NaN/inf exactly.  Error bound: :mod:`fastconv.winograd_math`.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from ... import _config
from ... import _weight_cache
from ..._epilogue import NONE
from .. import direct, epilogue
from . import stream, tile_row
from . import vec as _vec  # (``vec`` names a VecPlan in the functions below)


def kernel_transform(w, m, dtype=None):
    """``U = G w G^T`` of KCRS weights as a C-contiguous ``(alpha^2, groups, Kg, Cg)`` array.

    ``groups`` is inferred from nothing: this returns ``(alpha^2, 1, K, Cg)``;
    use :func:`prepare` for grouped weights.
    """
    return tile_row._transform_weights(np.ascontiguousarray(w), m, 1, np.dtype(dtype or w.dtype))


def supports(p):
    if (p.R, p.S) != (3, 3) or p.stride != (1, 1):
        return (f"Winograd needs a 3x3 kernel with stride 1; got R x S = {p.R}x{p.S}, "
                f"stride={p.stride}")
    return None


def phase_params(p):
    """The undilated call that computes the dilated call ``p`` (``p`` itself without dilation):
    its ``dh * dw`` phases stacked in the batch, unpadded (see the module docstring)."""
    if p.dilation == (1, 1):
        return p
    return p.remembered(("winograd.phases",), lambda: _phase_params(p))


def _phase_params(p):
    from ..._params import normalize

    dh, dw = p.dilation
    Hh = -(-(p.H + p.padding[0] + p.padding[1]) // dh)
    Wh = -(-(p.W + p.padding[2] + p.padding[3]) // dw)
    return normalize((dh * dw * p.N, p.C, Hh, Wh), (p.K, p.Cg, 3, 3), (p.K,), p.dtype,
                     groups=p.groups, check_memory=False)


@numba.njit(**_config.PJIT)
def _gather_phases(x, xph, pt, pl, dh, dw):
    N, C, H, W = x.shape
    Hh, Wh = xph.shape[2], xph.shape[3]
    for job in numba.prange(dh * dw * N * C):
        ph, c = job // C, job % C
        a, b, n = ph // (dw * N), (ph // N) % dw, ph % N
        for i in range(Hh):
            h = a + i * dh - pt
            for j in range(Wh):
                v = 0.0
                col = b + j * dw - pl
                if 0 <= h < H and 0 <= col < W:
                    v = x[n, c, h, col]
                xph[ph, c, i, j] = v


@numba.njit(**_config.PJIT)
def _scatter_phases(yph, y, dh, dw):
    N, K, P, Q = y.shape
    for job in numba.prange(dh * dw * N * K):
        ph, k = job // K, job % K
        a, b, n = ph // (dw * N), (ph // N) % dw, ph % N
        for i in range(-(-(P - a) // dh)):
            for j in range(-(-(Q - b) // dw)):
                y[n, k, a + i * dh, b + j * dw] = yph[ph, k, i, j]


def _through_phases(x, p, y, run):
    """``run(xph, pp, yph)`` on the phases of the dilated call ``p``, scattered into ``y``."""
    pp = phase_params(p)
    xph = np.empty((pp.N, pp.C, pp.H, pp.W), dtype=p.dtype)
    _gather_phases(x, xph, p.padding[0], p.padding[2], p.dilation[0], p.dilation[1])
    yph = np.empty((pp.N, pp.K, pp.P, pp.Q), dtype=p.dtype)
    run(xph, pp, yph)
    _scatter_phases(yph, y, p.dilation[0], p.dilation[1])


class PreparedWeights:
    """Winograd-transformed weights for tile size ``m``, from :func:`prepare`.

    ``w`` is a private copy of the spatial weights (kept for the direct
    fallback on non-finite values).  The transforms are built on first use,
    each in the layout of the path that needs it: :attr:`U`,
    ``(alpha^2, groups, Kg, Cg)`` for the tile-row path, and :meth:`Uv`,
    ``(alpha^2, KB, Cp, L)`` for the channel-vectorised one
    (:mod:`fastconv.cpu.winograd.vec`).  ``finite`` is False when a weight
    is NaN or inf (an overflowing transform is caught on the outputs).
    """

    __slots__ = ("m", "w", "groups", "finite", "fresh", "one_call", "_U", "_Uv")

    def __init__(self, m, w, groups, p=None):
        self.m, self.w, self.groups = m, w, groups
        # Built by the weight cache for one call only (weights that change between
        # calls): the plan may then stream where a kept transform would be written and
        # read once (see fastconv.cpu.winograd.vec.plan's ``fresh``).
        self.one_call = _weight_cache.building_for_one_call()
        self.finite = bool(np.isfinite(w).all())
        self.fresh = True  # not used by a call yet (its transform is still in this core's cache)
        self._U = self._Uv = None
        if p is not None:  # build the transform the call ``p`` will use now
            vec = self.vec_plan(p)
            if vec is None:
                self.U  # noqa: B018  (builds it)
            elif vec.mode != "stream":  # (a streaming call transforms its kernels itself)
                self.Uv()

    @property
    def U(self):
        if self._U is None:
            self._U = tile_row._transform_weights(self.w, self.m, self.groups, self.w.dtype)
        return self._U

    def Uv(self):
        if self._Uv is None:
            self._Uv = stream.transform_weights(self.w, self.m)
        return self._Uv

    def vec_plan(self, p):
        """The channel-vectorised path's plan for ``p``, or None (tile-row path)."""
        return _vec.plan(p, self.m, fresh=self.one_call)

    @property
    def nbytes(self):
        return self.w.nbytes + sum(a.nbytes for a in (self._U, self._Uv) if a is not None)


def prepare(w, p, m):
    """Transform KCRS weights ``w`` once for :func:`run_prepared`; a snapshot (``w`` is copied)."""
    w = np.array(w, dtype=p.dtype, order="C", copy=True)
    return PreparedWeights(m, w, p.groups, phase_params(p))


def prepare_f2x2(w, p):
    return prepare(w, p, 2)


def prepare_f4x4(w, p):
    return prepare(w, p, 4)


def run_prepared(x, packed, bias, p, y, vec=False, epi=NONE):
    """Run with weights from :func:`prepare`; falls back to ``direct`` on non-finite values.

    Takes the channel-vectorised path (:mod:`fastconv.cpu.winograd.vec`) when
    it fits the call, else the tile-row path; ``vec`` is its plan when the
    caller has it already.  ``epi`` (NCHW residual) is applied before this
    returns: in the vectorised path's stores, after the others.
    """
    if p.dilation != (1, 1):
        _through_phases(x, p, y, lambda xph, pp, yph: run_prepared(xph, packed, bias, pp, yph))
        epilogue.apply(y, epi)
        return
    if vec is False:
        vec = packed.vec_plan(p)
    fused = False
    if not packed.finite:
        ok = False
    elif vec is not None:
        U = packed.w if vec.mode == "stream" else packed.Uv()
        fresh, packed.fresh = packed.fresh, False
        ok = fused = _vec.run(x, U, bias, p, y, packed.m, vec, fresh_u=fresh, epi=epi)
    else:
        ok = tile_row._execute(x, None, packed.U, packed.m, bias, p, y)
    if not ok:
        direct.run(x, packed.w, bias, p, y, epi=epi)
    elif not fused:
        epilogue.apply(y, epi)


def _run(x, w, bias, p, y, m, epi=NONE):
    if p.dilation != (1, 1):
        _through_phases(x, p, y, lambda xph, pp, yph: _run(xph, w, bias, pp, yph, m))
        epilogue.apply(y, epi)
        return
    # The transformed weights of unchanged weights come from the weight cache
    # (content-verified; see fastconv._weight_cache), except where the products
    # transform the kernels themselves (the "stream" mode of fastconv.cpu.winograd.vec).
    vec = _vec.plan(p, m)
    if vec is not None and vec.mode == "stream":
        if not _vec.run(x, w, bias, p, y, m, vec, epi=epi):
            direct.run(x, w, bias, p, y, epi=epi)
        return
    packed = _weight_cache.CACHE.get(
        w, ("winograd", m, p.groups),
        lambda snap: PreparedWeights(m, snap, p.groups, p))
    run_prepared(x, packed, bias, p, y, False if packed.one_call else vec, epi)


def run_f2x2(x, w, bias, p, y, epi=NONE):
    _run(x, w, bias, p, y, 2, epi)


def run_f4x4(x, w, bias, p, y, epi=NONE):
    _run(x, w, bias, p, y, 4, epi)


def profile_phases(x, w, bias, p, y, m=None):
    """Run once, write ``y``, and return seconds per phase.

    Keys: ``kernel_transform``, ``input_transform``, ``gemm``, ``output_transform``
    (summed over blocks), plus ``pack_input`` where the channel-vectorised path
    runs (its phases are differences of runs stopped after each phase, see
    :func:`fastconv.cpu.winograd.vec.run`).  The tile-row path runs its phases
    one by one here (in a normal call they share parallel loops), except on
    few-channel layers (:mod:`fastconv.cpu.winograd.few`), whose products and
    output transform are one step, ``gemm_and_output_transform`` (the call
    less a run stopped after the input transform).  ``m`` (2 or
    4) defaults to :func:`fastconv.cpu.winograd_rule`.
    """
    if m is None:  # what algorithm="winograd" runs (the registry reads winograd_rule)
        from ..._dispatch import concrete
        m = 2 if concrete("winograd", p, "cpu").endswith("f2x2_3x3") else 4
    x = np.ascontiguousarray(x, dtype=p.dtype)
    w = np.ascontiguousarray(w, dtype=p.dtype)
    if p.dilation != (1, 1):  # the phases' profile, plus the gather and scatter passes
        t0 = time.perf_counter()
        inner = {}
        _through_phases(x, p, y, lambda xph, pp, yph: inner.update(
            profile_phases(xph, w, bias, pp, yph, m)))
        inner["phases"] = time.perf_counter() - t0 - sum(inner.values())
        return inner
    times = dict(kernel_transform=0.0, input_transform=0.0, gemm=0.0, output_transform=0.0)
    with _config.parallel_section():
        t0 = time.perf_counter()
        packed = PreparedWeights(m, w, p.groups)
        vec = packed.vec_plan(p)
        if vec is not None and packed.finite:
            # The call's own path.  Repeated calls with unchanged weights skip the kernel
            # transform (weight cache); it is reported all the same, except in the
            # "stream" mode, whose products transform the kernels (in "gemm").
            if vec.mode == "stream":
                Uv = w
                del times["kernel_transform"]
            else:
                Uv = packed.Uv()
                times["kernel_transform"] = time.perf_counter() - t0
            if _vec.run(x, Uv, bias, p, y, m, vec, timings=times):
                return times
            direct.run(x, w, bias, p, y)
            return times
        if not tile_row._execute(x, w, None, m, bias, p, y, times):
            direct.run(x, w, bias, p, y)
    return times
