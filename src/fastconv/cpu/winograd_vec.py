"""Winograd F(m x m, 3 x 3) vectorised across channels (the oneDNN / NNPACK layout).

The tile-row path of :mod:`fastconv.cpu.winograd` vectorises its transforms
along a row of tiles: 7 tiles on a 28 x 28 map, half a 16-lane vector, with
a strided gather per tile.  On ResNet-50's 3x3 layers its input and output
transforms took as long as the GEMMs.  This path vectorises across
channels instead, so every vector is full whatever the map size:

1. the input is packed to ``[N, CB, Hp, Wp, L]`` (``L`` = 16 float32 / 8
   float64 channels; zero padding and zero channels past ``C``:
   :func:`fastconv.cpu._blocked.pack_input_blocked`), ``Hp x Wp`` covering
   every tile;
2. work items are runs of ``T`` consecutive tiles (over images and tile
   rows, so even a 7x7 map gives full items); per item and thread:

   * input transform: for each tile and channel block, the ``alpha x alpha``
     input vectors ``d`` give ``B^T d B`` (``alpha^2`` vectors, one FMA per
     matrix entry, zeros included), stored as ``V[a, t, c]`` (channels
     contiguous);
   * ``alpha^2`` GEMMs ``M[a] (T x Kp) = V[a] (T x Cp) @ U[a] (Cp x Kp)``,
     single-threaded BLAS, ``U`` the kernel transform laid out
     ``(alpha^2, Cp, Kp)`` and zero-padded (kept by the weight cache);
   * output transform: ``A^T M A`` for each tile and block of ``L`` output
     channels, plus the bias, written into ``y`` (NCHW) through a small
     transpose, cropped at the map's edge.

Results are the same sums as the tile-row path's (the same ``U``, the
same transform matrices), evaluated as dense FMA chains: each entry of
``B^T d`` is ``sum_k BT[i, k] d[k]`` accumulated in ``k`` order with one
rounding per term, which the componentwise bound of
:func:`fastconv.accuracy.error_bound` covers (it counts one rounding per
term of every transform sum).  A non-finite output (NaN/inf input or
weight, or overflow) makes the caller recompute the call with ``direct``.

Used for ``groups == 1`` on maps of fewer than :data:`MAX_TILES_W` tiles per
row when the transformed weights are small enough to be streamed once per
item (:data:`MAX_U_BYTES`); otherwise the tile-row path runs.  Scratch: per
Numba thread one item's ``V`` and ``M`` (``ITEM_BYTES``), plus the packed
input and the blocked output of a slice of images, all within
``FASTCONV_WORKSPACE_MB``.
"""

from __future__ import annotations

import time

import numba
import numpy as np

from .. import _config
from .._config import JIT, PJIT
from ..winograd_math import transform_matrices
from ._blocked import lanes, pack_input_blocked, sget, sset, stack_vectors, vfma, vload, vsplat, vstore
from . import _scratch
from ._gemm import matmul_into, single_threaded_blas
from ._layout import padded_bias
from .direct import _unpack_blocked_output

#: Largest transformed weights ``alpha^2 * Cp * Kp`` (bytes) this path takes:
#: every item streams all of U through the GEMMs.
MAX_U_BYTES = 12 * 2**20
#: Rows of this many tiles or more keep the tile-row path: its transforms then
#: run on long vectors and read NCHW directly, without the packing pass (VGG-16
#: conv1_2, 56 tiles per row: 422 GFLOP/s there vs 322 here).
MAX_TILES_W = 16
#: Target bytes of one item's V + M: large items read U (streamed once per item)
#: fewer times; measured best between 1 and 8 MiB on the suite's 3x3 layers.
ITEM_BYTES = 8 * 2**20
#: Fewest tiles per item (thinner GEMMs waste BLAS), unless the call has fewer.
MIN_ITEM_TILES = 16

