"""Tests of the channels path of ``direct`` (src/fastconv/cpu/direct/channels.py).

One input channel per group (depthwise, channel multipliers 2 and 3), vectorised over groups:
every case is held to the elementwise error bound of :mod:`fastconv.cpu.direct` against the
float64 reference.  Kernel shape, strides and dilation are runtime arguments of one compiled
driver per dtype, so the cases below add no compilations beyond the first of each dtype.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest

from fastconv import reference
from fastconv._params import normalize
from fastconv.cpu import direct
from fastconv.cpu.simd import lanes

from conftest import check_direct, direct_inputs, direct_params

pytestmark = pytest.mark.jit


# (label, N, C, H, W, multiplier, R, S, kwargs); groups = C.  20 channels: a full block and a
# part-empty one (float32 on AVX-512); 3 channels: fewer than a vector; 37: a part-empty last
# block after two full ones.
CHANNEL_CASES = [
    ("dw-1x1map", 1, 20, 1, 1, 1, 3, 3, dict(padding=1)),
    ("dw-s1-p1", 3, 20, 5, 5, 1, 3, 3, dict(padding=1)),
    ("dw-s2-p0", 1, 37, 13, 11, 1, 3, 3, dict(stride=2)),
    ("dw-s3-d2-p2", 3, 20, 13, 11, 1, 3, 3, dict(stride=3, dilation=2, padding=2)),
    ("dw-asym", 1, 20, 9, 7, 1, 3, 2, dict(stride=(1, 2), padding=((1, 0), (2, 1)))),
    ("dw-5x5-d12", 1, 3, 8, 13, 1, 5, 5, dict(padding=2, dilation=(1, 2))),
    ("mult2-s2-p1", 3, 20, 10, 9, 2, 3, 3, dict(stride=2, padding=1)),
    ("mult3-d2", 1, 7, 11, 13, 3, 3, 3, dict(dilation=2, padding=1)),
    ("mult3-s1x3", 1, 20, 6, 12, 3, 2, 3, dict(stride=(1, 3), padding=((0, 2), (1, 1)))),
]
CHANNEL_DTYPES = ([(c, np.float32) for c in CHANNEL_CASES]
                  + [(c, np.float64) for c in CHANNEL_CASES if c[0] in ("dw-s1-p1", "dw-s3-d2-p2",
                                                                       "mult2-s2-p1", "mult3-d2")])


@pytest.mark.parametrize("case, dtype", CHANNEL_DTYPES,
                         ids=[f"{c[0]}-{np.dtype(d).name}" for c, d in CHANNEL_DTYPES])
def test_against_reference(case, dtype, rng):
    _, N, C, H, W, m, R, S, kw = case
    x, w, b = direct_inputs(rng, N, C, H, W, m * C, R, S, C, dtype, bias=(N != 1))
    check_direct(x, w, b, path="channels", groups=C, **kw)


@pytest.mark.parametrize("shape, kw, path", [
    ((32, 398, 5, 5), dict(padding=1), "channels"),  # a batch of small maps
    ((16, 32, 12, 12), dict(padding=2, dilation=2), "channels"),
    ((1, 1024, 5, 5), dict(padding=1), "channels"),
    ((1, 32, 112, 112), dict(padding=1), "width"),  # large maps: full row vectors
    ((1, 128, 56, 56), dict(padding=1), "width"),
])
def test_choose_path(shape, kw, path):
    N, C, H, W = shape
    p = normalize((N, C, H, W), (C, 1, 3, 3), None, np.dtype(np.float32), groups=C, **kw)
    assert direct.choose_path(p) == path


def test_cg_above_one_never_channels():
    for C, groups, K in ((64, 32, 64), (6, 2, 6), (3, 1, 16)):
        p = normalize((8, C, 5, 5), (K, C // groups, 3, 3), None, np.dtype(np.float32),
                      groups=groups, padding=1)
        assert direct.choose_path(p) != "channels"


def test_thread_count_independence(rng):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 Numba threads")
    C = 2 * lanes(np.float32) + 3
    x, w, b = direct_inputs(rng, 3, C, 9, 8, 2 * C, 3, 3, C, np.float32)
    kw = dict(groups=C, padding=1, stride=(1, 2))
    p = direct_params(x, w, b, **kw)
    ys = []
    old = numba.get_num_threads()
    try:
        for threads in (1, 2):
            numba.set_num_threads(threads)
            y = np.full(p.output_shape, np.nan, x.dtype)
            direct.run(x, w, b, p, y, path="channels")
            ys.append(y)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(ys[0], ys[1])


def test_nonfinite_propagation(rng):
    """A NaN or inf input reaches exactly the outputs whose receptive field holds it."""
    C = lanes(np.float32) + 4
    x, w, b = direct_inputs(rng, 2, C, 9, 11, C, 3, 3, C, np.float32)
    x[0, 1, 4, 5] = np.nan
    x[1, C - 1, 0, 10] = np.inf
    x[1, 2, 8, 0] = -np.inf
    kw = dict(groups=C, padding=1)
    p = direct_params(x, w, b, **kw)
    y = np.empty(p.output_shape, x.dtype)
    direct.run(x, w, b, p, y, path="channels")
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kw)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isposinf(y), np.isposinf(ref))
    np.testing.assert_array_equal(np.isneginf(y), np.isneginf(ref))
    fin = np.isfinite(ref)
    assert np.isnan(ref).any() and fin.any() and not np.isfinite(ref[1, C - 1]).all()
    np.testing.assert_allclose(y[fin], ref[fin], rtol=1e-4, atol=1e-4)


# (N, C, H, W, multiplier, R, S, kwargs): rows whose width is and is not a multiple of the
# pixel block or shorter than it, a tile's short last block, 3- and 13-tap kernel rows
# (each kernel width is one more compiled driver per dtype: two widths keep that short).
WINDOW_CASES = [
    (1, 20, 9, 16, 1, 3, 3, dict(padding=1)),
    (2, 37, 11, 21, 2, 3, 3, dict(padding=(1, 2))),
    (1, 20, 12, 19, 1, 13, 13, dict(padding=6)),
    (1, 20, 15, 30, 1, 13, 13, dict(padding=6, stride=(2, 1), dilation=(2, 1))),
    (2, 37, 6, 5, 1, 3, 3, dict(padding=1)),    # rows shorter than the pixel block
    (1, 20, 7, 7, 1, 13, 13, dict(padding=6)),  # RepLKNet's last stage, 7-pixel rows
]
WINDOW_DTYPES = ([(c, np.float32) for c in WINDOW_CASES]
                 + [(c, np.float64) for c in WINDOW_CASES if c[6] == 3])


@pytest.mark.parametrize("case,dtype", WINDOW_DTYPES)
def test_register_window_is_bitwise_the_generic_loop(case, dtype, rng, monkeypatch):
    """Kernel rows read through a register window give the generic loop's sums, bit for bit."""
    from fastconv.cpu.direct import channels

    N, C, H, W, mult, R, S, kw = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((C * mult, 1, R, S)).astype(dtype)
    b = rng.standard_normal(C * mult).astype(dtype)
    p = normalize(x.shape, w.shape, b.shape, np.dtype(dtype), groups=C, **kw)
    if channels.window_width(p) == 0:
        pytest.skip("this target's registers hold no window of this kernel width")
    windowed = check_direct(x, w, b, path="channels", groups=C, **kw)  # within the bound
    monkeypatch.setattr(channels, "window_width", lambda p: 0)
    generic = np.empty(p.output_shape, dtype)
    channels.run(x, w, b, p, generic)
    np.testing.assert_array_equal(windowed, generic)
