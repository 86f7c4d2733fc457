"""Every pack and unpack pass of the CPU kernels, shared by direct and Winograd.

``V`` and ``L`` below are vector lanes of the compile target
(:func:`fastconv.cpu.simd.lanes`: 16 float32 on AVX-512, 8 on AVX2); the
register transposes here move ``L x L`` blocks.

Packing helpers (all parallel, all writing every element of their output,
so outputs can be ``np.empty``):

* :func:`pack_input_blocked` - NCHW -> ``[N, G, CB, Hp, Wp, Vc]``: zero-padded
  spatially, channels of each group split into ``CB`` blocks of ``Vc``
  (zero-filled past ``Cg``); the blocked kernel broadcasts one element and
  multiplies it into a contiguous vector of output channels.
* :func:`pack_weights_blocked` - KCRS -> ``[G, KB/NKB, CB, R, S, Vc, NKB, V]``
  (oneDNN's "OIhw{Vc}i{V}o" with ``NKB`` output blocks interleaved): the
  ``NKB * V`` output channels a broadcast meets are contiguous;
  zero-filled past ``Kg`` and ``Cg``.
* :func:`pack_input_phases` - NCHW -> ``[N, C, Hp, sw, Wq]`` with
  ``out[..., h, f, i] = xpad[..., h, i * sw + f]``: splitting the padded rows
  into stride phases makes the input of ``V`` consecutive outputs contiguous
  for any horizontal stride and dilation.  The width-vectorised kernel
  builds this layout per work item, for the rows it needs; this
  whole-tensor version documents and tests the layout.
* :func:`unpack_blocked_output` / :func:`unpack_task` - the blocked output
  ``[N, G, KBp, P*Q, V]`` (V output channels contiguous) -> NCHW by
  ``V x V`` register transposes; the blocked direct driver unpacks each
  task as it finishes, the channel-vectorised Winograd path in one pass.
* :func:`pad_nchw`, :func:`padded_bias`, :func:`subsample_pointwise` -
  plain NCHW helpers (zero padding, a bias padded to whole vectors, the
  pixels a strided 1x1 convolution reads).

:func:`task_coords` numbers the parallel tasks of a pass and of the
kernel that reads its result the same way, so each core touches what it
wrote.
"""

from __future__ import annotations

import numba
import numpy as np

from .. import _weight_cache
from .._aligned import empty_aligned
from .._config import JIT, PJIT
from . import _scratch
from .epilogue import finish_rows
from .simd import VECTOR_BYTES, sload, sstore, vinterleave, vtranspose


@numba.njit(**JIT)
def task_coords(task, nx, ny, x_fastest):
    """``(x, y, rest)`` of a parallel loop's ``task`` numbered over ``(rest, y, x)`` with ``x``
    fastest, or over ``(rest, x, y)`` with ``y`` fastest: the two orders in which the
    kernels share work out between threads (see :mod:`fastconv.cpu.direct.blocked`: each
    core should touch what it wrote in the previous phase).

    Callers pass ``numba.int64(task)``: a ``prange`` index is typed ``int64`` before
    Numba's parallel transform and ``uint64`` inside the parallel body after it, so a
    jitted function given the bare index is compiled twice, once for each type."""
    if x_fastest:
        x = task % nx
        rest = task // nx
        return x, rest % ny, rest // ny
    y = task % ny
    rest = task // ny
    return rest % nx, y, rest // nx


