"""Weight gradients with kernels of their own, where the derived convolution is a poor fit.

:func:`fastconv.conv2d_grad_weight` computes ``grad_w[k, c, r, s] = sum_{n,p,q}
gy[n, k, p, q] * xpad[n, c, p*sh + r*dh, q*sw + s*dw]`` in general as a
convolution whose kernel is ``gy``'s P x Q map (:mod:`fastconv.grad`).  For
**1x1 kernels** that convolution is degenerate (a P x Q kernel producing a
1 x 1 output per image pair) while ``grad_w`` is a GEMM, per image and group
``(Kg x PQ) @ (PQ x Cg)`` on the pixels the forward call read
(:func:`pointwise`).

Summation order and error bound: every entry is one dot product of ``n =
N*P*Q`` terms, summed in an order fixed by the shapes alone (BLAS splits the
two outer dimensions of a GEMM between threads, never the reduction), so
results do not depend on the thread count and ``|gw - gw_exact| <= gamma_n * sum |gy|
|x|`` with ``gamma_n = n u / (1 - n u)`` (Higham, *Accuracy and Stability of
Numerical Algorithms*, sec. 3.1).  ``tests/test_grad.py`` holds it.
"""

from __future__ import annotations

import numpy as np


def pointwise(x, gy, pads, stride, groups):
    """``grad_w`` (K, C/groups, 1, 1) of a 1x1 convolution; x (N,C,H,W), gy (N,K,P,Q).

    ``xs`` are the input pixels the forward call read (every ``sh``-th row
    and ``sw``-th column after padding; zero where that is padding, so those
    output pixels are left out); the products are accumulated over the
    images in order.
    """
    N, C, H, W = x.shape
    _, K, P, Q = gy.shape
    (sh, sw), (pt, _, pl, _) = stride, pads
    G = groups
    Cg, Kg = C // G, K // G
    # Output rows/columns whose input pixel lies inside x (others read padding).
    p0, p1 = -(-pt // sh), min(P, (H - 1 + pt) // sh + 1)
    q0, q1 = -(-pl // sw), min(Q, (W - 1 + pl) // sw + 1)
    gw = np.zeros((G, Kg, Cg), dtype=x.dtype)
    if p1 <= p0 or q1 <= q0:
        return gw.reshape(K, Cg, 1, 1)
    xs = np.ascontiguousarray(x[:, :, p0 * sh - pt:(p1 - 1) * sh - pt + 1:sh,
                                 q0 * sw - pl:(q1 - 1) * sw - pl + 1:sw])
    g = np.ascontiguousarray(gy[:, :, p0:p1, q0:q1])
    npq = (p1 - p0) * (q1 - q0)
    xs = xs.reshape(N, G, Cg, npq)
    g = g.reshape(N, G, Kg, npq)
    for n in range(N):
        gw += np.matmul(g[n], xs[n].transpose(0, 2, 1))
    return gw.reshape(K, Cg, 1, 1)
