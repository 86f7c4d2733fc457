"""Direct convolution on the GPU: shared-memory tiles and register blocking.

``direct_tiled_kernel`` (every configuration whose input patch fits in 48 KiB
of shared memory, which is every practical one):

* a block of ``TB x TB`` threads computes a ``TB x (TB * RQ)`` tile of output
  pixels of one image for ``KB`` output channels of one group;
* for each input channel of the group, the block stages the input patch the
  tile reads (``((TB-1)*sh + (R-1)*dh + 1) x ((TB*RQ-1)*sw + (S-1)*dw + 1)``,
  zero-filled outside the image, loaded row by row so global reads are
  coalesced) and the ``KB x R x S`` weights in dynamic shared memory;
* each thread accumulates ``KB x RQ`` outputs in registers.  Its ``RQ``
  columns are ``TB`` apart (not adjacent), so a warp's shared-memory reads
  are consecutive words (no bank conflicts at stride 1) and its global
  stores are coalesced; every weight read is a broadcast.

``direct_global_kernel``: the fallback when the patch does not fit (huge
dilations): one thread per output pixel and ``KB`` channels, reading x
through the L1 cache.

Both take a ``flag``, ``gated`` and ``epoch``: with ``gated=1`` a block exits
unless ``flag[0] == epoch``.  Winograd uses this to recompute a call directly
when its transforms find a non-finite value, without a host round trip (see
:func:`fastconv.cuda._runtime.next_epoch`).
"""

from __future__ import annotations

import functools

import numpy as np

from ._runtime import (
    SETTINGS, SHARED_BYTES, KernelSpec, arg_types, array_type, bind_cuda, cdiv, dummy, launch,
    nbtype, threads_1d,
)

# numba.cuda, bound on first use.  Kernels must see it as a module global:
# the CUDA simulator swaps module globals that are numba.cuda for its fake.
cuda = None


def _bind():
    return bind_cuda(globals())



def supports(p):
    if p.groups > 2**31 // 2:
        return f"groups={p.groups} is too large for the CUDA grid"
    return None


def _choose_kb(Kg: int) -> int:
    kb = 1
    while kb < min(Kg, SETTINGS.direct_k):
        kb *= 2
    return min(kb, max(1, SETTINGS.direct_k))


@functools.lru_cache(maxsize=None)
def _tiled(dtype_str: str, TB: int, KB: int, RQ: int):
    _bind()
    nb = nbtype(dtype_str)
    NT = TB * TB
    TQ = TB * RQ
    NACC = KB * RQ

    def direct_tiled_kernel(x, w, bias, y, flag, gated, epoch, has_bias, C, H, W, K, Cg, Kg, R, S,
                            P, Q, sh, sw, pt, pl, dh, dw, qtiles, kblocks, groups, PH, PW):
        """Layout: flat C-contiguous NCHW x, KCRS w, NKPQ y.  Grid: (qtiles * kblocks * groups * N,
        ptiles); block (TB, TB); dynamic shared memory (PH * PW + KB * R * S) elements."""
        if gated != 0 and flag[0] != epoch:
            return
        smem = cuda.shared.array(0, nb)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TB + tx
        bx = cuda.blockIdx.x
        qt = bx % qtiles
        rest = bx // qtiles
        kb = rest % kblocks
        rest = rest // kblocks
        g = rest % groups
        n = rest // groups
        p0 = cuda.blockIdx.y * TB
        q0 = qt * TQ
        k0 = kb * KB
        RS = R * S
        npatch = PH * PW
        nw = KB * RS
        ih_base = p0 * sh - pt
        iw_base = q0 * sw - pl
        acc = cuda.local.array(NACC, nb)
        for i in range(NACC):
            acc[i] = 0
        xrow = ty * sh
        for c in range(Cg):
            cc = g * Cg + c
            xbase = (n * C + cc) * H * W
            idx = tid
            while idx < npatch:
                ph = idx // PW
                pw = idx - ph * PW
                ih = ih_base + ph
                iw = iw_base + pw
                v = nb(0)
                if ih >= 0 and ih < H and iw >= 0 and iw < W:
                    v = x[xbase + ih * W + iw]
                smem[idx] = v
                idx += NT
            idx = tid
            while idx < nw:
                kk = idx // RS
                rs = idx - kk * RS
                k = k0 + kk
                v = nb(0)
                if k < Kg:
                    v = w[((g * Kg + k) * Cg + c) * RS + rs]
                smem[npatch + idx] = v
                idx += NT
            cuda.syncthreads()
            for r in range(R):
                prow = (xrow + r * dh) * PW
                for s in range(S):
                    col = prow + tx * sw + s * dw
                    wofs = npatch + r * S + s
                    for jq in range(RQ):
                        xv = smem[col + jq * TB * sw]
                        for kk in range(KB):
                            acc[kk * RQ + jq] += smem[wofs + kk * RS] * xv
            cuda.syncthreads()
        p = p0 + ty
        if p < P:
            for kk in range(KB):
                k = k0 + kk
                if k < Kg:
                    kc = g * Kg + k
                    b = nb(0)
                    if has_bias != 0:
                        b = bias[kc]
                    ybase = ((n * K + kc) * P + p) * Q
                    for jq in range(RQ):
                        q = q0 + tx + jq * TB
                        if q < Q:
                            y[ybase + q] = acc[kk * RQ + jq] + b

    return KernelSpec(direct_tiled_kernel, _args(direct_tiled_kernel, dtype_str),
                      dict(TB=TB, KB=KB, RQ=RQ, dtype=dtype_str), register_blocked=True)


