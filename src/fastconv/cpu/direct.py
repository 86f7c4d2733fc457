"""Direct convolution: the textbook loop nest, parallel over (image, output map).

Layout: NCHW input (zero-padded here), KCRS weights, NCHW output.  Each output
element is one dot product over (c, r, s) accumulated in the call's dtype in a
fixed order, so results do not depend on the thread count.  Supports every
configuration (stride, dilation, groups, any padding).
"""

from __future__ import annotations

import numba
import numpy as np

from .._config import PJIT
from ._layout import pad_nchw


@numba.njit(**PJIT)
def _direct_nchw(xp, w, bias, y, sh, sw, dh, dw, groups):
    N, K, P, Q = y.shape
    Cg, R, S = w.shape[1], w.shape[2], w.shape[3]
    Kg = K // groups
    for nk in numba.prange(N * K):
        n, k = nk // K, nk % K
        c0 = (k // Kg) * Cg
        for p in range(P):
            for q in range(Q):
                y[n, k, p, q] = bias[k]
        for c in range(Cg):
            for r in range(R):
                for s in range(S):
                    wv = w[k, c, r, s]
                    for p in range(P):
                        hrow = p * sh + r * dh
                        for q in range(Q):
                            y[n, k, p, q] += wv * xp[n, c0 + c, hrow, q * sw + s * dw]


def supports(p):
    return None  # every configuration


def run(x, w, bias, p, y):
    xp = pad_nchw(x, *p.padding)
    b = np.zeros(p.K, dtype=p.dtype) if bias is None else bias
    _direct_nchw(xp, w, b, y, p.stride[0], p.stride[1], p.dilation[0], p.dilation[1], p.groups)
