"""The pointwise path of :mod:`fastconv.cpu.direct`: 1x1 convolutions on NCHW.

Vectorised along the pixels: a GEMM micro-kernel with no packing.

A 1x1 convolution of one image and group is the matrix product
``y[k, :] = b[k] + sum_c w[k, c] x[c, :]`` over the ``P*Q`` pixels, and in
NCHW every row ``x[c, :]`` and ``y[k, :]`` is already contiguous.  So unlike
the blocked direct kernel (which packs the input to NCHW16c and unpacks its
output) and unlike im2col + BLAS (whose GEMM packs both operands on every
call), this kernel reads ``x`` and writes ``y`` in place:

* the micro-kernel holds ``NK x NV`` vector accumulators (4 output channels
  x ``NV`` pixel vectors: 4 x 6 = 24 of AVX-512's 32 registers, 4 x 3 of
  AVX2's 16); for each input
  channel it loads ``NV`` pixel vectors of ``x[c, :]`` and broadcasts ``NK``
  weights, then issues ``NK * NV`` FMAs;
* the reduction runs over all ``Cg`` input channels at once, so each output
  vector is stored once, straight into ``y`` (the ``NV`` pixel vectors of
  ``Cg`` channels, 384 bytes per channel, stay in L2 while the ``NK``-channel
  blocks of a work item reuse them);
* a row that does not fill its last vector uses masked loads and stores
  (never touching memory past the row's end);
* weights are packed once to ``[G, Kg/NK, Cg, NK]`` (zero rows past ``Kg``;
  kept by the weight cache); a strided 1x1 first copies the subsampled
  input, as im2col does.

Work items are (image, group, block of output channels, block of pixel
vectors), so both cores work on one image.  Each output is one dot product
``b + sum_c w x`` summed in channel order with fused multiply-adds: the
direct kernel's error bound ``gamma_{Cg+1}(|w| |x| + |b|)`` holds, and results
do not depend on the number of threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np

from ... import _weight_cache
from ..._config import CPU, PJIT
from ..._epilogue import NONE
from .. import _scratch, epilogue
from ..epilogue import finish
from ..packing import padded_bias, subsample_pointwise
from ..simd import (ACCUMULATORS, lanes, sget, sset, sstore, stack_vectors, vbcast, vfma, vload, vload_masked,
                    vstore, vstore_masked)

NK = 4  # output channels per micro-kernel
NV = max(1, ACCUMULATORS // NK)  # pixel vectors per micro-kernel (6 on AVX-512, 3 on AVX2)


@numba.njit(**PJIT)
def _pack_weights(w2, wp, G, Kg, Cg, KBp):
    # w2 (K, Cg) -> wp[g, kb, c, i] = w2[g*Kg + kb*NK + i, c], zero past Kg
    zero = w2.dtype.type(0)
    for job in numba.prange(G * KBp):
        g, kb = job // KBp, job % KBp
        base = job * Cg * NK
        for i in range(NK):
            k = kb * NK + i
            if k < Kg:
                row = w2[g * Kg + k]
                for c in range(Cg):
                    sstore(wp, base + c * NK + i, row[c])
            else:
                for c in range(Cg):
                    sstore(wp, base + c * NK + i, zero)


def _make_kernel(EPI: bool):
    # EPI: the variant that applies the fused epilogue (rf, ep, mode) to each work item's
    # outputs once they are complete (a compile-time constant: the plain variant compiles
    # none of its code; in the micro-kernel's loop it would cost the loop registers).
    NACC = NK * NV

    @numba.njit(**PJIT)
    def kernel(xf, wp, bp, yf, L, N, G, Cg, Kg, KBp, PQ, nkg, kbi, npb, vpb, rf, ep, mode):
        nvec = (PQ + L - 1) // L
        for task in numba.prange(N * G * nkg * npb):
            pb = task % npb
            rest = task // npb
            kgi = rest % nkg
            ng = rest // nkg
            g = ng % G
            n = ng // G
            v0 = pb * vpb
            nv = min(vpb, nvec - v0)
            p0 = v0 * L
            tail = PQ - (p0 + (nv - 1) * L)  # valid lanes of the last vector (1..L)
            xbase = (n * G + g) * Cg * PQ + p0
            acc = stack_vectors(xf, NACC)
            xv = stack_vectors(xf, NV)
            for kb in range(kgi * kbi, min(KBp, (kgi + 1) * kbi)):
                wbase = (g * KBp + kb) * Cg * NK
                for i in range(NK):
                    bv = vbcast(bp, g * KBp * NK + kb * NK + i)
                    for j in range(NV):
                        sset(acc, i * NV + j, bv)
                for c in range(Cg):
                    xc = xbase + c * PQ
                    for j in range(NV):
                        if j < nv - 1:
                            sset(xv, j, vload(xf, xc + j * L))
                        elif j == nv - 1:
                            sset(xv, j, vload_masked(xf, xc + j * L, tail))
                    for i in range(NK):
                        wv = vbcast(wp, wbase + c * NK + i)
                        for j in range(NV):
                            if j < nv:
                                sset(acc, i * NV + j, vfma(wv, sget(xv, j), sget(acc, i * NV + j)))
                for i in range(NK):
                    k = kb * NK + i
                    if k < Kg:
                        ybase = ((n * G + g) * Kg + k) * PQ + p0
                        for j in range(NV):
                            if j < nv - 1:
                                vstore(yf, ybase + j * L, sget(acc, i * NV + j))
                            elif j == nv - 1:
                                vstore_masked(yf, ybase + j * L, sget(acc, i * NV + j), tail)
            if EPI:  # the item's outputs are complete (and in this core's cache)
                for k in range(kgi * kbi * NK, min(Kg, min(KBp, (kgi + 1) * kbi) * NK)):
                    ybase = ((n * G + g) * Kg + k) * PQ + p0
                    finish(yf, rf, ep, mode, ybase, ybase + min(nv * L, PQ - p0))

    return kernel


_KERNEL: dict = {}


def _kernel(epi: bool = False):
    """The (lazily compiled, disk-cached) kernel; ``epi``: the variant with the fused epilogue."""
    k = _KERNEL.get(epi)
    if k is None:
        k = _KERNEL.setdefault(epi, _make_kernel(epi))
    return k


def supports(p):
    if not (p.R == 1 and p.S == 1 and p.padding == (0, 0, 0, 0)):
        return "the pointwise kernel needs a 1x1 kernel without padding"
    return None


@dataclass(frozen=True)
class PointwisePlan:
    """How the pointwise kernel shares one call out (:func:`plan`).

    ``KBp`` blocks of ``NK`` output channels per group, cut into ``nkg``
    groups of ``kbi`` blocks; the ``P*Q`` pixels, in vectors, into ``npb``
    blocks of ``vpb`` vectors.  A work item is (image, group, channel-block
    group, pixel block); every block of a group reuses the item's pixel
    vectors.
    """

    KBp: int
    nkg: int
    kbi: int
    npb: int
    vpb: int


def plan(p, threads=None) -> PointwisePlan:
    """Channel blocks, items over them, pixel blocks and their size for ``p``."""
    L = lanes(p.dtype)
    KBp = -(-p.Kg // NK)
    nvec = -(-(p.P * p.Q) // L)
    threads = numba.get_num_threads() if threads is None else threads
    kbi = min(KBp, CPU.pointwise_kblocks)
    nkg = -(-KBp // kbi)
    npb = -(-nvec // NV)
    want = 4 * threads
    outer = p.N * p.groups * nkg
    if outer * npb < want and nkg < KBp:  # more, smaller channel groups for two cores
        nkg = min(KBp, -(-want // (p.N * p.groups * npb)))
        kbi = -(-KBp // nkg)
        nkg = -(-KBp // kbi)
    vpb = -(-nvec // npb)  # equal pixel blocks
    npb = -(-nvec // vpb)
    return PointwisePlan(KBp, nkg, kbi, npb, vpb)


def run(x, w, bias, p, y, epi=NONE):
    """1x1 convolution of NCHW ``x`` into C-contiguous NCHW ``y`` (any stride, groups).

    ``epi`` (NCHW residual) is applied to each work item's outputs as they are finished.
    """
    if y.size == 0:
        return
    G, Cg, Kg = p.groups, p.Cg, p.Kg
    strided = p.stride != (1, 1)
    xs = subsample_pointwise(x, p, _scratch.buffer("pointwise.xs", p.dtype, p.N * p.C * p.P * p.Q)
                             if strided else None)
    pl = plan(p)
    KBp = pl.KBp
    wp = _weight_cache.CACHE.get(w, ("pointwise", G, NK), lambda snap: _packed(snap, G, Kg, Cg, KBp))
    bp = padded_bias(bias, G, Kg, KBp * NK, p.dtype)
    _kernel(epi.active)(xs.reshape(-1), wp, bp, y.reshape(-1), lanes(p.dtype), p.N, G, Cg, Kg, KBp,
              p.P * p.Q, pl.nkg, pl.kbi, pl.npb, pl.vpb, *epilogue.args(epi, dtype=p.dtype))


def _packed(w, G, Kg, Cg, KBp):
    wp = _weight_cache.prepared_empty("pointwise.wp", G * KBp * Cg * NK, w.dtype)
    _pack_weights(np.ascontiguousarray(w.reshape(G * Kg, Cg)), wp, G, Kg, Cg, KBp)
    return wp
