"""Winograd transform matrices: exact identities, Lavin & Gray's printed matrices, error bound."""

import numpy as np
import pytest

from fastconv import winograd_math as wm


@pytest.mark.parametrize("m", [2, 4, 6])
def test_1d_identity_is_correlation(m):
    AT, G, BT = wm.transform_matrices(m)
    rng = np.random.default_rng(m)
    d = rng.standard_normal(m + 2)
    g = rng.standard_normal(3)
    y = AT @ ((G @ g) * (BT @ d))
    np.testing.assert_allclose(y, np.correlate(d, g, mode="valid"), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m", [2, 4])
def test_2d_identity(m):
    AT, G, BT = wm.transform_matrices(m)
    rng = np.random.default_rng(0)
    d = rng.standard_normal((m + 2, m + 2))
    g = rng.standard_normal((3, 3))
    Y = AT @ ((G @ g @ G.T) * (BT @ d @ BT.T)) @ AT.T
    direct = np.array([[np.sum(d[i:i + 3, j:j + 3] * g) for j in range(m)] for i in range(m)])
    np.testing.assert_allclose(Y, direct, rtol=1e-12, atol=1e-12)


def test_f4x4_matches_lavin_gray():
    AT, G, BT = wm.transform_matrices(4)
    np.testing.assert_array_equal(BT, [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0],
                                       [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                                       [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]])
    np.testing.assert_allclose(G, [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
    np.testing.assert_array_equal(AT, [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0],
                                       [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]])


def test_error_constants():
    assert wm.error_constant(2) == 81.0
    assert wm.error_constant(4) == 36100.0


def test_unknown_tile():
    with pytest.raises(ValueError, match="no interpolation points"):
        wm.transform_matrices(3)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normwise_bound_holds_in_floating_point(m, dtype):
    # Evaluate F(m, 3) tile by tile in `dtype` and compare with the exact float64 sum.
    AT, G, BT = (M.astype(dtype) for M in wm.transform_matrices(m))
    rng = np.random.default_rng(7)
    Cg = 64
    d = rng.uniform(-3, 3, (200, Cg, m + 2, m + 2)).astype(dtype)
    g = rng.uniform(-1, 1, (Cg, 3, 3)).astype(dtype)
    U = np.einsum("ar,crs,bs->cab", G, g, G).astype(dtype)
    V = np.einsum("ai,tcij,bj->tcab", BT, d, BT).astype(dtype)
    Y = np.einsum("ia,tab,jb->tij", AT, (U[None] * V).sum(axis=1, dtype=dtype), AT).astype(dtype)
    d64, g64 = d.astype(np.float64), g.astype(np.float64)
    exact = np.array([[[np.sum(d64[t, :, i:i + 3, j:j + 3] * g64) for j in range(m)] for i in range(m)]
                      for t in range(200)])
    bound = wm.error_bound(m, Cg, dtype, np.abs(d).max(), np.abs(g).max())
    assert np.abs(Y - exact).max() <= bound
