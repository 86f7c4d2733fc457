"""The benchmark suite behind ``python -m fastconv bench``.

* :mod:`.layers`: the 18 standard layers (``conv_layers.json``) and ``--quick``'s subset;
* :mod:`.runner`: interleaved timing of every algorithm and peer, medians, oracle check;
* :mod:`.peers`: PyTorch, a plain-numpy im2col baseline, the scipy reference;
* :mod:`.machine`: CPU, threads, versions, BLAS kernel;
* :mod:`.report`: text table, pytest-benchmark-compatible JSON, PNG plot;
* :mod:`.cli`: the command line (``main(argv) -> int``).

A CUDA run is delegated to ``fastconv.bench.cuda.run_suite(layers, **options)``,
which returns the same :class:`~.runner.SuiteResult`.
"""

from .layers import QUICK_LAYERS, Layer, load_layers, select_layers
from .runner import LayerResult, Measurement, SuiteResult, bench_layer, run_suite

__all__ = ["Layer", "load_layers", "select_layers", "QUICK_LAYERS", "run_suite", "bench_layer",
           "SuiteResult", "LayerResult", "Measurement"]