#: OpenBLAS (0.3.x, SkylakeX/Zen kernels) computes a GEMM with M*N*K below
#: this without packing its operands; above it, every call packs the
#: ``Cp x Kp`` matrix U[a] (measured: a (16 x 256) @ (256 x 256) product ran
#: at 52 GFLOP/s, a (15 x 256) @ (256 x 256) one at 91).  Items are kept under
#: it when that leaves at least MIN_SMALL_TILES tiles per item.
SMALL_GEMM_MNK = 1 << 20
MIN_SMALL_TILES = 8

_KERNELS: dict = {}


@numba.njit(**JIT)
def _tile_position(tile, per_img, tiles_w):
    """(image, tile row, tile column) of tile number ``tile`` (raster order over the batch)."""
    n = tile // per_img
    r = tile - n * per_img
    th = r // tiles_w
    return n, th, r - th * tiles_w


def _make_kernel(m: int):
    A = m + 2
    A2 = A * A

    @numba.njit(**PJIT)
    def fused(xb, U, BT, AT, bias, yb, Nimg, bad, CB, Hp, Wp, KB, K, P, Q, tiles_h, tiles_w,
              T_item, vwork, mwork, twork, upto):
        # upto < 3 stops each item after the input transform (1) or the GEMMs (2): only for
        # timing the phases (profile), the output is then incomplete.
        L = twork.shape[1]
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
            tmp = twork[tid]
            d = stack_vectors(Vb, A2)
            e = stack_vectors(Vb, A2)
            # --- input transform: V[a, t, c] = (B^T d B)[a] for each tile t and channel block
            for tt in range(T):
                n, th, tw = _tile_position(t0 + tt, per_img, tiles_w)
                for cb in range(CB):
                    base = (((n * CB + cb) * Hp + th * m) * Wp + tw * m) * L
                    for i in range(A):
                        for j in range(A):
                            sset(d, i * A + j, vload(xb, base + (i * Wp + j) * L))
                    for i in range(A):  # e = B^T d
                        for j in range(A):
                            acc = vsplat(0, Vb)
                            for k in range(A):
                                acc = vfma(vsplat(BT[i, k], Vb), sget(d, k * A + j), acc)
                            sset(e, i * A + j, acc)
                    for i in range(A):  # V = e B
                        for j in range(A):
                            acc = vsplat(0, Vb)
                            for k in range(A):
                                acc = vfma(vsplat(BT[j, k], Vb), sget(e, i * A + k), acc)
                            vstore(Vb, ((i * A + j) * T + tt) * Cp + cb * L, acc)
            if upto < 2:
                continue
            # --- the alpha^2 products, single-threaded BLAS
            for a in range(A2):
                matmul_into(Vb[a * T * Cp:(a + 1) * T * Cp].reshape((T, Cp)), U[a],
                            Mb[a * T * Kp:(a + 1) * T * Kp].reshape((T, Kp)))
            if upto < 3:
                continue
            # --- output transform: yb[n, kb, p, q, :] = (A^T M A)[i, j] + bias, cropped
            chk = vsplat(0, Vb)  # stays 0 unless an output is inf or NaN (x * 0 is NaN then)
            zero = vsplat(0, Vb)
            for tt in range(T):
                n, th, tw = _tile_position(t0 + tt, per_img, tiles_w)
                for kb in range(KB):
                    for i in range(A):
                        for j in range(A):
                            sset(d, i * A + j, vload(Mb, ((i * A + j) * T + tt) * Kp + kb * L))
                    for i in range(m):  # e = A^T M   (m x alpha)
                        for j in range(A):
                            acc = vsplat(0, Vb)
                            for k in range(A):
                                acc = vfma(vsplat(AT[i, k], Vb), sget(d, k * A + j), acc)
                            sset(e, i * A + j, acc)
                    bv = vload(bias, kb * L)
                    ybase = (n * KB + kb) * PQ
                    for i in range(m):  # e A + bias   (m x m)
                        p = th * m + i
                        for j in range(m):
                            acc = bv
                            for k in range(A):
                                acc = vfma(vsplat(AT[j, k], Vb), sget(e, i * A + k), acc)
                            chk = vfma(acc, zero, chk)
                            q = tw * m + j
                            if p < P and q < Q:
                                vstore(yb, (ybase + p * Q + q) * L, acc)
            vstore(tmp, 0, chk)
            flag = False
            for lane in range(L):
                flag |= tmp[lane] != 0
            bad[item] = flag

    return fused


