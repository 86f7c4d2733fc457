"""Componentwise error bounds of every algorithm, computable for a given input.

Each function returns an array of the result's shape (NCHW, batched) that
bounds ``|y_algorithm - y_exact|`` elementwise to first order in the unit
roundoff ``u`` of the call's dtype.  ``python -m fastconv check`` and the
tests compare the errors they observe against these.

Direct and im2col (any summation order, e.g. BLAS blocking)::

    |dy| <= gamma_{n} * ( (|x| (*) |w|) + |b| ),   n = Cg*R*S + 2

where ``(*)`` is the convolution itself and ``gamma_n = n u / (1 - n u)``
(Higham, Accuracy and Stability of Numerical Algorithms, eq. 3.5).

Winograd F(m x m, 3 x 3) with transforms ``A^T, G, B^T``::

    |dy| <= gamma_{n} * |A^T| [ sum_c (|G| |g_c| |G|^T) . (|B^T| |d_c| |B|) ] |A| + gamma_2 |b|,
    n = Cg + 4 alpha + 2 r + 1

the same sums evaluated with absolute values, tile by tile.  The normwise
form of this bound is :func:`fastconv.winograd_math.error_bound`.

FFT (:mod:`fastconv.cpu.fft`, with ``L = log2(Fh * Fw)`` of its tiling and
``Cs = Cg * sh * sw`` channels per group after the stride's phases), a
normwise bound, the same for every pixel of an output map::

    |dy[n, k]| <= (24 L + 2 Cs + 9) u  sum_c ||x[n, c]||_2 ||w[k, c]||_1  +  u |b[k]|

(the sum over the input channels of ``k``'s group; the derivation is in
:mod:`fastconv.cpu.fft`).

A fused epilogue ``y = act(conv + b + r)`` (``activation=``, ``residual=``)
adds one rounding for the residual and the activation's own, and scales the
convolution's bound by the activation's largest slope ``L``::

    |dy| <= L (bound + u |z|) + c u |z|,   z = conv + b + r

with ``L`` = 1 (relu, relu6), 1.0998 (silu), 1.1289 (gelu) and ``c`` = 0, 0,
6, 8 (:func:`fastconv._epilogue.error_bound`).

16-bit inputs (float16, bfloat16) are computed in float32 on their exact float32
values and rounded back (:mod:`fastconv._half`)::

    |dy| <= bound32 + u16 (|y| + bound32),   u16 = 2**-11 (float16), 2**-8 (bfloat16)
"""

from __future__ import annotations

import numpy as np

from . import reference
from ._params import ConvParams, parse_arrays
from .winograd_math import transform_matrices


def _gamma(n: int, dtype) -> float:
    u = np.finfo(dtype).eps / 2
    return n * u / (1 - n * u)


def _nchw64(x, p: ConvParams) -> np.ndarray:
    xx = x if p.batched else x[None]
    if p.layout == "NHWC":
        xx = xx.transpose(0, 3, 1, 2)
    return np.asarray(xx, dtype=np.float64)


def _ref64(x64, w, b, p: ConvParams) -> np.ndarray:
    """The float64 reference convolution of the call ``p`` (NCHW, batched)."""
    return reference.conv2d(x64, np.asarray(w, np.float64),
                            None if b is None else np.asarray(b, np.float64),
                            stride=p.stride, padding=(p.padding[:2], p.padding[2:]),
                            dilation=p.dilation, groups=p.groups)


def _abs_conv(x64, w, b, p: ConvParams) -> np.ndarray:
    """``|x| (*) |w| + |b|`` in float64, NCHW."""
    return _ref64(np.abs(x64), np.abs(np.asarray(w, np.float64)),
                  None if b is None else np.abs(np.asarray(b, np.float64)), p)


def _exact(x, w, b, p: ConvParams, residual) -> np.ndarray:
    """``conv + b + residual`` in float64, NCHW (``residual`` in the call's layout and rank)."""
    z = _ref64(_nchw64(x, p), w, b, p)
    if residual is not None:
        r = np.asarray(residual, np.float64)
        r = r if p.batched else r[None]
        z = z + (r.transpose(0, 3, 1, 2) if p.layout == "NHWC" else r)
    return z


