"""The simple path of :mod:`fastconv.cpu.direct`: the textbook loop nest.

For tiny problems, where packing would cost more than it saves: the input
is zero-padded (:func:`fastconv.cpu.packing.pad_nchw`) and every output is
summed in the reference order (bias, input channel, kernel row, kernel
column), one output per thread.
"""

from __future__ import annotations

import numba
import numpy as np

from ..._config import PJIT
from ..packing import pad_nchw


@numba.njit(**PJIT)
def _direct_nchw(xp, w, bias, y, sh, sw, dh, dw, groups):
    """Reference-order loop nest on a zero-padded NCHW input."""
    N, K, P, Q = y.shape
    Cg, R, S = w.shape[1], w.shape[2], w.shape[3]
    Kg = K // groups
    for nk in numba.prange(N * K):
        n, k = nk // K, nk % K
        c0 = (k // Kg) * Cg
        for p in range(P):
            for q in range(Q):
                acc = bias[k]
                for c in range(Cg):
                    for r in range(R):
                        hrow = p * sh + r * dh
                        for s in range(S):
                            acc += w[k, c, r, s] * xp[n, c0 + c, hrow, q * sw + s * dw]
                y[n, k, p, q] = acc


def run(x, w, bias, p, y):
    """Reference-order direct convolution of NCHW ``x`` into NCHW ``y`` (any configuration)."""
    xp = pad_nchw(x, *p.padding)
    b = np.zeros(p.K, dtype=p.dtype) if bias is None else bias
    _direct_nchw(xp, w, b, y, p.stride[0], p.stride[1], p.dilation[0], p.dilation[1], p.groups)
