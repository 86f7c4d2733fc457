"""Tests of the ``direct`` CPU algorithm's front end (src/fastconv/cpu/direct/__init__.py).

Every configuration is checked against the float64 scipy reference, elementwise against the
error bound stated in :mod:`fastconv.cpu.direct`:

    |y_hat - y| <= gamma_n * (|w| (*) |x| + |b|),  n = Cg*R*S + 1,  gamma_n = n u / (1 - n u).

For float64 the reference itself carries an error of the same bound, so the test allows twice it.
The grid names the kernel path each case must take, so every fast path and the fallback run.
The paths' own tests are in test_cpu_direct_blocked.py, test_cpu_direct_width.py and
test_cpu_direct_pointwise.py; the packed layouts' in test_cpu_packing.py.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import normalize
from fastconv.cpu import direct

from conftest import DIRECT_GRID, check_direct, direct_inputs, direct_params

# The grid runs every kernel path (blocked, width, pointwise, depthwise, simple) per dtype, each
# its own specialisation: with a cold Numba cache the module took 161 s, mostly compiling.
pytestmark = pytest.mark.jit


# float64 on a subset: every register blocking is a separate compilation, and the test file must
# stay around a minute cold.
F64_CASES = ("tails", "s2-d2-asym", "dw-mult2-s2", "chunks")
GRID_DTYPES = [(g, np.float32) for g in DIRECT_GRID] + [(g, np.float64) for g in DIRECT_GRID
                                                        if g[0] in F64_CASES]


@pytest.mark.parametrize("path", ["blocked", "width"])
@pytest.mark.parametrize("case, dtype", GRID_DTYPES,
                         ids=[f"{g[0]}-{np.dtype(d).name}" for g, d in GRID_DTYPES])
def test_grid_against_reference(case, dtype, path, rng):
    _, N, C, H, W, K, R, S, kw = case
    x, w, b = direct_inputs(rng, N, C, H, W, K, R, S, kw.get("groups", 1), dtype, bias=(N % 2 == 0))
    check_direct(x, w, b, path=path, **kw)


@pytest.mark.parametrize("case", [g for g in DIRECT_GRID if g[0] in ("tails", "s2-d2-asym",
                                                                    "dw-s3-d2", "tiny", "tiny-dw")],
                         ids=lambda g: g[0])
def test_simple_path(case, rng):
    _, N, C, H, W, K, R, S, kw = case
    x, w, b = direct_inputs(rng, N, C, H, W, K, R, S, kw.get("groups", 1), np.float64)
    check_direct(x, w, b, path="simple", **kw)


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
    x, w, b = direct_inputs(rng, N, 8, 7, 9, 24, 3, 3, 1, np.float32)
    y = check_direct(x, w, b, padding=1)
    assert y.shape == (N, 24, 7, 9)


def test_unbatched_and_nhwc(rng):
    x, w, b = direct_inputs(rng, 1, 6, 10, 12, 20, 3, 3, 1, np.float32)
    y = fastconv.conv2d(x, w, b, padding=1, algorithm="direct")
    y3 = fastconv.conv2d(x[0], w, b, padding=1, algorithm="direct")
    yh = fastconv.conv2d(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), w, b, padding=1,
                         layout="NHWC", algorithm="direct")
    np.testing.assert_array_equal(y3, y[0])
    np.testing.assert_array_equal(yh.transpose(0, 3, 1, 2), y)


@pytest.mark.parametrize("path", ["blocked", "width"])
@pytest.mark.parametrize("case", [DIRECT_GRID[0], DIRECT_GRID[1], DIRECT_GRID[9], DIRECT_GRID[12]],
                         ids=lambda g: g[0])
def test_thread_count_independence(case, path, rng):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    _, N, C, H, W, K, R, S, kw = case
    x, w, b = direct_inputs(rng, N, C, H, W, K, R, S, kw.get("groups", 1), np.float32)
    old = numba.get_num_threads()
    try:
        p = direct_params(x, w, b, **kw)
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
@pytest.mark.parametrize("case", [DIRECT_GRID[0], DIRECT_GRID[3], DIRECT_GRID[10]],
                         ids=lambda g: g[0])
def test_nonfinite_propagation(case, path, rng):
    _, N, C, H, W, K, R, S, kw = case
    groups = kw.get("groups", 1)
    x, w, b = direct_inputs(rng, N, C, H, W, K, R, S, groups, np.float32)
    x[0, 0, H // 2, W // 2] = np.nan
    x[-1, -1, 0, W - 1] = np.inf
    w[-1, 0, 0, 0] = np.inf  # meets padding zeros at the border: inf * 0 = NaN
    p = direct_params(x, w, b, **kw)
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
    x, w, b = direct_inputs(rng, 2, 9, 8, 8, 20, 3, 3, 1, np.float32)
    xc, wc, bc = x.copy(), w.copy(), b.copy()
    out = np.full((2, 20, 8, 8), np.nan, np.float32)
    res = fastconv.conv2d(x, w, b, padding=1, algorithm="direct", out=out)
    assert res is out and np.isfinite(out).all()
    np.testing.assert_array_equal(x, xc)
    np.testing.assert_array_equal(w, wc)
    np.testing.assert_array_equal(b, bc)
