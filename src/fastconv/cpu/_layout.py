"""Layout helpers shared by the CPU kernels."""

from __future__ import annotations

import numba
import numpy as np

from .._config import PJIT


@numba.njit(**PJIT)
def _pad_into(x, xp, pt, pl):
    N, C, H, W = x.shape
    for nc in numba.prange(N * C):
        n, c = nc // C, nc % C
        for h in range(H):
            for w_ in range(W):
                xp[n, c, pt + h, pl + w_] = x[n, c, h, w_]


def pad_nchw(x: np.ndarray, pt: int, pb: int, pl: int, pr: int) -> np.ndarray:
    """Zero-padded copy of a contiguous NCHW array (returns ``x`` itself when no padding)."""
    if pt == pb == pl == pr == 0:
        return x
    N, C, H, W = x.shape
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr), dtype=x.dtype)
    _pad_into(x, xp, pt, pl)
    return xp
