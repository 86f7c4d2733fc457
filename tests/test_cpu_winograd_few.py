"""fastconv.cpu.winograd.few: the few-channel F(4x4) schedule."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import normalize
from fastconv.cpu import winograd
from fastconv.cpu.winograd import few, tile_row
from fastconv.winograd_math import error_bound

from conftest import check_conv, random_problem

# Every path in both dtypes is its own Numba specialisation: the tests are dominated by
# compiling on a cold cache.
pytestmark = pytest.mark.jit


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("Cg,K,groups,padding", [
    (1, 5, 1, 1),                  # K not a multiple of the job's 4 channels
    (2, 6, 2, ((2, 0), (0, 1))),   # groups, asymmetric padding
    (3, 8, 1, 1),                  # an RGB layer
    (4, 3, 1, 0),                  # fewer output channels than one job
])
def test_few_channel_path(rng, dtype, Cg, K, groups, padding):
    """F(4x4) with Cg <= 4 (fastconv.cpu.winograd.few): products inside the output transform.

    73 columns: 19 tiles per row, so rows take one full and one ragged vector of tiles (two
    and a ragged one in float64), and the last tile of a row is cropped.
    """
    C = Cg * groups
    x, w, b = random_problem(rng, (2, C, 10, 73), (K, Cg, 3, 3), dtype)
    p = normalize(x.shape, w.shape, b.shape, dtype, padding=padding, groups=groups)
    tiles_w = -(-p.Q // 4)
    assert tile_row._fused_rows(p, 4, tiles_w, p.N * -(-p.P // 4)) > 0 and Cg <= few.MAX_CG
    y, ref = check_conv(x, w, b, "winograd_f4x4_3x3", padding=padding, groups=groups)
    y0 = fastconv.conv2d(x, w, None, padding=padding, groups=groups, algorithm="winograd_f4x4_3x3")
    bound = error_bound(4, Cg, dtype, np.abs(x).max(), np.abs(w).max())
    assert np.abs(y0.astype(np.float64) - reference.conv2d(x, w, padding=padding, groups=groups)).max() <= bound
    phase = np.empty_like(y)
    import numba
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)  # and the thread count does not change the result
        np.testing.assert_array_equal(
            fastconv.conv2d(x, w, b, padding=padding, groups=groups, algorithm="winograd_f4x4_3x3"), y)
    finally:
        numba.set_num_threads(old)
    t = winograd.profile_phases(x, w, b, p, phase, m=4)
    assert set(t) == {"kernel_transform", "input_transform", "gemm_and_output_transform"}
    np.testing.assert_array_equal(phase, y)
    # a non-finite input, and (float32) a finite one whose transforms overflow, fall back to
    # direct: the same NaN/inf pattern, the direct kernel's values
    cases = [(np.inf, (1, C - 1, 7, 70)), (np.nan, (0, 0, 0, 0))]
    for value, where in cases + ([(3e38, (0, 0, 5, 40))] if dtype == np.float32 else []):
        xx = x.copy()
        xx[where] = value
        y = fastconv.conv2d(xx, w, b, padding=padding, groups=groups, algorithm="winograd_f4x4_3x3")
        ref = fastconv.conv2d(xx, w, b, padding=padding, groups=groups, algorithm="direct")
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
        finite = np.isfinite(ref)
        np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-4, atol=1e-4)
