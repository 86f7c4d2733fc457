"""Gradients as GEMMs, where the derived convolution is a poor fit.

:mod:`fastconv.grad` computes both gradients as convolutions.  For a 1x1
kernel those are degenerate: the weight gradient's derived convolution has a
P x Q kernel and a 1 x 1 output per pair of images, and the input gradient's
is a 1x1 convolution of ``grad_y`` (strided: a zero-inserted one).  Both are
matrix products on the pixels the forward call read:

* :func:`pointwise_weight`: ``grad_w[k, c] = sum_{n,p,q} gy[n,k,p,q] * xs[n,c,p,q]``,
  per group ``(Kg x NPQ) @ (NPQ x Cg)``;
* :func:`pointwise_input`: ``grad_x[n, c, p*sh - pt, q*sw - pl] = sum_k
  w[k, c] * gy[n, k, p, q]``, per image and group ``(Cg x Kg) @ (Kg x PQ)``,
  every other pixel zero (the forward call never read it).

On small maps the weight gradient of any kernel is better done the same way:
:func:`tap_gemm_weight` multiplies ``gy`` (K x NPQ) by the unfolded input
(NPQ x C*R*S) with :func:`fastconv.cpu._gemm.panel_gemm`'s register tiles
(:func:`tap_gemm_pays` says where), and so is the input gradient:
:func:`tap_gemm_input` multiplies ``gy`` (NPQ x K) by the weights (K x C*R*S)
and adds each column into the input pixel it belongs to (col2im).

Summation order and error bound: every entry is one dot product (``n =
N*P*Q`` terms for the weights, ``Kg`` for the input), summed in an order
fixed by the shapes alone (BLAS splits the two outer dimensions of a GEMM
between threads, never the reduction; the products run through
:func:`fastconv.cpu._gemm.grouped_matmul`, single-threaded BLAS calls in Numba's
pool, as im2col's do), so results do not depend on the
thread count and ``|g - g_exact| <= gamma_n * sum |a| |b|`` with ``gamma_n =
n u / (1 - n u)`` (Higham, *Accuracy and Stability of Numerical Algorithms*,
sec. 3.1); :func:`tap_gemm_weight`'s sums run in pixel order with one fused
multiply-add per term (``n = N*P*Q``), on large maps by chunks of output rows
whose sums are added in order; :func:`tap_gemm_input`'s entries are sums of at most ``R*S``
such dot products over ``K``, added in a fixed order (``n = K*R*S``).
``tests/test_grad.py`` holds all four.
"""

from __future__ import annotations

import numba
import numpy as np

from .._aligned import empty_aligned
from .._config import CPU, JIT, PJIT
from . import _scratch
from ._gemm import PANEL_ROWS, PANEL_VECS, grouped_matmul, panel_gemm
from .packing import swap_middle
from .simd import lanes, sload, sstore, vtranspose


