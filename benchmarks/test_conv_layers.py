"""Benchmarks of fastconv.conv2d per layer and algorithm against PyTorch and plain numpy.

Each benchmark calls the function once before timing (Numba compilation and
BLAS/oneDNN start-up are never measured), records GFLOP/s (2*N*K*P*Q*Cg*R*S
/ median) in ``benchmark.extra_info`` and checks the result against a float64
numpy oracle, so a fast wrong kernel fails instead of winning.
"""

from __future__ import annotations

import numba
import numpy as np

import fastconv
from fastconv._dispatch import auto_choice
from fastconv.bench.peers import numpy_im2col, torch_conv


def _call(layer, alg, x, w, b):
    kw = layer.conv_kwargs
    if alg == "torch":
        return torch_conv(x, w, b, layer, threads=numba.get_num_threads())
    if alg == "numpy_im2col":
        return lambda: numpy_im2col(x, w, b, **kw)
    return lambda: fastconv.conv2d(x, w, b, algorithm=alg, **kw)


def test_conv2d(benchmark, layer, alg, arrays):
    x, w, b = arrays
    fn = _call(layer, alg, x, w, b)
    y = fn()  # warm-up outside the timed region
    ref = numpy_im2col(*(a.astype(np.float64) for a in (x, w, b)), **layer.conv_kwargs)
    y = np.asarray(y.numpy() if hasattr(y, "numpy") else y, np.float64)
    err = float(np.max(np.abs(y - ref)) / np.max(np.abs(ref)))
    assert err < 1e-2, f"{alg} on {layer.name}: relative error {err:.2e}"

    benchmark.group = layer.name
    benchmark(fn)

    p = layer.params()
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(
        gflops=p.flops / median / 1e9, flops=p.flops, max_rel_err=err,
        auto_choice=auto_choice(p), numba_threads=numba.get_num_threads(),
        shape=dict(N=layer.N, C=layer.C, H=layer.H, W=layer.W, K=layer.K, R=layer.R, S=layer.S,
                   stride=layer.stride, padding=layer.padding, groups=layer.groups))
