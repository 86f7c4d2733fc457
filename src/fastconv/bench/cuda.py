"""GPU benchmark: every CUDA algorithm against cuDNN (through torch, TF32 off).

Used by ``python -m fastconv bench --device cuda`` (which prints the same
table as on the CPU) and by ``benchmarks/gpu_check.py``.

Method:

1. Seeded inputs (:meth:`fastconv.bench.layers.Layer.arrays`) copied to the
   GPU once; fastconv writes into a preallocated ``out=`` so the result's
   allocation is not timed.  cuDNN runs through ``torch.nn.functional.conv2d``
   with ``torch.backends.cudnn.allow_tf32 = False``,
   ``torch.backends.cuda.matmul.allow_tf32 = False`` (numba-cuda has no
   tensor-core intrinsics, so full fp32 is the fair peer) and
   ``cudnn.benchmark = True`` (cuDNN's own autotuner picks its fastest kernel).
2. Every candidate is called twice first (JIT compilation, cuDNN autotuning),
   then ``number`` back-to-back calls between two CUDA events make one
   round, ``number`` chosen so a round lasts at least ``min_round_s``; the
   host's launch overhead overlaps the GPU work as it would in a model.
3. ``repeat`` rounds, candidates interleaved; the median per call is reported.
4. Each result is checked against a float64 convolution computed by torch on
   the GPU (``max |y - y_ref| / max |y_ref|``).
"""

from __future__ import annotations

import numpy as np

from .._dispatch import auto_choice, resolve
from .runner import LayerResult, Measurement, SuiteResult, concrete_names

CUDNN = "torch"  # the peer's key: the shared report code computes "ratio vs torch" from it
CUDNN_LABEL = "cuDNN via torch.nn.functional.conv2d, TF32 off, cudnn.benchmark=True"


def _concrete(names, p):
    """Concrete CUDA algorithms to time on ``p`` and the reasons the others were skipped."""
    return concrete_names(names, p, "cuda")


class _Timer:
    """CUDA-event timing of ``number`` back-to-back calls on the default stream."""

    def __init__(self):
        from numba import cuda

        self.cuda = cuda
        self.start, self.end = cuda.event(), cuda.event()

    def per_call(self, fn, number: int) -> float:
        self.start.record()
        for _ in range(number):
            fn()
        self.end.record()
        self.end.synchronize()
        return self.start.elapsed_time(self.end) / 1e3 / number


def _torch():
    try:
        import torch
    except Exception:
        return None
    return torch if torch.cuda.is_available() else None


def profile_phases(name, x, w, b, layer, dtype=np.float32, repeat: int = 3) -> dict:
    """Median seconds of each phase of one algorithm (Winograd: scan, transforms, GEMM)."""
    from numba import cuda

    from ..cuda._arrays import view_of
    from ..cuda._runtime import Context, _current_device_id

    p = layer.params(dtype)
    alg = resolve(name, p, "cuda")
    y = cuda.device_array((p.N, p.K, p.P, p.Q), dtype=p.dtype)
    xv, wv, yv = view_of(x, "x").flat(), view_of(w, "w").flat(), view_of(y, "y").flat()
    bv = None if b is None else view_of(b, "bias").flat()
    runs = []
    for _ in range(repeat):
        ctx = Context(stream=0, device=_current_device_id(cuda), events=[])
        ctx.mark("start")
        alg.run(xv, wv, bv, p, yv, ctx)
        ctx.mark("end")
        ctx.events[-1][1].synchronize()
        phases = {}
        for (_, e0), (label, e1) in zip(ctx.events, ctx.events[1:]):
            if label == "start":
                continue
            label = "other" if label == "end" else label
            phases[label] = phases.get(label, 0.0) + e0.elapsed_time(e1) / 1e3
        runs.append(phases)
    return {k: float(np.median([r.get(k, 0.0) for r in runs])) for k in runs[0]}


