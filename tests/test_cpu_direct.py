"""Tests of the ``direct`` CPU algorithm (src/fastconv/cpu/direct.py, depthwise.py, pointwise.py, packing.py).

Every configuration is checked against the float64 scipy reference, elementwise against the
error bound stated in :mod:`fastconv.cpu.direct`:

    |y_hat - y| <= gamma_n * (|w| (*) |x| + |b|),  n = Cg*R*S + 1,  gamma_n = n u / (1 - n u).

For float64 the reference itself carries an error of the same bound, so the test allows twice it.
The grid names the kernel path each case must take, so every fast path and the fallback run.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv.accuracy import error_bound
from fastconv._params import normalize
from fastconv.cpu import direct, packing
from fastconv.cpu.packing import pack_input_blocked, pack_input_phases, pack_weights_blocked
from fastconv.cpu.simd import lanes

from conftest import TOLERANCE, random_problem, rel_err

# The grid runs every kernel path (blocked, width, pointwise, depthwise, simple) per dtype, each
# its own specialisation: with a cold Numba cache the module took 161 s, mostly compiling.
pytestmark = pytest.mark.jit


def _params(x, w, b, **kw):
    return normalize(x.shape, w.shape, None if b is None else b.shape, x.dtype, **kw)


def _inputs(rng, N, C, H, W, K, R, S, groups, dtype, bias=True):
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C // groups, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if bias else None
    return x, w, b


def _bound(x, w, b, dtype, **kw):
    """gamma_n (|w| (*) |x| + |b|), doubled for float64 (the reference's own rounding)."""
    Cg, R, S = w.shape[1:]
    n = Cg * R * S + 1
    u = np.finfo(dtype).eps / 2
    gamma = n * u / (1 - n * u)
    absb = None if b is None else np.abs(b).astype(np.float64)
    absconv = reference.conv2d(np.abs(x).astype(np.float64), np.abs(w).astype(np.float64),
                               absb, **kw)
    factor = 2.0 if np.dtype(dtype) == np.float64 else 1.0
    # The reference computes absconv in float64: a relative 1e-12 slack covers its rounding.
    return factor * gamma * absconv * (1 + 1e-12) + np.finfo(np.float64).tiny


def _check(x, w, b, path=None, **kw):
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64),
                           None if b is None else b.astype(np.float64), **kw)
    if path is None:
        y = fastconv.conv2d(x, w, b, algorithm="direct", **kw)
    else:
        p = _params(x, w, b, **kw)
        y = np.full(p.output_shape, np.nan, x.dtype)  # unwritten outputs fail loudly
        direct.run(x, w, b, p, y, path=path)
    assert y.dtype == x.dtype and y.shape == ref.shape
    err = np.abs(y.astype(np.float64) - ref)
    bound = _bound(x, w, b, x.dtype, **kw)
    bad = ~(err <= bound)
    assert not bad.any(), f"{bad.sum()} outputs exceed the error bound; worst {err[bad].max()}"
    return y


# (label, N, C, H, W, K, R, S, kwargs): odd, small sizes; each runs through every SIMD path
# (and the simple loop nest where tiny), whatever the heuristic would pick.
GRID = [
    ("tails", 2, 5, 9, 11, 20, 3, 3, dict(padding=1)),
    ("s2-d2-asym", 1, 19, 8, 7, 40, 3, 2, dict(stride=2, padding=((1, 0), (2, 1)), dilation=2)),
    ("1x1-s3", 2, 3, 23, 22, 17, 1, 1, dict(stride=3)),
    ("same", 1, 36, 7, 9, 33, 3, 3, dict(padding="same", stride=(1, 2))),
    ("full-dil", 1, 8, 6, 6, 64, 5, 3, dict(padding="full", dilation=(2, 1))),
    ("groups", 2, 12, 9, 9, 36, 3, 3, dict(groups=2, padding=1)),
    ("chunks", 1, 70, 5, 5, 16, 3, 3, dict(padding=1)),  # several channel blocks and chunks
    ("Q1", 2, 8, 41, 1, 18, 3, 1, dict(padding=(1, 0))),
    ("P1", 2, 8, 1, 45, 18, 1, 3, dict()),
    ("dw", 2, 6, 12, 21, 6, 3, 3, dict(groups=6, padding=1)),
    ("dw-mult2-s2", 1, 5, 11, 37, 10, 3, 3, dict(groups=5, stride=2, padding=1)),
    ("dw-s3-d2", 1, 4, 15, 29, 8, 3, 5, dict(groups=4, stride=3, dilation=2,
                                              padding=((2, 1), (0, 3)))),
    ("lenet-c1", 2, 1, 16, 40, 6, 5, 5, dict()),
    ("grouped-same", 1, 6, 9, 23, 12, 2, 3, dict(groups=3, padding="same")),
    ("unpadded-groups", 2, 12, 10, 9, 24, 3, 3, dict(groups=2, stride=(2, 1), dilation=(1, 2))),
    ("tiny", 1, 2, 3, 4, 3, 2, 2, dict(padding=1)),
    ("tiny-dw", 1, 4, 5, 5, 4, 3, 3, dict(groups=4, stride=2)),
]