def _kernel(m):
    k = _KERNELS.get(m)
    if k is None:
        k = _KERNELS.setdefault(m, _make_kernel(m))
    return k


@numba.njit(**PJIT)
def _kernel_transform(wt, Gm, Uv):
    # Uv[a*alpha + b, c, k] = (G w[k, c] G^T)[a, b] from wt[c, r, s, k] = w[k, c, r, s],
    # computed in float64 and rounded once (as the tile-row path's kernel transform).  One
    # job per input channel; every loop runs over k, contiguous in wt and in Uv.
    C, K = wt.shape[0], wt.shape[3]
    A = Gm.shape[0]
    for c in numba.prange(C):
        t = np.empty((A, 3, K), dtype=np.float64)
        for a in range(A):
            g0, g1, g2 = Gm[a, 0], Gm[a, 1], Gm[a, 2]
            for s in range(3):
                w0, w1, w2 = wt[c, 0, s], wt[c, 1, s], wt[c, 2, s]
                row = t[a, s]
                for k in range(K):
                    row[k] = g0 * np.float64(w0[k]) + g1 * np.float64(w1[k]) + g2 * np.float64(w2[k])
        for a in range(A):
            t0, t1, t2 = t[a, 0], t[a, 1], t[a, 2]
            for b in range(A):
                h0, h1, h2 = Gm[b, 0], Gm[b, 1], Gm[b, 2]
                u = Uv[a * A + b, c]
                for k in range(K):
                    u[k] = t0[k] * h0 + t1[k] * h1 + t2[k] * h2


