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
    ("fft", "float32"): 1e-4,
    ("fft", "float64"): 1e-12,
}

CONCRETE = ("direct", "im2col", "winograd_f2x2_3x3", "winograd_f4x4_3x3", "fft")


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


# ---------------------------------------------------------------------------
# The direct algorithm (tests/test_cpu_direct*.py): inputs, the elementwise error bound of
# fastconv.cpu.direct, and the grid of odd, small configurations every SIMD path runs.
# ---------------------------------------------------------------------------

def direct_params(x, w, b, **kw):
    """The normalised parameters of a call on ``x``, ``w``, ``b``."""
    from fastconv._params import normalize

    return normalize(x.shape, w.shape, None if b is None else b.shape, x.dtype, **kw)


def direct_inputs(rng, N, C, H, W, K, R, S, groups, dtype, bias=True):
    """Inputs, weights and (optional) bias ~ N(0, 1), unscaled."""
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C // groups, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype) if bias else None
    return x, w, b


def direct_bound(x, w, b, dtype, **kw):
    """gamma_n (|w| (*) |x| + |b|), doubled for float64 (the reference's own rounding)."""
    from fastconv import reference

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


def check_direct(x, w, b, path=None, **kw):
    """Run ``direct`` (its own path choice, or ``path`` forced) on ``x``, ``w``, ``b``; check the
    output against the float64 reference within :func:`direct_bound`, elementwise; return it."""
    import fastconv
    from fastconv import reference
    from fastconv.cpu import direct

    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64),
                           None if b is None else b.astype(np.float64), **kw)
    if path is None:
        y = fastconv.conv2d(x, w, b, algorithm="direct", **kw)
    else:
        p = direct_params(x, w, b, **kw)
        y = np.full(p.output_shape, np.nan, x.dtype)  # unwritten outputs fail loudly
        direct.run(x, w, b, p, y, path=path)
    assert y.dtype == x.dtype and y.shape == ref.shape
    err = np.abs(y.astype(np.float64) - ref)
    bound = direct_bound(x, w, b, x.dtype, **kw)
    bad = ~(err <= bound)
    assert not bad.any(), f"{bad.sum()} outputs exceed the error bound; worst {err[bad].max()}"
    return y


# (label, N, C, H, W, K, R, S, kwargs): odd, small sizes; each runs through every SIMD path
# (and the simple loop nest where tiny), whatever the heuristic would pick.
DIRECT_GRID = [
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


# ---------------------------------------------------------------------------
# The Winograd tests (tests/test_cpu_winograd*.py)
# ---------------------------------------------------------------------------

def check_conv(x, w, b, alg, **kw):
    """Run ``alg`` on ``x``, ``w``, ``b``: the shape and dtype of the reference's output, and a
    normwise error within :data:`TOLERANCE`; returns the output and the float64 reference."""
    import fastconv
    from fastconv import reference

    y = fastconv.conv2d(x, w, b, algorithm=alg, **kw)
    ref = reference.conv2d(x, w, b, **kw)
    assert y.shape == ref.shape and y.dtype == np.result_type(x, w)
    assert rel_err(y, ref) < TOLERANCE[(alg, np.dtype(y.dtype).name)]
    return y, ref
