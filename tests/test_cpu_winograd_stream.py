"""fastconv.cpu.winograd.stream: the kernel transforms on channel vectors (kept and in the
products) and the stream schedule."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import normalize
from fastconv.cpu import winograd
from fastconv.cpu.winograd import stream
from fastconv.cpu.winograd import vec as winograd_vec  # (``vec`` is a plan in the tests)
from fastconv.winograd_math import transform_matrices

from conftest import random_problem

# Every path in both dtypes is its own Numba specialisation: the tests are dominated by
# compiling on a cold cache.
pytestmark = pytest.mark.jit


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
    Uv = stream.transform_weights(w, m)
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
    Uv = stream.transform_weights(w, 2)
    _, G, _ = transform_matrices(2)
    f = np.array(stream.F2_SCALE)
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


def test_stream_mode_fresh_weights(rng, cpu_settings, monkeypatch):
    """F(4x4) on more tiles than vec_stream4_max_tiles streams when the weight cache prepares
    the weights for one call (new weights, a disabled cache) and keeps U for weights seen
    unchanged: the same sums as the forced stream schedule, and within rounding of the
    kept U.  With one tile per register block (16 registers) it keeps U either way."""
    from fastconv import _weight_cache
    x, w, b = random_problem(rng, (2, 40, 5, 6), (35, 40, 3, 3), np.float32)
    p = normalize(x.shape, w.shape, b.shape, np.float32, padding=1)
    cpu_settings.vec_split_min_u_ratio = 0
    cpu_settings.vec_stream4_max_tiles = 7  # the call has 8 tiles
    want = "stream" if stream.STREAM4_TILES > 1 else "split"
    assert winograd_vec.plan(p, 4).mode == "split"
    assert winograd_vec.plan(p, 4, fresh=True).mode == want
    modes = []
    real_run = winograd_vec.run
    monkeypatch.setattr(winograd_vec, "run", lambda *a, **k: modes.append(a[6].mode) or real_run(*a, **k))

    def call(weights):
        return fastconv.conv2d(x, weights, b, padding=1, algorithm="winograd_f4x4_3x3")

    fastconv.clear_weight_cache()
    w0 = w.copy()
    y_fresh = call(w)  # first sighting: prepared for this call only
    y_kept = call(w)  # second sighting: kept in the cache
    np.testing.assert_array_equal(w, w0)
    assert modes == [want, "split"] and len(_weight_cache.CACHE) == 1
    cpu_settings.vec_stream4_max_tiles = 8
    np.testing.assert_array_equal(call(w.copy()), y_fresh if want == "stream" else y_kept)
    np.testing.assert_allclose(y_fresh, y_kept, rtol=1e-5, atol=1e-5)
    ref = reference.conv2d(x, w, b, padding=1)
    from fastconv.accuracy import error_bound as bound_of
    assert (np.abs(y_fresh - ref) <= bound_of("winograd_f4x4_3x3", x, w, b, padding=1)).all()
    cpu_settings.vec_stream4_max_tiles = 7
    monkeypatch.setattr(_weight_cache.CACHE, "max_bytes", 0)  # disabled: every call is fresh
    modes.clear()
    call(w)
    assert modes == [want]


def test_stream_f4_scale():
    """F(4x4)'s G is diag(F4_SCALE) G' with G' of small integers (exact doublings), as the
    stream schedule's inline kernel transform assumes."""
    _, G, _ = transform_matrices(4)
    Gp = G / np.array(stream.F4_SCALE)[:, None]
    np.testing.assert_allclose(Gp, [[1, 0, 0], [1, 1, 1], [1, -1, 1], [1, 2, 4], [1, -2, 4],
                                    [0, 0, 1]], rtol=1e-15, atol=1e-15)
