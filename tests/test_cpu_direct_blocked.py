"""Tests of the blocked path of ``direct`` (src/fastconv/cpu/direct/blocked.py).

NCHW read in place vs the packed copy, batch slices within the workspace budget, the output
unpacked by the driver's tasks, and both orders of sharing out the work.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import normalize
from fastconv.accuracy import error_bound
from fastconv.cpu import direct

from conftest import (DIRECT_GRID, TOLERANCE, check_direct, direct_inputs, direct_params,
                      random_problem, rel_err)

pytestmark = pytest.mark.jit


@pytest.mark.parametrize("case", [g for g in DIRECT_GRID if not g[8].get("padding")],
                         ids=lambda g: g[0])
def test_blocked_reads_nchw_in_place(case, rng, cpu_settings):
    """Unpadded calls read NCHW through strides: bitwise the same sums as on the packed copy."""
    _, N, C, H, W, K, R, S, kw = case
    groups = kw.get("groups", 1)
    x, w, b = direct_inputs(rng, N, C, H, W, K, R, S, groups, np.float32)
    p = direct_params(x, w, b, **kw)
    y_in_place = np.empty(p.output_shape, np.float32)
    direct.run(x, w, b, p, y_in_place, path="blocked")
    cpu_settings.read_nchw_in_place = False
    y_packed = np.empty(p.output_shape, np.float32)
    direct.run(x, w, b, p, y_packed, path="blocked")
    np.testing.assert_array_equal(y_in_place, y_packed)


def test_blocked_batch_slices_within_workspace(rng, cpu_settings):
    """A workspace budget below one image's scratch runs the blocked path image by image."""
    cpu_settings.workspace_bytes = 1
    x, w, b = direct_inputs(rng, 3, 9, 8, 7, 20, 3, 3, 1, np.float32)
    y = check_direct(x, w, b, path="blocked", padding=1)
    cpu_settings.reset()
    p = direct_params(x, w, b, padding=1)
    y_whole = np.empty(p.output_shape, np.float32)
    direct.run(x, w, b, p, y_whole, path="blocked")
    np.testing.assert_array_equal(y, y_whole)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,C,K,H,W,G,kw", [
    (2, 20, 40, 9, 23, 1, dict(padding=1)),            # a partial block of output channels
    (1, 8, 24, 30, 30, 2, dict(stride=2, padding=2)),  # groups, stride, several pixel tiles
    (3, 6, 16, 14, 14, 1, {}),                         # LeNet-5 C3-like: NCHW read in place
])
def test_blocked_unpack_in_tasks(rng, dtype, N, C, K, H, W, G, kw):
    """The blocked driver's tasks write NCHW themselves (partial channel blocks, several pixel
    tiles, NCHW read in place): every output written, within the error bound."""
    R = 3 if C != 6 else 5
    x, w, b = random_problem(rng, (N, C, H, W), (K, C // G, R, R), dtype)
    p = normalize(x.shape, w.shape, b.shape, dtype, groups=G, **kw)
    y = np.full((N, K, p.P, p.Q), np.nan, dtype)
    direct.run(x, w, b, p, y, path="blocked")
    ref = reference.conv2d(x, w, b, groups=G, **kw)
    bound = error_bound("direct", x, w, b, groups=G, **kw)
    assert (np.abs(y - ref) <= bound).all()


@pytest.mark.parametrize("N,C,K,H,kw", [(1, 3, 64, 30, dict(stride=2, padding=3)),
                                         (1, 32, 64, 24, dict(padding=1)),
                                         (2, 16, 48, 20, dict(padding=(0, 1))),
                                         (1, 64, 64, 6, dict(padding=1))])  # by channels
def test_blocked_task_orders(rng, N, C, K, H, kw):
    """Work shared out by pixel tiles (the first three) or by channel blocks (the last): the
    reference's values either way."""
    x, w, b = random_problem(rng, (N, C, H, H), (K, C, 3, 3), np.float32)
    p = normalize(x.shape, w.shape, b.shape, np.float32, **kw)
    assert direct.choose_path(p) == "blocked"
    y = fastconv.conv2d(x, w, b, algorithm="direct", **kw)
    assert rel_err(y, reference.conv2d(x, w, b, **kw)) < TOLERANCE[("direct", "float32")]
