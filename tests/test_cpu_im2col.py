"""fastconv.cpu.im2col: every path (pointwise, strided pointwise, unfold, small maps, row blocks)."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import normalize
from fastconv.cpu import im2col

from conftest import TOLERANCE, random_problem, rel_err

CASES = [
    # (x shape, w shape, kwargs)
    ((2, 8, 13, 6), (8, 8, 1, 1), {}),                                        # pure GEMM
    ((2, 8, 13, 6), (6, 4, 1, 1), {"stride": 2, "groups": 2}),                # strided 1x1
    ((1, 8, 9, 7), (5, 8, 1, 1), {"stride": (2, 3), "padding": 1}),           # padded 1x1
    ((1, 3, 20, 17), (4, 3, 7, 7), {"stride": 2, "padding": 3}),              # stem-like
    ((2, 4, 12, 12), (3, 4, 3, 3), {"dilation": 2, "padding": (1, 3), "stride": (1, 2)}),
    ((9, 1, 12, 12), (6, 1, 5, 5), {}),                                       # small maps, batched
    ((1, 6, 6, 6), (6, 1, 3, 3), {"groups": 6, "padding": 5}),                # depthwise, wide pad
    ((1, 2, 5, 5), (2, 2, 5, 5), {"padding": ((7, 0), (0, 6)), "stride": 3}),  # taps all outside
    ((2, 6, 8, 7), (4, 3, 3, 3), {"padding": ((0, 2), (1, 0)), "groups": 2}),
    ((1, 4, 24, 24), (4, 4, 3, 3), {"padding": "same"}),                     # larger maps
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs,ws,kw", CASES)
def test_matches_reference(rng, dtype, xs, ws, kw):
    x, w, b = random_problem(rng, xs, ws, dtype)
    for bias in (b, None):
        y = fastconv.conv2d(x, w, bias, algorithm="im2col", **kw)
        ref = reference.conv2d(x, w, bias, **kw)
        assert y.shape == ref.shape
        assert rel_err(y, ref) < TOLERANCE[("im2col", np.dtype(dtype).name)]


@pytest.mark.parametrize("xs,ws,kw", [CASES[3], CASES[5], CASES[8], CASES[9]])
def test_workspace_blocking(rng, cpu_settings, xs, ws, kw):
    """Tiny workspaces force one image per block, then row blocks; results are unchanged."""
    x, w, b = random_problem(rng, xs, ws, np.float64)
    whole = fastconv.conv2d(x, w, b, algorithm="im2col", **kw)
    p = normalize(x.shape, w.shape, b.shape, np.float64, **kw)
    rows = p.Cg * p.R * p.S
    for limit in (rows * p.P * p.Q * 8 + 1, rows * p.Q * 8 * 2, 1):
        cpu_settings.workspace_bytes = limit
        np.testing.assert_allclose(fastconv.conv2d(x, w, b, algorithm="im2col", **kw), whole,
                                   rtol=1e-14, atol=1e-14)
    assert rel_err(whole, reference.conv2d(x, w, b, **kw)) < TOLERANCE[("im2col", "float64")]


def test_nonfinite_propagates(rng):
    x, w, b = random_problem(rng, (1, 3, 9, 9), (2, 3, 3, 3), np.float32)
    x[0, 1, 4, 4] = np.inf
    x[0, 2, 0, 8] = np.nan
    y = fastconv.conv2d(x, w, b, padding=1, algorithm="im2col")
    ref = fastconv.conv2d(x, w, b, padding=1, algorithm="direct")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))


def test_profile_phases(rng):
    for xs, ws, kw in (CASES[0], CASES[1], CASES[3]):
        x, w, b = random_problem(rng, xs, ws, np.float32)
        p = normalize(x.shape, w.shape, b.shape, np.float32, **kw)
        y = np.full(p.output_shape, np.nan, np.float32)
        t = im2col.profile_phases(x, w, b, p, y)
        assert set(t) == {"unfold", "gemm", "bias"} and min(t.values()) >= 0
        assert rel_err(y, reference.conv2d(x, w, b, **kw)) < 1e-5


def test_inputs_not_modified(rng):
    x, w, b = random_problem(rng, (2, 4, 7, 7), (4, 4, 1, 1), np.float32)
    copies = [a.copy() for a in (x, w, b)]
    fastconv.conv2d(x, w, b, algorithm="im2col")
    for a, c in zip((x, w, b), copies):
        np.testing.assert_array_equal(a, c)
