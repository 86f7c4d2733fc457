"""Winograd minimal-filtering transforms F(m, r), shared by the CPU and CUDA kernels.

A 1-D output tile of ``m`` points of the correlation ``y[i] = sum_k d[i+k] g[k]``
(``r`` taps, ``alpha = m + r - 1`` inputs) is computed as

    y = A^T [ (G g) * (B^T d) ]

with ``alpha`` multiplications instead of ``m * r``.  The 2-D transform nests
the 1-D one: ``Y = A^T [ (G g G^T) * (B^T d B) ] A`` (Lavin & Gray 2016,
"Fast Algorithms for Convolutional Neural Networks", eqs. 7-8).

The matrices are built by the Toom-Cook construction (as in Lavin's
``wincnn``): interpolation points ``a_0 .. a_{alpha-2}`` plus the point at
infinity.  ``A^T`` evaluates, ``G`` holds the Lagrange scaling
``1 / prod_{l != j}(a_j - a_l)``, and ``B^T`` is the unique matrix that makes
the bilinear identity exact; it is solved for in exact rational arithmetic
and checked.  With the points 0, +-1 (F(2,3)) and 0, +-1, +-2 (F(4,3)) the
results are the matrices printed in Lavin & Gray.

Error bound
-----------
For one output of a tile, summing over ``Cg`` input channels in floating
point with unit roundoff ``u``, to first order::

    |y_hat - y| <= gamma_n * beta * Cg * max|d| * max|g|,
    gamma_n = n u / (1 - n u),  n = Cg + 4 alpha + 2 r,
    beta = (||A^T||_inf * ||G||_inf * ||B^T||_inf) ** 2

(each transform is a short dot product whose rounding is bounded
componentwise; ``|A^T| X |A| <= ||A^T||_inf^2 max|X|`` and likewise for the
other two).  :func:`error_constant` gives ``beta``: 81 for F(2,3) and 36100
for F(4,3). The worst case grows with ``beta``; the errors seen on random
data are in the error table of the docs' algorithms page.
``tests/test_winograd_math.py`` holds the bound on random data.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np

#: Interpolation points per output tile size m (3-tap filters), after Lavin & Gray 2016.
POINTS = {
    2: (0, 1, -1),
    4: (0, 1, -1, 2, -2),
    6: (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2)),
}
#: F(3, 2), the weight gradient's transform (:mod:`fastconv.cpu.grad_winograd`): three
#: outputs of a 2-tap filter from the same points as F(2, 3).
POINTS_R2 = {3: POINTS[2]}


def _solve_exact(M, rhs):
    """Solve the consistent, possibly overdetermined system M x = rhs over Q."""
    rows, cols = len(M), len(M[0])
    aug = [list(M[i]) + [rhs[i]] for i in range(rows)]
    pivots, row = [], 0
    for col in range(cols):
        pivot = next((i for i in range(row, rows) if aug[i][col] != 0), None)
        if pivot is None:
            continue
        aug[row], aug[pivot] = aug[pivot], aug[row]
        inv = 1 / aug[row][col]
        aug[row] = [v * inv for v in aug[row]]
        for i in range(rows):
            if i != row and aug[i][col] != 0:
                f = aug[i][col]
                aug[i] = [a - f * b for a, b in zip(aug[i], aug[row])]
        pivots.append(col)
        row += 1
    for i in range(row, rows):
        if aug[i][cols] != 0:
            raise ArithmeticError("inconsistent Winograd system")
    x = [Fraction(0)] * cols
    for i, col in enumerate(pivots):
        x[col] = aug[i][cols]
    return x


@lru_cache(maxsize=None)
def transform_matrices(m: int, r: int = 3):
    """Return ``(AT, G, BT)`` of F(m, r) as float64 arrays.

    Shapes: ``AT`` (m, alpha), ``G`` (alpha, r), ``BT`` (alpha, alpha), with
    ``alpha = m + r - 1``.  Exact rationals are rounded once to float64 (the
    entries for m <= 4 are exactly representable).
    """
    table = POINTS_R2 if r == 2 else POINTS
    if m not in table or len(table[m]) != m + r - 2:
        raise ValueError(f"no interpolation points stored for F({m}, {r})")
    pts = [Fraction(p) for p in table[m]]
    alpha = m + r - 1
    AT = [[Fraction(0)] * alpha for _ in range(m)]
    G = [[Fraction(0)] * r for _ in range(alpha)]
    for j, a in enumerate(pts):
        f = Fraction(1)
        for l, b in enumerate(pts):
            if l != j:
                f *= a - b
        for i in range(m):
            AT[i][j] = a ** i
        for k in range(r):
            G[j][k] = a ** k / f
    AT[m - 1][alpha - 1] = Fraction(1)  # the point at infinity
    G[alpha - 1][r - 1] = Fraction(1)
    # B^T column by column from  sum_j AT[i,j] G[j,k] BT[j,l] == [l == i + k].
    M = [[AT[i][j] * G[j][k] for j in range(alpha)] for i in range(m) for k in range(r)]
    BT = [[Fraction(0)] * alpha for _ in range(alpha)]
    for l in range(alpha):
        rhs = [Fraction(int(l == i + k)) for i in range(m) for k in range(r)]
        col = _solve_exact(M, rhs)
        for j in range(alpha):
            BT[j][l] = col[j]
    # Exactness check of the bilinear identity.
    for i in range(m):
        for k in range(r):
            for l in range(alpha):
                s = sum(AT[i][j] * G[j][k] * BT[j][l] for j in range(alpha))
                assert s == (1 if l == i + k else 0)
    as_f = lambda rows: np.array([[float(v) for v in row] for row in rows], dtype=np.float64)
    return as_f(AT), as_f(G), as_f(BT)


def error_constant(m: int, r: int = 3) -> float:
    """``beta = (||A^T||_inf ||G||_inf ||B^T||_inf)^2`` of F(m, r); see the module docstring."""
    AT, G, BT = transform_matrices(m, r)
    norm = lambda M: float(np.abs(M).sum(axis=1).max())
    return (norm(AT) * norm(G) * norm(BT)) ** 2


def error_bound(m: int, Cg: int, dtype, max_abs_x: float, max_abs_w: float, r: int = 3) -> float:
    """First-order bound on the absolute error of one Winograd output (module docstring)."""
    u = np.finfo(dtype).eps / 2
    alpha = m + r - 1
    n = Cg + 4 * alpha + 2 * r
    gamma = n * u / (1 - n * u)
    return gamma * error_constant(m, r) * Cg * max_abs_x * max_abs_w
