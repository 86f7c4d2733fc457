"""The benchmark core: time every algorithm and peer on each layer, interleaved.

Method (the same for every candidate):

1. Seeded inputs (:meth:`Layer.arrays`); each candidate is called once
   (Numba compilation, BLAS and oneDNN initialisation) and once more to
   calibrate, outside the timed region.  ``number`` calls per round are
   chosen so one round lasts at least ``min_round_s``.
2. ``repeat`` rounds; inside a round the candidates run one after another
   (round-robin), so a burst of load from other processes slows all of them
   alike instead of one.  Each candidate's turn starts with one untimed call:
   the thread pool of the previous candidate (OpenBLAS workers busy-wait
   for a while after a GEMM, as do OpenMP workers after a parallel region)
   is then idle again and does not steal cores from the timed calls.  After
   a candidate that uses a multi-threaded BLAS (the numpy peer) the runner
   also sleeps until OpenBLAS's workers stop busy-waiting (``BLAS_PARK_S``).
   The statistic reported is the median per call.
3. Every candidate's result is checked against a float64 numpy im2col
   oracle (``max |y - y_ref| / max |y_ref|``), so a wrong fast kernel shows.
4. The ratio to PyTorch uses the two medians timed in this process.

``auto``'s time is the time of the algorithm it chooses (always timed).
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field

import numpy as np

from .layers import Layer
from .peers import REFERENCE_MAX_FLOPS, numpy_im2col, torch_available, torch_conv

PEERS = ("torch", "numpy_im2col", "scipy_reference")
#: Candidates that call a multi-threaded BLAS.  OpenBLAS's workers busy-wait
#: for about 2**28 cycles (~0.07 s) after each call; on a machine with few cores
#: they steal cores from whatever runs next (fastconv and torch alike), so the
#: runner waits ``BLAS_PARK_S`` after such a candidate until they park.
BLAS_THREADED = frozenset({"numpy_im2col"})
BLAS_PARK_S = 0.15
#: Within this factor of the fastest algorithm, ``auto`` counts as a near hit
#: (differences this small are within the run-to-run spread of a shared machine).
NEAR_HIT = 1.05


@dataclass
class Measurement:
    """Timings of one candidate on one layer (seconds per call)."""

    name: str
    kind: str  # "fastconv" or "peer"
    times: list
    number: int
    flops: int
    error: float = float("nan")
    phases: dict = field(default_factory=dict)

    @property
    def median(self) -> float:
        return float(np.median(self.times))

    @property
    def gflops(self) -> float:
        return self.flops / self.median / 1e9


@dataclass
class LayerResult:
    layer: Layer
    dtype: str
    measurements: dict  # name -> Measurement, in timing order
    auto: str  # the algorithm auto chose
    unsupported: dict = field(default_factory=dict)  # algorithm -> reason

    def algorithms(self) -> list:
        return [m for m in self.measurements.values() if m.kind == "fastconv"]

    @property
    def best(self) -> str:
        """The fastest fastconv algorithm timed on this layer."""
        return min(self.algorithms(), key=lambda m: m.median).name

    @property
    def auto_vs_best(self) -> float:
        """auto's median / the fastest algorithm's median (1.0 = auto picked the fastest)."""
        return self.measurements[self.auto].median / self.measurements[self.best].median

    @property
    def auto_hit(self) -> bool:
        return self.auto == self.best

    @property
    def auto_near_hit(self) -> bool:
        return self.auto_vs_best <= NEAR_HIT

    def ratio_vs_torch(self, name: str):
        """Speed of ``name`` relative to torch (>1 = faster than torch), or None without torch."""
        t = self.measurements.get("torch")
        if t is None or name not in self.measurements:
            return None
        return t.median / self.measurements[name].median


@dataclass
class SuiteResult:
    layers: list
    machine: dict
    commit: dict
    options: dict
    device: str = "cpu"

    def summary(self) -> dict:
        """Geometric-mean and minimum ratio of auto vs torch, and auto's hit rates."""
        ratios = [r.ratio_vs_torch(r.auto) for r in self.layers]
        ratios = [x for x in ratios if x is not None]
        n = len(self.layers)
        out = {
            "layers": n,
            "auto_hits": sum(r.auto_hit for r in self.layers),
            "auto_near_hits": sum(r.auto_near_hit for r in self.layers),
            "near_hit_factor": NEAR_HIT,
            "auto_vs_best_geomean": _geomean([r.auto_vs_best for r in self.layers]),
        }
        if ratios:
            out.update(auto_vs_torch_geomean=_geomean(ratios), auto_vs_torch_min=min(ratios),
                       auto_vs_torch_max=max(ratios),
                       best_vs_torch_geomean=_geomean([r.ratio_vs_torch(r.best) for r in self.layers]))
        return out


