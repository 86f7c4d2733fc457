"""Tests of the width path of ``direct`` (src/fastconv/cpu/direct/width.py).

Loads straight from x (strides 1, 2) vs packed rows.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastconv import reference
from fastconv.cpu import direct

from conftest import check_direct, direct_inputs, direct_params

pytestmark = pytest.mark.jit


# Whole vectors inside the padding (pl > V), W below V, unmasked interior vectors, several row
# blocks with a short last one, horizontal dilation with stride 2, channel multipliers.
WIDTH_CASES = [
    ("s1-wide-pad", 1, 3, 7, 5, 3, 3, 3, dict(groups=3, padding=((2, 1), (20, 17)))),
    ("s2-wide-pad-d2", 1, 3, 9, 6, 6, 3, 2,
     dict(groups=3, stride=2, padding=((1, 0), (18, 21)), dilation=(1, 2))),
    ("s2-long", 2, 2, 9, 70, 2, 3, 3, dict(groups=2, stride=2, padding=1)),
    ("s1-rows-mult2", 1, 2, 23, 40, 4, 3, 3, dict(groups=2, padding=1)),
    ("s2x1-5x5", 1, 4, 13, 37, 4, 5, 5, dict(groups=4, stride=(1, 2), padding=2)),
]


WIDTH_DTYPES = [(g, np.float32) for g in WIDTH_CASES] + [(WIDTH_CASES[1], np.float64),
                                                         (WIDTH_CASES[2], np.float64)]


@pytest.mark.parametrize("case, dtype", WIDTH_DTYPES,
                         ids=[f"{g[0]}-{np.dtype(d).name}" for g, d in WIDTH_DTYPES])
def test_width_direct_loads_match_packed(case, dtype, rng, cpu_settings):
    """Both input routes of the width path meet the bound and agree bit for bit (same sum order)."""
    _, N, C, H, W, K, R, S, kw = case
    x, w, b = direct_inputs(rng, N, C, H, W, K, R, S, kw.get("groups", 1), dtype, bias=(N % 2 == 0))
    x[0, 0, H // 2, 0] = np.inf  # next to the left padding: inf * 0 only where the reference has it
    ys = []
    for direct_loads in (True, False):
        cpu_settings.width_direct_loads = direct_loads
        p = direct_params(x, w, b, **kw)
        y = np.full(p.output_shape, np.nan, dtype)
        direct.run(x, w, b, p, y, path="width")
        ys.append(y)
    np.testing.assert_array_equal(ys[0], ys[1])
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64),
                           None if b is None else b.astype(np.float64), **kw)
    if kw.get("dilation", 1) == 1:  # the reference multiplies dilation holes too
        np.testing.assert_array_equal(np.isnan(ys[0]), np.isnan(ref))
    x[0, 0, H // 2, 0] = 0
    cpu_settings.width_direct_loads = True
    check_direct(x, w, b, path="width", **kw)