# float64 on a subset: every register blocking is a separate compilation, and the test file must
# stay around a minute cold.
F64_CASES = ("tails", "s2-d2-asym", "dw-mult2-s2", "chunks")
GRID_DTYPES = [(g, np.float32) for g in GRID] + [(g, np.float64) for g in GRID if g[0] in F64_CASES]


@pytest.mark.parametrize("path", ["blocked", "width"])
@pytest.mark.parametrize("case, dtype", GRID_DTYPES,
                         ids=[f"{g[0]}-{np.dtype(d).name}" for g, d in GRID_DTYPES])
def test_grid_against_reference(case, dtype, path, rng):
    _, N, C, H, W, K, R, S, kw = case
    x, w, b = _inputs(rng, N, C, H, W, K, R, S, kw.get("groups", 1), dtype, bias=(N % 2 == 0))
    _check(x, w, b, path=path, **kw)


@pytest.mark.parametrize("case", [g for g in GRID if g[0] in ("tails", "s2-d2-asym", "dw-s3-d2",
                                                             "tiny", "tiny-dw")],
                         ids=lambda g: g[0])
def test_simple_path(case, rng):
    _, N, C, H, W, K, R, S, kw = case
    x, w, b = _inputs(rng, N, C, H, W, K, R, S, kw.get("groups", 1), np.float64)
    _check(x, w, b, path="simple", **kw)


@pytest.mark.parametrize("shape, kw, path", [
    ((1, 64, 14, 14, 64, 3, 3), dict(padding=1), "blocked"),  # many channels: channel-blocked
    ((4, 1, 32, 32, 6, 5, 5), dict(), "width"),  # LeNet C1: 6 maps fill 6 of 16 lanes
    ((1, 32, 28, 28, 32, 3, 3), dict(groups=32, padding=1), "width"),  # depthwise
    ((1, 3, 32, 32, 16, 3, 3), dict(padding=1), "width"),  # 3 input channels, short reduction
    ((1, 2, 3, 4, 3, 2, 2), dict(), "simple"),  # tiny
])
def test_choose_path(shape, kw, path):
    N, C, H, W, K, R, S = shape
    p = normalize((N, C, H, W), (K, C // kw.get("groups", 1), R, S), None, np.dtype(np.float32),
                  **kw)
    assert direct.choose_path(p) == path


@pytest.mark.parametrize("N", [0, 1, 3])
def test_batch_sizes(N, rng):
    x, w, b = _inputs(rng, N, 8, 7, 9, 24, 3, 3, 1, np.float32)
    y = _check(x, w, b, padding=1)
    assert y.shape == (N, 24, 7, 9)


@pytest.mark.parametrize("case", [g for g in GRID if not g[8].get("padding")], ids=lambda g: g[0])
def test_blocked_reads_nchw_in_place(case, rng, cpu_settings):
    """Unpadded calls read NCHW through strides: bitwise the same sums as on the packed copy."""
    _, N, C, H, W, K, R, S, kw = case
    groups = kw.get("groups", 1)
    x, w, b = _inputs(rng, N, C, H, W, K, R, S, groups, np.float32)
    p = _params(x, w, b, **kw)
    y_in_place = np.empty(p.output_shape, np.float32)
    direct.run(x, w, b, p, y_in_place, path="blocked")
    cpu_settings.read_nchw_in_place = False
    y_packed = np.empty(p.output_shape, np.float32)
    direct.run(x, w, b, p, y_packed, path="blocked")
    np.testing.assert_array_equal(y_in_place, y_packed)


def test_blocked_batch_slices_within_workspace(rng, cpu_settings):
    """A workspace budget below one image's scratch runs the blocked path image by image."""
    cpu_settings.workspace_bytes = 1
    x, w, b = _inputs(rng, 3, 9, 8, 7, 20, 3, 3, 1, np.float32)
    y = _check(x, w, b, path="blocked", padding=1)
    cpu_settings.reset()
    p = _params(x, w, b, padding=1)
    y_whole = np.empty(p.output_shape, np.float32)
    direct.run(x, w, b, p, y_whole, path="blocked")
    np.testing.assert_array_equal(y, y_whole)


def test_unbatched_and_nhwc(rng):
    x, w, b = _inputs(rng, 1, 6, 10, 12, 20, 3, 3, 1, np.float32)
    y = fastconv.conv2d(x, w, b, padding=1, algorithm="direct")
    y3 = fastconv.conv2d(x[0], w, b, padding=1, algorithm="direct")
    yh = fastconv.conv2d(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), w, b, padding=1,
                         layout="NHWC", algorithm="direct")
    np.testing.assert_array_equal(y3, y[0])
    np.testing.assert_array_equal(yh.transpose(0, 3, 1, 2), y)