def _geomean(values) -> float:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def concrete_algorithms(device: str = "cpu") -> list:
    """Registered kernel names on ``device`` (aliases such as ``winograd`` excluded)."""
    from .._dispatch import registered

    return list(registered(device))


def check_algorithms(names, device: str = "cpu") -> list:
    """Validate user-given algorithm names (aliases allowed); ValueError lists valid ones."""
    import fastconv

    # auto is always reported; tuned would time the autotuner's measurement on first use
    valid = [a for a in fastconv.algorithms(device) if a not in ("auto", "tuned")]
    bad = [n for n in names if n not in valid]
    if bad:
        raise ValueError(f"unknown algorithm(s) {', '.join(map(repr, bad))}; algorithms on "
                         f"{device} are {', '.join(valid)}")
    return list(names)


def concrete_names(names, params, device: str = "cpu") -> tuple:
    """Concrete algorithms to time on ``params`` and the reasons the others were skipped."""
    from .._dispatch import concrete, get

    chosen, skipped = [], {}
    for name in names:
        name = concrete(name, params, device)
        reason = get(device, name).supports(params)
        if reason is not None:
            skipped[name] = reason
        elif name not in chosen:
            chosen.append(name)
    return chosen, skipped


def _phase_profiler(name):
    """``profile_phases`` of the kernel module behind ``name``, bound to its variant, or None."""
    import importlib

    module = {"im2col": "im2col"}.get(name, "winograd" if name.startswith("winograd") else None)
    if module is None:
        return None
    fn = getattr(importlib.import_module(f"fastconv.cpu.{module}"), "profile_phases", None)
    if fn is None:
        return None
    if module == "winograd":
        try:
            accepted = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            accepted = {}
        m = int(name.split("_f")[1].split("x")[0])  # winograd_f4x4_3x3 -> 4
        if "m" in accepted:
            return lambda x, w, b, p, y: fn(x, w, b, p, y, m=m)
        if "algorithm" in accepted:
            return lambda x, w, b, p, y: fn(x, w, b, p, y, algorithm=name)
    return fn


def _calibrate(fn, min_round_s: float) -> int:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    return int(min(1000, max(1, math.ceil(min_round_s / max(dt, 1e-7)))))


def _rel_error(y, ref) -> float:
    y = np.asarray(y.numpy() if hasattr(y, "numpy") else y, dtype=np.float64)
    scale = float(np.max(np.abs(ref))) or 1.0
    return float(np.max(np.abs(y - ref))) / scale


def bench_layer(layer: Layer, *, algorithms=None, repeat: int = 5, dtype=np.float32,
                peers=("torch", "numpy_im2col", "scipy_reference"), threads=None,
                phases: bool = False, min_round_s: float = 0.02, seed: int = 0,
                progress=None, timer=time.perf_counter) -> LayerResult:
    """Time the fastconv algorithms and the peers on one layer (see the module docstring).

    ``algorithms``: names (aliases allowed) or None for every registered one;
    ones that do not support the layer are skipped with their reason.
    ``threads``: torch's thread count (None leaves torch's own default).
    ``timer``: the clock of the timed rounds; ``time.process_time`` (CPU
    seconds of the whole process) is immune to other processes' load but only
    meaningful single-threaded, where no worker thread busy-waits.
    ``progress(step)`` is called after each round.
    """
    import fastconv
    from .._dispatch import auto_choice

    p = layer.params(dtype)
    names = concrete_algorithms() if algorithms is None else list(algorithms)
    chosen, unsupported = concrete_names(names, p)
    auto = auto_choice(p, "cpu")
    if auto not in chosen:  # auto's time is its algorithm's time: always measure it
        chosen.append(auto)
    x, w, b = layer.arrays(dtype, seed)
    kw = layer.conv_kwargs

    calls = {}
    for name in chosen:
        calls[name] = (lambda n: lambda: fastconv.conv2d(x, w, b, algorithm=n, **kw))(name)
    kinds = dict.fromkeys(chosen, "fastconv")
    if "torch" in peers and torch_available():
        calls["torch"] = torch_conv(x, w, b, layer, threads)
        kinds["torch"] = "peer"
    if "numpy_im2col" in peers:
        calls["numpy_im2col"] = lambda: numpy_im2col(x, w, b, **kw)
        kinds["numpy_im2col"] = "peer"
    if "scipy_reference" in peers and layer.flops <= REFERENCE_MAX_FLOPS:
        calls["scipy_reference"] = lambda: fastconv.reference.conv2d(x, w, b, **kw)
        kinds["scipy_reference"] = "peer"

    ref = numpy_im2col(*(a.astype(np.float64) for a in (x, w, b)), **kw)
    flops = p.flops
    results, numbers = {}, {}
    for name, fn in calls.items():  # warm-up: compile, check, calibrate
        err = _rel_error(fn(), ref)
        fn()  # the weight cache keeps prepared weights from their second call on
        numbers[name] = _calibrate(fn, min_round_s)
        results[name] = Measurement(name, kinds[name], [], numbers[name], flops, err)
    if progress:
        progress(1)
    time.sleep(BLAS_PARK_S)  # the oracle and the numpy peer ran multi-threaded BLAS
    for _ in range(repeat):
        for name, fn in calls.items():
            number = numbers[name]
            fn()  # settle: the previous candidate's thread pool may still be spinning
            t0 = timer()
            for _ in range(number):
                fn()
            results[name].times.append((timer() - t0) / number)
            if name in BLAS_THREADED:
                time.sleep(BLAS_PARK_S)
        if progress:
            progress(1)
    if phases:
        y = np.empty((p.N, p.K, p.P, p.Q), dtype=p.dtype)
        for name in chosen:
            prof = _phase_profiler(name)
            if prof is None:
                continue
            runs = [prof(x, w, b, p, y) for _ in range(max(1, min(repeat, 5)))]
            results[name].phases = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        if progress:
            progress(1)
    return LayerResult(layer, np.dtype(dtype).name, results, auto, unsupported)