@functools.lru_cache(maxsize=None)
def _global(dtype_str: str, KB: int):
    _bind()
    nb = nbtype(dtype_str)

    def direct_global_kernel(x, w, bias, y, flag, gated, epoch, has_bias, C, H, W, K, Cg, Kg, R, S,
                             P, Q, sh, sw, pt, pl, dh, dw, kblocks, groups, total):
        """One thread per (n, group, KB channels, p, q) with q fastest; x and w from global memory."""
        if gated != 0 and flag[0] != epoch:
            return
        i = cuda.grid(1)
        if i >= total:
            return
        q = i % Q
        t = i // Q
        p = t % P
        t = t // P
        kb = t % kblocks
        t = t // kblocks
        g = t % groups
        n = t // groups
        acc = cuda.local.array(KB, nb)
        for kk in range(KB):
            acc[kk] = 0
        RS = R * S
        for c in range(Cg):
            xbase = (n * C + g * Cg + c) * H * W
            for r in range(R):
                ih = p * sh - pt + r * dh
                if ih < 0 or ih >= H:
                    continue
                for s in range(S):
                    iw = q * sw - pl + s * dw
                    if iw < 0 or iw >= W:
                        continue
                    xv = x[xbase + ih * W + iw]
                    for kk in range(KB):
                        k = kb * KB + kk
                        if k < Kg:
                            acc[kk] += w[((g * Kg + k) * Cg + c) * RS + r * S + s] * xv
        for kk in range(KB):
            k = kb * KB + kk
            if k < Kg:
                kc = g * Kg + k
                b = nb(0)
                if has_bias != 0:
                    b = bias[kc]
                y[((n * K + kc) * P + p) * Q + q] = acc[kk] + b

    return KernelSpec(direct_global_kernel, _args(direct_global_kernel, dtype_str),
                      dict(KB=KB, dtype=dtype_str),
                      register_blocked=True)


def _args(fn, dtype_str):
    """x, w, bias, y: flat arrays of the call's dtype; flag: int64; the rest int64 scalars."""
    a = array_type(dtype_str)
    return arg_types(fn, x=a, w=a, bias=a, y=a, flag=array_type(np.int64))


def kb_values():
    """Every KB :func:`_choose_kb` can return under the current settings."""
    return sorted({_choose_kb(kg) for kg in range(1, SETTINGS.direct_k + 1)})


def specializations():
    """Every kernel specialisation :func:`run` can launch under the current settings."""
    TB, RQ = SETTINGS.block, SETTINGS.direct_q
    for dt in ("<f4", "<f8"):
        for KB in kb_values():
            yield _tiled(dt, TB, KB, RQ)
            yield _global(dt, KB)


def patch_shape(p, TB=None, RQ=None):
    TB = SETTINGS.block if TB is None else TB
    RQ = SETTINGS.direct_q if RQ is None else RQ
    sh, sw = p.stride
    dh, dw = p.dilation
    PH = (TB - 1) * sh + (p.R - 1) * dh + 1
    PW = (TB * RQ - 1) * sw + (p.S - 1) * dw + 1
    return PH, PW


def run(x, w, bias, p, y, ctx, flag=None, epoch=0):
    """Direct convolution of flat device arrays; ``flag`` gates it (see the module docstring)."""
    TB, RQ = SETTINGS.block, SETTINGS.direct_q
    KB = _choose_kb(p.Kg)
    itemsize = np.dtype(p.dtype).itemsize
    kblocks = cdiv(p.Kg, KB)
    PH, PW = patch_shape(p, TB, RQ)
    gated = 0 if flag is None else 1
    flag = dummy(np.int64, ctx) if flag is None else flag
    has_bias = 0 if bias is None else 1
    bias = w if bias is None else bias
    sh, sw = p.stride
    dh, dw = p.dilation
    pt, _, pl, _ = p.padding
    common = (x, w, bias, y, flag, gated, epoch, has_bias, p.C, p.H, p.W, p.K, p.Cg, p.Kg, p.R, p.S,
              p.P, p.Q, sh, sw, pt, pl, dh, dw)
    shared = (PH * PW + KB * p.R * p.S) * itemsize
    if shared <= SHARED_BYTES:
        qtiles = cdiv(p.Q, TB * RQ)
        grid = (qtiles * kblocks * p.groups * p.N, cdiv(p.P, TB))
        kern = _tiled(p.dtype.str, TB, KB, RQ)
        launch(kern, grid, (TB, TB), ctx, common + (qtiles, kblocks, p.groups, PH, PW), shared)
    else:
        total = p.N * p.groups * kblocks * p.P * p.Q
        threads = threads_1d()
        launch(_global(p.dtype.str, KB), (cdiv(total, threads),), (threads,), ctx,
               common + (kblocks, p.groups, total))