def _make_pack_input(MODE: int):
    """The packing kernel of :func:`pack_input_blocked` with one fast path compiled in.

    ``MODE`` (a closure constant, so Numba compiles only the branch it
    selects): 0 copies element by element; 1 also moves whole blocks of
    ``Vc = L`` channels by ``L x L`` register transposes; 2, 3 or 4 also
    interleaves rows of ``L`` pixels of that many channels (``Vc = MODE``,
    an RGB input) in registers.  Any block the fast path does not cover (a
    partial last channel block, the columns past the last whole vector) is
    copied element by element.  Every move is a raw load or store at a flat
    offset (``sload`` / ``sstore``): no wraparound checks of signed indices, and
    no slice assignment, whose shape-mismatch error would make Numba compile
    its string formatting (seconds of a cold first call).
    """

    @numba.njit(**PJIT)
    def pack(xf, N, C, H, W, xb, G, CB, Vc, pt, pl, Hp, Wp, rows_outer):
        # xf: the C-contiguous NCHW input, flat.
        Cg = C // G
        zero = xf.dtype.type(0)
        L = VECTOR_BYTES // xf.itemsize
        for task in numba.prange(N * G * CB * Hp):
            cb, h, ng = task_coords(numba.int64(task), CB, Hp, rows_outer)
            g = ng % G
            n = ng // G
            base = ((ng * CB + cb) * Hp + h) * Wp * Vc
            hi = h - pt
            if hi < 0 or hi >= H:
                for i in range(Wp * Vc):
                    sstore(xb, base + i, zero)
                continue
            for i in range(pl * Vc):
                sstore(xb, base + i, zero)
            for i in range((pl + W) * Vc, Wp * Vc):
                sstore(xb, base + i, zero)
            vmax = min(Vc, Cg - cb * Vc)
            c0 = g * Cg + cb * Vc
            o = base + pl * Vc
            src = ((n * C + c0) * H + hi) * W
            w0 = 0
            if MODE == 1:
                if vmax == Vc and W >= Vc:
                    # Vc whole channels of one vector: Vc x Vc blocks (channels x pixels)
                    # transposed in registers, instead of Vc * Vc scalar moves; the last
                    # block overlaps the one before (the same values again, in one more
                    # transpose rather than scalar moves; one call site of the inlined
                    # transpose keeps the compiled kernel small).
                    while w0 < W:
                        w0 = min(w0, W - Vc)
                        vtranspose(xf, src + w0, H * W, xb, o + w0 * Vc, Vc)
                        w0 += Vc
            elif MODE >= 2:
                if vmax == Vc:
                    # a few channels: rows of L pixels interleaved in registers
                    while w0 < W:
                        w0 = min(w0, W - L)  # the last L pixels overlap the previous ones
                        vinterleave(xf, src + w0, H * W, MODE, xb, o + w0 * Vc)
                        w0 += L
            for v in range(vmax):
                for j in range(w0, W):
                    sstore(xb, o + j * Vc + v, sload(xf, src + v * H * W + j))
            for v in range(vmax, Vc):
                for j in range(W):
                    sstore(xb, o + j * Vc + v, zero)

    return pack


_PACK_INPUT = {mode: _make_pack_input(mode) for mode in range(5)}