@pytest.mark.parametrize("path", ["blocked", "width"])
@pytest.mark.parametrize("case", [GRID[0], GRID[1], GRID[9], GRID[12]], ids=lambda g: g[0])
def test_thread_count_independence(case, path, rng):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    _, N, C, H, W, K, R, S, kw = case
    x, w, b = _inputs(rng, N, C, H, W, K, R, S, kw.get("groups", 1), np.float32)
    old = numba.get_num_threads()
    try:
        p = _params(x, w, b, **kw)
        y1, y2 = np.empty(p.output_shape, x.dtype), np.empty(p.output_shape, x.dtype)
        numba.set_num_threads(1)
        direct.run(x, w, b, p, y1, path=path)
        numba.set_num_threads(2)
        direct.run(x, w, b, p, y2, path=path)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(y1, y2)


# No dilation here: the reference dilates w with zeros, so it would multiply an inf by the
# holes of a dilated kernel, which are not taps of the convolution.
@pytest.mark.parametrize("path", ["blocked", "width", "simple"])
@pytest.mark.parametrize("case", [GRID[0], GRID[3], GRID[10]], ids=lambda g: g[0])
def test_nonfinite_propagation(case, path, rng):
    _, N, C, H, W, K, R, S, kw = case
    groups = kw.get("groups", 1)
    x, w, b = _inputs(rng, N, C, H, W, K, R, S, groups, np.float32)
    x[0, 0, H // 2, W // 2] = np.nan
    x[-1, -1, 0, W - 1] = np.inf
    w[-1, 0, 0, 0] = np.inf  # meets padding zeros at the border: inf * 0 = NaN
    p = _params(x, w, b, **kw)
    y = np.empty(p.output_shape, x.dtype)
    direct.run(x, w, b, p, y, path=path)
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kw)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(ref))
    fin = np.isfinite(ref)
    assert np.isnan(ref).any() and fin.any()
    np.testing.assert_allclose(y[fin], ref[fin], rtol=1e-4, atol=1e-4)


def test_inputs_not_modified_and_out(rng):
    x, w, b = _inputs(rng, 2, 9, 8, 8, 20, 3, 3, 1, np.float32)
    xc, wc, bc = x.copy(), w.copy(), b.copy()
    out = np.full((2, 20, 8, 8), np.nan, np.float32)
    res = fastconv.conv2d(x, w, b, padding=1, algorithm="direct", out=out)
    assert res is out and np.isfinite(out).all()
    np.testing.assert_array_equal(x, xc)
    np.testing.assert_array_equal(w, wc)
    np.testing.assert_array_equal(b, bc)


