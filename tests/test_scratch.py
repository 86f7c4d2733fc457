"""fastconv.cpu._scratch: reused per-thread work arrays, and kernels that never read stale scratch."""

from __future__ import annotations

import threading

import numpy as np

import fastconv
from fastconv import reference
from fastconv.cpu import _scratch

from conftest import rel_err


def test_reuse_bound_and_threads(cpu_settings):
    _scratch.release()
    a = _scratch.buffer("t", np.float32, 1000)
    b = _scratch.buffer("t", np.float32, 500)
    assert a.shape == (1000,) and b.shape == (500,) and np.shares_memory(a, b)
    assert not np.shares_memory(a, _scratch.buffer("u", np.float32, 10))
    assert not np.shares_memory(a, _scratch.buffer("t", np.float64, 10))  # per dtype
    cpu_settings.scratch_keep_bytes = 4000
    big1, big2 = _scratch.buffer("t", np.float32, 2000), _scratch.buffer("t", np.float32, 2000)
    assert not np.shares_memory(big1, big2)  # above the bound: fresh each time, not kept
    other = []
    t = threading.Thread(target=lambda: other.append(_scratch.buffer("t", np.float32, 100)))
    t.start()
    t.join()
    assert not np.shares_memory(other[0], _scratch.buffer("t", np.float32, 100))
    _scratch.release()


def test_stale_scratch_never_leaks_into_results(rng):
    """Big calls fill the buffers with NaN-free garbage, then smaller calls must still be exact."""
    for alg in ("direct", "im2col", "winograd_f4x4_3x3", "winograd_f2x2_3x3"):
        big_x = rng.standard_normal((2, 48, 20, 20)).astype(np.float32) * 1e6
        big_w = rng.standard_normal((40, 48, 3, 3)).astype(np.float32)
        fastconv.conv2d(big_x, big_w, padding=1, algorithm=alg)
        x = rng.standard_normal((1, 5, 7, 6)).astype(np.float32)
        w = rng.standard_normal((3, 5, 3, 3)).astype(np.float32)
        y = fastconv.conv2d(x, w, padding=(2, 0), algorithm=alg)
        assert rel_err(y, reference.conv2d(x, w, padding=(2, 0))) < 2e-4, alg
