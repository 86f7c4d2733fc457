"""Winograd F(m x m, 3 x 3) vectorised across channels (the oneDNN / NNPACK layout).

The tile-row path (:mod:`fastconv.cpu.winograd.tile_row`) vectorises its
transforms along a row of tiles: 7 tiles on a 28 x 28 map, half a 16-lane
vector, with a strided gather per tile, so on small maps its input and
output transforms cost as much as the GEMMs.  This path vectorises across
channels instead, so every vector is full whatever the map size:

1. the input is packed to ``[N, CB, Hp, Wp, L]`` (``L`` = 16 float32 / 8
   float64 channels; zero padding and zero channels past ``C``:
   :func:`fastconv.cpu.packing.pack_input_blocked`), ``Hp x Wp`` covering
   every tile;
2. tiles are numbered over images and tile rows (so even a 7x7 map gives
   full work items), and three steps run on runs of ``T`` of them:

   * input transform: for each tile and channel block, the ``alpha x alpha``
     input vectors ``d`` give ``B^T d B`` (``alpha^2`` vectors, one FMA per
     matrix entry, zeros included), stored as ``V[a, t, c]`` (channels
     contiguous);
   * ``alpha^2`` products ``M[a] (T x Kp) = V[a] (T x Cp) @ U[a] (Cp x Kp)``
     by a register-blocked micro-kernel (:func:`fastconv.cpu._gemm.panel_gemm`:
     6 tiles x 4 vectors of output channels in 24 accumulators on AVX-512,
     6 x 2 on AVX2; a BLAS call pays
     its packing and dispatch on every one of these thin products), ``U``
     the kernel transform laid out ``(alpha^2, KB, Cp, L)`` and zero-padded
     (:func:`fastconv.cpu.winograd.stream.transform_weights`; kept by the
     weight cache, except in the stream schedule below);
   * output transform: ``A^T M A`` for each tile and block of ``L`` output
     channels, plus the bias, written into a blocked output, then
     transposed into ``y`` (NCHW), cropped at the map's edge.

   Three schedules (:func:`plan`): **fused**, one parallel loop over items
   of ``T`` tiles, each running the three steps while its ``V`` and ``M``
   are in cache but streaming all of ``U`` (large maps and batches);
   **split**, where a slice of tiles runs the three steps as three parallel
   loops and the products are shared out by (``a``, block of output
   channels), so ``U`` is read once per slice (deep layers on small maps,
   where ``U`` outweighs the tiles: 38 MB of ``U`` for 4 tiles of a
   512-channel 7x7 map, which the fused schedule would read once per
   item); and **stream**, a split call in one slice whose products
   transform their own kernels from the caller's KCRS weights, so that no
   transformed weights are prepared or kept: F(2x2) per product job into a
   per-thread ``U``, F(4x4) (on at most ``vec_stream4_max_tiles`` tiles)
   each ``U'`` vector in registers where the products use it.  How, and
   why that beats a kept ``U`` there: :mod:`fastconv.cpu.winograd.stream`.

Results are the same sums as the tile-row path's (the same transform
matrices), evaluated as dense FMA chains: each entry of ``B^T d`` is
``sum_k BT[i, k] d[k]`` accumulated in ``k`` order with one rounding per
term, which the componentwise bound of
:func:`fastconv.accuracy.error_bound` covers (it counts one rounding per
term of every transform sum; the kernel transform's roundings are counted
in :mod:`fastconv.cpu.winograd.stream`).  A non-finite output (NaN/inf
input or weight, or overflow) makes the caller recompute the call with
``direct``.

Used for ``groups == 1`` on maps at most ``vec_max_q`` wide; otherwise the
tile-row path runs.  Scratch: per Numba thread one item's ``V`` and ``M``
(fused, ``vec_item_bytes``) or one slice's (split,
``vec_split_slice_bytes``), plus the packed input and the blocked output of
a slice of images, all within ``FASTCONV_WORKSPACE_MB``; the stream schedule
adds per Numba thread its jobs' kernels
(:func:`fastconv.cpu.winograd.stream.stream_scratch`): for F(2x2)
transformed, ``alpha^2 * vec_split_kchunk * L * Cp`` elements (2 MiB for 512
float32 channels), for F(4x4) gathered, ``9 L Cp`` (288 KiB for 512).  The
``vec_*`` limits are fields of :class:`fastconv._config.CpuSettings`
(``fastconv._config.CPU``), read at call time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numba
import numpy as np

from ..._config import CPU, JIT, PJIT
from ..._epilogue import NONE
from ...winograd_math import transform_matrices
from .. import _scratch, epilogue
from .._gemm import panel_gemm
from ..packing import pack_input_blocked, padded_bias, unpack_blocked_output
from ..simd import all_finite, lanes, sget, sset, stack_vectors, vfma, vload, vsplat, vstore
from . import few
from .stream import (_KT_CHANNELS, F2_SCALE, F4_SCALE, STREAM4_TILES, _apart, _kt_scratch,
                     _stream4_products, _TB2, stream_scratch)


@numba.njit(**JIT)
def _tile_position(tile, per_img, tiles_w):
    """(image, tile row, tile column) of tile number ``tile`` (raster order over the batch)."""
    n = tile // per_img
    r = tile - n * per_img
    th = r // tiles_w
    return n, th, r - th * tiles_w


def _make_tile_transforms(m: int):
    """The input and output transforms of one tile for F(m x m, 3 x 3).

    Closures over integers only (``A``, ``A2``, ``m``): their loops have
    constant trip counts, so LLVM unrolls them and keeps the ``alpha^2``
    vectors of a tile in registers, and Numba's on-disk cache key stays the
    same from one process to the next (a closure over another jitted
    function would be recompiled in every process).
    """
    A = m + 2
    A2 = A * A

    @numba.njit(**JIT)
    def input_tile(xb, base, Wp, L, BT, V, voff, vstride):
        # V[a * vstride + voff + l] = (B^T d B)[a] for the alpha x alpha input vectors d from base
        d = stack_vectors(V, A2)
        e = stack_vectors(V, A2)
        for i in range(A):
            for j in range(A):
                sset(d, i * A + j, vload(xb, base + (i * Wp + j) * L))
        for i in range(A):  # e = B^T d
            for j in range(A):
                acc = vsplat(0, V)
                for k in range(A):
                    acc = vfma(vsplat(BT[i, k], V), sget(d, k * A + j), acc)
                sset(e, i * A + j, acc)
        for i in range(A):  # V = e B
            for j in range(A):
                acc = vsplat(0, V)
                for k in range(A):
                    acc = vfma(vsplat(BT[j, k], V), sget(e, i * A + k), acc)
                vstore(V, (i * A + j) * vstride + voff, acc)

    @numba.njit(**JIT)
    def output_tile(M, moff, mstride, AT, bv, yb, ybase, p0, q0, P, Q, L, chk):
        # yb[ybase + (p * Q + q) * L + l] = (A^T M A)[p - p0, q - q0] + bias for the m x m
        # outputs of the tile inside the map; returns chk + 0 * every output (NaN if one is not finite)
        d = stack_vectors(M, A2)
        e = stack_vectors(M, A2)
        zero = vsplat(0, M)
        for i in range(A):
            for j in range(A):
                sset(d, i * A + j, vload(M, (i * A + j) * mstride + moff))
        for i in range(m):  # e = A^T M   (m x alpha)
            for j in range(A):
                acc = vsplat(0, M)
                for k in range(A):
                    acc = vfma(vsplat(AT[i, k], M), sget(d, k * A + j), acc)
                sset(e, i * A + j, acc)
        for i in range(m):  # e A + bias   (m x m)
            p = p0 + i
            for j in range(m):
                acc = bv
                for k in range(A):
                    acc = vfma(vsplat(AT[j, k], M), sget(e, i * A + k), acc)
                chk = vfma(acc, zero, chk)
                q = q0 + j
                if p < P and q < Q:
                    vstore(yb, ybase + (p * Q + q) * L, acc)
        return chk

    return input_tile, output_tile


_IN2, _OUT2 = _make_tile_transforms(2)
_IN4, _OUT4 = _make_tile_transforms(4)


def _make_fused(m: int):
    """The fused schedule of F(m x m, 3 x 3) (``m`` a closure constant: only its own tile
    transforms are compiled in)."""

    @numba.njit(**PJIT)
    def fused(xb, U, BT, AT, bias, yb, Nimg, bad, CB, Hp, Wp, KB, K, P, Q, tiles_h, tiles_w,
              T_item, vwork, mwork, twork, upto):
        # One parallel loop over items of T_item tiles: input transform, the alpha^2 products
        # (each item streams all of U), output transform.  upto < 3 stops each item after the
        # input transform (1) or the products (2): only for timing the phases (profile).
        L = twork.shape[1]
        A2 = (m + 2) * (m + 2)
        Cp, Kp = CB * L, KB * L
        per_img = tiles_h * tiles_w
        total = Nimg * per_img
        nitems = (total + T_item - 1) // T_item
        PQ = P * Q
        for item in numba.prange(nitems):
            t0 = item * T_item
            T = min(T_item, total - t0)
            tid = numba.get_thread_id()
            Vb = vwork[tid]
            Mb = mwork[tid]
            vs, ms = _apart(T * Cp, L), _apart(T * Kp, L)
            for tt in range(T):
                n, th, tw = _tile_position(t0 + tt, per_img, tiles_w)
                for cb in range(CB):
                    base = (((n * CB + cb) * Hp + th * m) * Wp + tw * m) * L
                    if m == 2:
                        _IN2(xb, base, Wp, L, BT, Vb, tt * Cp + cb * L, vs)
                    else:
                        _IN4(xb, base, Wp, L, BT, Vb, tt * Cp + cb * L, vs)
            if upto < 2:
                continue
            for a in range(A2):
                panel_gemm(Vb, a * vs, U, a * KB * Cp * L, Mb, a * ms, T, Cp, 0, KB, Kp, L)
            if upto < 3:
                continue
            chk = vsplat(0, Vb)  # stays 0 unless an output is inf or NaN (x * 0 is NaN then)
            for tt in range(T):
                n, th, tw = _tile_position(t0 + tt, per_img, tiles_w)
                for kb in range(KB):
                    args = (Mb, tt * Kp + kb * L, ms, AT, vload(bias, kb * L), yb,
                            (n * KB + kb) * PQ * L, th * m, tw * m, P, Q, L, chk)
                    chk = _OUT2(*args) if m == 2 else _OUT4(*args)
            bad[item] = not all_finite(chk, twork[tid])

    return fused


_FUSED = {2: _make_fused(2), 4: _make_fused(4)}


def _make_split(m: int, stream: bool):
    """The split schedule of F(m x m, 3 x 3), with a kept ``U`` or (``stream``) the weights
    transformed by the products (closure constants: only that variant is compiled in)."""
    inline = stream and m == 4

    @numba.njit(**PJIT)
    def split(xb, U, BT, AT, bias, yb, t_begin, T, bad, CB, Hp, Wp, KB, K, P, Q, tiles_h,
              tiles_w, V, M, twork, kchunk, C, Gm, uwork, wlwork, fresh_u, upto):
        # Tiles t_begin .. t_begin + T - 1 in three parallel loops: input transforms
        # (tile x channel block), the products split by (alpha^2 element, block of output
        # channels) so that U is read once, and output transforms (channel block x tile).
        # stream: U is the flat KCRS weights instead, and each product job transforms the
        # kernels of its output channels itself: F(2x2) those of its kchunk blocks into its
        # thread's uwork first; F(4x4) each where it is used (_stream4_products, uwork
        # holding the gathered weights, V laid out by channel block and group of tiles).
        L = twork.shape[1]
        A2 = (m + 2) * (m + 2)
        Cp, Kp = CB * L, KB * L
        per_img = tiles_h * tiles_w
        PQ = P * Q
        vs, ms = _apart(T * Cp, L), _apart(T * Kp, L)
        TB = STREAM4_TILES
        Tv = (T + TB - 1) // TB * TB if inline else T  # tiles with V (inline: whole groups)
        for job in numba.prange(Tv * CB):
            tt, cb = job // CB, job % CB
            if inline:  # V: (CB, groups, A2, TB, L)
                voff, vst = ((cb * (Tv // TB) + tt // TB) * A2 * TB + tt % TB) * L, TB * L
            else:
                voff, vst = tt * Cp + cb * L, vs
            if tt < T:
                n, th, tw = _tile_position(t_begin + tt, per_img, tiles_w)
                base = (((n * CB + cb) * Hp + th * m) * Wp + tw * m) * L
                if m == 2:
                    _IN2(xb, base, Wp, L, BT, V, voff, vst)
                else:
                    _IN4(xb, base, Wp, L, BT, V, voff, vst)
            else:  # a group's missing tiles: zeros (their products are not stored)
                zero = vsplat(0, V)
                for a in range(A2):
                    vstore(V, voff + a * vst, zero)
        if upto < 2:
            return
        nkc = (KB + kchunk - 1) // kchunk
        if inline:
            for kb in numba.prange(KB):
                # int64(kb): one compilation of the callee (see packing.task_coords)
                _stream4_products(U, K, C, numba.int64(kb), uwork[numba.get_thread_id()], V, T,
                                  Cp, M, ms, Kp)
        elif stream:
            ncb = (Cp + _KT_CHANNELS - 1) // _KT_CHANNELS
            for job in numba.prange(nkc):
                kb0, kb1 = job * kchunk, min(KB, job * kchunk + kchunk)
                tid = numba.get_thread_id()
                Ut = uwork[tid]
                astride = _apart((kb1 - kb0) * Cp * L, L)  # Ut: (alpha^2, kb1 - kb0, Cp, L)
                for kb in range(kb0, kb1):
                    for cb in range(ncb):
                        c0 = cb * _KT_CHANNELS
                        _TB2(U, K, C, Gm, kb * L, c0, min(Cp, c0 + _KT_CHANNELS),
                             wlwork[tid], Ut, ((kb - kb0) * Cp + c0) * L, astride)
                for a in range(A2):
                    panel_gemm(V, a * vs, Ut, a * astride - kb0 * Cp * L, M, a * ms, T, Cp,
                               kb0, kb1, Kp, L)
        else:
            # fresh_u: U was just written by this call's kernel transform (by blocks of output
            # channels): jobs by channel block first, so each core reads the U it wrote
            # (from its own cache, not the other core's).  A kept U: by a first, so a core's
            # consecutive jobs share V[a].
            for job in numba.prange(A2 * nkc):
                if fresh_u:
                    kc, a = job // A2, job % A2
                else:
                    a, kc = job // nkc, job % nkc
                panel_gemm(V, a * vs, U, a * KB * Cp * L, M, a * ms, T, Cp,
                           kc * kchunk, min(KB, kc * kchunk + kchunk), Kp, L)
        if upto < 3:
            return
        # by blocks of output channels, as the products: each core reads the M it wrote
        for job in numba.prange(T * KB):
            kb, tt = job // T, job % T
            n, th, tw = _tile_position(t_begin + tt, per_img, tiles_w)
            args = (M, tt * Kp + kb * L, ms, AT, vload(bias, kb * L), yb,
                    (n * KB + kb) * PQ * L, th * m, tw * m, P, Q, L, vsplat(0, M))
            chk = _OUT2(*args) if m == 2 else _OUT4(*args)
            if not all_finite(chk, twork[numba.get_thread_id()]):
                bad[0] = True

    return split


_SPLIT = {(m, stream): _make_split(m, stream) for m in (2, 4) for stream in (False, True)}


def uv_bytes(K, C, m, dtype) -> int:
    """Bytes of the padded transformed weights of this path."""
    L = lanes(dtype)
    return (m + 2) ** 2 * (-(-C // L) * L) * (-(-K // L) * L) * np.dtype(dtype).itemsize


@dataclass(frozen=True)
class VecPlan:
    """How this path runs one call (:func:`plan`).

    ``mode`` is ``"fused"`` (one parallel loop over items of ``tiles`` tiles;
    each item streams all of U), ``"split"`` (slices of ``tiles`` tiles in
    three parallel loops; the products are split by output channels, so U is
    read once per slice) or ``"stream"`` (split, one slice of all the call's
    tiles, and each product job transforms its own output channels' kernels:
    no U is prepared or kept); ``nb`` images are packed at a time.
    """

    mode: str
    tiles: int
    nb: int


def plan(p, m, fresh=False):
    """How this path runs ``p`` (a :class:`VecPlan`), or None if it does not fit.

    The path takes ``groups == 1`` calls with output rows of at most
    ``vec_max_q`` whose packed input and blocked output for one image fit
    half the workspace (the limits are fields of
    :class:`fastconv._config.CpuSettings`).  It splits when all the tiles of
    a call fit one slice of at most ``vec_split_slice_bytes`` and U is at
    least ``vec_split_min_u_ratio`` times that slice (deep layers on small
    maps: streaming U once per item would dominate), or when U is over
    ``vec_max_u_bytes``; otherwise it fuses.  A split call whose tiles all
    fit one slice streams (``vec_stream_kernels``; F(4x4) only on at most
    ``vec_stream4_max_tiles`` tiles, as its transform is redone for every
    group of 4 tiles): its kernel transform (additions and doublings, see
    :data:`~fastconv.cpu.winograd.stream.F2_SCALE`,
    :data:`~fastconv.cpu.winograd.stream.F4_SCALE`) then costs less than reading a kept
    U that outweighs the tiles (and less than the exact weight check of the
    weight cache, which reads the weights and their snapshot besides: on
    ResNet-50's 512-channel layer, 35.6 MB a call for F(2x2), more than the
    last-level cache).  ``fresh``: the weights are prepared for this call
    alone (the weight cache's one-call build: weights that change between
    calls), so a kept U would be transformed, written and read once; F(4x4)
    then streams on up to ``vec_stream4_max_tiles_fresh`` tiles -- where its
    register block holds several tiles (``STREAM4_TILES > 1``): with one tile
    per kernel transform (16 registers) the transforms outweigh a kept U's
    traffic from a few tiles on.

    F(4x4) with at most ``few.MAX_CG`` input channels goes to the
    tile-row path instead, whose few-channel schedule does not pad the
    channels to a vector (3 -> 16, mostly zeros).
    """
    if p.groups != 1 or p.Q > CPU.vec_max_q or (m == 4 and p.Cg <= few.MAX_CG):
        return None
    L = lanes(p.dtype)
    item = p.dtype.itemsize
    A2 = (m + 2) ** 2
    Cp, Kp = -(-p.C // L) * L, -(-p.K // L) * L
    u_bytes = A2 * Cp * Kp * item
    tiles_h, tiles_w = -(-p.P // m), -(-p.Q // m)
    per_image = (Cp * (tiles_h * m + 2) * (tiles_w * m + 2) + Kp * p.P * p.Q) * item
    half = CPU.workspace_bytes // 2
    if per_image > half:
        return None
    nb = max(1, min(p.N, half // per_image))
    total = nb * tiles_h * tiles_w
    per_tile = A2 * (Cp + Kp) * item
    slice_tiles = max(1, min(CPU.vec_split_slice_bytes, half) // per_tile)
    calls_tiles = p.N * tiles_h * tiles_w
    if (calls_tiles <= slice_tiles
            and u_bytes >= CPU.vec_split_min_u_ratio * calls_tiles * per_tile) \
            or u_bytes > CPU.vec_max_u_bytes:
        if CPU.vec_stream_kernels and calls_tiles <= slice_tiles and nb == p.N \
                and (m == 2 or calls_tiles <= (CPU.vec_stream4_max_tiles_fresh
                                               if fresh and STREAM4_TILES > 1
                                               else CPU.vec_stream4_max_tiles)):
            return VecPlan("stream", int(calls_tiles), nb)
        return VecPlan("split", int(min(slice_tiles, total)), nb)
    T = max(CPU.vec_min_item_tiles, CPU.vec_item_bytes // per_tile)
    # the per-thread V + M scratch stays within half the workspace bound
    T = min(T, max(1, half // (numba.config.NUMBA_NUM_THREADS * per_tile)))
    # every thread gets an item, then items of equal size
    threads = max(1, numba.get_num_threads())
    T = max(1, min(T, -(-total // threads)))
    T = -(-total // -(-total // T))
    return VecPlan("fused", T, nb)


def run(x, U, bias, p, y, m, plan, timings=None, fresh_u=False, epi=NONE):
    """The convolution of NCHW ``x`` into ``y`` with laid-out ``U``; False if a result is not finite.

    ``plan`` is this call's :class:`VecPlan` (from :func:`plan`); ``U`` is from
    :func:`fastconv.cpu.winograd.stream.transform_weights`, or in mode
    ``"stream"`` the KCRS weights themselves.  With ``timings``
    (a dict) the phases are timed and added into it: ``pack_input``;
    ``input_transform``, ``gemm`` and ``output_transform`` (which includes
    the unpacking into NCHW) as the differences between runs of the kernel
    stopped after each phase (the fused path's phases share one parallel
    loop, so they cannot be timed one by one); in mode ``"stream"`` the
    kernel transform is part of ``gemm``.  ``fresh_u``: ``U`` was transformed
    in this call (the split schedule then shares its products out like the
    transform, see :func:`_split`).  ``epi`` (NCHW residual) is applied to each
    tile of the output as it is unpacked.
    """
    mode, T_item, nb = plan.mode, plan.tiles, plan.nb
    L = lanes(p.dtype)
    dt = p.dtype
    AT, Gm, BT = transform_matrices(m)
    stream = mode == "stream"
    if m == 2:  # U holds G' w G'^T (F2_SCALE)
        AT = AT * np.array(F2_SCALE)
    elif stream:  # the products use G' w G'^T (F4_SCALE)
        AT = AT * np.array(F4_SCALE)
    AT, BT = AT.astype(dt), BT.astype(dt)
    KB = -(-p.K // L)
    bias_p = padded_bias(bias, 1, p.K, KB * L, dt)
    tiles_h, tiles_w = -(-p.P // m), -(-p.Q // m)
    pt, pl = p.padding[0], p.padding[2]
    pb = tiles_h * m + 2 - p.H - pt
    pr = tiles_w * m + 2 - p.W - pl
    CB = -(-p.C // L)
    A2 = (m + 2) ** 2
    Uf = np.ascontiguousarray(U, dtype=dt).reshape(-1)
    wlwork = _kt_scratch(dt)
    if stream:
        uwork = _scratch.per_thread("winograd_vec.Ut", dt, stream_scratch(p.C, m, dt))
    else:
        uwork = wlwork
    twork = _scratch.per_thread("winograd_vec.T", dt, L)[:, :L]
    if mode == "fused":
        vwork = _scratch.per_thread("winograd_vec.V", dt, A2 * _apart(T_item * CB * L, L))
        mwork = _scratch.per_thread("winograd_vec.M", dt, A2 * _apart(T_item * KB * L, L))
    elif stream and m == 4:  # V by channel block and group of tiles (_split)
        vbuf = _scratch.buffer("winograd_vec.V", dt,
                               A2 * CB * -(-T_item // STREAM4_TILES) * STREAM4_TILES * L)
        mbuf = _scratch.buffer("winograd_vec.M", dt, A2 * _apart(T_item * KB * L, L))
    else:
        vbuf = _scratch.buffer("winograd_vec.V", dt, A2 * _apart(T_item * CB * L, L))
        mbuf = _scratch.buffer("winograd_vec.M", dt, A2 * _apart(T_item * KB * L, L))
    PQ = p.P * p.Q
    ybuf = _scratch.buffer("winograd_vec.Y", dt, min(nb, p.N) * KB * PQ * L)
    clock = time.perf_counter
    for n0 in range(0, p.N, nb):
        n1 = min(p.N, n0 + nb)
        t0 = clock()
        xb, CB, Hp, Wp = pack_input_blocked(x[n0:n1], 1, L, (pt, pb, pl, pr),
                                            scratch="winograd_vec.xb")
        total = (n1 - n0) * tiles_h * tiles_w
        yb = ybuf[:(n1 - n0) * KB * PQ * L]
        if mode == "fused":
            bad = np.zeros(-(-total // T_item), dtype=np.bool_)
            calls = [(_FUSED[m], (xb, Uf, BT, AT, bias_p, yb, n1 - n0, bad, CB, Hp, Wp, KB, p.K,
                                  p.P, p.Q, tiles_h, tiles_w, T_item, vwork, mwork, twork))]
        else:
            bad = np.zeros(1, dtype=np.bool_)
            calls = []
            for s0 in range(0, total, T_item):
                T = min(T_item, total - s0)
                args = (xb, Uf, BT, AT, bias_p, yb, s0, T, bad, CB, Hp, Wp, KB, p.K, p.P, p.Q,
                        tiles_h, tiles_w, vbuf if stream else vbuf[:A2 * _apart(T * CB * L, L)],
                        mbuf[:A2 * _apart(T * KB * L, L)], twork, CPU.vec_split_kchunk, p.C,
                        Gm, uwork, wlwork, fresh_u)
                calls.append((_SPLIT[m, stream], args))
        t1 = t2 = t3 = clock()
        if timings is not None:
            for kern, args in calls:
                kern(*args, 1)
            t2 = clock()
            for kern, args in calls:
                kern(*args, 2)
            t3 = clock()
            timings["pack_input"] = timings.get("pack_input", 0.0) + t1 - t0
            timings["input_transform"] += t2 - t1
            timings["gemm"] += max(0.0, (t3 - t2) - (t2 - t1))
            t0 = clock()
        for kern, args in calls:
            kern(*args, 3)
        if bad.any():
            return False
        # shared out as the output transform: by tiles (fused) or by channel blocks (split)
        yf = y[n0:n1].reshape(-1)
        unpack_blocked_output(yb, yf, n1 - n0, p.K, p.P, p.Q, 1, KB, L, mode == "fused",
                              *epilogue.args(epi, n0 * p.K * PQ, yf.size, dt))
        if timings is not None:
            full = clock() - t0
            timings["output_transform"] += max(0.0, full - (t3 - t2))
    return True