def bench_layer(layer, *, algorithms=None, repeat: int = 10, dtype=np.float32, peers=(CUDNN,),
                min_round_s: float = 0.02, seed: int = 0, phases: bool = False,
                progress=None) -> LayerResult:
    """Time the CUDA algorithms and cuDNN on one layer; see the module docstring."""
    from numba import cuda

    import fastconv.cuda as fc

    from .._dispatch import algorithms as all_algorithms

    dtype = np.dtype(dtype)
    p = layer.params(dtype)
    names = [a for a in all_algorithms("cuda") if a not in ("auto", "winograd")] \
        if algorithms is None else list(algorithms)
    chosen, unsupported = _concrete(names, p)
    auto = auto_choice(p, "cuda")
    if auto not in chosen:
        chosen.append(auto)
    x, w, b = layer.arrays(dtype, seed)
    kw = layer.conv_kwargs
    xd, wd, bd = cuda.to_device(x), cuda.to_device(w), cuda.to_device(b)
    yd = {n: cuda.device_array(p.output_shape, dtype=dtype) for n in chosen}
    calls = {n: (lambda n: lambda: fc.conv2d(xd, wd, bd, algorithm=n, out=yd[n], **kw))(n)
             for n in chosen}
    kinds = dict.fromkeys(chosen, "fastconv")

    torch = _torch()
    ref = None
    if torch is not None:
        import torch.nn.functional as F

        tx, tw, tb = (torch.from_numpy(a).cuda() for a in (x, w, b))
        with torch.no_grad():
            ref = F.conv2d(tx.double(), tw.double(), tb.double(), **kw).cpu().numpy()
        if CUDNN in peers:
            def cudnn():
                with torch.no_grad():
                    return F.conv2d(tx, tw, tb, **kw)
            calls[CUDNN] = cudnn
            kinds[CUDNN] = "peer"

    timer = _Timer()
    results, numbers = {}, {}
    for name, fn in calls.items():  # warm-up: JIT, autotuning; then check and calibrate
        fn()
        y = fn()
        cuda.synchronize()
        err = float("nan")
        if ref is not None:
            yh = y.cpu().numpy() if kinds[name] == "peer" else y.copy_to_host()
            err = float(np.max(np.abs(yh - ref)) / (np.max(np.abs(ref)) or 1.0))
        t1 = timer.per_call(fn, 1)
        # The simulator's events return -1: one call per round there.
        numbers[name] = 1 if t1 <= 0 else int(min(1000, max(1, np.ceil(min_round_s / t1))))
        results[name] = Measurement(name, kinds[name], [], numbers[name], p.flops, err)
    if progress:
        progress(1)
    for _ in range(repeat):
        for name, fn in calls.items():
            results[name].times.append(timer.per_call(fn, numbers[name]))
        if progress:
            progress(1)
    if phases:
        for name in chosen:
            if name.startswith("winograd"):
                results[name].phases = profile_phases(name, xd, wd, bd, layer, dtype)
        if progress:
            progress(1)
    return LayerResult(layer, dtype.name, results, auto, unsupported)


def run_suite(layers, *, algorithms=None, repeat: int = 10, dtype=np.float32, peers=(CUDNN,),
              threads=None, phases: bool = False, min_round_s: float = 0.02, seed: int = 0,
              progress=None, batch=None) -> SuiteResult:
    """Benchmark ``layers`` on the GPU; returns the CPU runner's :class:`SuiteResult`.

    Parameters
    ----------
    layers : list of fastconv.bench.layers.Layer
    algorithms : list of str, optional
        CUDA algorithm names (aliases allowed); default every registered one.
    repeat : int
        Timed rounds per candidate (median reported).
    batch : int, optional
        Replace every layer's N (``benchmarks/gpu_check.py`` uses 32, the
        batch of ``benchmarks/cudnn_h200.json``); None keeps the layers' own.
    threads : ignored
        Accepted for the CLI's sake (a CPU option).

    Raises
    ------
    fastconv.CudaUnavailableError
        No usable GPU / numba-cuda.
    """
    from .._dispatch import algorithms as all_algorithms
    from ..cuda._runtime import require, status
    from .machine import commit_info, machine_info

    require()
    if algorithms is not None:
        valid = [a for a in all_algorithms("cuda") if a != "auto"]
        bad = [a for a in algorithms if a not in valid]
        if bad:
            raise ValueError(f"unknown CUDA algorithm(s) {', '.join(map(repr, bad))}; "
                             f"algorithms on cuda are {', '.join(valid)}")
    if batch is not None:
        layers = [l.with_batch(int(batch)) for l in layers]
    torch = _torch()
    saved = None
    if torch is not None:
        saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                 torch.backends.cudnn.benchmark)
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
    try:
        out = []
        for layer in layers:
            step = (lambda lname: (lambda k: progress(k, lname)))(layer.name) if progress else None
            out.append(bench_layer(layer, algorithms=algorithms, repeat=repeat, dtype=dtype,
                                   peers=peers, min_round_s=min_round_s, seed=seed,
                                   phases=phases, progress=step))
    finally:
        if saved is not None:
            (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.benchmark) = saved
    machine = machine_info()
    machine["cuda"] = status()
    if torch is not None:
        machine["cuda"]["torch"] = torch.__version__
        machine["cuda"]["cudnn"] = torch.backends.cudnn.version()
    options = dict(repeat=repeat, dtype=np.dtype(dtype).name, batch=batch, peers=list(peers),
                   peer_torch=CUDNN_LABEL, algorithms=algorithms, phases=phases,
                   min_round_s=min_round_s, seed=seed)
    return SuiteResult(out, machine, commit_info(), options, "cuda")


def rows(result: SuiteResult) -> list:
    """One dict per (layer, candidate): median ms, TFLOP/s, ratio to cuDNN (>1 = faster), error."""
    table = []
    for r in result.layers:
        cudnn = r.measurements.get(CUDNN)
        for name, m in r.measurements.items():
            table.append({
                "layer": r.layer.name, "N": r.layer.N, "algorithm": "cudnn" if name == CUDNN else name,
                "auto": name == r.auto, "median_ms": m.median * 1e3, "tflops": m.gflops / 1e3,
                "ratio_vs_cudnn": (cudnn.median / m.median) if cudnn is not None else None,
                "max_rel_error": m.error, "phases_ms": {k: v * 1e3 for k, v in m.phases.items()},
            })
    return table
