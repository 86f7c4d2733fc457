"""fastconv.cpu.winograd.vec: the channel-vectorised path's schedules (fused, split, stream),
its fallback, and results independent of the thread count."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastconv
from fastconv._params import normalize
from fastconv.cpu.winograd import vec
from fastconv.cpu.simd import lanes
from fastconv.cpu.winograd.vec import VecPlan

from conftest import check_conv, random_problem

# Every path in both dtypes is its own Numba specialisation: the tests are dominated by
# compiling on a cold cache.
pytestmark = pytest.mark.jit

ALGS = ("winograd_f2x2_3x3", "winograd_f4x4_3x3")


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_vectorised_path(rng, cpu_settings, alg, dtype):
    """Small maps take winograd.vec; items and image slices of any size give the same result."""
    x, w, b = random_problem(rng, (3, 20, 9, 11), (24, 20, 3, 3), dtype)
    m = int(alg[10])
    p = normalize(x.shape, w.shape, b.shape, dtype, padding=(1, 2))
    assert vec.plan(p, m) is not None
    y, _ = check_conv(x, w, b, alg, padding=(1, 2))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
    # one tile per item, one image per slice
    cpu_settings.vec_item_bytes = 1
    cpu_settings.vec_min_item_tiles = 1
    L = lanes(dtype)
    tiles_h, tiles_w = -(-p.P // m), -(-p.Q // m)
    Cp, Kp = -(-20 // L) * L, -(-24 // L) * L  # channels padded to whole vectors
    per_image = (Cp * (tiles_h * m + 2) * (tiles_w * m + 2) + Kp * p.P * p.Q) * np.dtype(dtype).itemsize
    cpu_settings.workspace_bytes = 2 * per_image + 8
    assert vec.plan(p, m) == VecPlan("fused", 1, 1)
    np.testing.assert_allclose(fastconv.conv2d(x, w, b, padding=(1, 2), algorithm=alg), y, **tol)
    # the split mode (U read once per slice): a large U splits, here in slices of 5 tiles
    cpu_settings.vec_max_u_bytes = 0
    per_tile = (m + 2) ** 2 * (Cp + Kp) * np.dtype(dtype).itemsize
    cpu_settings.vec_split_slice_bytes = 5 * per_tile
    cpu_settings.vec_split_kchunk = 1
    # (with few lanes a slice of 5 tiles may outgrow the half of the workspace it may use)
    assert vec.plan(p, m) == VecPlan("split", min(5, (per_image + 4) // per_tile), 1)
    np.testing.assert_allclose(fastconv.conv2d(x, w, b, padding=(1, 2), algorithm=alg), y, **tol)
    # ... and a call whose tiles all fit one slice splits when U outweighs them
    cpu_settings.vec_max_u_bytes = 10 ** 12
    cpu_settings.vec_split_slice_bytes = 10 ** 9
    cpu_settings.workspace_bytes = 10 ** 10
    cpu_settings.vec_split_min_u_ratio = 0
    assert vec.plan(p, m) == VecPlan("stream" if m == 2 else "split",
                                     3 * tiles_h * tiles_w, 3)
    np.testing.assert_allclose(fastconv.conv2d(x, w, b, padding=(1, 2), algorithm=alg), y, **tol)
    # the split mode sees a non-finite output too (the call is recomputed by direct)
    xn = x.copy()
    xn[1, 3, 5, 6] = np.inf
    yn = fastconv.conv2d(xn, w, b, padding=(1, 2), algorithm=alg)
    ref = fastconv.conv2d(xn, w, b, padding=(1, 2), algorithm="direct")
    np.testing.assert_array_equal(np.isfinite(yn), np.isfinite(ref))
    ok = np.isfinite(ref)
    np.testing.assert_allclose(yn[ok], ref[ok], **tol)
    cpu_settings.workspace_bytes = 2 * per_image + 8
    # the tile-row path agrees
    cpu_settings.vec_max_q = 0
    np.testing.assert_allclose(fastconv.conv2d(x, w, b, padding=(1, 2), algorithm=alg), y, **tol)
    # non-finite input: the whole call is recomputed by direct
    cpu_settings.reset()
    x[2, 7, 4, 4] = np.nan
    y = fastconv.conv2d(x, w, b, padding=(1, 2), algorithm=alg)
    ref = fastconv.conv2d(x, w, b, padding=(1, 2), algorithm="direct")
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(y[ok], ref[ok], **tol)


@pytest.mark.parametrize("m,x_shape,mode", [(4, (2, 8, 33, 30), "fused"),
                                             (4, (1, 128, 7, 7), "stream"),
                                             (2, (1, 128, 7, 7), "stream")])
def test_thread_independent_and_concurrent(rng, m, x_shape, mode):
    import numba
    C = x_shape[1]
    x, w, b = random_problem(rng, x_shape, (C, C, 3, 3), np.float32)
    assert vec.plan(normalize(x.shape, w.shape, b.shape, np.float32, padding=1), m).mode \
        == mode
    alg = f"winograd_f{m}x{m}_3x3"
    ref = fastconv.conv2d(x, w, b, padding=1, algorithm=alg)
    old = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = fastconv.conv2d(x, w, b, padding=1, algorithm=alg)
    finally:
        numba.set_num_threads(old)
    np.testing.assert_array_equal(one, ref)
    results = [None] * 4

    def work(i):
        results[i] = fastconv.conv2d(x, w, b, padding=1, algorithm=alg)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_array_equal(r, ref)
