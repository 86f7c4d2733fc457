"""Shared fixtures and the tolerance table of the test suite."""

from __future__ import annotations

import numpy as np
import pytest

# Normwise relative error ||y - ref|| / ||ref|| allowed per (algorithm, dtype), on inputs drawn
# from N(0, 1) with weights scaled by 1/sqrt(Cg*R*S).  Each is a generous multiple of what the
# error analysis gives (fastconv.accuracy): a dot product of n terms has relative error ~ sqrt(n) u
# for random signs, u = 6e-8 (float32) / 1.1e-16 (float64); the test sizes keep n <= ~600.
#   direct, im2col: ~sqrt(600) * 6e-8 = 1.5e-6 -> 1e-5 in float32.
#   Winograd F(2x2,3x3): transforms add ~2x the rounding of a direct sum (beta = 81, but the
#     entries are 0/+-1/+-1/2 and cancel on average) -> 2e-5.
#   Winograd F(4x4,3x3): A^T has entries up to 8 and B^T up to 5; measured ~10x direct -> 2e-4
#     (the error budget NNPACK and cuDNN document for F(4x4,3x3) in float32 is 1e-3).
# The elementwise, input-dependent bound of fastconv.accuracy.error_bound is checked as well.
TOLERANCE = {
    ("direct", "float32"): 1e-5,
    ("im2col", "float32"): 1e-5,
    ("winograd_f2x2_3x3", "float32"): 2e-5,
    ("winograd_f4x4_3x3", "float32"): 2e-4,
    ("direct", "float64"): 1e-13,
    ("im2col", "float64"): 1e-13,
    ("winograd_f2x2_3x3", "float64"): 1e-13,
    ("winograd_f4x4_3x3", "float64"): 1e-12,
}

CONCRETE = ("direct", "im2col", "winograd_f2x2_3x3", "winograd_f4x4_3x3")


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture
def cpu_settings():
    """``fastconv._config.CPU`` (the CPU settings and thresholds), reset after the test.

    A test steers a CPU path by setting a field (``cpu_settings.vec_max_q = 0``).
    """
    from fastconv import _config

    yield _config.CPU
    _config.CPU.reset()


def rel_err(y, ref) -> float:
    ref = np.asarray(ref, np.float64)
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(np.asarray(y, np.float64) - ref) / (denom if denom else 1.0))


def random_problem(rng, x_shape, w_shape, dtype=np.float32, bias=True):
    """Inputs ~ N(0, 1), weights scaled so outputs are O(1)."""
    fan_in = int(np.prod(w_shape[1:]))
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal(w_shape) / np.sqrt(fan_in)).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype) if bias else None
    return x, w, b
