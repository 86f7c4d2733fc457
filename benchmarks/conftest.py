"""pytest-benchmark suite of fastconv on the standard layers (``fastconv/bench/conv_layers.json``).

Run (not part of the default ``pytest`` run, whose testpaths is ``tests/``)::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE pytest benchmarks --benchmark-only
    pytest benchmarks --benchmark-only --fastconv-quick          # 6 layers, batch <= 8
    pytest benchmarks --benchmark-only --fastconv-layers resnet50_3x3_64,vgg16_3_2 \
        --benchmark-json out.json --benchmark-group-by group

Every (layer, algorithm) pair is one benchmark with the id ``layer=<name>-alg=<algorithm>``
in the pytest-benchmark group ``<layer name>``; peers (``torch``, ``numpy_im2col``) are
parametrised like algorithms, and ``auto`` is timed as the user calls it.  Algorithms that
do not support a layer (Winograd on a strided layer) are not generated.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("fastconv", "fastconv benchmarks")
    group.addoption("--fastconv-quick", action="store_true",
                    help="benchmark only the quick subset (6 layers at batch <= 8)")
    group.addoption("--fastconv-layers", default=None, metavar="NAME,...",
                    help="comma-separated layer names to benchmark (default: all 18)")
    group.addoption("--fastconv-algorithms", default=None, metavar="NAME,...",
                    help="comma-separated fastconv algorithms (default: all, plus auto)")


def _candidates(layer, algorithms):
    """Names to time on ``layer``: supporting algorithms, auto, then the peers."""
    from fastconv import _dispatch
    from fastconv.bench.peers import torch_available
    from fastconv.bench.runner import concrete_algorithms

    from fastconv.errors import UnsupportedError

    p = layer.params()
    names = algorithms or concrete_algorithms() + ["auto"]
    out = []
    for a in names:
        try:
            _dispatch.resolve(a, p, "cpu")  # aliases (winograd) resolve; unknown names raise
        except UnsupportedError:
            continue
        out.append(a)
    if torch_available():
        out.append("torch")
    out.append("numpy_im2col")
    return out


def pytest_generate_tests(metafunc):
    if not {"layer", "alg"} <= set(metafunc.fixturenames):
        return
    from fastconv.bench.layers import select_layers

    cfg = metafunc.config
    layers = select_layers(cfg.getoption("--fastconv-layers"), quick=cfg.getoption("--fastconv-quick"))
    algs = cfg.getoption("--fastconv-algorithms")
    algs = [a.strip() for a in algs.split(",")] if algs else None
    params = [pytest.param(layer, alg, id=f"layer={layer.name}-alg={alg}")
              for layer in layers for alg in _candidates(layer, algs)]
    metafunc.parametrize(("layer", "alg"), params)


_ARRAYS: dict = {}


@pytest.fixture
def arrays(layer):
    """Seeded (x, w, bias) of the layer, shared by all its benchmarks (same inputs for all)."""
    if layer not in _ARRAYS:
        _ARRAYS.clear()  # one layer at a time keeps memory modest
        _ARRAYS[layer] = layer.arrays(seed=0)
    return _ARRAYS[layer]
