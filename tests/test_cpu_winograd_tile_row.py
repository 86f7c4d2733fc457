"""fastconv.cpu.winograd.tile_row: blocking, the fused schedule, the unrolled transforms."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import normalize
from fastconv.cpu import winograd
from fastconv.cpu.winograd import tile_row
from fastconv.winograd_math import transform_matrices

from conftest import TOLERANCE, check_conv, random_problem, rel_err

# Every path in both dtypes is its own Numba specialisation: the tests are dominated by
# compiling on a cold cache.
pytestmark = pytest.mark.jit

ALGS = ("winograd_f2x2_3x3", "winograd_f4x4_3x3")


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
def test_fused_path(rng, alg, dtype):
    """Maps with enough tiles take the fused per-item path; same results as phase by phase."""
    x, w, b = random_problem(rng, (2, 6, 37, 34), (4, 3, 3, 3), dtype)
    m = int(alg[10])
    p = normalize(x.shape, w.shape, b.shape, dtype, padding=((2, 0), (0, 1)), groups=2)
    assert tile_row._fused_rows(p, m, -(-p.Q // m), p.N * -(-p.P // m)) > 0
    y, ref = check_conv(x, w, b, alg, padding=((2, 0), (0, 1)), groups=2)
    phase = np.empty_like(y)
    winograd.profile_phases(x, w, b, p, phase, m=m)  # always phase by phase
    np.testing.assert_allclose(y, phase, rtol=1e-6 if dtype == np.float32 else 1e-14,
                               atol=1e-6 if dtype == np.float32 else 1e-14)
    x[1, 3, 30, 2] = np.inf
    y = fastconv.conv2d(x, w, b, padding=((2, 0), (0, 1)), groups=2, algorithm=alg)
    ref = fastconv.conv2d(x, w, b, padding=((2, 0), (0, 1)), groups=2, algorithm="direct")
    np.testing.assert_array_equal(np.isinf(y) | np.isnan(y), np.isinf(ref) | np.isnan(ref))


def test_unrolled_transforms_are_the_matrices():
    """The hand-unrolled formulas in the kernels are B^T, G, A^T of winograd_math."""
    for m in (2, 4):
        AT, G, BT = transform_matrices(m)
        alpha = m + 2
        # Input transform of unit tiles gives the columns of B^T (x) B^T.
        p = normalize((1, 1, alpha, alpha), (1, 1, 3, 3), None, np.float64)
        V = np.empty((alpha * alpha, 1, 1, 1))
        cst = tile_row._constants(np.float64)
        for i in range(alpha):
            for j in range(alpha):
                d = np.zeros((1, 1, alpha, alpha))
                d[0, 0, i, j] = 1
                tile_row._INPUT_TRANSFORM[m](d, V, cst, 0, 1, 1, 1, 0, 0, np.empty((9, 0)), G,
                                             np.empty((alpha * alpha, 0)))
                np.testing.assert_array_equal(V.reshape(alpha, alpha), np.outer(BT[:, i], BT[:, j]))
        # Output transform of unit M gives the columns of A^T (x) A^T.
        for a in range(alpha):
            for b in range(alpha):
                M = np.zeros((alpha * alpha, 1, 1, 1))
                M[a * alpha + b] = 1
                y = np.full((1, 1, m, m), np.nan)
                bad = np.zeros(1, np.bool_)
                tile_row._OUTPUT_TRANSFORM[m](M, y, np.zeros(1), cst, bad, 0, 1, 1, 1)
                np.testing.assert_array_equal(y[0, 0], np.outer(AT[:, a], AT[:, b]))
        # Kernel transform.
        w = np.random.default_rng(m).standard_normal((2, 3, 3, 3))
        U = winograd.kernel_transform(w, m)
        ref = np.einsum("ar,kcrs,bs->abkc", G, w, G).reshape(alpha * alpha, 1, 2, 3)
        np.testing.assert_allclose(U, ref, rtol=1e-15, atol=1e-15)


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
    assert tile_row._fused_rows(p, m, -(-p.Q // m), -(-p.P // m)) == 0
    assert p.K * p.Cg > 2 * tile_row._KT_CHUNK
    check_conv(x, w, b, alg, padding=1)
