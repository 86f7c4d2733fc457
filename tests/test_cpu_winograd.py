"""fastconv.cpu.winograd: correctness against the float64 reference, blocking, bounds, fallback."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import normalize
from fastconv.cpu import winograd, winograd_few, winograd_vec
from fastconv.cpu.winograd_vec import VecPlan
from fastconv.winograd_math import error_bound, transform_matrices

from conftest import TOLERANCE, random_problem, rel_err

# Every path (fused, few-channel, channel-vectorised, stream) in both dtypes is its own
# specialisation: with a cold Numba cache the module took 204 s, most tests 5-15 s of compiling.
pytestmark = pytest.mark.jit

ALGS = ("winograd_f2x2_3x3", "winograd_f4x4_3x3")


def _check(x, w, b, alg, **kw):
    y = fastconv.conv2d(x, w, b, algorithm=alg, **kw)
    ref = reference.conv2d(x, w, b, **kw)
    assert y.shape == ref.shape and y.dtype == np.result_type(x, w)
    assert rel_err(y, ref) < TOLERANCE[(alg, np.dtype(y.dtype).name)]
    return y, ref


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
    _check(x, w, b, alg, padding=pad, groups=g)
    _check(x, w, None, alg, padding=pad, groups=g)


def test_unbatched_and_nhwc(rng):
    x, w, b = random_problem(rng, (3, 10, 7), (5, 3, 3, 3))
    _check(x, w, b, "winograd_f4x4_3x3", padding=1)
    xn = np.ascontiguousarray(rng.standard_normal((2, 9, 8, 4)).astype(np.float32))
    w = rng.standard_normal((3, 4, 3, 3)).astype(np.float32) / 6
    _check(xn, w, None, "winograd_f2x2_3x3", padding=1, layout="NHWC")


@pytest.mark.parametrize("alg", ALGS)
def test_blocking_paths(rng, cpu_settings, alg):
    """A workspace of one tile row forces many blocks; the result must not change."""
    x, w, b = random_problem(rng, (3, 8, 13, 10), (8, 8, 3, 3), np.float64)
    cpu_settings.vec_max_q = 0  # the tile-row path only
    whole = fastconv.conv2d(x, w, b, padding=1, algorithm=alg)
    cpu_settings.workspace_bytes = 1
    blocked = fastconv.conv2d(x, w, b, padding=1, algorithm=alg)
    np.testing.assert_array_equal(blocked, whole)
    cpu_settings.tile_row_block_bytes = 3 * 36 * 16 * 3 * 8  # a few rows per block
    np.testing.assert_array_equal(fastconv.conv2d(x, w, b, padding=1, algorithm=alg), whole)
    assert rel_err(whole, reference.conv2d(x, w, b, padding=1)) < TOLERANCE[(alg, "float64")]


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_channel_vectorised_path(rng, cpu_settings, alg, dtype):
    """Small maps take winograd_vec; items and image slices of any size give the same result."""
    x, w, b = random_problem(rng, (3, 20, 9, 11), (24, 20, 3, 3), dtype)
    m = int(alg[10])
    p = normalize(x.shape, w.shape, b.shape, dtype, padding=(1, 2))
    assert winograd_vec.plan(p, m) is not None
    y, _ = _check(x, w, b, alg, padding=(1, 2))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-13, atol=1e-13)
    # one tile per item, one image per slice
    cpu_settings.vec_item_bytes = 1
    cpu_settings.vec_min_item_tiles = 1
    L = 16 if dtype == np.float32 else 8
    tiles_h, tiles_w = -(-p.P // m), -(-p.Q // m)
    Cp, Kp = -(-20 // L) * L, -(-24 // L) * L  # channels padded to whole vectors
    per_image = (Cp * (tiles_h * m + 2) * (tiles_w * m + 2) + Kp * p.P * p.Q) * np.dtype(dtype).itemsize
    cpu_settings.workspace_bytes = 2 * per_image + 8
    assert winograd_vec.plan(p, m) == VecPlan("fused", 1, 1)
    np.testing.assert_allclose(fastconv.conv2d(x, w, b, padding=(1, 2), algorithm=alg), y, **tol)
    # the split mode (U read once per slice): a large U splits, here in slices of 5 tiles
    cpu_settings.vec_max_u_bytes = 0
    cpu_settings.vec_split_slice_bytes = 5 * (m + 2) ** 2 * (Cp + Kp) * np.dtype(dtype).itemsize
    cpu_settings.vec_split_kchunk = 1
    assert winograd_vec.plan(p, m) == VecPlan("split", 5, 1)
    np.testing.assert_allclose(fastconv.conv2d(x, w, b, padding=(1, 2), algorithm=alg), y, **tol)
    # ... and a call whose tiles all fit one slice splits when U outweighs them
    cpu_settings.vec_max_u_bytes = 10 ** 12
    cpu_settings.vec_split_slice_bytes = 10 ** 9
    cpu_settings.workspace_bytes = 10 ** 10
    cpu_settings.vec_split_min_u_ratio = 0
    assert winograd_vec.plan(p, m) == VecPlan("stream" if m == 2 else "split",
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


@pytest.mark.parametrize("alg", ALGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_path(rng, alg, dtype):
    """Maps with enough tiles take the fused per-item path; same results as phase by phase."""
    x, w, b = random_problem(rng, (2, 6, 37, 34), (4, 3, 3, 3), dtype)
    m = int(alg[10])
    p = normalize(x.shape, w.shape, b.shape, dtype, padding=((2, 0), (0, 1)), groups=2)
    assert winograd._fused_rows(p, m, -(-p.Q // m), p.N * -(-p.P // m)) > 0
    y, ref = _check(x, w, b, alg, padding=((2, 0), (0, 1)), groups=2)
    phase = np.empty_like(y)
    winograd.profile_phases(x, w, b, p, phase, m=m)  # always phase by phase
    np.testing.assert_allclose(y, phase, rtol=1e-6 if dtype == np.float32 else 1e-14,
                               atol=1e-6 if dtype == np.float32 else 1e-14)
    x[1, 3, 30, 2] = np.inf
    y = fastconv.conv2d(x, w, b, padding=((2, 0), (0, 1)), groups=2, algorithm=alg)
    ref = fastconv.conv2d(x, w, b, padding=((2, 0), (0, 1)), groups=2, algorithm="direct")
    np.testing.assert_array_equal(np.isinf(y) | np.isnan(y), np.isinf(ref) | np.isnan(ref))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("Cg,K,groups,padding", [
    (1, 5, 1, 1),                  # K not a multiple of the job's 4 channels
    (2, 6, 2, ((2, 0), (0, 1))),   # groups, asymmetric padding
    (3, 8, 1, 1),                  # an RGB layer
    (4, 3, 1, 0),                  # fewer output channels than one job
])
def test_few_channel_path(rng, dtype, Cg, K, groups, padding):
    """F(4x4) with Cg <= 4 (fastconv.cpu.winograd_few): products inside the output transform.

    73 columns: 19 tiles per row, so rows take one full and one ragged vector of tiles (two
    and a ragged one in float64), and the last tile of a row is cropped.
    """
    C = Cg * groups
    x, w, b = random_problem(rng, (2, C, 10, 73), (K, Cg, 3, 3), dtype)
    p = normalize(x.shape, w.shape, b.shape, dtype, padding=padding, groups=groups)
    tiles_w = -(-p.Q // 4)
    assert winograd._fused_rows(p, 4, tiles_w, p.N * -(-p.P // 4)) > 0 and Cg <= winograd_few.MAX_CG
    y, ref = _check(x, w, b, "winograd_f4x4_3x3", padding=padding, groups=groups)
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


def test_unrolled_transforms_are_the_matrices():
    """The hand-unrolled formulas in the kernels are B^T, G, A^T of winograd_math."""
    for m in (2, 4):
        AT, G, BT = transform_matrices(m)
        alpha = m + 2
        # Input transform of unit tiles gives the columns of B^T (x) B^T.
        p = normalize((1, 1, alpha, alpha), (1, 1, 3, 3), None, np.float64)
        V = np.empty((alpha * alpha, 1, 1, 1))
        cst = winograd._constants(np.float64)
        for i in range(alpha):
            for j in range(alpha):
                d = np.zeros((1, 1, alpha, alpha))
                d[0, 0, i, j] = 1
                winograd._input_transform(d, V, cst, m, 0, 1, 1, 1, 0, 0, np.empty((9, 0)), G,
                                          np.empty((alpha * alpha, 0)))
                np.testing.assert_array_equal(V.reshape(alpha, alpha), np.outer(BT[:, i], BT[:, j]))
        # Output transform of unit M gives the columns of A^T (x) A^T.
        for a in range(alpha):
            for b in range(alpha):
                M = np.zeros((alpha * alpha, 1, 1, 1))
                M[a * alpha + b] = 1
                y = np.full((1, 1, m, m), np.nan)
                bad = np.zeros(1, np.bool_)
                winograd._output_transform(M, y, np.zeros(1), cst, bad, m, 0, 1, 1, 1)
                np.testing.assert_array_equal(y[0, 0], np.outer(AT[:, a], AT[:, b]))
        # Kernel transform.
        w = np.random.default_rng(m).standard_normal((2, 3, 3, 3))
        U = winograd.kernel_transform(w, m)
        ref = np.einsum("ar,kcrs,bs->abkc", G, w, G).reshape(alpha * alpha, 1, 2, 3)
        np.testing.assert_allclose(U, ref, rtol=1e-15, atol=1e-15)


def _vec_layout(U, K, C, L, KB, Cp):
    """(alpha^2, C, K) values -> the channel-vectorised layout (alpha^2, KB, Cp, L), zero-padded."""
    full = np.zeros((U.shape[0], Cp, KB * L))
    full[:, :C, :K] = U
    return full.reshape(U.shape[0], Cp, KB, L).transpose(0, 2, 1, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K,C", [(40, 37), (16, 16), (5, 3)])
def test_channel_vectorised_kernel_transform(rng, dtype, K, C):
    """U of the channel-vectorised layout for F(4x4): G w G^T in float64 (the kernels' order
    of the three-term sums) rounded once, and zero padding."""
    m = 4
    w = rng.standard_normal((K, C, 3, 3)).astype(dtype)
    Uv = winograd_vec.transform_weights(w, m)
    _, G, _ = transform_matrices(m)
    alpha, L = m + 2, Uv.shape[3]
    w64 = w.astype(np.float64).transpose(2, 3, 1, 0)  # (r, s, c, k)
    t = [[G[a, 0] * w64[0, s] + G[a, 1] * w64[1, s] + G[a, 2] * w64[2, s] for s in range(3)]
         for a in range(alpha)]
    ref = np.stack([t[a][0] * G[b, 0] + t[a][1] * G[b, 1] + t[a][2] * G[b, 2]
                    for a in range(alpha) for b in range(alpha)])  # (alpha^2, C, K)
    np.testing.assert_allclose(  # and that is G w G^T
        ref, np.einsum("ar,kcrs,bs->abck", G, w.astype(np.float64), G).reshape(alpha * alpha, C, K),
        rtol=1e-14, atol=1e-14)
    expect = _vec_layout(ref, K, C, L, Uv.shape[1], Uv.shape[2])
    np.testing.assert_array_equal(Uv, expect.astype(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("K,C", [(40, 37), (16, 16), (5, 3), (33, 70)])
def test_channel_vectorised_kernel_transform_f2(rng, dtype, K, C):
    """F(2x2): the layout holds G' w G'^T, G = diag(F2_SCALE) G' (additions only), within two
    roundings per pass of the exact value, and zero padding; with the scale it is G w G^T."""
    w = rng.uniform(-1, 1, (K, C, 3, 3)).astype(dtype)
    w[0, 0] = 0.0  # exact zeros stay zeros
    Uv = winograd_vec.transform_weights(w, 2)
    _, G, _ = transform_matrices(2)
    f = np.array(winograd_vec.F2_SCALE)
    Gp = G / f[:, None]
    np.testing.assert_array_equal(Gp, [[1, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 1]])
    exact = np.einsum("ar,kcrs,bs->abck", Gp, w.astype(np.float64), Gp).reshape(16, C, K)
    mag = np.einsum("ar,kcrs,bs->abck", abs(Gp), abs(w.astype(np.float64)), abs(Gp)).reshape(16, C, K)
    L, KB, Cp = Uv.shape[3], Uv.shape[1], Uv.shape[2]
    u = np.finfo(dtype).eps / 2
    err = np.abs(Uv - _vec_layout(exact, K, C, L, KB, Cp))
    bound = _vec_layout(4 * u * mag / (1 - 4 * u), K, C, L, KB, Cp)
    assert (err <= bound).all()
    assert (err > 0).any() or dtype == np.float64  # rounding happened: the check can fail
    assert not Uv[:, 0, 0, 0].any()  # k = 0, c = 0
    padded = _vec_layout(np.ones((16, C, K)), K, C, L, KB, Cp) == 0
    assert not Uv[padded].any()
    scaled = Uv * np.outer(f, f).reshape(16, 1, 1, 1)
    full = np.einsum("ar,kcrs,bs->abck", G, w.astype(np.float64), G).reshape(16, C, K)
    np.testing.assert_allclose(scaled, _vec_layout(full, K, C, L, KB, Cp),
                               rtol=0, atol=8 * u * np.abs(w).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,shape", [(2, (2, 40, 5, 6)), (4, (2, 40, 5, 6)), (4, (1, 40, 6, 9))])
def test_stream_mode(rng, cpu_settings, dtype, m, shape):
    """Deep layers on few tiles transform the kernels inside the products: within the error
    bound, nothing kept in the weight cache, the same bits as a plan, the weights untouched,
    and a non-finite weight recomputed by direct.  F(4x4) (at most vec_stream4_max_tiles tiles:
    here 8, and 6 = a group of 4 and one of 2) transforms each kernel where it is used,
    G' w G'^T with the scale in the output transform."""
    from fastconv import _weight_cache
    from fastconv.accuracy import error_bound as bound_of
    C, K = shape[1], 35  # padded channels and a partial block of output channels
    x, w, b = random_problem(rng, shape, (K, C, 3, 3), dtype)
    p = normalize(x.shape, w.shape, b.shape, dtype, padding=1)
    alg = f"winograd_f{m}x{m}_3x3"
    cpu_settings.vec_split_min_u_ratio = 0
    cpu_settings.vec_split_kchunk = 2  # several product jobs
    tiles = shape[0] * -(-shape[2] // m) * -(-shape[3] // m)
    vec = winograd_vec.plan(p, m)
    assert (vec.mode, vec.tiles, vec.nb) == ("stream", tiles, shape[0])
    if m == 4:  # more tiles than vec_stream4_max_tiles: F(4x4) keeps its prepared U
        cpu_settings.vec_stream4_max_tiles = tiles - 1
        assert winograd_vec.plan(p, 4).mode == "split"
        cpu_settings.reset()
        cpu_settings.vec_split_min_u_ratio = 0
    fastconv.clear_weight_cache()
    w0 = w.copy()
    y = fastconv.conv2d(x, w, b, padding=1, algorithm=alg)
    np.testing.assert_array_equal(w, w0)
    assert len(_weight_cache.CACHE) == 0
    ref = reference.conv2d(x, w, b, padding=1)
    assert (np.abs(y - ref) <= bound_of(alg, x, w, b, padding=1)).all()
    assert np.abs(y - ref).max() > 0 or dtype == np.float64
    conv = fastconv.plan(w, b, x_shape=x.shape, padding=1, algorithm=alg)
    np.testing.assert_array_equal(conv(x), y)
    # the prepared U of the split mode gives the same sums, up to rounding
    cpu_settings.vec_stream_kernels = False
    assert winograd_vec.plan(p, m).mode == "split"
    np.testing.assert_allclose(fastconv.conv2d(x, w, b, padding=1, algorithm=alg),
                               y, rtol=1e-5 if dtype == np.float32 else 1e-13, atol=1e-5)
    cpu_settings.vec_stream_kernels = True
    times = winograd.profile_phases(x, w, b, p, np.empty_like(y), m=m)
    assert set(times) == {"pack_input", "input_transform", "gemm", "output_transform"}
    wn = w.copy()
    wn[K - 1, C - 1, 2, 1] = np.nan
    yn = fastconv.conv2d(x, wn, b, padding=1, algorithm=alg)
    yd = fastconv.conv2d(x, wn, b, padding=1, algorithm="direct")
    np.testing.assert_array_equal(np.isnan(yn), np.isnan(yd))
    np.testing.assert_array_equal(yn[:, :K - 1], yd[:, :K - 1])


def test_stream_f4_scale():
    """F(4x4)'s G is diag(F4_SCALE) G' with G' of small integers (exact doublings), as the
    stream schedule's inline kernel transform assumes."""
    _, G, _ = transform_matrices(4)
    Gp = G / np.array(winograd_vec.F4_SCALE)[:, None]
    np.testing.assert_allclose(Gp, [[1, 0, 0], [1, 1, 1], [1, -1, 1], [1, 2, 4], [1, -2, 4],
                                    [0, 0, 1]], rtol=1e-15, atol=1e-15)


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


