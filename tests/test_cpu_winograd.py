"""fastconv.cpu.winograd (the front end): correctness against the float64 reference, bounds,
the direct fallback on non-finite values, profiling, prepared weights.

The paths behind it have their own files: test_cpu_winograd_tile_row.py, _vec.py, _stream.py
and _few.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import normalize
from fastconv.cpu import winograd
from fastconv.winograd_math import error_bound

from conftest import TOLERANCE, check_conv, random_problem, rel_err

# Every path (fused, few-channel, channel-vectorised, stream) in both dtypes is its own
# specialisation: with a cold Numba cache the module took 204 s, most tests 5-15 s of compiling.
pytestmark = pytest.mark.jit

ALGS = ("winograd_f2x2_3x3", "winograd_f4x4_3x3")


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [
    # (x shape, K, groups, padding)
    ((1, 3, 8, 8), 4, 1, 1),
    ((2, 5, 7, 9), 6, 1, 0),                       # odd sizes, partial edge tiles
    ((3, 4, 11, 6), 4, 2, ((0, 2), (1, 0))),       # asymmetric padding, groups
    ((1, 6, 5, 13), 6, 6, 1),                      # depthwise
    ((2, 6, 3, 3), 9, 3, 2),                       # tiny map, wide padding, Kg != Cg
    ((1, 2, 3, 4), 3, 1, 0),                       # output 1 x 2
    ((1, 4, 9, 9), 2, 1, "same"),
    ((1, 2, 6, 6), 2, 1, "full"),
])
def test_matches_reference(rng, alg, dtype, case):
    xs, K, g, pad = case
    x, w, b = random_problem(rng, xs, (K, xs[1] // g, 3, 3), dtype)
    check_conv(x, w, b, alg, padding=pad, groups=g)
    check_conv(x, w, None, alg, padding=pad, groups=g)


def test_unbatched_and_nhwc(rng):
    x, w, b = random_problem(rng, (3, 10, 7), (5, 3, 3, 3))
    check_conv(x, w, b, "winograd_f4x4_3x3", padding=1)
    xn = np.ascontiguousarray(rng.standard_normal((2, 9, 8, 4)).astype(np.float32))
    w = rng.standard_normal((3, 4, 3, 3)).astype(np.float32) / 6
    check_conv(xn, w, None, "winograd_f2x2_3x3", padding=1, layout="NHWC")


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_error_bound_holds(rng, m, dtype):
    """Every output is within winograd_math.error_bound of the float64 reference."""
    C = 24
    x = rng.uniform(-2, 2, (2, C, 14, 13)).astype(dtype)
    w = rng.uniform(-1, 1, (5, C, 3, 3)).astype(dtype)
    y = fastconv.conv2d(x, w, padding=1, algorithm=f"winograd_f{m}x{m}_3x3")
    ref = reference.conv2d(x, w, padding=1)
    bound = error_bound(m, C, dtype, np.abs(x).max(), np.abs(w).max())
    err = np.abs(y.astype(np.float64) - ref).max()
    assert err <= bound, (err, bound)
    assert err > 0 or dtype == np.float64  # the comparison is not vacuous


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("where", ["x", "w", "overflow"])
def test_nonfinite_falls_back_to_exact_propagation(rng, alg, where):
    x, w, b = random_problem(rng, (2, 4, 9, 10), (3, 4, 3, 3), np.float32)
    if where == "x":
        x[1, 2, 4, 5] = np.inf
        x[0, 0, 0, 0] = np.nan
    elif where == "w":
        w[2, 1, 0, 2] = -np.inf
    else:
        x[0, 1, 3, 3] = 3e38  # finite, but the transforms overflow
    y = fastconv.conv2d(x, w, b, padding=1, algorithm=alg)
    ref = fastconv.conv2d(x, w, b, padding=1, algorithm="direct")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
    finite = np.isfinite(ref)
    assert finite.any()
    np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-5, atol=1e-5)


def test_profile_phases(rng):
    x, w, b = random_problem(rng, (2, 6, 10, 9), (4, 6, 3, 3), np.float32)
    p = normalize(x.shape, w.shape, b.shape, np.float32, padding=1)
    for m in (2, 4, None):
        y = np.full(p.output_shape, np.nan, np.float32)
        t = winograd.profile_phases(x, w, b, p, y, m=m)
        # the channel-vectorised path (this small map) also packs its input
        assert set(t) == {"kernel_transform", "input_transform", "gemm", "output_transform",
                          "pack_input"}
        assert all(v >= 0 for v in t.values())
        assert rel_err(y, reference.conv2d(x, w, b, padding=1)) < 2e-4


def test_profile_phases_tile_row_path(rng, cpu_settings):
    cpu_settings.vec_max_q = 0
    x, w, b = random_problem(rng, (2, 6, 10, 9), (4, 6, 3, 3), np.float32)
    p = normalize(x.shape, w.shape, b.shape, np.float32, padding=1)
    y = np.full(p.output_shape, np.nan, np.float32)
    t = winograd.profile_phases(x, w, b, p, y, m=4)
    assert set(t) == {"kernel_transform", "input_transform", "gemm", "output_transform"}
    assert rel_err(y, reference.conv2d(x, w, b, padding=1)) < 2e-4


def test_prepare_run_prepared_snapshot(rng):
    x, w, b = random_problem(rng, (2, 4, 9, 7), (6, 2, 3, 3), np.float32)
    p = normalize(x.shape, w.shape, b.shape, np.float32, padding=1, groups=2)
    ref = reference.conv2d(x, w, b, padding=1, groups=2)
    packed = winograd.prepare_f4x4(w, p)
    w[:] = 0  # the packed weights are a snapshot
    y = np.empty(p.output_shape, np.float32)
    winograd.run_prepared(x, packed, b, p, y)
    assert rel_err(y, ref) < TOLERANCE[("winograd_f4x4_3x3", "float32")]
    # Non-finite input with prepared weights still takes the exact fallback.
    x[0, 0, 0, 0] = np.nan
    winograd.run_prepared(x, packed, b, p, y)
    assert np.isnan(y[0, :3, 0, 0]).all() and np.isfinite(y[0, 3:]).all()


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", [
    # (x shape, K, groups, padding, dilation)
    ((1, 8, 13, 11), 16, 1, 2, 2),
    ((2, 5, 9, 10), 7, 1, ((1, 3), (0, 2)), 3),    # asymmetric padding, phases of unequal size
    ((1, 4, 7, 8), 4, 2, 0, (2, 3)),               # groups, anisotropic dilation
    ((3, 6, 12, 12), 6, 6, "same", 2),             # depthwise
    ((1, 2, 5, 5), 3, 1, 0, 2),                    # one output pixel
])
def test_dilated_through_phases_matches_reference(rng, alg, dtype, case):
    xs, K, g, pad, d = case
    x, w, b = random_problem(rng, xs, (K, xs[1] // g, 3, 3), dtype)
    x0 = x.copy()
    check_conv(x, w, b, alg, padding=pad, groups=g, dilation=d)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.parametrize("m", [2, 4])
def test_dilated_error_bound_and_plan(rng, m):
    """Each output of the dilated call is one undilated Winograd output: the same bound holds,
    and a plan (prepared weights) gives the call's result bitwise."""
    C = 20
    x = rng.uniform(-2, 2, (2, C, 17, 15)).astype(np.float32)
    w = rng.uniform(-1, 1, (6, C, 3, 3)).astype(np.float32)
    alg = f"winograd_f{m}x{m}_3x3"
    y = fastconv.conv2d(x, w, padding=2, dilation=2, algorithm=alg)
    ref = reference.conv2d(x, w, padding=2, dilation=2)
    bound = error_bound(m, C, np.float32, np.abs(x).max(), np.abs(w).max())
    err = np.abs(y.astype(np.float64) - ref).max()
    assert 0 < err <= bound, (err, bound)
    plan = fastconv.plan(w, x_shape=x.shape, padding=2, dilation=2, algorithm=alg)
    np.testing.assert_array_equal(plan(x), y)