def pack_input_blocked(x, G, Vc, padding, extra_cols=0, scratch=None, rows_outer=True):
    """NCHW ``x`` -> flat ``[N, G, CB, Hp, Wp, Vc]`` (see the module docstring).

    Returns ``(xb, CB, Hp, Wp)``.  ``extra_cols`` zero columns are appended on
    the right of every row.  With ``scratch`` (a name), ``xb`` is a reused
    work array of :mod:`fastconv.cpu._scratch` instead of a fresh one.
    """
    N, C, H, W = x.shape
    pt, pb, pl, pr = padding
    Cg = C // G
    CB = -(-Cg // Vc)
    Hp, Wp = H + pt + pb, W + pl + pr + extra_cols
    size = N * G * CB * Hp * Wp * Vc
    xb = (empty_aligned(size, x.dtype) if scratch is None
          else _scratch.buffer(scratch, x.dtype, size))
    if xb.size:
        xf = np.ascontiguousarray(x).reshape(-1)  # the callers' x is contiguous: no copy
        L = VECTOR_BYTES // x.itemsize
        if Vc == L:
            mode = 1
        elif 2 <= Vc <= 4 and W >= L:
            mode = Vc
        else:
            mode = 0
        _PACK_INPUT[mode](xf, N, C, H, W, xb, G, CB, Vc, pt, pl, Hp, Wp, rows_outer)
    return xb, CB, Hp, Wp


@numba.njit(**PJIT)
def _pack_weights_blocked(wf, wb, G, Kg, Cg, RS, KBp, CB, Vc, NKB, V):
    # One task fills one contiguous [RS, Vc, NKB * V] tile, RSB taps at a time: the
    # weights of those taps are first copied run by run (contiguous reads of RSB taps)
    # into an L1-sized buffer, then written out in order.  Element loops over strided
    # weights directly thrash the cache: rows lie Cg*R*S elements apart (and a derived
    # convolution of the gradients has kernels of thousands of taps).
    nkg = KBp // NKB
    KV = NKB * V
    RSB = min(RS, 16)
    L = Vc * RSB
    zero = wf.dtype.type(0)
    for task in numba.prange(G * nkg * CB):
        cb = task % CB
        gkg = task // CB
        kg = gkg % nkg
        g = gkg // nkg
        base = task * RS * Vc * KV
        nk = min(KV, Kg - kg * KV)
        nc = min(Vc, Cg - cb * Vc)
        tmp = np.empty(KV * L, dtype=wf.dtype)
        for rs0 in range(0, RS, RSB):
            nr = min(RSB, RS - rs0)
            for kk in range(KV):
                if kk < nk and RSB == RS:
                    # every tap in one block: the channels' taps are one contiguous run
                    src = ((g * Kg + kg * KV + kk) * Cg + cb * Vc) * RS
                    for u in range(nc * RS):
                        sstore(tmp, kk * L + u, sload(wf, src + u))
                    for u in range(nc * RS, L):
                        sstore(tmp, kk * L + u, zero)
                    continue
                for vc in range(Vc):
                    t = kk * L + vc * RSB
                    if kk < nk and vc < nc:
                        src = ((g * Kg + kg * KV + kk) * Cg + cb * Vc + vc) * RS + rs0
                        for u in range(nr):
                            sstore(tmp, t + u, sload(wf, src + u))
                    else:
                        for u in range(nr):
                            sstore(tmp, t + u, zero)
            for r in range(nr):
                for vc in range(Vc):
                    dst = base + ((rs0 + r) * Vc + vc) * KV
                    src = vc * RSB + r
                    for kk in range(KV):
                        sstore(wb, dst + kk, sload(tmp, kk * L + src))


def pack_weights_blocked(w, G, Vc, NKB, V):
    """KCRS ``w`` -> flat ``[G, KBp/NKB, CB, R, S, Vc, NKB, V]``.

    ``KBp`` is the number of ``V``-wide output-channel blocks per group,
    rounded up to a multiple of ``NKB``; the ``NKB`` weight vectors one
    broadcast input meets are adjacent.  Returns ``(wb, KBp)``.
    """
    K, Cg, R, S = w.shape
    Kg = K // G
    KB, CB = -(-Kg // V), -(-Cg // Vc)
    KBp = -(-KB // NKB) * NKB
    wb = _weight_cache.prepared_empty("blocked.wb", G * KBp * CB * R * S * Vc * V, w.dtype)
    if wb.size:
        _pack_weights_blocked(w.reshape(-1), wb, G, Kg, Cg, R * S, KBp, CB, Vc, NKB, V)
    return wb, KBp


@numba.njit(**PJIT)
def _pack_input_phases(x, xq, pt, pl, Hp, sw, Wq):
    # Element moves through raw flat offsets (sload/sstore): a slice assignment
    # from a strided view runs Numba's generic array copy, several times slower.
    N, C, H, W = x.shape
    xf = x.reshape(-1)
    zero = x.dtype.type(0)
    for task in numba.prange(N * C * Hp):
        h = task % Hp
        nc = task // Hp
        base = task * sw * Wq
        hi = h - pt
        if hi < 0 or hi >= H:
            for i in range(sw * Wq):
                sstore(xq, base + i, zero)
            continue
        src = (nc * H + hi) * W
        for f in range(sw):
            # phase f, element i holds padded column i * sw + f = input column i * sw + f - pl
            i0 = (pl - f + sw - 1) // sw if pl > f else 0
            i1 = (pl + W - f + sw - 1) // sw if pl + W > f else 0
            i0 = min(i0, Wq)
            i1 = max(i0, min(i1, Wq))
            o = base + f * Wq
            for i in range(i0):
                sstore(xq, o + i, zero)
            s0 = src + i0 * sw + f - pl
            if sw == 1:
                for i in range(i1 - i0):
                    sstore(xq, o + i0 + i, sload(xf, s0 + i))
            else:
                for i in range(i1 - i0):
                    sstore(xq, o + i0 + i, sload(xf, s0 + i * sw))
            for i in range(i1, Wq):
                sstore(xq, o + i, zero)


def pack_input_phases(x, padding, sw, min_cols):
    """NCHW ``x`` -> flat ``[N, C, Hp, sw, Wq]`` stride phases (see the module docstring).

    Each phase row holds at least ``min_cols`` elements (zeros past the
    padded input) so vector loads may run past the last output.  Returns
    ``(xq, Hp, Wq)``.
    """
    N, C, H, W = x.shape
    pt, pb, pl, pr = padding
    Hp, Wp = H + pt + pb, W + pl + pr
    Wq = max(-(-Wp // sw), min_cols)
    xq = np.empty(N * C * Hp * sw * Wq, dtype=x.dtype)
    if xq.size:
        _pack_input_phases(x, xq, pt, pl, Hp, sw, Wq)
    return xq, Hp, Wq


@numba.njit(**JIT)
def unpack_task(yb, ybase, ykb, yf, ydst, PQ, kb0, NKB, Kg, t_begin, t_end, V):
    # yf[ydst + (kb * V + l) * PQ + t] = yb[ybase + (kb - kb0) * ykb + t * V + l] for the
    # output-channel blocks kb0 .. kb0 + NKB - 1 (real channels only) and the pixels
    # t_begin .. t_end - 1 of one task.
    for i in range(NKB):
        nl = min(V, Kg - (kb0 + i) * V)
        if nl <= 0:
            break
        unpack_block(yb, ybase + i * ykb, yf, ydst + (kb0 + i) * V * PQ, PQ, nl,
                     t_begin, t_end, V)


@numba.njit(**JIT)
def unpack_block(yb, src, yf, dst, PQ, nl, t0, t1, V):
    # yf[dst + l * PQ + t] = yb[src + t * V + l] for l < nl and t0 <= t < t1: V x V register
    # transposes when the block has all V lanes, the ragged end by one more overlapping the
    # pixels before it (the same values again) when there are V of them, else element by
    # element -- raw loads and stores: Numba's signed indexing would add wraparound checks
    # that defeat vectorisation.
    # One call site of the (large, inlined) transpose: the last block's start is clamped.
    t = t0
    if nl == V and t1 - t0 >= V:
        while t < t1:
            t = min(t, t1 - V)
            vtranspose(yb, src + t * V, V, yf, dst + t, PQ)
            t += V
    for tt in range(t, t1):
        for lane in range(nl):
            sstore(yf, dst + lane * PQ + tt, sload(yb, src + tt * V + lane))


@numba.njit(**JIT)
def finish_task(yf, ydst, PQ, kb0, NKB, Kg, t_begin, t_end, V, rf, ep, mode):
    # The fused epilogue (fastconv.cpu.epilogue) on what unpack_task just wrote, while
    # it is in this core's cache.
    for i in range(NKB):
        nl = min(V, Kg - (kb0 + i) * V)
        if nl <= 0:
            break
        finish_rows(yf, rf, ep, mode, ydst + (kb0 + i) * V * PQ, PQ, nl, t_begin, t_end)


UNPACK_TILE = 64  # pixels per task: V x 64 elements stay in L1


def _make_unpack_blocked_output(EPI: bool):
    @numba.njit(**PJIT)
    def unpack(yb, yf, N, K, P, Q, G, KBp, V, pixel_major, rf, ep, mode):
        Kg = K // G
        PQ = P * Q
        KB = (Kg + V - 1) // V
        ntile = (PQ + UNPACK_TILE - 1) // UNPACK_TILE
        for task in numba.prange(N * G * KB * ntile):
            kb, tile, ng = task_coords(numba.int64(task), KB, ntile, pixel_major)
            n, g = ng // G, ng % G
            t0 = tile * UNPACK_TILE
            t1 = min(PQ, t0 + UNPACK_TILE)
            nl = min(V, Kg - kb * V)
            dst = (n * K + g * Kg + kb * V) * PQ
            unpack_block(yb, (ng * KBp + kb) * PQ * V, yf, dst, PQ, nl, t0, t1, V)
            if EPI:  # a compile-time constant: without it, no epilogue code is compiled
                finish_rows(yf, rf, ep, mode, dst, PQ, nl, t0, t1)

    return unpack


_UNPACK = {}


def unpack_blocked_output(yb, yf, N, K, P, Q, G, KBp, V, pixel_major, rf=None, ep=None, mode=0):
    """``[N, G, KBp, P*Q, V]`` -> NCHW, one L1-sized pixel tile at a time (winograd.vec's output).

    Full ``V x V`` blocks (V channels by V pixels) are transposed in
    registers (:func:`vtranspose`, instead of ``V * V`` scalar moves), a
    tile's ragged end by one more block overlapping the previous one (it
    rewrites the same values, still in vector moves); the rest element by
    element.  With an epilogue (``mode`` != 0; ``rf``, ``ep`` from
    :func:`fastconv.cpu.epilogue.args`) each tile gets it as soon as it is
    written, from a second compiled variant (calls without one compile none
    of its code).

    The tasks are shared out like the kernel's that wrote ``yb``, so each
    core unpacks what it computed: by pixel tiles (``pixel_major``: the
    fused Winograd schedule) or by channel blocks.  The other way, each core
    would read half its blocks from the other core's cache, which is slow
    where the cores sit on different core complexes (as a VM's vCPUs may).
    """
    epi = mode != 0
    fn = _UNPACK.get(epi)
    if fn is None:
        fn = _UNPACK.setdefault(epi, _make_unpack_blocked_output(epi))
    if not epi:
        rf = ep = yf[:0]
    fn(yb, yf, N, K, P, Q, G, KBp, V, pixel_major, rf, ep, mode)


@numba.njit(**PJIT)
def _pad_into(x, xp, pt, pl):
    N, C, H, W = x.shape
    for nc in numba.prange(N * C):
        n, c = nc // C, nc % C
        for h in range(H):
            for w_ in range(W):
                xp[n, c, pt + h, pl + w_] = x[n, c, h, w_]


def padded_bias(bias, groups, Kg, width, dtype):
    """Flat ``(groups * width)`` bias: group ``g``'s ``Kg`` values at ``g * width``, zeros after.

    The blocked kernels read the bias a whole vector (or register block) of
    output channels at a time, ``width >= Kg`` per group.
    """
    out = np.zeros((groups, width), dtype=dtype)
    if bias is not None:
        out[:, :Kg] = bias.reshape(groups, Kg)
    return out.reshape(-1)


def subsample_pointwise(x, p, out=None):
    """The input pixels a strided 1x1 convolution reads, ``(N, C, P, Q)`` C-contiguous.

    ``x`` itself (made contiguous) at stride 1; otherwise every ``sh``-th row
    and ``sw``-th column, copied into ``out`` when given.
    """
    sh, sw = p.stride
    if (sh, sw) == (1, 1):
        return np.ascontiguousarray(x)
    view = x[:, :, : (p.P - 1) * sh + 1: sh, : (p.Q - 1) * sw + 1: sw]
    if out is None:
        return np.ascontiguousarray(view)
    out = out.reshape(view.shape)
    np.copyto(out, view)
    return out


#: Columns ``j`` per job of :func:`swap_middle`: their runs of ``a[g, i]`` are read
#: as one contiguous piece (a whole cache line or more for 3x3 kernels).
SWAP_TILE = 16


@numba.njit(**PJIT)
def _swap_middle(a, out, flip):
    # out[g, j, i, l] = a[g, i, j, l], or a[g, i, j, L - 1 - l] when flip (reversing
    # the flat H*W run flips both spatial axes).
    # Raw flat offsets (sload/sstore): a view per (i, j) and its element loop cost more
    # than the few elements of a kernel they move.
    G, I, J, L = a.shape
    af, of = a.reshape(-1), out.reshape(-1)
    nt = (J + SWAP_TILE - 1) // SWAP_TILE
    for job in numba.prange(G * nt):
        g, t = job // nt, job % nt
        j0, j1 = t * SWAP_TILE, min(J, (t + 1) * SWAP_TILE)
        for i in range(I):
            src = ((g * I + i) * J + j0) * L
            for j in range(j0, j1):
                dst = ((g * J + j) * I + i) * L
                if flip:
                    for l in range(L):
                        sstore(of, dst + l, sload(af, src + L - 1 - l))
                else:
                    for l in range(L):
                        sstore(of, dst + l, sload(af, src + l))
                src += L


def swap_middle(a: np.ndarray, flip: bool = False, out=None) -> np.ndarray:
    """``b[g, j, i] = a[g, i, j]`` (spatially flipped when ``flip``), C-contiguous.

    ``a`` is 5-D ``(G, I, J, H, W)``: the gradients' kernel and map
    transposes (input and output channels of each group swapped, the images
    and channels of ``grad_y`` swapped).  Each parallel job takes
    ``SWAP_TILE`` columns ``j`` of one group, so it reads ``a`` in contiguous
    pieces of ``SWAP_TILE x H x W``; NumPy's own strided copy moves the short
    ``H x W`` runs one at a time, several times slower.  ``out``: where to
    write it (then always written, even where a reshape of ``a`` would do).
    """
    a = np.ascontiguousarray(a)
    G, I, J, H, W = a.shape
    if (I == 1 or J == 1) and not flip and out is None:
        return a.reshape(G, J, I, H, W)  # the same order of elements (may be ``a`` itself)
    if out is None:
        out = np.empty((G, J, I, H, W), dtype=a.dtype)
    else:  # a C-contiguous array of a's dtype and size, e.g. a scratch buffer
        out = out.reshape(G, J, I, H, W)
    if out.size:
        _swap_middle(a.reshape(G, I, J, H * W), out.reshape(G, J, I, H * W), bool(flip))
    return out


@numba.njit(**PJIT)
def _zero_insert(g, out, h0, sh, w0, sw):
    N, K, P, Q = g.shape
    Hb, Wb = out.shape[2], out.shape[3]
    zero = out.dtype.type(0)
    for job in numba.prange(N * K * Hb):
        nk, h = job // Hb, job % Hb
        n, k = nk // K, nk % K
        row = out[n, k, h]
        for j in range(Wb):
            row[j] = zero
        t = h - h0
        if t >= 0 and t % sh == 0 and t // sh < P:
            src = g[n, k, t // sh]
            for q in range(Q):
                row[w0 + q * sw] = src[q]


def zero_insert(g: np.ndarray, shape, h0: int, sh: int, w0: int, sw: int) -> np.ndarray:
    """``out[n, k, h0 + p*sh, w0 + q*sw] = g[n, k, p, q]``, zeros elsewhere, ``out`` of ``shape``.

    The input gradient's zero-inserted, re-padded ``grad_y`` in one parallel
    pass (a NumPy strided assignment into ``np.zeros`` is several times
    slower), in a reused scratch buffer of this thread (``"grad.zero_insert"``):
    the caller passes it on as a convolution's input and never returns it.
    """
    g = np.ascontiguousarray(g)
    n = int(np.prod(shape))
    out = _scratch.buffer("grad.zero_insert", g.dtype, n).reshape(shape)
    if n:
        _zero_insert(g, out, h0, sh, w0, sw)
    return out


def pad_nchw(x: np.ndarray, pt: int, pb: int, pl: int, pr: int) -> np.ndarray:
    """Zero-padded copy of a contiguous NCHW array (returns ``x`` itself when no padding)."""
    if pt == pb == pl == pr == 0:
        return x
    N, C, H, W = x.shape
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr), dtype=x.dtype)
    _pad_into(x, xp, pt, pl)
    return xp
