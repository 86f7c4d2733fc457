"""Implicit-GEMM convolution on the GPU (registered as ``"im2col"``).

The convolution of one group is the GEMM ``Y[m, j] = sum_kd A[m, kd] B[kd, j]``
with ``M = Kg`` (output channels), ``N = N * P * Q`` (output pixels),
``Kdim = Cg * R * S``: ``A`` is the weight tensor viewed as ``(K, Cg*R*S)``
(no copy) and ``B[kd, j]`` is the input element under tap ``kd = (c, r, s)``
of output pixel ``j = (n, p, q)``.  ``B`` is never materialised: each block
gathers its ``BK x BN`` slice from ``x`` straight into shared memory (zero
outside the image), as in cuDNN's IMPLICIT_GEMM (Chetlur et al. 2014,
"cuDNN: Efficient Primitives for Deep Learning", section 3).

Blocking (``TB = FASTCONV_CUDA_BLOCK``, ``RT = FASTCONV_CUDA_REGTILE``,
``BK = FASTCONV_CUDA_BK``; defaults 16, 8, 8):

* a block of ``TB x TB`` threads owns a ``BM x BN = (TB*RT) x (TB*RT)`` tile
  of ``Y`` (128 x 128 by default) and walks ``Kdim`` in slices of ``BK``;
* ``A`` and ``B`` slices are staged in shared memory (``As`` is stored
  transposed, ``BK x (BM + 1)``: the padding column spreads the transposing
  stores over the banks); the next slice is prefetched into registers while
  the current one is multiplied (one shared buffer, two barriers per slice);
* each thread keeps an ``RT x RT`` accumulator tile in registers (8 x 8 = 64
  FMAs per 16 shared loads); its rows and columns are ``TB`` apart, so a
  warp reads consecutive shared words (no bank conflicts; ``As`` reads are
  broadcasts) and writes consecutive output pixels (coalesced stores);
* each thread gathers ``B`` for one fixed output pixel, so the pixel's
  ``(n, p, q)`` decomposition is done once, not once per element; its
  ``BK * BN / TB^2`` taps per slice cost two integer divisions each.

Every configuration is supported (stride, padding, dilation, groups);
grid: ``(ceil(N*P*Q / BN), ceil(Kg / BM), groups)``.
"""

from __future__ import annotations

import functools

import numpy as np

from ._runtime import CUDA_JIT, SETTINGS, cdiv, cuda_module, launch, nbtype

# numba.cuda, bound on first use.  Kernels must see it as a module global:
# the CUDA simulator swaps module globals that are numba.cuda for its fake.
cuda = None


def _bind():
    global cuda
    if cuda is None:
        from numba import cuda as _cuda
        cuda = _cuda
    return cuda



def supports(p):
    if p.groups > 65535:
        return f"groups={p.groups} exceeds the CUDA grid's z limit (65535)"
    if cdiv(p.Kg, SETTINGS.block * SETTINGS.regtile) > 65535:
        return "too many output channels per group for the CUDA grid"
    return None


def _shape_consts():
    TB, RT, BK = SETTINGS.block, SETTINGS.regtile, SETTINGS.bk
    return TB, RT, BK