def test_dilated_nonfinite_and_profile(rng):
    x, w, b = random_problem(rng, (1, 4, 12, 12), (3, 4, 3, 3), np.float32)
    x[0, 1, 5, 6] = np.nan
    y = fastconv.conv2d(x, w, b, padding=2, dilation=2, algorithm="winograd_f4x4_3x3")
    ref = fastconv.conv2d(x, w, b, padding=2, dilation=2, algorithm="direct")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    assert np.isnan(ref).sum() == 3 * 9  # the NaN reaches 9 outputs per output channel
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(y[ok], ref[ok], rtol=1e-5, atol=1e-5)
    x[0, 1, 5, 6] = 0.5
    p = normalize(x.shape, w.shape, b.shape, np.float32, padding=2, dilation=2)
    out = np.full(p.output_shape, np.nan, np.float32)
    t = winograd.profile_phases(x, w, b, p, out, m=4)
    assert "phases" in t and all(v >= 0 for v in t.values())
    assert rel_err(out, reference.conv2d(x, w, b, padding=2, dilation=2)) < 2e-4


def test_phase_params():
    p = normalize((2, 8, 13, 11), (5, 8, 3, 3), None, np.float32, padding=(1, 2), dilation=(2, 3))
    pp = winograd.phase_params(p)
    assert (pp.N, pp.C, pp.K, pp.dilation, pp.padding) == (12, 8, 5, (1, 1), (0, 0, 0, 0))
    assert (pp.H, pp.W) == (-(-15 // 2), -(-15 // 3))
    assert pp.P * 2 >= p.P and pp.Q * 3 >= p.Q  # the phases cover every output
    q = normalize((1, 8, 9, 9), (5, 8, 3, 3), None, np.float32, padding=1)
    assert winograd.phase_params(q) is q