def test_blocked_weight_layout():
    """Packed weights follow [G, KB/NKB, CB, R, S, Vc, NKB, V], zero past Kg and Cg."""
    G, Kg, Cg, R, S, Vc, NKB = 2, 20, 5, 2, 3, 3, 2
    V = lanes(np.float32)
    w = np.arange(G * Kg * Cg * R * S, dtype=np.float32).reshape(G * Kg, Cg, R, S) + 1
    wb, KBp = pack_weights_blocked(w, G, Vc, NKB, V)
    CB = -(-Cg // Vc)
    assert KBp == 2
    wb = wb.reshape(G, KBp // NKB, CB, R, S, Vc, NKB, V)
    for g, kg, cb, r, s, v, i, lane in np.ndindex(wb.shape):
        k, c = (kg * NKB + i) * V + lane, cb * Vc + v
        expect = w[g * Kg + k, c, r, s] if (k < Kg and c < Cg) else 0
        assert wb[g, kg, cb, r, s, v, i, lane] == expect


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,G,Kg,P,Q", [(2, 1, 16, 10, 10), (1, 2, 40, 9, 7), (3, 1, 8, 4, 3),
                                         (1, 1, 48, 13, 11)])
@pytest.mark.parametrize("pixel_major", [True, False])
def test_unpack_blocked_output(N, G, Kg, P, Q, dtype, pixel_major, rng):
    """[N, G, KBp, P*Q, V] -> NCHW: register-transposed V x V blocks and the ragged edges,
    whichever way the tasks are shared out."""
    V = lanes(dtype)
    KB = -(-Kg // V)
    KBp = KB + 1  # a padding block the unpack must skip
    yb = rng.standard_normal((N, G, KBp, P * Q, V)).astype(dtype)
    y = np.full((N, G * Kg, P, Q), np.nan, dtype)
    packing.unpack_blocked_output(yb.reshape(-1), y.reshape(-1), N, G * Kg, P, Q, G, KBp, V,
                                  pixel_major)
    expect = yb.transpose(0, 1, 2, 4, 3).reshape(N, G, KBp * V, P, Q)[:, :, :Kg]
    np.testing.assert_array_equal(y, expect.reshape(N, G * Kg, P, Q))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,K,H,W,G,kw", [
    (2, 20, 40, 9, 23, 1, dict(padding=1)),            # a partial block of output channels
    (1, 8, 24, 30, 30, 2, dict(stride=2, padding=2)),  # groups, stride, several pixel tiles
    (3, 6, 16, 14, 14, 1, {}),                         # LeNet-5 C3-like: NCHW read in place
])
def test_blocked_unpack_in_tasks(rng, dtype, N, C, K, H, W, G, kw):
    """The blocked driver's tasks write NCHW themselves (partial channel blocks, several pixel
    tiles, NCHW read in place): every output written, within the error bound."""
    R = 3 if C != 6 else 5
    x, w, b = random_problem(rng, (N, C, H, W), (K, C // G, R, R), dtype)
    p = normalize(x.shape, w.shape, b.shape, dtype, groups=G, **kw)
    y = np.full((N, K, p.P, p.Q), np.nan, dtype)
    direct.run(x, w, b, p, y, path="blocked")
    ref = reference.conv2d(x, w, b, groups=G, **kw)
    bound = error_bound("direct", x, w, b, groups=G, **kw)
    assert (np.abs(y - ref) <= bound).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("contiguous", [True, False])
def test_input_blocked_layout(rng, dtype, contiguous):
    """NCHW -> [N, G, CB, Hp, Wp, Vc], zero padded: whole vectors of channels go through
    register transposes, the ragged end of a row and of the channels element by element."""
    N, C, H, W, G = 2, 2 * 37, 5, 40, 2
    Vc = lanes(dtype)
    x = rng.standard_normal((N, C, H, W + 3)).astype(dtype)
    x = np.ascontiguousarray(x[..., :W]) if contiguous else x[..., :W]
    pt, pb, pl, pr = 1, 2, 3, 0
    xb, CB, Hp, Wp = pack_input_blocked(x, G, Vc, (pt, pb, pl, pr))
    # the other order of the tasks (channel blocks outer) writes the same array
    xb2 = pack_input_blocked(x, G, Vc, (pt, pb, pl, pr), rows_outer=False)[0]
    np.testing.assert_array_equal(xb2, xb)
    Cg = C // G
    assert (CB, Hp, Wp) == (-(-Cg // Vc), H + pt + pb, W + pl + pr)
    xp = np.zeros((N, G, CB * Vc, Hp, Wp), dtype)
    xp[:, :, :Cg, pt:pt + H, pl:pl + W] = x.reshape(N, G, Cg, H, W)
    expect = xp.reshape(N, G, CB, Vc, Hp, Wp).transpose(0, 1, 2, 4, 5, 3)
    np.testing.assert_array_equal(xb.reshape(expect.shape), expect)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("Vc", [2, 3, 4, 5])
@pytest.mark.parametrize("W", [7, 16, 17, 40])
def test_input_blocked_few_channels(rng, dtype, Vc, W):
    """2-4 channels per block go through register interleaves (rows of whole vectors, the
    last one overlapping), other counts and rows shorter than a vector element by element:
    the same layout either way."""
    N, H, G = 2, 3, 2
    x = rng.standard_normal((N, G * Vc, H, W)).astype(dtype)
    pt, pb, pl, pr = 1, 0, 2, 1
    xb, CB, Hp, Wp = pack_input_blocked(x, G, Vc, (pt, pb, pl, pr))
    assert (CB, Hp, Wp) == (1, H + pt + pb, W + pl + pr)
    xp = np.zeros((N, G, Vc, Hp, Wp), dtype)
    xp[:, :, :, pt:pt + H, pl:pl + W] = x.reshape(N, G, Vc, H, W)
    np.testing.assert_array_equal(xb.reshape(N, G, Hp, Wp, Vc), xp.transpose(0, 1, 3, 4, 2))


@pytest.mark.parametrize("N,C,K,H,kw", [(1, 3, 64, 30, dict(stride=2, padding=3)),
                                         (1, 32, 64, 24, dict(padding=1)),
                                         (2, 16, 48, 20, dict(padding=(0, 1))),
                                         (1, 64, 64, 6, dict(padding=1))])  # by channels
def test_blocked_task_orders(rng, N, C, K, H, kw):
    """Work shared out by pixel tiles (the first three) or by channel blocks (the last): the
    reference's values either way."""
    x, w, b = random_problem(rng, (N, C, H, H), (K, C, 3, 3), np.float32)
    p = normalize(x.shape, w.shape, b.shape, np.float32, **kw)
    assert direct.choose_path(p) == "blocked"
    y = fastconv.conv2d(x, w, b, algorithm="direct", **kw)
    assert rel_err(y, reference.conv2d(x, w, b, **kw)) < TOLERANCE[("direct", "float32")]


def test_input_phases_layout(rng):
    x = rng.standard_normal((1, 2, 3, 7)).astype(np.float32)
    padding, sw = (1, 0, 2, 1), 3
    xq, Hp, Wq = pack_input_phases(x, padding, sw, min_cols=6)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 0), (2, 1)))
    xq = xq.reshape(1, 2, Hp, sw, Wq)
    for f in range(sw):
        cols = xpad[..., f::sw]
        np.testing.assert_array_equal(xq[:, :, :, f, :cols.shape[-1]], cols)
        assert not xq[:, :, :, f, cols.shape[-1]:].any()


# ---------------------------------------------------------------------------
# width path (depthwise.py): loads straight from x (strides 1, 2) vs packed rows
# ---------------------------------------------------------------------------

# Whole vectors inside the padding (pl > V), W below V, unmasked interior vectors, several row
# blocks with a short last one, horizontal dilation with stride 2, channel multipliers.
WIDTH_CASES = [
    ("s1-wide-pad", 1, 3, 7, 5, 3, 3, 3, dict(groups=3, padding=((2, 1), (20, 17)))),
    ("s2-wide-pad-d2", 1, 3, 9, 6, 6, 3, 2,
     dict(groups=3, stride=2, padding=((1, 0), (18, 21)), dilation=(1, 2))),
    ("s2-long", 2, 2, 9, 70, 2, 3, 3, dict(groups=2, stride=2, padding=1)),
    ("s1-rows-mult2", 1, 2, 23, 40, 4, 3, 3, dict(groups=2, padding=1)),
    ("s2x1-5x5", 1, 4, 13, 37, 4, 5, 5, dict(groups=4, stride=(1, 2), padding=2)),
]
WIDTH_DTYPES = [(g, np.float32) for g in WIDTH_CASES] + [(WIDTH_CASES[1], np.float64),
                                                         (WIDTH_CASES[2], np.float64)]


@pytest.mark.parametrize("case, dtype", WIDTH_DTYPES,
                         ids=[f"{g[0]}-{np.dtype(d).name}" for g, d in WIDTH_DTYPES])
def test_width_direct_loads_match_packed(case, dtype, rng, cpu_settings):
    """Both input routes of the width path meet the bound and agree bit for bit (same sum order)."""
    _, N, C, H, W, K, R, S, kw = case
    x, w, b = _inputs(rng, N, C, H, W, K, R, S, kw.get("groups", 1), dtype, bias=(N % 2 == 0))
    x[0, 0, H // 2, 0] = np.inf  # next to the left padding: inf * 0 only where the reference has it
    ys = []
    for direct_loads in (True, False):
        cpu_settings.width_direct_loads = direct_loads
        p = _params(x, w, b, **kw)
        y = np.full(p.output_shape, np.nan, dtype)
        direct.run(x, w, b, p, y, path="width")
        ys.append(y)
    np.testing.assert_array_equal(ys[0], ys[1])
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64),
                           None if b is None else b.astype(np.float64), **kw)
    if kw.get("dilation", 1) == 1:  # the reference multiplies dilation holes too
        np.testing.assert_array_equal(np.isnan(ys[0]), np.isnan(ref))
    x[0, 0, H // 2, 0] = 0
    cpu_settings.width_direct_loads = True
    _check(x, w, b, path="width", **kw)


# 1x1 cases for the pointwise path: pixel tails (masked vectors), strides, groups, channel
# blocks that do not fill NK, batches, both dtypes.
POINTWISE = [
    ("tail", 2, 16, 7, 7, 9, {}),
    ("s2", 1, 20, 9, 11, 33, dict(stride=2)),
    ("s23-g2", 3, 32, 10, 13, 18, dict(stride=(2, 3), groups=2)),
    ("wide", 1, 17, 5, 40, 4, {}),
    ("one-px", 2, 24, 1, 1, 100, {}),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", POINTWISE, ids=lambda c: c[0])
def test_pointwise_path(case, dtype, rng):
    _, N, C, H, W, K, kw = case
    x, w, b = _inputs(rng, N, C, H, W, K, 1, 1, kw.get("groups", 1), dtype, bias=(N % 2 == 1))
    p = _params(x, w, b, **kw)
    assert direct.choose_path(p) == "pointwise"
    _check(x, w, b, path="pointwise", **kw)


def test_pointwise_threads_and_nonfinite(rng):
    _, N, C, H, W, K, kw = POINTWISE[2]
    x, w, b = _inputs(rng, N, C, H, W, K, 1, 1, kw["groups"], np.float32)
    x[1, 3, 4, 6] = np.nan
    x[2, 20, 0, 0] = np.inf
    w[5, 0, 0, 0] = 0.0  # meets the inf: 0 * inf = NaN, as in the plain sum
    p = _params(x, w, b, **kw)
    ys = []
    old = numba.get_num_threads()
    try:
        for t in sorted({1, min(2, numba.config.NUMBA_NUM_THREADS)}):
            numba.set_num_threads(t)
            y = np.empty(p.output_shape, x.dtype)
            direct.run(x, w, b, p, y, path="pointwise")
            ys.append(y)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(ys[0], ys[-1])
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kw)
    np.testing.assert_array_equal(np.isnan(ys[0]), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(ys[0]), np.isinf(ref))