def _winograd_abs(x64, w, p: ConvParams, m: int) -> np.ndarray:
    AT, G, BT = (np.abs(M) for M in transform_matrices(m))
    alpha = m + 2
    th, tw = -(-p.P // m), -(-p.Q // m)
    pt, _, pl, _ = p.padding
    xp = np.zeros((p.N, p.C, th * m + 2, tw * m + 2))
    xp[:, :, pt:pt + p.H, pl:pl + p.W] = np.abs(x64)
    tiles = np.lib.stride_tricks.sliding_window_view(xp, (alpha, alpha), axis=(2, 3))[:, :, ::m, ::m]
    V = np.einsum("ai,nctuij,bj->nctuab", BT, tiles, BT)
    U = np.einsum("ar,kcrs,bs->kcab", G, np.abs(np.asarray(w, np.float64)), G)
    Y = np.empty((p.N, p.K, th, tw, m, m))
    for g in range(p.groups):
        cs, ks = slice(g * p.Cg, (g + 1) * p.Cg), slice(g * p.Kg, (g + 1) * p.Kg)
        M = np.einsum("kcab,nctuab->nktuab", U[ks], V[:, cs])
        Y[:, ks] = np.einsum("ia,nktuab,jb->nktuij", AT, M, AT)
    Y = Y.transpose(0, 1, 2, 4, 3, 5).reshape(p.N, p.K, th * m, tw * m)
    return Y[:, :, :p.P, :p.Q]


def error_bound(algorithm: str, x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
                layout="NCHW", activation=None, residual=None) -> np.ndarray:
    """Elementwise first-order error bound of ``algorithm`` on these inputs (NCHW, batched).

    ``algorithm`` is a concrete name: "direct", "im2col", "winograd_f2x2_3x3",
    "winograd_f4x4_3x3" (CUDA kernels obey the same bounds) or "fft" (the
    tiling this process would use for the call).  With ``activation`` or
    ``residual``, the bound of the fused call; with float16 or bfloat16 arrays,
    that of the float32 computation plus the rounding to 16 bits (module docstring).
    """
    from . import _half

    if _half.any_half(x, w, bias, residual):
        # the float32 (or float64) computation on the widened arrays, then the rounding
        compute, result = _half.storage_dtype(dict(x=x, w=w, bias=bias, residual=residual), None)
        wide = [None if a is None else np.asarray(a, dtype=compute) for a in (x, w, bias, residual)]
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout)
        inner = error_bound(algorithm, wide[0], wide[1], wide[2], activation=activation,
                            residual=wide[3], **kw)
        if result == compute:
            return inner
        from ._epilogue import reference as act_reference

        pw = parse_arrays(wide[0], wide[1], wide[2], **kw)[3]
        y = act_reference(_exact(wide[0], wide[1], wide[2], pw, wide[3]), activation)
        return _half.error_bound(inner, y, result)
    x, w, b, p = parse_arrays(x, w, bias, stride=stride, padding=padding, dilation=dilation,
                              groups=groups, layout=layout)
    if activation is not None or residual is not None:
        from ._epilogue import error_bound as epilogue_bound, parse_epilogue

        epi = parse_epilogue(activation, residual, p)
        conv = error_bound(algorithm, x, w, bias, stride=stride, padding=padding,
                           dilation=dilation, groups=groups, layout=layout)
        z = _exact(x, w, b, p, epi.residual)
        return epilogue_bound(conv, z, epi.activation, p.dtype)
    dtype = p.dtype
    x64 = _nchw64(x, p)
    if algorithm in ("direct", "im2col"):
        return _gamma(p.Cg * p.R * p.S + 2, dtype) * _abs_conv(x64, w, b, p)
    if algorithm.startswith("winograd_f"):
        m = int(algorithm[len("winograd_f")])
        bound = _gamma(p.Cg + 4 * (m + 2) + 6 + 1, dtype) * _winograd_abs(x64, w, p, m)
        if b is not None:
            bound += _gamma(2, dtype) * (np.abs(np.asarray(b, np.float64))[None, :, None, None]
                                         + bound / _gamma(p.Cg + 4 * (m + 2) + 7, dtype))
        return bound
    if algorithm == "fft":
        return _fft_bound(x64, w, b, p)
    raise ValueError(f"algorithm must be a concrete algorithm name (direct, im2col, "
                     f"winograd_f2x2_3x3, winograd_f4x4_3x3, fft), got {algorithm!r}")


def _fft_bound(x64, w, b, p: ConvParams) -> np.ndarray:
    from .cpu import fft

    pl = fft.plan(p)
    u = np.finfo(p.dtype).eps / 2
    coef = (24 * np.log2(pl.Fh * pl.Fw) + 2 * pl.Cs + 9) * u
    xn = np.sqrt((x64 ** 2).sum(axis=(2, 3)))  # (N, C)
    wn = np.abs(np.asarray(w, np.float64)).sum(axis=(2, 3))  # (K, Cg)
    s = np.empty((p.N, p.K))
    for g in range(p.groups):
        ks, cs = slice(g * p.Kg, (g + 1) * p.Kg), slice(g * p.Cg, (g + 1) * p.Cg)
        s[:, ks] = xn[:, cs] @ wn[ks].T
    bound = coef * s
    if b is not None:
        bound = bound + u * np.abs(np.asarray(b, np.float64))[None, :]
    return np.broadcast_to(bound[:, :, None, None], (p.N, p.K, p.P, p.Q)).copy()