def uv_bytes(K, C, m, dtype) -> int:
    """Bytes of the padded transformed weights of this path."""
    L = lanes(dtype)
    return (m + 2) ** 2 * (-(-C // L) * L) * (-(-K // L) * L) * np.dtype(dtype).itemsize


def transform_weights(w, m):
    """``U = G w G^T`` of ``(K, C, 3, 3)`` weights as the zero-padded ``(alpha^2, Cp, Kp)`` of this path."""
    K, C = w.shape[0], w.shape[1]
    L = lanes(w.dtype)
    _, Gm, _ = transform_matrices(m)
    Uv = np.zeros(((m + 2) ** 2, -(-C // L) * L, -(-K // L) * L), dtype=w.dtype)
    if w.size:
        _kernel_transform(np.ascontiguousarray(w.transpose(1, 2, 3, 0)), Gm, Uv)
    return Uv


def plan(p, m):
    """``(T_item, nb)``: tiles per item and images per slice, or None if this path does not fit.

    The path takes ``groups == 1`` calls with fewer than :data:`MAX_TILES_W`
    tiles per row whose padded transformed weights are at most
    :data:`MAX_U_BYTES` and whose packed input and blocked output for one
    image fit half the workspace.
    """
    if p.groups != 1 or -(-p.Q // m) >= MAX_TILES_W:
        return None
    L = lanes(p.dtype)
    item = p.dtype.itemsize
    A2 = (m + 2) ** 2
    Cp, Kp = -(-p.C // L) * L, -(-p.K // L) * L
    if A2 * Cp * Kp * item > MAX_U_BYTES:
        return None
    tiles_h, tiles_w = -(-p.P // m), -(-p.Q // m)
    per_image = (Cp * (tiles_h * m + 2) * (tiles_w * m + 2) + Kp * p.P * p.Q) * item
    if per_image > _config.WORKSPACE_BYTES // 2:
        return None
    nb = max(1, min(p.N, (_config.WORKSPACE_BYTES // 2) // per_image))
    total = nb * tiles_h * tiles_w
    per_tile = A2 * (Cp + Kp) * item
    T = max(MIN_ITEM_TILES, ITEM_BYTES // per_tile)
    # Thin GEMMs below SMALL_GEMM_MNK multiply-adds run on OpenBLAS's small-matrix
    # kernel, which does not pack U[a] on every call: 1.2-2x faster per call here.
    T = min(T, max(MIN_SMALL_TILES, (SMALL_GEMM_MNK - 1) // (Cp * Kp)))
    # the per-thread V + M scratch stays within half the workspace bound
    T = min(T, max(1, (_config.WORKSPACE_BYTES // 2)
                   // (numba.config.NUMBA_NUM_THREADS * per_tile)))
    # every thread gets an item, then items of equal size
    threads = max(1, numba.get_num_threads())
    T = max(1, min(T, -(-total // threads)))
    T = -(-total // -(-total // T))
    return T, nb


def run(x, U, bias, p, y, m, T_item, nb, timings=None):
    """The convolution of NCHW ``x`` into ``y`` with laid-out ``U``; False if a result is not finite.

    With ``timings`` (a dict) the phases are timed and added into it:
    ``pack_input``; ``input_transform``, ``gemm`` and ``output_transform``
    (which includes the unpacking into NCHW) as the differences between
    runs of the fused kernel stopped after each phase -- the phases share
    one parallel loop, so they cannot be timed one by one.
    """
    L = lanes(p.dtype)
    dt = p.dtype
    AT, _, BT = transform_matrices(m)
    AT, BT = AT.astype(dt), BT.astype(dt)
    KB = -(-p.K // L)
    bias_p = padded_bias(bias, 1, p.K, KB * L, dt)
    tiles_h, tiles_w = -(-p.P // m), -(-p.Q // m)
    pt, pl = p.padding[0], p.padding[2]
    pb = tiles_h * m + 2 - p.H - pt
    pr = tiles_w * m + 2 - p.W - pl
    CB = -(-p.C // L)
    A2 = (m + 2) ** 2
    vwork = _scratch.per_thread("winograd_vec.V", dt, A2 * T_item * CB * L)
    mwork = _scratch.per_thread("winograd_vec.M", dt, A2 * T_item * KB * L)
    twork = _scratch.per_thread("winograd_vec.T", dt, L)[:, :L]
    kern = _kernel(m)
    PQ = p.P * p.Q
    ybuf = _scratch.buffer("winograd_vec.Y", dt, min(nb, p.N) * KB * PQ * L)
    clock = time.perf_counter
    for n0 in range(0, p.N, nb):
        n1 = min(p.N, n0 + nb)
        t0 = clock()
        xb, CB, Hp, Wp = pack_input_blocked(x[n0:n1], 1, L, (pt, pb, pl, pr),
                                            scratch="winograd_vec.xb")
        total = (n1 - n0) * tiles_h * tiles_w
        bad = np.zeros(-(-total // T_item), dtype=np.bool_)
        yb = ybuf[:(n1 - n0) * KB * PQ * L]
        args = (xb, U, BT, AT, bias_p, yb, n1 - n0, bad, CB, Hp, Wp, KB, p.K, p.P, p.Q,
                tiles_h, tiles_w, T_item, vwork, mwork, twork)
        with single_threaded_blas():
            if timings is not None:
                t1 = clock()
                kern(*args, 1)
                t2 = clock()
                kern(*args, 2)
                t3 = clock()
                timings["pack_input"] = timings.get("pack_input", 0.0) + t1 - t0
                timings["input_transform"] += t2 - t1
                timings["gemm"] += max(0.0, (t3 - t2) - (t2 - t1))
                t0 = clock()
            kern(*args, 3)
        if bad.any():
            return False
        _unpack_blocked_output(yb, y[n0:n1].reshape(-1), n1 - n0, p.K, p.P, p.Q, 1, KB, L)
        if timings is not None:
            full = clock() - t0
            timings["output_transform"] += max(0.0, full - (t3 - t2))
    return True
