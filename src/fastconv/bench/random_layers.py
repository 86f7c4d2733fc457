"""A seeded set of random layer shapes, split into a half to fit on and a half to report on.

The ``auto`` cost model (:mod:`fastconv.cpu.cost`) has constants that are
fitted on timings; a fit is only worth what it scores on shapes it was not
fitted on.  :func:`random_layers` draws ``n`` shapes from one seed, covering
what users run: 1 to 1024 channels, maps 4 to 224 pixels wide, kernels
1/3/5/7, strides 1 and 2, dilation, grouped and depthwise layers and batches
1 to 32.  :func:`split` gives the even-numbered draws to fitting and the
odd-numbered ones to reporting, so the reporting half is fixed before any
constant is chosen and never changes with later fits.

Each draw is kept to a size one call of the benchmark handles in well under
a second on a small machine (``MAX_MACS`` multiply-adds, ``MAX_BYTES`` of
input plus output; a draw under ``MIN_MACS`` gets a larger batch): the batch is halved, then the channel counts, until it
fits, so large channel counts meet small maps and vice versa, as in real
networks.
"""

from __future__ import annotations

import numpy as np

from .layers import Layer

#: The seed of the shipped set (``benchmarks/fit_auto_rule.py --only random_fit`` times
#: the fitting half; the set after ``random_fit`` in its list, the other half).
SEED = 20261207
#: Shapes in the shipped set (32 to fit on, 32 held out).
COUNT = 64
#: Largest multiply-add count of one drawn layer (2 GFLOP).
MAX_MACS = 1_000_000_000
#: Smallest multiply-add count: the batch of a smaller draw is doubled (up to 32)
#: until it reaches this, or the call would time only the fixed per-call costs.
MIN_MACS = 2_000_000
#: Largest input plus output of one drawn layer, in float32 bytes.
MAX_BYTES = 96 * 2**20


def _log_uniform_int(rng, lo: int, hi: int) -> int:
    return int(round(float(np.exp(rng.uniform(np.log(lo), np.log(hi))))))


def _draw(rng, i: int) -> Layer:
    kind = rng.choice(["dense", "dense", "dense", "dense", "depthwise", "grouped"])
    R = int(rng.choice([1, 3, 3, 3, 5, 7]))
    if kind != "dense" and R == 1:
        R = 3
    stride = int(rng.choice([1, 1, 1, 2]))
    dilation = int(rng.choice([1, 1, 1, 1, 1, 2])) if R > 1 else 1
    H = _log_uniform_int(rng, 4, 224)
    W = H if rng.uniform() < 0.75 else _log_uniform_int(rng, 4, 224)
    span = dilation * (R - 1) + 1
    padding = (span - 1) // 2 if rng.uniform() < 0.8 else 0
    H, W = max(H, span - 2 * padding), max(W, span - 2 * padding)
    N = int(rng.choice([1, 1, 1, 2, 4, 8, 16, 32]))
    C = _log_uniform_int(rng, 1, 1024)
    # Output channels follow the input's, as in real networks (a layer
    # widens or narrows a few times at most), from 4 channels up.
    K = int(np.clip(round(max(C, 4) * 2.0 ** rng.uniform(-2, 2.5)), 4, 1024))
    groups = 1
    if kind == "depthwise":
        C = max(C, 8)
        K, groups = C * int(rng.choice([1, 1, 1, 2])), C
    elif kind == "grouped":
        groups = int(rng.choice([2, 4, 8, 32]))
        C = max(groups, C // groups * groups)
        K = max(groups, K // groups * groups)

    def size(N, C, K):
        P = (H + 2 * padding - span) // stride + 1
        Q = (W + 2 * padding - span) // stride + 1
        macs = N * K * P * Q * (C // groups) * R * R
        return macs, 4 * (N * C * H * W + N * K * P * Q)

    while size(N, C, K)[0] < MIN_MACS and N < 32:
        N *= 2
    while True:
        macs, nbytes = size(N, C, K)
        if macs <= MAX_MACS and nbytes <= MAX_BYTES:
            break
        if N > 1:
            N //= 2
        elif kind == "depthwise":
            m = K // C
            C = max(8, C // 2)
            K, groups = C * m, C
        else:
            C = max(groups, C // 2 // groups * groups)
            K = max(groups, K // 2 // groups * groups)
    tag = {"dense": "", "depthwise": "_dw", "grouped": f"_g{groups}"}[kind]
    s = f"_s{stride}" if stride > 1 else ""
    d = f"_d{dilation}" if dilation > 1 else ""
    name = f"r{i:02d}_n{N}_c{C}_k{K}_h{H}x{W}_{R}x{R}{s}{d}{tag}"
    return Layer(name, N, C, H, W, K, R, R, stride=stride, padding=padding,
                 dilation=dilation, groups=groups, source=f"random_layers(seed={SEED})")


def random_layers(n: int = COUNT, seed: int = SEED) -> list:
    """``n`` layer shapes drawn from ``seed`` (the same list on every machine and version)."""
    rng = np.random.default_rng(seed)
    return [_draw(rng, i) for i in range(n)]


def split(layers) -> tuple:
    """(fit, report): the even-numbered and the odd-numbered draws."""
    return list(layers[0::2]), list(layers[1::2])
