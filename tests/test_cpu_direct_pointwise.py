"""Tests of the pointwise path of ``direct`` (src/fastconv/cpu/direct/pointwise.py)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from fastconv import reference
from fastconv.cpu import direct
from fastconv.cpu.simd import lanes

from conftest import check_direct, direct_inputs, direct_params

pytestmark = pytest.mark.jit


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
    x, w, b = direct_inputs(rng, N, C, H, W, K, 1, 1, kw.get("groups", 1), dtype, bias=(N % 2 == 1))
    p = direct_params(x, w, b, **kw)
    if p.Kg % lanes(dtype):  # (output channels filling whole vectors may go to the blocked path)
        assert direct.choose_path(p) == "pointwise"
    check_direct(x, w, b, path="pointwise", **kw)


def test_pointwise_threads_and_nonfinite(rng):
    _, N, C, H, W, K, kw = POINTWISE[2]
    x, w, b = direct_inputs(rng, N, C, H, W, K, 1, 1, kw["groups"], np.float32)
    x[1, 3, 4, 6] = np.nan
    x[2, 20, 0, 0] = np.inf
    w[5, 0, 0, 0] = 0.0  # meets the inf: 0 * inf = NaN, as in the plain sum
    p = direct_params(x, w, b, **kw)
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
