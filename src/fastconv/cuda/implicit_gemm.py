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

* a block of ``TB x TB`` threads owns a ``BM x BN = (TB*RTM) x (TB*RT)``
  tile of ``Y`` (up to 128 x 128) and walks ``Kdim`` in slices of ``BK``;
  ``RTM`` is the smallest of RT, RT/2, ... whose tile still covers ``Kg``,
  so 64-channel layers do not waste half of a 128-row tile;
* ``A`` and ``B`` slices are staged in shared memory (``As`` is stored
  transposed, ``BK x (BM + 1)``: the padding column spreads the transposing
  stores over the banks); the next slice is prefetched into registers while
  the current one is multiplied (one shared buffer, two barriers per slice);
* each thread keeps an ``RTM x RT`` accumulator tile in registers (8 x 8 = 64
  FMAs per 16 shared loads; float64 halves ``RT`` to stay within 255
  registers), multiplied slice by slice by the product Winograd's GEMM uses
  too (:mod:`fastconv.cuda._gemm_tile`); its rows and columns are ``TB`` apart, so a
  warp reads consecutive shared words (no bank conflicts; ``As`` reads are
  broadcasts) and writes consecutive output pixels (coalesced stores);
* each thread gathers ``B`` for one fixed output pixel, so the pixel's
  ``(n, p, q)`` decomposition is done once; the ``(c, r, s)`` decomposition
  of a slice's ``BK`` taps is done once per block (``BK`` threads, into a
  double-buffered shared tap table of row/column/address offsets), so the
  gather itself has no integer division (numba's integers are 64-bit, and
  64-bit division is a long instruction sequence on a GPU);
* split-K: when the grid would have fewer than two blocks per SM (small
  ``N * P * Q``, e.g. 7x7 maps at batch 1), ``Kdim`` is cut into ``splits``
  chunks computed by separate blocks into a workspace, and
  ``splitk_bias_kernel`` adds the partial sums in a fixed order (deterministic,
  no atomics) plus the bias.  The summation then has two levels, which keeps
  the bound of :func:`fastconv.accuracy.error_bound` (``n`` terms in any
  order).

Every configuration is supported (stride, padding, dilation, groups);
grid: ``(ceil(N*P*Q / BN), ceil(Kg / BM), groups * splits)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ._gemm_tile import slice_product
from ._runtime import (
    SETTINGS, KernelSpec, arg_types, array_type, bind_cuda, cdiv, launch, nbtype, threads_1d,
)

# numba.cuda, bound on first use.  Kernels must see it as a module global:
# the CUDA simulator swaps module globals that are numba.cuda for its fake.
cuda = None


def _bind():
    return bind_cuda(globals())



def supports(p):
    if p.groups > 65535:
        return f"groups={p.groups} exceeds the CUDA grid's z limit (65535)"
    if cdiv(p.Kg, SETTINGS.block * SETTINGS.regtile) > 65535:
        return "too many output channels per group for the CUDA grid"
    return None