@functools.lru_cache(maxsize=None)
def _kernel(dtype_str: str, TB: int, RT: int, BK: int):
    _bind()
    nb = nbtype(dtype_str)
    BM = BN = TB * RT
    NT = TB * TB
    ROWS_B = NT // BN          # B rows loaded per pass (one column per thread)
    B_PER = BK // ROWS_B       # B elements per thread per slice
    ROWS_A = NT // BK          # A rows (output channels) loaded per pass
    A_PER = BM // ROWS_A       # A elements per thread per slice
    NACC = RT * RT

    def implicit_gemm_kernel(x, w, bias, y, has_bias, C, H, W, K, Cg, Kg, R, S, P, Q,
                             sh, sw, pt, pl, dh, dw, NPQ):
        """Flat NCHW x, KCRS w (= A, row-major (K, Cg*R*S)), NKPQ y.  Grid (ceil(NPQ/BN),
        ceil(Kg/BM), groups), block (TB, TB)."""
        As = cuda.shared.array((BK, BM + 1), nb)
        Bs = cuda.shared.array((BK, BN), nb)
        a_pf = cuda.local.array(A_PER, nb)
        b_pf = cuda.local.array(B_PER, nb)
        acc = cuda.local.array(NACC, nb)
        a_reg = cuda.local.array(RT, nb)
        b_reg = cuda.local.array(RT, nb)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TB + tx
        g = cuda.blockIdx.z
        m0 = cuda.blockIdx.y * BM
        j0 = cuda.blockIdx.x * BN
        RS = R * S
        CRS = Cg * RS
        PQ = P * Q
        HW = H * W
        for i in range(NACC):
            acc[i] = 0

        # This thread's gather column: output pixel j = (n, p, q), fixed for the whole loop.
        bcol = tid % BN
        brow0 = tid // BN
        j = j0 + bcol
        jvalid = j < NPQ
        n = j // PQ
        pq = j - n * PQ
        pp = pq // Q
        qq = pq - pp * Q
        ih0 = pp * sh - pt
        iw0 = qq * sw - pl
        xbase = (n * C + g * Cg) * HW
        # This thread's weight loads: tap column acol, channels arow0 + ROWS_A * l.
        acol = tid % BK
        arow0 = tid // BK
        wbase = g * Kg

        nslices = (CRS + BK - 1) // BK
        # Prefetch slice 0 into registers.
        for l in range(A_PER):
            m = m0 + arow0 + l * ROWS_A
            kd = acol
            v = nb(0)
            if m < Kg and kd < CRS:
                v = w[(wbase + m) * CRS + kd]
            a_pf[l] = v
        for l in range(B_PER):
            kd = brow0 + l * ROWS_B
            v = nb(0)
            if jvalid and kd < CRS:
                c = kd // RS
                rs = kd - c * RS
                r = rs // S
                s = rs - r * S
                ih = ih0 + r * dh
                iw = iw0 + s * dw
                if ih >= 0 and ih < H and iw >= 0 and iw < W:
                    v = x[xbase + c * HW + ih * W + iw]
            b_pf[l] = v

        for t in range(nslices):
            for l in range(A_PER):
                As[acol, arow0 + l * ROWS_A] = a_pf[l]
            for l in range(B_PER):
                Bs[brow0 + l * ROWS_B, bcol] = b_pf[l]
            cuda.syncthreads()
            if t + 1 < nslices:
                k1 = (t + 1) * BK
                for l in range(A_PER):
                    m = m0 + arow0 + l * ROWS_A
                    kd = k1 + acol
                    v = nb(0)
                    if m < Kg and kd < CRS:
                        v = w[(wbase + m) * CRS + kd]
                    a_pf[l] = v
                for l in range(B_PER):
                    kd = k1 + brow0 + l * ROWS_B
                    v = nb(0)
                    if jvalid and kd < CRS:
                        c = kd // RS
                        rs = kd - c * RS
                        r = rs // S
                        s = rs - r * S
                        ih = ih0 + r * dh
                        iw = iw0 + s * dw
                        if ih >= 0 and ih < H and iw >= 0 and iw < W:
                            v = x[xbase + c * HW + ih * W + iw]
                    b_pf[l] = v
            for kk in range(BK):
                for i in range(RT):
                    a_reg[i] = As[kk, ty + i * TB]
                for jj in range(RT):
                    b_reg[jj] = Bs[kk, tx + jj * TB]
                for i in range(RT):
                    for jj in range(RT):
                        acc[i * RT + jj] += a_reg[i] * b_reg[jj]
            cuda.syncthreads()

        for jj in range(RT):
            jo = j0 + tx + jj * TB
            if jo < NPQ:
                no = jo // PQ
                pqo = jo - no * PQ
                for i in range(RT):
                    m = m0 + ty + i * TB
                    if m < Kg:
                        kc = wbase + m
                        b = nb(0)
                        if has_bias != 0:
                            b = bias[kc]
                        y[(no * K + kc) * PQ + pqo] = acc[i * RT + jj] + b

    return cuda.jit(**CUDA_JIT)(implicit_gemm_kernel)


def run(x, w, bias, p, y, ctx):
    TB, RT, BK = _shape_consts()
    BM = BN = TB * RT
    sh, sw = p.stride
    dh, dw = p.dilation
    pt, _, pl, _ = p.padding
    NPQ = p.N * p.P * p.Q
    has_bias = 0 if bias is None else 1
    bias = w if bias is None else bias
    grid = (cdiv(NPQ, BN), cdiv(p.Kg, BM), p.groups)
    launch(_kernel(p.dtype.str, TB, RT, BK), grid, (TB, TB), ctx)(
        x, w, bias, y, has_bias, p.C, p.H, p.W, p.K, p.Cg, p.Kg, p.R, p.S, p.P, p.Q,
        sh, sw, pt, pl, dh, dw, NPQ)