@numba.njit(**PJIT)
def _transpose_groups(a, out):
    """``out[g] = a[g].T`` for ``a`` (G, M, N), in 32 x 32 tiles over Numba's threads."""
    G, M, N = a.shape
    TB = 32
    tm, tn = (M + TB - 1) // TB, (N + TB - 1) // TB
    for job in numba.prange(G * tm * tn):
        g, rest = job // (tm * tn), job % (tm * tn)
        i0, j0 = (rest // tn) * TB, (rest % tn) * TB
        for j in range(j0, min(N, j0 + TB)):
            for i in range(i0, min(M, i0 + TB)):
                out[g, j, i] = a[g, i, j]


def _read_pixels(P, Q, H, W, pads, stride):
    """The output pixels of a 1x1 convolution whose input pixel lies inside the
    ``H x W`` input (the others read padding), as ``(out_index, in_index)``: slices
    of the output's and of the input's last two axes, or None when there are none."""
    (sh, sw), (pt, _, pl, _) = stride, pads
    p0, p1 = -(-pt // sh), min(P, (H - 1 + pt) // sh + 1)
    q0, q1 = -(-pl // sw), min(Q, (W - 1 + pl) // sw + 1)
    if p1 <= p0 or q1 <= q0:
        return None
    return ((slice(p0, p1), slice(q0, q1)),
            (slice(p0 * sh - pt, (p1 - 1) * sh - pt + 1, sh),
             slice(q0 * sw - pl, (q1 - 1) * sw - pl + 1, sw)))


def pointwise_weight(x, gy, pads, stride, groups):
    """``grad_w`` (K, C/groups, 1, 1) of a 1x1 convolution; x (N,C,H,W), gy (N,K,P,Q).

    ``xs`` are the input pixels the forward call read (every ``sh``-th row
    and ``sw``-th column after padding; zero where that is padding, so those
    output pixels are left out).
    """
    N, C, H, W = x.shape
    _, K, P, Q = gy.shape
    G = groups
    Cg, Kg = C // G, K // G
    gw = np.zeros((G, Kg, Cg), dtype=x.dtype)
    read = _read_pixels(P, Q, H, W, pads, stride)
    if read is None:
        return gw.reshape(K, Cg, 1, 1)
    xs = np.ascontiguousarray(x[(..., *read[1])])
    g = np.ascontiguousarray(gy[(..., *read[0])])
    npq = g.shape[2] * g.shape[3]
    # One (Kg x N*npq) @ (N*npq x Cg) product per group: gy's maps of a group side by
    # side over the images, the read pixels transposed to rows.
    a = np.ascontiguousarray(g.reshape(N, G, Kg, npq).transpose(1, 2, 0, 3)).reshape(G, Kg, -1)
    b = np.empty((N, G, npq, Cg), dtype=xs.dtype)
    _transpose_groups(xs.reshape(N * G, Cg, npq), b.reshape(N * G, npq, Cg))
    if N > 1:
        b = np.ascontiguousarray(b.transpose(1, 0, 2, 3))
    grouped_matmul(a, b.reshape(1, G, N * npq, Cg), gw.reshape(1, G, Kg, Cg))
    return gw.reshape(K, Cg, 1, 1)


def pointwise_input(gy, w, out_hw, pads, stride, groups, bias=None):
    """``grad_x`` (N, C, H, W) of a 1x1 convolution (plus ``bias`` per channel, for the
    transposed convolution); gy (N, K, P, Q) may have more or fewer rows than the
    forward output: rows whose pixel falls outside ``out_hw`` are ignored."""
    N, K, P, Q = gy.shape
    _, Cg, _, _ = w.shape
    H, W = out_hw
    G = groups
    Kg, C = K // G, Cg * G
    read = _read_pixels(P, Q, H, W, pads, stride)
    dtype = np.result_type(gy.dtype, w.dtype)
    if read is None:
        gx = np.zeros((N, C, H, W), dtype=dtype)
    else:
        g = np.ascontiguousarray(gy[(..., *read[0])])
        rows, cols = g.shape[2:]
        g = g.reshape(N, G, Kg, -1)
        wt = np.empty((G, Cg, Kg), dtype=dtype)
        _transpose_groups(np.ascontiguousarray(w, dtype=dtype).reshape(G, Kg, Cg), wt)
        res = np.empty((N, G, Cg, g.shape[3]), dtype=dtype)
        grouped_matmul(wt, g.astype(dtype, copy=False), res)
        if (rows, cols) == (H, W):  # every input pixel was read: the product is grad_x
            gx = res.reshape(N, C, H, W)
        else:
            gx = np.zeros((N, C, H, W), dtype=dtype)
            gx[(..., *read[1])] = res.reshape(N, C, rows, cols)
    if bias is not None:
        gx += bias.reshape(1, -1, 1, 1)
    return gx



@numba.njit(**JIT)
def _unfold_row(xf, U, n, p, o0, NB, C, H, W, R, S, Q, sh, sw, dh, dw, pt, qlo, qhi, L):
    # Output row (n, p) of the im2col matrix into U's blocks of L taps: the value of tap
    # j = jb*L + l = (c*R + r)*S + s at its pixel q goes to U[(jb*NB + o0 + q)*L + l], NB
    # the rows of one block, o0 the row's first.  qlo[s] .. qhi[s] - 1 are the q whose
    # column lies inside x for kernel column s (x's column of q at q*sw + qlo[S + s]).  The
    # taps in order (c, r, s), their lane and block counted along, per tap a run over q read
    # along x's row and written every L elements; zero outside x and past the last tap.
    # With L = 1 and NB the row length it writes the transposed matrix (taps x pixels).
    taps = C * R * S
    nb = (taps + L - 1) // L
    zero = xf.dtype.type(0)
    jb, l = 0, 0
    for c in range(C):
        for r in range(R):
            h = p * sh + r * dh - pt
            inside = 0 <= h < H
            src = ((n * C + c) * H + h) * W
            for s in range(S):
                o = (jb * NB + o0) * L + l
                lo, hi = (qlo[s], qhi[s]) if inside else (Q, Q)
                for q in range(lo):
                    sstore(U, o + q * L, zero)
                off = src + qlo[S + s]
                for q in range(lo, hi):
                    sstore(U, o + q * L, sload(xf, off + q * sw))
                for q in range(hi, Q):
                    sstore(U, o + q * L, zero)
                l += 1
                if l == L:
                    l, jb = 0, jb + 1
    for j in range(taps, nb * L):  # the last block's lanes past the last tap
        o = ((j // L) * NB + o0) * L + j % L
        for q in range(Q):
            sstore(U, o + q * L, zero)


@numba.njit(**PJIT)
def _unfold_taps(x, U, R, S, P, Q, sh, sw, dh, dw, pt, qlo, qhi, L):
    # U[(jb*NPQ + (n*P + p)*Q + q)*L + l]: the im2col matrix (pixels x taps) with the taps in
    # blocks of L lanes (_unfold_row); one job per output row (n, p).
    N, C, H, W = x.shape
    NPQ = N * P * Q
    xf = x.reshape(-1)
    for job in numba.prange(N * P):
        _unfold_row(xf, U, job // P, job % P, job * Q, NPQ, C, H, W, R, S, Q, sh, sw, dh, dw,
                    pt, qlo, qhi, L)


@numba.njit(**JIT)
def _chunk(b, cpi, rows, P):
    """``(n, p0, p1)``: chunk ``b`` is output rows ``p0 .. p1 - 1`` of image ``n``, ``cpi``
    chunks of ``rows`` rows per image (the last one shorter)."""
    n = b // cpi
    p0 = (b % cpi) * rows
    return n, p0, min(P, p0 + rows)


@numba.njit(**PJIT)
def _unfold_gemm(x, gy, Mp, R, S, P, Q, sh, sw, dh, dw, pt, qlo, qhi, L, rows):
    # Mp[b, k, j] = sum over the pixels of chunk b of gy[pix, k] * U[pix, j]: one job per
    # chunk of `rows` output rows (p) of one image n, which it unfolds into its own U
    # (_unfold_row) and multiplies at once by all K rows of gy (read in place: within one
    # image a channel's pixels are contiguous), while the chunk is in cache.
    N, C, H, W = x.shape
    K, Kp = Mp.shape[1], Mp.shape[2]
    PQ = P * Q
    nb = Kp // L
    cpi = (P + rows - 1) // rows  # chunks per image
    xf = x.reshape(-1)
    gf = gy.reshape(-1)
    for task in numba.prange(N * cpi):
        b = numba.int64(task)  # one compilation of the callees: see packing.task_coords
        n, p0, p1 = _chunk(b, cpi, rows, P)
        CH = (p1 - p0) * Q
        U = np.empty(nb * CH * L, dtype=x.dtype)
        for p in range(p0, p1):
            _unfold_row(xf, U, n, p, (p - p0) * Q, CH, C, H, W, R, S, Q, sh, sw, dh, dw,
                        pt, qlo, qhi, L)
        panel_gemm(gf, n * K * PQ + p0 * Q, U, 0, Mp[b].reshape(-1), 0, K, PQ, 0, nb, Kp, L,
                   L, CH * L, CH)


@numba.njit(**PJIT)
def _unfold_gemm_t(x, gy, Mp, R, S, P, Q, sh, sw, dh, dw, pt, qlo, qhi, L, rows):
    # Mp[b, j, k] = sum over the pixels of chunk b of U[pix, j] * gy[pix, k]: _unfold_gemm
    # with the roles swapped, for few taps and many output channels.  Each job unfolds its
    # chunk (the same chunks) transposed (UT: taps x pixels, _unfold_row), copies the
    # chunk's gy transposed (GT: pixels x Kp, zero past K), and multiplies UT @ GT: the
    # register tile's rows are taps and its vectors output channels.
    N, C, H, W = x.shape
    K = gy.shape[1]
    taps, Kp = Mp.shape[1], Mp.shape[2]
    PQ = P * Q
    cpi = (P + rows - 1) // rows  # chunks per image
    xf = x.reshape(-1)
    gf = gy.reshape(-1)
    zero = x.dtype.type(0)
    for task in numba.prange(N * cpi):
        b = numba.int64(task)  # one compilation of the callees: see packing.task_coords
        n, p0, p1 = _chunk(b, cpi, rows, P)
        CH = (p1 - p0) * Q
        UT = np.empty(taps * CH, dtype=x.dtype)
        GT = np.empty(CH * Kp, dtype=x.dtype)
        for p in range(p0, p1):
            o0 = (p - p0) * Q
            # one lane per block (L = 1): UT[j * CH + o0 + q], taps x pixels
            _unfold_row(xf, UT, n, p, o0, CH, C, H, W, R, S, Q, sh, sw, dh, dw, pt, qlo, qhi, 1)
            # GT's rows of this output row: L x L blocks (channels x pixels) transposed in
            # registers (the last block of a row overlapping the one before), the channels
            # past the last whole block one by one, zeros past K.
            src = n * K * PQ + p * Q
            kw = K // L * L if Q >= L else 0
            for k0 in range(0, kw, L):
                q0 = 0
                while q0 < Q:
                    q0 = min(q0, Q - L)
                    vtranspose(gf, src + k0 * PQ + q0, PQ, GT, (o0 + q0) * Kp + k0, Kp)
                    q0 += L
            for q in range(Q):
                o = (o0 + q) * Kp
                for k in range(kw, K):
                    sstore(GT, o + k, sload(gf, src + k * PQ + q))
                for k in range(K, Kp):
                    sstore(GT, o + k, zero)
        panel_gemm(UT, 0, GT, 0, Mp[b].reshape(-1), 0, taps, CH, 0, Kp // L, Kp, L, Kp, L)


@numba.njit(**PJIT)
def _sum_chunks(Mp, out):
    # out[i] = sum_b Mp[b, i], the chunks added in order; one job per block of 1024 entries.
    B = Mp.shape[0]
    n = out.shape[0]
    Mf = Mp.reshape(B, n)
    for job in numba.prange((n + 1023) // 1024):
        lo, hi = job * 1024, min(n, job * 1024 + 1024)
        o = out[lo:hi]
        first = Mf[0, lo:hi]
        for i in range(hi - lo):  # a loop, not o[:] = ...: see packing._make_pack_input
            o[i] = first[i]
        for b in range(1, B):
            src = Mf[b, lo:hi]
            for i in range(hi - lo):
                o[i] += src[i]


def _tap_columns(Q, S, W, sw, dw, pl):
    """``[qlo[0..S), offset[0..S)]`` and ``qhi[0..S)`` of :func:`_unfold_taps`: per kernel column
    ``s`` the outputs ``q`` whose input column ``q*sw + s*dw - pl`` lies inside ``0 .. W-1``."""
    qlo = np.empty(2 * S, dtype=np.int64)
    qhi = np.empty(S, dtype=np.int64)
    for s in range(S):
        off = s * dw - pl
        lo = 0 if off >= 0 else min(Q, (-off + sw - 1) // sw)
        hi = 0 if W - 1 - off < 0 else min(Q, (W - 1 - off) // sw + 1)
        qlo[s], qhi[s], qlo[S + s] = lo, max(lo, hi), off
    return qlo, qhi


@numba.njit(**PJIT)
def _panel_rows(V, U, M, T, Cp, nb, Kp, L, TR, JB, ucs, ubs):
    # M[t, j] = sum_c V[t, c] U[c, j] for T rows t (V: T rows of Cp; U: panel_gemm's blocks of
    # L columns, or row-major with rows of ucs when ucs > 0 (ubs = L); M: T rows of Kp), one
    # job per TR rows and JB column blocks; every sum runs over c in order, however the jobs
    # split the work.
    nt = (T + TR - 1) // TR
    njb = (nb + JB - 1) // JB
    for job in numba.prange(nt * njb):
        t, b = job // njb, job % njb
        t0 = t * TR
        panel_gemm(V, t0 * Cp, U, 0, M, t0 * Kp, min(TR, T - t0), Cp, b * JB,
                   min(nb, (b + 1) * JB), Kp, L, ucs, ubs)


def _panel_jobs(T, nb, L):
    """``(TR, JB)`` of :func:`_panel_rows`: about four jobs per thread.

    Every job reads its ``JB`` column blocks of ``U`` once per ``TR`` rows and
    its ``TR`` rows of ``V`` once per column block.  When ``U`` is much the
    larger operand (``nb * L`` columns against ``T`` rows, 16 times as many
    and more: the weights of a deep layer against a few output pixels) each
    job takes all rows and a share of the columns, so ``U`` streams from
    memory once; otherwise the rows are shared out in whole register tiles.
    """
    threads = max(1, numba.get_num_threads())
    if nb * L >= 16 * T and nb >= 4 * PANEL_VECS * threads:
        return T, PANEL_VECS * max(1, nb // (4 * PANEL_VECS * threads))
    TR = PANEL_ROWS * max(1, -(-T // (PANEL_ROWS * threads)))
    JB = PANEL_VECS * max(1, -(-nb // (4 * PANEL_VECS)))
    return TR, JB


def _tap_blocks(taps, dtype):
    """``(L, nb, Kp)``: lanes of ``dtype``, vectors of ``taps`` taps, and the taps padded to them."""
    L = lanes(dtype)
    nb = -(-taps // L)
    return L, nb, nb * L


def tap_gemm_pays(x_shape, gy_shape, RS, groups, stride=(1, 1)) -> bool:
    """Whether :func:`tap_gemm_weight` computes this weight gradient.

    It does for ungrouped layers whose reduction ``N*P*Q`` is at most
    ``CPU.grad_gemm_max_pixels`` (``..._strided`` with a stride): small maps
    (the deep stages of a network, any batch).  There the derived convolution
    has a kernel of a few pixels and an ``R x S`` output, too few output
    pixels for the forward kernels' register blocks; the GEMM's register tile
    spans output channels and taps instead, and its operands (``N*P*Q`` times
    a block of taps or channels) stay in cache without blocking the reduction.

    It also does for the first layer of a network (at most
    ``CPU.grad_gemm_large_map_taps`` taps ``C*R*S``, an output map of at least
    ``CPU.grad_gemm_large_map_pixels``), while the unfolded input fits
    ``CPU.workspace_bytes``: there the derived convolution repacks ``gy``'s
    whole large map as its kernel on every call, and the unfold is a few taps
    per pixel.
    """
    N, C = x_shape[0], x_shape[1]
    _, K, P, Q = gy_shape
    npq = N * P * Q
    if groups != 1 or npq == 0 or K < 2:
        return False
    strided = tuple(stride) != (1, 1)
    limit = CPU.grad_gemm_max_pixels_strided if strided else CPU.grad_gemm_max_pixels
    if npq <= limit:
        return True
    taps = C * RS[0] * RS[1]
    # taps in whole 16-lane vectors of 8 bytes: a bound for either dtype
    unfold_bytes = -(-taps // 16) * 16 * npq * 8
    return (P * Q >= CPU.grad_gemm_large_map_pixels and taps <= CPU.grad_gemm_large_map_taps
            and unfold_bytes <= CPU.workspace_bytes)


def _width_fill(n, L):
    """Share of panel_gemm's register-tile columns that ``n`` columns of ``L`` lanes fill:
    vectors over the vectors of the tiles they take (a partial tile issues fewer
    multiply-adds per vector load and broadcast)."""
    v = -(-n // L)
    return v / (-(-v // PANEL_VECS) * PANEL_VECS)


def swaps_roles(taps, K, dtype) -> bool:
    """Whether :func:`tap_gemm_weight`'s chunks run with taps and output channels swapped.

    They do where the output channels fill the register tile's width
    (:func:`_width_fill`) by more than 0.1 better than the taps do: a 3-channel
    3x3 first layer on AVX-512 has 27 taps in 2 of the tile's 4 vectors (0.5)
    against 64 channels in 4 (1.0); a 7x7 one 147 taps in 10 of 12 (0.83).
    With AVX2's 2-vector tiles the taps fill it (27 taps: 4 of 4; 147: 19 of
    20), and the plain orientation stays.
    """
    L = lanes(dtype)
    return _width_fill(K, L) > _width_fill(taps, L) + 0.1


def tap_gemm_weight(x, gy, RS, pads, stride, dilation):
    """``grad_w`` (K, C, R, S) of an ungrouped layer as one GEMM over ``x``'s unfolded taps.

    ``grad_w[k, j] = sum_{(n, p, q)} gy[n, k, p, q] * U[(n, p, q), j]``, ``j = (c, r, s)``,
    with ``U`` the input values under each output pixel's window (zero in the
    padding): ``(K x N*P*Q) @ (N*P*Q x C*R*S)`` through
    :func:`fastconv.cpu._gemm.panel_gemm`'s register tiles, ``U`` laid out in
    blocks of one vector of taps.  Where ``U`` is at most two chunks of
    ``CPU.grad_gemm_chunk_bytes``, or a chunk would hold fewer than ``4 K``
    pixels, it is unfolded whole and the rows of ``grad_w`` are shared out
    between the threads; on larger maps with few taps (first layers) each
    job takes a chunk of output rows of one image, unfolds it and multiplies
    it by ``gy``'s rows read in place while it is in cache (no unfolded or
    transposed copy of a whole operand travels through memory), and the
    chunks' products are added in chunk order.
    Where the output channels fill the register tiles better than the taps
    (:func:`swaps_roles`), the chunks run with the roles swapped
    (:func:`_unfold_gemm_t`): taps x pixels times pixels x output channels,
    ``gy``'s chunk transposed in registers.

    Summation order and error bound: each entry sums its ``n = N*P*Q`` products
    in pixel order with one fused multiply-add per term -- per chunk, then the
    chunks' sums in order -- an order fixed by the shapes and
    ``grad_gemm_chunk_bytes``, not the thread count; every product passes
    through at most ``n`` roundings, so ``|g - g_exact| <= gamma_n * sum |gy| |x|``.
    """
    N, C, H, W = x.shape
    _, K, P, Q = gy.shape
    R, S = RS
    dtype = np.result_type(x.dtype, gy.dtype)
    taps = C * R * S
    npq = N * P * Q
    L, nb, Kp = _tap_blocks(taps, dtype)
    (sh, sw), (dh, dw) = stride, dilation
    cols = _tap_columns(Q, S, W, sw, dw, pads[2])
    xc = np.ascontiguousarray(x, dtype=dtype)
    gyc = np.ascontiguousarray(gy, dtype=dtype)
    item = np.dtype(dtype).itemsize
    rows = max(1, CPU.grad_gemm_chunk_bytes // (Q * Kp * item))
    M = empty_aligned(K * Kp, dtype)
    if rows >= 2 * N * P or rows * Q < 4 * K:
        # The whole unfold fits the chunk budget twice over, or a chunk would hold
        # fewer than 4 pixels per output channel (many taps: deep layers on small
        # maps), so that the chunks' partial products would outweigh the unfold:
        # unfold it whole, then share the GEMM's rows and tap blocks out between the
        # threads.
        V = swap_middle(gyc[None]).reshape(-1)  # V[k, (n, p, q)] = gy[n, k, p, q]
        U = _scratch.buffer("grad_gemm.U", dtype, nb * npq * L)
        _unfold_taps(xc, U, R, S, P, Q, sh, sw, dh, dw, pads[0], *cols, L)
        _panel_rows(V, U, M, K, npq, nb, Kp, L, *_panel_jobs(K, nb, L), 0, 0)
    else:
        # Large maps (first layers): chunks of output rows of one image each, unfolded
        # and multiplied while in cache, their partial products added in chunk order.
        cpi = -(-P // min(rows, P))  # chunks per image, of equal rows
        rows = -(-P // cpi)
        nchunk = N * cpi
        if swaps_roles(taps, K, dtype):
            # Few taps: the same chunks with the roles swapped.  Each product is the
            # same fused multiply-add in the same pixel order: the result is bitwise
            # that of the other orientation.
            KB = -(-K // L)
            Mp = _scratch.buffer("grad_gemm.Mp", dtype, nchunk * taps * KB * L)
            MT = np.empty(taps * KB * L, dtype=dtype)
            _unfold_gemm_t(xc, gyc, Mp.reshape(nchunk, taps, KB * L), R, S, P, Q, sh, sw, dh,
                           dw, pads[0], *cols, L, rows)
            _sum_chunks(Mp.reshape(nchunk, -1), MT)
            return np.ascontiguousarray(MT.reshape(taps, KB * L)[:, :K].T).reshape(K, C, R, S)
        Mp = _scratch.buffer("grad_gemm.Mp", dtype, nchunk * K * Kp).reshape(nchunk, K, Kp)
        _unfold_gemm(xc, gyc, Mp, R, S, P, Q, sh, sw, dh, dw, pads[0], *cols, L, rows)
        _sum_chunks(Mp, M)
    gw = M.reshape(K, Kp)
    if Kp != taps:
        gw = np.ascontiguousarray(gw[:, :taps])
    return gw.reshape(K, C, R, S)


@numba.njit(**PJIT)
def _col2im(M, gx, P, Q, R, S, sh, sw, dh, dw, pt, pl, Kp, CB):
    # gx[n, c, p*sh + r*dh - pt, q*sw + s*dw - pl] += M[(n*P + p)*Q + q, (c*R + r)*S + s] over
    # the positions inside gx, in (p, q, r, s) order.  One job per image and block of CB
    # channels: each pixel's row of M holds the block's CB*R*S columns side by side, so a
    # job reads them as one contiguous run instead of one short run per channel.  The taps
    # that land inside gx are found once per row p and column q, not tested per tap.
    N, C, H, W = gx.shape
    RS = R * S
    HW = H * W
    g = gx.reshape(-1)
    nblk = -(-C // CB)
    for job in numba.prange(N * nblk):
        n, c0 = job // nblk, (job % nblk) * CB
        cb = min(CB, C - c0)
        for p in range(P):
            h0 = p * sh - pt
            r0 = max(0, -(h0 // dh) if h0 < 0 else 0)  # first r with h0 + r*dh >= 0
            r1 = min(R, (H - 1 - h0) // dh + 1) if H - 1 - h0 >= 0 else 0
            for q in range(Q):
                w0 = q * sw - pl
                s0 = max(0, -(w0 // dw) if w0 < 0 else 0)
                s1 = min(S, (W - 1 - w0) // dw + 1) if W - 1 - w0 >= 0 else 0
                row = ((n * P + p) * Q + q) * Kp + c0 * RS
                out = (n * C + c0) * HW + h0 * W + w0
                for cc in range(cb):
                    for r in range(r0, r1):
                        at = out + cc * HW + r * dh * W
                        src = row + cc * RS + r * S
                        for s in range(s0, s1):
                            g[at + s * dw] += M[src + s]


def tap_gemm_input_pays(gy_shape, w_shape, stride, groups, dilation=(1, 1)) -> bool:
    """Whether :func:`tap_gemm_input` computes this input gradient.

    It does for ungrouped layers whose ``N*P*Q`` (the rows of its GEMM) is at
    most ``CPU.grad_input_gemm_max_pixels`` (``..._strided`` with a stride):
    there the derived convolution has an output of a few pixels over many
    channels (see :func:`tap_gemm_pays`), and with a stride it also multiplies
    the zeros inserted between ``grad_y``'s pixels, which the GEMM never does.
    The exception is a deep 3x3 stride-1 layer on maps of at least
    ``grad_input_gemm_winograd_side`` (ResNet's 7x7 stage) on a target whose
    F(4x4) stream schedule keeps several tiles in registers
    (:data:`fastconv.cpu.winograd.stream.STREAM4_TILES`): the derived
    convolution's F(4x4) then does 4x fewer multiplies than the GEMM and
    transforms the new kernels in registers.
    """
    N, K, P, Q = gy_shape
    _, C, R, S = w_shape
    stride1 = tuple(stride) == (1, 1)
    if (stride1 and tuple(dilation) == (1, 1) and (R, S) == (3, 3)
            and min(P, Q) >= CPU.grad_input_gemm_winograd_side
            and min(C, K) >= CPU.grad_input_gemm_winograd_channels):
        from .winograd.stream import STREAM4_TILES

        if STREAM4_TILES > 1:
            return False
    limit = CPU.grad_input_gemm_max_pixels if stride1 else CPU.grad_input_gemm_max_pixels_strided
    return groups == 1 and 0 < N * P * Q <= limit and C > 1


def tap_gemm_input(gy, w, out_hw, pads, stride, dilation, bias=None):
    """``grad_x`` (N, C, H, W) of an ungrouped layer as a GEMM and a col2im.

    ``cols[(n, p, q), (c, r, s)] = sum_k gy[n, k, p, q] * w[k, c, r, s]``:
    ``(N*P*Q x K) @ (K x C*R*S)`` through :func:`fastconv.cpu._gemm.panel_gemm`,
    which reads ``w``'s rows of taps in place as vectors of taps (no
    transpose or flip of single weights; a copy only to pad the rows to whole
    vectors), then every column added into the input pixel it came from
    (``col2im``); ``bias`` per channel, for the transposed convolution.  ``gy``
    may have more or fewer rows than the forward output of ``out_hw``: pixels
    outside the input are dropped.  Each entry of ``grad_x`` sums at most
    ``R*S`` dot products of ``K`` terms, each in a fixed order
    (``gamma_{K*R*S}``), whatever the thread count.
    """
    N, K, P, Q = gy.shape
    _, C, R, S = w.shape
    H, W = out_hw
    dtype = np.result_type(gy.dtype, w.dtype)
    taps = C * R * S
    L, nb, Kp = _tap_blocks(taps, dtype)
    npq = N * P * Q
    # U[k, jb*L + l] = w[k, jb*L + l]: w's rows of taps (zero past the last tap), read by
    # panel_gemm with row stride Kp and block stride L.
    w2 = np.ascontiguousarray(w, dtype=dtype).reshape(K, taps)
    if Kp != taps:
        w2 = np.concatenate([w2, np.zeros((K, Kp - taps), dtype=dtype)], axis=1)
    U = w2.reshape(-1)
    # V[(n, p, q), k] = gy[n, k, p, q]
    V = np.empty((N, P * Q, K), dtype=dtype)
    _transpose_groups(np.ascontiguousarray(gy, dtype=dtype).reshape(N, K, P * Q), V)
    M = _scratch.buffer("grad_gemm.M", dtype, npq * Kp)
    _panel_rows(V.reshape(-1), U, M, npq, K, nb, Kp, L, *_panel_jobs(npq, nb, L), Kp, L)
    gx = np.zeros((N, C, H, W), dtype=dtype)
    (sh, sw), (dh, dw) = stride, dilation
    # Blocks of up to 16 channels, fewer where that would leave under 4 jobs per thread.
    CB = max(1, min(16, N * C // (4 * numba.get_num_threads())))
    _col2im(M, gx, P, Q, R, S, sh, sw, dh, dw, pads[0], pads[2], Kp, CB)
    if bias is not None:
        gx += bias.reshape(1, -1, 1, 1)
    return gx
