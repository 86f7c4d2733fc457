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


def padded_bias(bias, groups, Kg, width, dtype):
    """Flat ``(groups * width)`` bias: group ``g``'s ``Kg`` values at ``g * width``, zeros after.

    The blocked kernels read the bias a whole vector (or register block) of
    output channels at a time, ``width >= Kg`` per group.
    """
    out = np.zeros((groups, width), dtype=dtype)
    if bias is not None:
        out[:, :Kg] = bias.reshape(groups, Kg)
    return out.reshape(-1)


def subsample_pointwise(x, p, out=None):
    """The input pixels a strided 1x1 convolution reads, ``(N, C, P, Q)`` C-contiguous.

    ``x`` itself (made contiguous) at stride 1; otherwise every ``sh``-th row
    and ``sw``-th column, copied into ``out`` when given.
    """
    sh, sw = p.stride
    if (sh, sw) == (1, 1):
        return np.ascontiguousarray(x)
    view = x[:, :, : (p.P - 1) * sh + 1: sh, : (p.Q - 1) * sw + 1: sw]
    if out is None:
        return np.ascontiguousarray(view)
    out = out.reshape(view.shape)
    np.copyto(out, view)
    return out


def pad_nchw(x: np.ndarray, pt: int, pb: int, pl: int, pr: int) -> np.ndarray:
    """Zero-padded copy of a contiguous NCHW array (returns ``x`` itself when no padding)."""
    if pt == pb == pl == pr == 0:
        return x
    N, C, H, W = x.shape
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr), dtype=x.dtype)
    _pad_into(x, xp, pt, pl)
    return xp