@pytest.mark.parametrize("m,x_shape,mode", [(4, (2, 8, 33, 30), "fused"),
                                             (4, (1, 128, 7, 7), "stream"),
                                             (2, (1, 128, 7, 7), "stream")])
def test_thread_independent_and_concurrent(rng, m, x_shape, mode):
    import numba
    C = x_shape[1]
    x, w, b = random_problem(rng, x_shape, (C, C, 3, 3), np.float32)
    assert winograd_vec.plan(normalize(x.shape, w.shape, b.shape, np.float32, padding=1), m).mode \
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


def test_gemm_helper_restores_blas_threads():
    """The single-threaded-BLAS window is restored after (nested, concurrent) calls."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from fastconv.cpu import _gemm

    A = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    B = np.ones((2, 4, 5), np.float32)
    C = np.empty((2, 3, 5), np.float32)
    _gemm.batched_matmul(A, B, C)
    np.testing.assert_array_equal(C, A @ B)
    before = [i["num_threads"] for i in threadpoolctl.threadpool_info()]
    with _gemm.single_threaded_blas():
        with _gemm.single_threaded_blas():
            pass
    assert [i["num_threads"] for i in threadpoolctl.threadpool_info()] == before


@pytest.mark.parametrize("alg", ALGS)
def test_many_kernel_chunks_in_shared_loop(rng, alg):
    """K * Cg > 2 chunks of the kernel transform, run beside the input transform (phase path)."""
    x, w, b = random_problem(rng, (1, 40, 6, 5), (72, 40, 3, 3), np.float32)
    p = normalize(x.shape, w.shape, b.shape, np.float32, padding=1)
    m = int(alg[10])
    assert winograd._fused_rows(p, m, -(-p.Q // m), -(-p.P // m)) == 0
    assert p.K * p.Cg > 2 * winograd._KT_CHUNK
    _check(x, w, b, alg, padding=1)