def steps_per_layer(repeat: int, phases: bool) -> int:
    return 1 + repeat + (1 if phases else 0)


def run_suite(layers, *, algorithms=None, repeat: int = 5, dtype=np.float32, peers=PEERS,
              threads=None, phases: bool = False, min_round_s: float = 0.02, seed: int = 0,
              progress=None, cpu_time: bool = False, measure_peak: bool = True) -> SuiteResult:
    """Benchmark ``layers`` on the CPU; see :func:`bench_layer` for the options.

    ``measure_peak`` also measures the machine's FMA peak with the run's
    threads (:func:`fastconv.bench.peak.fma_peak`, about a second), recorded
    as ``machine_info["fastconv"]["fma_peak_gflops"]``.
    ``threads`` sets Numba's, BLAS's (through threadpoolctl) and
    torch's thread counts for the run; None keeps the current ones.
    ``progress(step, label)`` is called after each round with the layer's name.
    ``cpu_time=True`` times with the process's CPU clock instead of the wall
    clock (requires ``threads=1``): on a machine shared with other work it
    measures what each call costs, not how long it waited for a core.
    """
    import contextlib

    import numba

    from .machine import commit_info, load_average, machine_info

    if algorithms is not None:
        check_algorithms(algorithms)
    if cpu_time and threads != 1:
        raise ValueError("cpu_time=True needs threads=1: with several threads the process's CPU "
                         "time includes worker threads busy-waiting")
    timer = time.process_time if cpu_time else time.perf_counter
    load_before = load_average()
    old_threads = numba.get_num_threads()
    limit = contextlib.nullcontext()
    if threads is not None:
        import scipy.linalg.cython_blas  # noqa: F401  (load SciPy's BLAS, so it is limited too)
        from threadpoolctl import threadpool_limits

        numba.set_num_threads(int(threads))
        limit = threadpool_limits(int(threads))
    # torch gets the same thread count as the Numba kernels, so the ratio compares like with like.
    torch_threads = int(threads) if threads is not None else numba.get_num_threads()
    try:
        with limit:
            out = []
            for layer in layers:
                step = (lambda lname: (lambda k: progress(k, lname)))(layer.name) if progress else None
                out.append(bench_layer(layer, algorithms=algorithms, repeat=repeat, dtype=dtype,
                                       peers=peers, threads=torch_threads, phases=phases,
                                       min_round_s=min_round_s, seed=seed, progress=step,
                                       timer=timer))
            if not ("torch" in peers and torch_available()):
                torch_threads = None
            machine = machine_info(threads, torch_threads)
            machine["fastconv"]["load_average_1min_before"] = load_before
            if measure_peak:
                from .peak import fma_peak
                machine["fastconv"]["fma_peak_gflops"] = round(fma_peak(dtype=dtype), 1)
    finally:
        numba.set_num_threads(old_threads)
    options = dict(repeat=repeat, dtype=np.dtype(dtype).name, threads=threads, peers=list(peers),
                   clock="process_time" if cpu_time else "perf_counter",
                   algorithms=algorithms, phases=phases, min_round_s=min_round_s, seed=seed)
    return SuiteResult(out, machine, commit_info(), options, "cpu")
