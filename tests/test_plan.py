"""fastconv.plan: results against the reference, weight snapshots, validation, threads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv.plan import ConvPlan, plan

from conftest import TOLERANCE, random_problem, rel_err


@pytest.mark.parametrize("alg,kw", [
    ("winograd_f4x4_3x3", {"padding": 1}),
    ("winograd_f2x2_3x3", {"padding": ((0, 2), (1, 0)), "groups": 2}),
    ("winograd", {"padding": "same"}),
    ("im2col", {"stride": 2, "padding": 1}),
    ("direct", {"dilation": 2}),
    ("fft", {"stride": 2, "padding": 2, "groups": 2}),
    ("auto", {"padding": 1}),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_reference_and_conv2d(rng, alg, kw, dtype):
    x, w, b = random_problem(rng, (2, 4, 11, 9), (6, 4 // kw.get("groups", 1), 3, 3), dtype)
    conv = plan(w, b, x_shape=x.shape, algorithm=alg, **kw)
    assert isinstance(conv, ConvPlan) and conv.output_shape == conv(x).shape
    y = conv(x)
    name = conv.algorithm
    assert rel_err(y, reference.conv2d(x, w, b, **kw)) < TOLERANCE[(name, np.dtype(dtype).name)]
    np.testing.assert_allclose(y, fastconv.conv2d(x, w, b, algorithm=name, **kw),
                               rtol=1e-5 if dtype == np.float32 else 1e-12, atol=1e-6)
    out = np.empty_like(y)
    assert conv(x, out=out) is out
    np.testing.assert_array_equal(out, y)


def test_nhwc_unbatched_and_out(rng):
    x, w, b = random_problem(rng, (7, 8, 3), (5, 3, 3, 3), np.float32)
    conv = plan(w, b, x_shape=x.shape, layout="NHWC", padding=1, algorithm="winograd_f4x4_3x3")
    y = conv(x)
    ref = reference.conv2d(x, w, b, layout="NHWC", padding=1)
    assert y.shape == ref.shape == (7, 8, 5)
    assert rel_err(y, ref) < TOLERANCE[("winograd_f4x4_3x3", "float32")]


def test_weights_are_snapshotted_and_update(rng):
    x, w, b = random_problem(rng, (1, 4, 10, 10), (4, 4, 3, 3), np.float32)
    ref = reference.conv2d(x, w, b, padding=1)
    for alg in ("winograd_f4x4_3x3", "im2col", "direct"):
        w1, b1 = w.copy(), b.copy()
        conv = plan(w1, b1, x_shape=x.shape, padding=1, algorithm=alg)
        w1 *= -3  # mutating the user's arrays does not reach the plan
        b1[:] = 7
        assert rel_err(conv(x), ref) < 2e-4
        conv.update(w1)  # new weights, bias kept
        assert rel_err(conv(x), reference.conv2d(x, w1, b, padding=1)) < 2e-4
        conv.update(w1, b1)
        assert rel_err(conv(x), reference.conv2d(x, w1, b1, padding=1)) < 2e-4
        conv.update(w, None)
        assert rel_err(conv(x), reference.conv2d(x, w, None, padding=1)) < 2e-4
    with pytest.raises(ValueError, match="w must have shape"):
        conv.update(w[:2])


def test_validation(rng):
    x, w, b = random_problem(rng, (2, 4, 8, 8), (4, 4, 3, 3), np.float32)
    conv = plan(w, b, x_shape=x.shape, padding=1)
    with pytest.raises(ValueError, match="x must have shape"):
        conv(x[:1])
    with pytest.raises(ValueError, match="x has dtype float64"):
        conv(x.astype(np.float64))
    with pytest.raises(TypeError, match="x must have dtype"):
        conv(x.astype(np.int32))
    with pytest.raises(ValueError, match="out must have shape"):
        conv(x, out=np.empty((1, 1), np.float32))
    # float32 input into a float64 plan is a safe cast, as in conv2d(x32, w64).
    conv64 = plan(w, b, x_shape=x.shape, padding=1, dtype=np.float64)
    assert conv64(x).dtype == np.float64
    with pytest.raises(TypeError, match="dtype"):
        plan(w, x_shape=x.shape, dtype=np.int32)
    with pytest.raises(TypeError, match="x_shape"):
        plan(w, x_shape="2,4,8,8")
    with pytest.raises(ValueError, match="channel mismatch"):
        plan(w, x_shape=(2, 3, 8, 8))
    with pytest.raises(fastconv.UnsupportedError):
        plan(w, x_shape=x.shape, stride=2, algorithm="winograd_f4x4_3x3")
    assert "ConvPlan(" in repr(conv) and conv.nbytes > w.nbytes


def test_nonfinite_with_prepared_weights(rng):
    x, w, b = random_problem(rng, (1, 3, 9, 9), (2, 3, 3, 3), np.float32)
    x[0, 0, 4, 4] = np.inf
    wi = w.copy()
    wi[1, 2, 1, 1] = np.nan
    for weights, alg in ((w, "winograd_f4x4_3x3"), (wi, "winograd_f4x4_3x3"), (w, "fft"),
                         (wi, "fft")):
        conv = plan(weights, b, x_shape=x.shape, padding=1, algorithm=alg)
        y = conv(x)
        ref = fastconv.conv2d(x, weights, b, padding=1, algorithm="direct")
        np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
        np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))


def test_thread_safety_with_concurrent_update(rng):
    x, w, b = random_problem(rng, (2, 8, 12, 12), (8, 8, 3, 3), np.float32)
    w2 = -w
    conv = plan(w, b, x_shape=x.shape, padding=1, algorithm="winograd_f4x4_3x3")
    ya, yb = conv(x), None
    conv.update(w2)
    yb = conv(x)
    conv.update(w)
    errors = []

    def work():
        for _ in range(5):
            y = conv(x)
            if not (np.array_equal(y, ya) or np.array_equal(y, yb)):
                errors.append("mixed weights")

    def flip():
        for i in range(10):
            conv.update(w2 if i % 2 == 0 else w)

    threads = [threading.Thread(target=work) for _ in range(3)] + [threading.Thread(target=flip)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
