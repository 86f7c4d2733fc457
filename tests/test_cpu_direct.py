"""Tests of the ``direct`` CPU algorithm (src/fastconv/cpu/direct.py, depthwise.py, _blocked.py).

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
from fastconv._params import normalize
from fastconv.cpu import direct
from fastconv.cpu._blocked import lanes, pack_input_phases, pack_weights_blocked


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


def _check(x, w, b, **kw):
    y = fastconv.conv2d(x, w, b, algorithm="direct", **kw)
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64),
                           None if b is None else b.astype(np.float64), **kw)
    assert y.dtype == x.dtype and y.shape == ref.shape
    err = np.abs(y.astype(np.float64) - ref)
    bound = _bound(x, w, b, x.dtype, **kw)
    bad = err > bound
    assert not bad.any(), f"{bad.sum()} outputs exceed the error bound; worst {err[bad].max()}"
    return y


# (path, N, C, H, W, K, R, S, kwargs).  Sizes are odd and small; each case names the path the
# dispatcher must take so that a change of heuristics cannot silently drop coverage.
GRID = [
    # blocked: channel-blocked micro-kernel; tails in pixels, channels and output blocks
    ("blocked", 2, 5, 9, 11, 20, 3, 3, dict(padding=1)),
    ("blocked", 1, 19, 8, 7, 40, 3, 2, dict(stride=2, padding=((1, 0), (2, 1)), dilation=2)),
    ("blocked", 2, 3, 23, 22, 17, 1, 1, dict(stride=3)),
    ("blocked", 1, 36, 7, 9, 33, 3, 3, dict(padding="same", stride=(1, 2))),
    ("blocked", 1, 8, 6, 6, 64, 5, 3, dict(padding="full", dilation=(2, 1))),
    ("blocked", 2, 12, 9, 9, 36, 3, 3, dict(groups=2, padding=1)),
    ("blocked", 1, 70, 5, 5, 16, 3, 3, dict(padding=1)),  # several channel blocks and chunks
    ("blocked", 2, 8, 41, 1, 18, 3, 1, dict(padding=(1, 0))),  # Q = 1
    ("blocked", 2, 8, 1, 45, 18, 1, 3, dict()),  # P = 1
    # width: vectorised along the output row (depthwise, multipliers, few output channels)
    ("width", 2, 6, 12, 21, 6, 3, 3, dict(groups=6, padding=1)),
    ("width", 1, 5, 11, 37, 10, 3, 3, dict(groups=5, stride=2, padding=1)),  # multiplier 2
    ("width", 1, 4, 15, 29, 8, 3, 5, dict(groups=4, stride=3, dilation=2, padding=((2, 1), (0, 3)))),
    ("width", 2, 1, 16, 40, 6, 5, 5, dict()),  # LeNet C1
    ("width", 1, 6, 9, 23, 12, 2, 3, dict(groups=3, padding="same")),
    # simple: tiny problems run the reference-order loop nest
    ("simple", 1, 2, 3, 4, 3, 2, 2, dict(padding=1)),
    ("simple", 1, 4, 5, 5, 4, 3, 3, dict(groups=4, stride=2)),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", GRID, ids=[f"{g[0]}-{i}" for i, g in enumerate(GRID)])
def test_grid_against_reference(case, dtype, rng):
    path, N, C, H, W, K, R, S, kw = case
    groups = kw.get("groups", 1)
    x, w, b = _inputs(rng, N, C, H, W, K, R, S, groups, dtype, bias=(N % 2 == 0))
    assert direct.choose_path(_params(x, w, b, **kw)) == path
    _check(x, w, b, **kw)


@pytest.mark.parametrize("N", [0, 1, 3])
def test_batch_sizes(N, rng):
    x, w, b = _inputs(rng, N, 8, 7, 9, 24, 3, 3, 1, np.float32)
    y = _check(x, w, b, padding=1)
    assert y.shape == (N, 24, 7, 9)


def test_unbatched_and_nhwc(rng):
    x, w, b = _inputs(rng, 1, 6, 10, 12, 20, 3, 3, 1, np.float32)
    y = fastconv.conv2d(x, w, b, padding=1, algorithm="direct")
    y3 = fastconv.conv2d(x[0], w, b, padding=1, algorithm="direct")
    yh = fastconv.conv2d(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), w, b, padding=1,
                         layout="NHWC", algorithm="direct")
    np.testing.assert_array_equal(y3, y[0])
    np.testing.assert_array_equal(yh.transpose(0, 3, 1, 2), y)


@pytest.mark.parametrize("case", [g for g in GRID if g[0] != "simple"][:2] + [GRID[9], GRID[12]],
                         ids=["blocked-a", "blocked-b", "width-dw", "width-lenet"])
def test_thread_count_independence(case, rng):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    path, N, C, H, W, K, R, S, kw = case
    x, w, b = _inputs(rng, N, C, H, W, K, R, S, kw.get("groups", 1), np.float32)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1 = fastconv.conv2d(x, w, b, algorithm="direct", **kw)
        numba.set_num_threads(2)
        y2 = fastconv.conv2d(x, w, b, algorithm="direct", **kw)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(y1, y2)


# No dilation here: the reference dilates w with zeros, so it would multiply an inf by the
# holes of a dilated kernel, which are not taps of the convolution.
@pytest.mark.parametrize("case", [GRID[0], GRID[3], GRID[9], GRID[10], GRID[14]],
                         ids=["blocked-a", "blocked-b", "width-dw", "width-mult", "simple"])
def test_nonfinite_propagation(case, rng):
    path, N, C, H, W, K, R, S, kw = case
    groups = kw.get("groups", 1)
    x, w, b = _inputs(rng, N, C, H, W, K, R, S, groups, np.float32)
    x[0, 0, H // 2, W // 2] = np.nan
    x[-1, -1, 0, W - 1] = np.inf
    w[-1, 0, 0, 0] = np.inf  # meets padding zeros at the border: inf * 0 = NaN
    y = fastconv.conv2d(x, w, b, algorithm="direct", **kw)
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