@functools.lru_cache(maxsize=None)
def _kernel(dtype_str: str, TB: int, RTM: int, RTN: int, BK: int):
    _bind()
    nb = nbtype(dtype_str)
    import numba

    i32 = numba.int32
    i64 = numba.int64
    BM = TB * RTM
    BMP = BM + 1               # As row length: shared-array shapes must be constants, not expressions
    BN = TB * RTN
    NT = TB * TB
    ROWS_B = NT // BN          # B rows loaded per pass (one column per thread)
    B_PER = BK // ROWS_B       # B elements per thread per slice
    ROWS_A = NT // BK          # A rows (output channels) loaded per pass
    A_PER = BM // ROWS_A       # A elements per thread per slice
    NACC = RTM * RTN
    gemm_slice = slice_product(dtype_str, TB, RTM, RTN, BK)
    FAR = -(1 << 30)           # a tap offset that puts every pixel outside the image

    def implicit_gemm_kernel(x, w, bias, y, has_bias, C, H, W, K, Cg, Kg, R, S, P, Q, sh, sw, pt, pl, dh, dw,
                             NPQ, groups, kchunk, split_stride):
        """Flat NCHW x, KCRS w (= A, row-major (K, Cg*R*S)); y[split] flat NKPQ.

        Grid (ceil(NPQ/BN), ceil(Kg/BM), groups * splits), block (TB, TB).  Split ``z // groups``
        reduces taps [split * kchunk, min(CRS, (split + 1) * kchunk)) into
        y[split * split_stride:]; with one split that is the result itself (plus bias when
        has_bias; the split-K epilogue adds it otherwise).
        """
        As = cuda.shared.array((BK, BMP), nb)
        Bs = cuda.shared.array((BK, BN), nb)
        # The (c, r, s) decomposition of the taps of the next slice, done once per block by BK
        # threads instead of twice per element by every thread (64-bit division is slow).
        tap_h = cuda.shared.array((2, BK), i32)
        tap_w = cuda.shared.array((2, BK), i32)
        tap_off = cuda.shared.array((2, BK), i64)
        a_pf = cuda.local.array(A_PER, nb)
        b_pf = cuda.local.array(B_PER, nb)
        acc = cuda.local.array(NACC, nb)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TB + tx
        z = cuda.blockIdx.z
        g = z % groups
        split = z // groups
        m0 = cuda.blockIdx.y * BM
        j0 = cuda.blockIdx.x * BN
        RS = R * S
        CRS = Cg * RS
        PQ = P * Q
        HW = H * W
        kbeg = split * kchunk
        kend = min(CRS, kbeg + kchunk)
        for i in range(NACC):
            acc[i] = 0

        # This thread's gather column: output pixel j = (n, p, q), fixed for the whole loop.
        bcol = tid % BN
        brow0 = tid // BN
        j = j0 + bcol
        n = j // PQ
        pq = j - n * PQ
        pp = pq // Q
        qq = pq - pp * Q
        ih0 = pp * sh - pt
        iw0 = qq * sw - pl
        if j >= NPQ:
            ih0 = FAR
        xpix = (n * C + g * Cg) * HW + ih0 * W + iw0
        # This thread's weight loads: tap column acol, channels arow0 + ROWS_A * l.
        acol = tid % BK
        arow0 = tid // BK
        wbase = g * Kg

        if tid < BK:
            kd = kbeg + tid
            if kd < kend:
                c = kd // RS
                rs = kd - c * RS
                r = rs // S
                s = rs - r * S
                tap_h[0, tid] = r * dh
                tap_w[0, tid] = s * dw
                tap_off[0, tid] = c * HW + r * dh * W + s * dw
            else:
                tap_h[0, tid] = FAR
                tap_w[0, tid] = 0
                tap_off[0, tid] = 0
        cuda.syncthreads()
        nslices = (kend - kbeg + BK - 1) // BK
        for l in range(A_PER):
            m = m0 + arow0 + l * ROWS_A
            kd = kbeg + acol
            v = nb(0)
            if m < Kg and kd < kend:
                v = w[(wbase + m) * CRS + kd]
            a_pf[l] = v
        for l in range(B_PER):
            kk = brow0 + l * ROWS_B
            ih = ih0 + tap_h[0, kk]
            iw = iw0 + tap_w[0, kk]
            v = nb(0)
            if ih >= 0 and ih < H and iw >= 0 and iw < W:
                v = x[xpix + tap_off[0, kk]]
            b_pf[l] = v

        for t in range(nslices):
            for l in range(A_PER):
                As[acol, arow0 + l * ROWS_A] = a_pf[l]
            for l in range(B_PER):
                Bs[brow0 + l * ROWS_B, bcol] = b_pf[l]
            nxt = (t + 1) % 2
            k1 = kbeg + (t + 1) * BK
            if tid < BK:
                kd = k1 + tid
                if kd < kend:
                    c = kd // RS
                    rs = kd - c * RS
                    r = rs // S
                    s = rs - r * S
                    tap_h[nxt, tid] = r * dh
                    tap_w[nxt, tid] = s * dw
                    tap_off[nxt, tid] = c * HW + r * dh * W + s * dw
                else:
                    tap_h[nxt, tid] = FAR
                    tap_w[nxt, tid] = 0
                    tap_off[nxt, tid] = 0
            cuda.syncthreads()
            if t + 1 < nslices:
                for l in range(A_PER):
                    m = m0 + arow0 + l * ROWS_A
                    kd = k1 + acol
                    v = nb(0)
                    if m < Kg and kd < kend:
                        v = w[(wbase + m) * CRS + kd]
                    a_pf[l] = v
                for l in range(B_PER):
                    kk = brow0 + l * ROWS_B
                    ih = ih0 + tap_h[nxt, kk]
                    iw = iw0 + tap_w[nxt, kk]
                    v = nb(0)
                    if ih >= 0 and ih < H and iw >= 0 and iw < W:
                        v = x[xpix + tap_off[nxt, kk]]
                    b_pf[l] = v
            gemm_slice(As, Bs, acc, ty, tx)
            cuda.syncthreads()

        ybase = split * split_stride
        # The store loop must unroll completely, or acc (indexed by jj) moves to local memory:
        # its pixel decomposition divides through a reciprocal (a few instructions; exact after
        # the one-step correction for any jo < 2**52) instead of a 64-bit integer division.
        inv_pq = 1.0 / PQ
        for jj in range(RTN):
            jo = j0 + tx + jj * TB
            if jo < NPQ:
                no = int(jo * inv_pq)
                pqo = jo - no * PQ
                if pqo < 0:
                    no -= 1
                    pqo += PQ
                elif pqo >= PQ:
                    no += 1
                    pqo -= PQ
                for i in range(RTM):
                    m = m0 + ty + i * TB
                    if m < Kg:
                        b = nb(0)
                        if has_bias != 0:
                            b = bias[wbase + m]
                        y[ybase + (no * K + wbase + m) * PQ + pqo] = acc[i * RTN + jj] + b

    a = array_type(dtype_str)
    return KernelSpec(implicit_gemm_kernel, arg_types(implicit_gemm_kernel, x=a, w=a, bias=a, y=a),
                      dict(dtype=dtype_str, TB=TB, RTM=RTM, RTN=RTN, BK=BK), register_blocked=True)


@functools.lru_cache(maxsize=None)
def _epilogue_kernel(dtype_str: str):
    _bind()
    nb = nbtype(dtype_str)

    def splitk_bias_kernel(parts, splits, total, bias, has_bias, K, PQ, y):
        """y[i] = sum_s parts[s * total + i] (in split order: deterministic) + bias[k]."""
        i = cuda.grid(1)
        step = cuda.gridsize(1)
        while i < total:
            acc = nb(0)
            for s in range(splits):
                acc += parts[s * total + i]
            if has_bias != 0:
                acc += bias[(i // PQ) % K]
            y[i] = acc
            i += step

    a = array_type(dtype_str)
    return KernelSpec(splitk_bias_kernel, arg_types(splitk_bias_kernel, parts=a, bias=a, y=a),
                      dict(dtype=dtype_str))


_sm_counts: dict = {}


def _sm_count(device: int = 0) -> int:
    """Streaming multiprocessors of GPU ``device`` (1 under the simulator); cached."""
    n = _sm_counts.get(device)
    if n is None:
        try:
            n = int(getattr(cuda.gpus[device], "MULTIPROCESSOR_COUNT", 0)) or int(
                cuda.get_current_device().MULTIPROCESSOR_COUNT)
        except Exception:  # the simulator
            n = 1
        _sm_counts[device] = n
    return n


def _row_tile(Kg: int, TB: int, RT: int, BK: int) -> int:
    """The smallest register-tile height whose block tile still covers Kg (up to RT)."""
    best = RT
    rtm = RT
    while rtm >= 1:
        if (rtm * BK) % TB == 0 and TB * rtm >= min(Kg, TB * RT):
            best = rtm
        rtm //= 2
    return best


def col_tile(dtype) -> int:
    """Register-tile width: REGTILE, halved for float64 (an 8 x 8 tile of doubles alone needs
    128 of a thread's 255 registers, and would spill to local memory)."""
    TB, RT, BK = SETTINGS.block, SETTINGS.regtile, SETTINGS.bk
    if np.dtype(dtype).itemsize == 8 and RT > 1:
        half = RT // 2
        if TB % half == 0 and (BK * half) % TB == 0:
            return half
    return RT


def row_tiles(dtype) -> list:
    """Every row tile :func:`_row_tile` can choose for ``dtype`` under the current settings."""
    TB, BK = SETTINGS.block, SETTINGS.bk
    RT = col_tile(dtype)
    return sorted({_row_tile(kg, TB, RT, BK) for kg in range(1, TB * RT + 1)})


def specializations():
    """Every kernel specialisation :func:`run` can launch under the current settings."""
    TB, BK = SETTINGS.block, SETTINGS.bk
    for dt in ("<f4", "<f8"):
        RT = col_tile(dt)
        for RTM in row_tiles(dt):
            yield _kernel(dt, TB, RTM, RT, BK)
        yield _epilogue_kernel(dt)


@dataclass(frozen=True)
class GemmPlan:
    """Row tile and split-K of one implicit-GEMM call (:func:`plan`).

    ``RTM`` rows of each thread's register tile (output channels; a compiled
    kernel each); the reduction over ``Cg * R * S`` taps is cut into
    ``splits`` chunks of ``kchunk`` taps (a multiple of ``BK``), computed by
    separate blocks and added by the epilogue kernel when ``splits > 1``.
    """

    RTM: int
    splits: int
    kchunk: int


def plan(p, device: int = 0) -> GemmPlan:
    """Row tile and split-K factor for ``p`` (see the module docstring)."""
    sms = _sm_count(device)
    return p.remembered(("cuda_implicit_gemm", sms, SETTINGS.block, SETTINGS.regtile, SETTINGS.bk,
                         SETTINGS.splitk), lambda: _plan(p, sms))


def _plan(p, sms):
    TB, BK = SETTINGS.block, SETTINGS.bk
    RT = col_tile(p.dtype)
    RTM = _row_tile(p.Kg, TB, RT, BK)
    CRS = p.Cg * p.R * p.S
    blocks = cdiv(p.N * p.P * p.Q, TB * RT) * cdiv(p.Kg, TB * RTM) * p.groups
    if SETTINGS.splitk > 0:
        splits = SETTINGS.splitk
    else:
        target = 2 * sms
        splits = 1
        if blocks < target:
            splits = max(1, min(cdiv(target, blocks), CRS // (4 * BK), 32))
    splits = max(1, min(splits, cdiv(CRS, BK), 65535 // p.groups))
    kchunk = cdiv(cdiv(CRS, splits), BK) * BK
    return GemmPlan(RTM, cdiv(CRS, kchunk), kchunk)


def run(x, w, bias, p, y, ctx):
    TB, BK = SETTINGS.block, SETTINGS.bk
    RT = col_tile(p.dtype)
    pl = plan(p, ctx.device)
    RTM, splits, kchunk = pl.RTM, pl.splits, pl.kchunk
    sh, sw = p.stride
    dh, dw = p.dilation
    pt, _, pl, _ = p.padding
    NPQ = p.N * p.P * p.Q
    total = p.N * p.K * p.P * p.Q
    grid = (cdiv(NPQ, TB * RT), cdiv(p.Kg, TB * RTM), p.groups * splits)
    direct = splits == 1
    parts = y if direct else ctx.workspace("implicit_gemm_parts", splits * total, p.dtype)
    has_bias = 1 if (bias is not None and direct) else 0
    launch(_kernel(p.dtype.str, TB, RTM, RT, BK), grid, (TB, TB), ctx,
           (x, w, w if bias is None else bias, parts, has_bias, p.C, p.H, p.W, p.K, p.Cg, p.Kg, p.R,
            p.S, p.P, p.Q, sh, sw, pt, pl, dh, dw, NPQ, p.groups, kchunk, total))
    if not direct:
        threads = threads_1d()
        blocks = min(cdiv(total, threads), 65535)
        launch(_epilogue_kernel(p.dtype.str), (blocks,), (threads,), ctx,
               (parts, splits, total, w if bias is None else bias, 0 if bias is None else 1,
                p.K, p.P * p.Q, y))
