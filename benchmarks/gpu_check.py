#!/usr/bin/env python3
"""One-shot GPU check of fastconv's CUDA backend: correctness, call overhead, speed against cuDNN.

The one prepared script a session with a GPU runs.  It watches its own clock:
no new timing layer is started past ``--budget-s`` seconds (default 300)
since its start, so with numba-cuda's JIT included it fits one device call.
Everything it finds goes to ``$OUT/gpu_check.json`` (rewritten after each
phase, so a run cut short still leaves the phases it finished); a log and
the summary go to stdout.

How to run it with the device tool
----------------------------------
numba-cuda 0.30 cannot compile kernels with numpy >= 2.5 (``module 'numpy'
has no attribute 'row_stack'``), so carry a numpy 2.4 wheel for the device
machine's Python 3.12 if it has numpy >= 2.5.  On this (CPU) machine, from
the repository root, once (``.whl/`` is git-ignored)::

    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl numpy==2.4.4

(if the device machine lacks scipy, which ``import fastconv`` needs, add
``scipy==1.17.1`` to that command: both wheels together are ~55 MB, under
the 64 MiB carry limit).  Then one device call, ``carry=[".whl"]``,
``timeout_s=480``::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site:src \
      && python3 benchmarks/gpu_check.py --out "$OUT"

Options: ``--quick`` (24 random configurations instead of 48, and the 6
"quick" layers instead of all 18 at each batch, for a rerun with little
device time left), ``--configs N``, ``--budget-s S``, and ``--smoke`` (tiny
shapes, a tiny timing layer and 3-call overhead loops: a test of the script
itself on a CPU machine, under numba's CUDA simulator)::

    NUMBA_ENABLE_CUDASIM=1 FASTCONV_CUDA_BLOCK=4 FASTCONV_CUDA_REGTILE=2 FASTCONV_CUDA_BK=4 \
      FASTCONV_CUDA_DIRECT_K=2 FASTCONV_CUDA_DIRECT_Q=2 \
      python benchmarks/gpu_check.py --smoke --out /tmp/gpucheck_smoke --configs 4

The pure-Python parts (failure isolation, summaries, targets) are tested by
``tests/test_gpu_check.py``.

What it checks, in this order
-----------------------------
1. Environment: ``fastconv.cuda.status()`` (device, compute capability,
   numba-cuda version), numpy/numba/scipy/torch/cupy versions.
2. Correctness: every CUDA algorithm on seeded random configurations
   (stride, asymmetric padding, dilation, groups, depthwise, NCHW/NHWC,
   float32/float64, bias, unbatched) against torch's float64 convolution on
   the GPU, with the test suite's tolerance table; input kinds rotate through
   numba arrays, torch tensors (also channels_last, i.e. non-contiguous, and
   on a non-default stream) and CuPy arrays when installed, and the result's
   kind is checked.  NaN/inf propagation, ``out=`` and a non-contiguous numba
   view are checked against ``fastconv.reference`` on small shapes.  Then the
   registers, local memory (spills) and shared memory of every compiled
   kernel, from numba-cuda.
3. Per-call host overhead: 3x3, padding 1, N=1 problems (C=K=8 on 8x8,
   C=K=16 on 16x16, C=K=64 on 56x56), every CUDA algorithm and ``auto``
   through ``fastconv.conv2d``, and cuDNN (``torch.nn.functional.conv2d``),
   on torch CUDA float32 tensors; fastconv also on numba device arrays and
   CuPy arrays.  Three warm-up calls and a synchronisation, then 300 calls
   back to back with ``time.perf_counter()`` around the loop and no
   synchronisation inside it (host time per call), then a synchronisation
   (wall time per call, including it).  Where the GPU work of a call takes
   longer than its host time, the launch queue can fill and make the loop
   wait for the GPU: compare ``host_us`` with ``wall_us``.  The target is a
   host time of at most 25 us per ``fastconv.conv2d`` call on torch tensors;
   each fastconv row says whether it meets it.
4. Timing at batch 32, then 5. at batch 1: the 18 layers of
   ``conv_layers.json`` (6 with ``--quick``).  On each layer every CUDA
   algorithm that supports it, ``auto``'s choice and cuDNN (TF32 off,
   ``cudnn.benchmark=True``) are timed with CUDA events through
   ``fastconv.conv2d`` into a preallocated ``out=`` (the method of
   :mod:`fastconv.bench.cuda`: two untimed calls, a calibrated number of
   back-to-back calls per round, 5 rounds interleaved, the median), and each
   result is checked against torch's float64 result.  Each candidate is
   timed on its own: one that fails (compilation, launch, a wrong shape)
   leaves an error row (algorithm, stage, error, short traceback) and the
   others' rows, the auto pick and the hit statistics stay.  Winograd phases
   on 3x3 stride-1 layers.  Batch 32 stops starting layers early enough to
   leave batch 1 part of the budget (up to 75 s).

Output (``gpu_check.json``)
---------------------------
``versions``, ``argv``, ``status``, ``input_kinds``;
``correctness``: ``random`` and ``special`` (one record per check, ``ok``
and the error or ``rel_err``/``tol``), ``failures``, ``checks``;
``kernel_resources``: one record per compiled kernel signature;
``overhead``: rows ``{problem, kind, algorithm, host_us, wall_us}`` (plus
``meets_target`` on fastconv rows, or ``error``/``stage``/``traceback``),
``overhead_skipped_for_time``;
``timing``: ``batch32`` and ``batch1`` (``rows``: per layer and candidate
``median_ms``, ``tflops``, ``ratio_vs_cudnn`` (>1 = faster than cuDNN),
``max_rel_error``, ``auto``, ``phases_ms``, or an error row;
``skipped_for_time``) and ``batch32_summary``/``batch1_summary``
(geometric mean vs cuDNN per algorithm, best algorithm per layer,
``auto_hits``, ``auto_near_hits`` (within 5 % of the best),
``auto_geomean_ratio_vs_cudnn``, ``failures``);
``targets``: the issue's targets computed from the run, each ``{value,
target, met, note}`` (``met`` null when the run could not tell):
``correctness_failures`` (0), ``worst_fastconv_host_overhead_us_torch``
(<= 25 us), ``auto_geomean_vs_cudnn_batch1`` (>= 0.3x),
``auto_hits_batch32`` (>= 16/18); ``wall_s``.

Exit status: 0 when every correctness check passed, 1 otherwise (timings and
targets are reported either way), 2 when the CUDA backend cannot run at all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))

T0 = time.perf_counter()

# Normwise relative error allowed per (algorithm, dtype): the test suite's table (tests/conftest.py).
TOLERANCE = {
    ("direct", "float32"): 1e-5, ("im2col", "float32"): 1e-5,
    ("winograd_f2x2_3x3", "float32"): 2e-5, ("winograd_f4x4_3x3", "float32"): 2e-4,
    ("direct", "float64"): 1e-13, ("im2col", "float64"): 1e-13,
    ("winograd_f2x2_3x3", "float64"): 1e-13, ("winograd_f4x4_3x3", "float64"): 1e-12,
}
ALGORITHMS = ("direct", "im2col", "winograd_f2x2_3x3", "winograd_f4x4_3x3")


def elapsed() -> float:
    return time.perf_counter() - T0


def log(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


def versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for mod in ("numba", "numba_cuda", "scipy", "torch", "cupy"):
        try:
            m = __import__(mod)
            out[mod] = getattr(m, "__version__", "?")
        except Exception as exc:
            out[mod] = f"unavailable: {type(exc).__name__}: {exc}"
    return out


# --- correctness --------------------------------------------------------------------------------

def random_configs(rng, count: int, dim: int = 40) -> list:
    """Seeded random configurations that normalize() accepts."""
    from fastconv._params import normalize

    configs = []
    while len(configs) < count:
        R = int(rng.choice([1, 2, 3, 3, 3, 5, 7]))
        S = R if rng.random() < 0.8 else int(rng.choice([1, 2, 3, 5]))
        groups = int(rng.choice([1, 1, 1, 2, 4]))
        depthwise = rng.random() < 0.15
        if depthwise:
            C = int(rng.integers(2, max(3, dim - 7)))
            groups, K = C, C * int(rng.choice([1, 1, 2]))
        else:
            C = groups * int(rng.integers(1, dim))
            K = groups * int(rng.integers(1, dim))
        N = int(rng.integers(1, 5))
        H, W = int(rng.integers(max(R, 3), max(R, 3) + dim)), int(rng.integers(max(S, 3), max(S, 3) + dim))
        unit = rng.random() < 0.5  # half the configurations are Winograd-eligible
        stride = 1 if unit else int(rng.choice([1, 2, 3]))
        dilation = 1 if unit else int(rng.choice([1, 1, 2]))
        if unit:
            R = S = 3
        pmode = rng.choice(["int", "asym", "same", "valid", "full"])
        padding = {"int": int(rng.integers(0, 3)), "same": "same", "valid": "valid", "full": "full",
                   "asym": ((int(rng.integers(0, 3)), int(rng.integers(0, 3))),
                            (int(rng.integers(0, 3)), int(rng.integers(0, 3))))}[str(pmode)]
        kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                  layout=str(rng.choice(["NCHW", "NCHW", "NHWC"])))
        dtype = np.dtype(np.float64 if rng.random() < 0.2 else np.float32)
        batched = rng.random() < 0.9
        try:
            x_shape = (N, C, H, W)
            p = normalize(x_shape, (K, C // groups, R, S), (K,), dtype, **kw)
        except ValueError:
            continue
        configs.append(dict(x_shape=x_shape, w_shape=(K, C // groups, R, S), kw=kw,
                            dtype=dtype.name, bias=bool(rng.random() < 0.7), batched=batched,
                            params=p))
    return configs


def torch_reference(x, w, b, p):
    """float64 convolution by torch on the GPU (NCHW batched), explicit asymmetric padding."""
    import torch
    import torch.nn.functional as F

    tx = torch.from_numpy(np.ascontiguousarray(x, np.float64)).cuda()
    tw = torch.from_numpy(np.ascontiguousarray(w, np.float64)).cuda()
    tb = None if b is None else torch.from_numpy(np.asarray(b, np.float64)).cuda()
    pt, pb, pl, pr = p.padding
    tx = F.pad(tx, (pl, pr, pt, pb))
    with torch.no_grad():
        y = F.conv2d(tx, tw, tb, stride=p.stride, dilation=p.dilation, groups=p.groups)
    return y.cpu().numpy()


def to_kind(a, kind, torch_stream=None):
    """Put host array ``a`` on the GPU as the given kind of array."""
    from numba import cuda

    if kind == "numba":
        return cuda.to_device(np.ascontiguousarray(a))
    if kind == "cupy":
        import cupy
        return cupy.asarray(a)
    import torch

    t = torch.from_numpy(np.ascontiguousarray(a)).cuda()
    if kind == "torch_channels_last" and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)  # NCHW shape, NHWC strides
    return t


def to_host(y):
    if hasattr(y, "copy_to_host"):
        return y.copy_to_host()
    if type(y).__module__.startswith("cupy"):
        return y.get()
    return y.detach().cpu().numpy()


def kind_ok(y, kind) -> bool:
    """Is the result the caller's kind of array (numba in, numba out; ...)?"""
    if kind == "numba":
        return bool(getattr(y, "__cuda_ndarray__", False))
    if kind == "cupy":
        import cupy
        return isinstance(y, cupy.ndarray)
    import torch
    return isinstance(y, torch.Tensor) and y.is_cuda


def front_end():
    """The function every fastconv call of this script goes through: the public front end
    ``fastconv.conv2d``; under the simulator (a smoke test of this script) ``fastconv.cuda``'s,
    because fastconv.conv2d does not recognise the simulator's arrays as device arrays."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        import fastconv.cuda
        return fastconv.cuda.conv2d
    import fastconv
    return fastconv.conv2d


def conv2d(*args, **kwargs):
    return front_end()(*args, **kwargs)


def check_random(configs, kinds, have_torch) -> list:
    import fastconv
    from fastconv._dispatch import supported

    results = []
    rng = np.random.default_rng(7)
    for i, cfg in enumerate(configs):
        p, kw = cfg["params"], cfg["kw"]
        dtype = np.dtype(cfg["dtype"])
        fan_in = int(np.prod(cfg["w_shape"][1:]))
        x = rng.standard_normal(cfg["x_shape"]).astype(dtype)
        w = (rng.standard_normal(cfg["w_shape"]) / np.sqrt(fan_in)).astype(dtype)
        b = rng.standard_normal(cfg["w_shape"][0]).astype(dtype) if cfg["bias"] else None
        yr = torch_reference(x, w, b, p) if have_torch else fastconv.reference.conv2d(
            x, w, b, **{k: v for k, v in kw.items() if k != "layout"})
        xin = x.transpose(0, 2, 3, 1) if kw["layout"] == "NHWC" else x
        yr_l = yr.transpose(0, 2, 3, 1) if kw["layout"] == "NHWC" else yr
        if not cfg["batched"]:
            xin, yr_l = xin[0], yr_l[0]
        kind = kinds[i % len(kinds)]
        for alg in sorted(a.name for a in supported("cuda", p)):
            rec = {"config": i, "algorithm": alg, "kind": kind, "dtype": dtype.name,
                   "x_shape": list(np.shape(xin)), "w_shape": list(cfg["w_shape"]),
                   "kw": {k: v for k, v in kw.items()}, "bias": cfg["bias"]}
            try:
                stream_ctx = _stream_ctx(kind, i)
                with stream_ctx:
                    xd, wd = to_kind(xin, kind), to_kind(w, kind)
                    bd = None if b is None else to_kind(b, kind)
                    y = conv2d(xd, wd, bd, algorithm=alg, **kw)
                    _sync(kind)
                rec["type_ok"] = kind_ok(y, kind)
                yh = to_host(y)
                ref = yr_l.astype(np.float64)
                err = float(np.linalg.norm(yh - ref) / (np.linalg.norm(ref) or 1.0))
                rec["rel_err"] = err
                rec["tol"] = TOLERANCE[(alg, dtype.name)]
                rec["shape_ok"] = tuple(yh.shape) == tuple(ref.shape) and yh.dtype == dtype
                rec["ok"] = bool(rec["type_ok"] and rec["shape_ok"] and np.isfinite(yh).all()
                                 and err <= rec["tol"])
            except Exception as exc:
                rec["ok"] = False
                rec["error"] = f"{type(exc).__name__}: {exc}"
                rec["traceback"] = traceback.format_exc()[-2000:]
            results.append(rec)
    return results


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def _stream_ctx(kind, i):
    # Every other torch configuration runs on a non-default torch stream: fastconv must launch
    # on torch's current stream, or the result read after synchronising that stream is stale.
    if kind.startswith("torch") and i % 2:
        import torch
        return torch.cuda.stream(torch.cuda.Stream())
    return _Null()


def _sync(kind):
    if kind.startswith("torch"):
        import torch
        torch.cuda.current_stream().synchronize()
    elif kind == "cupy":
        import cupy
        cupy.cuda.get_current_stream().synchronize()
    else:
        from numba import cuda
        cuda.synchronize()


def check_special(smoke: bool = False) -> list:
    """NaN/inf propagation, out= (NCHW and NHWC), non-contiguous numba input, vs the reference."""
    from numba import cuda

    from fastconv.reference import conv2d as ref

    out = []
    rng = np.random.default_rng(3)
    N, C, H, W, K = (2, 3, 6, 5, 4) if smoke else (2, 8, 20, 17, 16)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = (rng.standard_normal((K, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
    b = rng.standard_normal(K).astype(np.float32)
    xn = x.copy()
    xn[0, 1, 2, 3] = np.nan
    xn[1, C - 1, H - 1, 0] = np.inf
    xn[1, 2, 3, 3] = -np.inf
    with np.errstate(invalid="ignore"):
        yr = ref(xn, w, b, padding=1)
    for alg in ALGORITHMS:
        rec = {"check": "nonfinite", "algorithm": alg}
        try:
            y = conv2d(cuda.to_device(xn), cuda.to_device(w), cuda.to_device(b),
                       padding=1, algorithm=alg).copy_to_host()
            rec["ok"] = bool(np.array_equal(np.isnan(y), np.isnan(yr))
                             and np.array_equal(np.isposinf(y), np.isposinf(yr))
                             and np.array_equal(np.isneginf(y), np.isneginf(yr)))
        except Exception as exc:
            rec.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        out.append(rec)
    yr = ref(x, w, b, padding=1)
    for layout in ("NCHW", "NHWC"):
        rec = {"check": f"out= {layout}"}
        try:
            xin = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            exp = yr if layout == "NCHW" else yr.transpose(0, 2, 3, 1)
            o = cuda.to_device(np.full(exp.shape, np.nan, np.float32))
            got = conv2d(cuda.to_device(xin), cuda.to_device(w), cuda.to_device(b),
                         padding=1, layout=layout, out=o)
            y = o.copy_to_host()
            rec["ok"] = bool(got is o and np.allclose(y, exp, rtol=1e-4, atol=1e-4))
        except Exception as exc:
            rec.update(ok=False, error=f"{type(exc).__name__}: {exc}")
        out.append(rec)
    rec = {"check": "non-contiguous numba view"}
    try:
        xd = cuda.to_device(x)[:, :, ::2, :]
        y = conv2d(xd, cuda.to_device(w), algorithm="im2col").copy_to_host()
        rec["ok"] = bool(np.allclose(y, ref(x[:, :, ::2, :], w), rtol=1e-4, atol=1e-4))
    except Exception as exc:
        rec.update(ok=False, error=f"{type(exc).__name__}: {exc}")
    out.append(rec)
    return out


def kernel_resources() -> list:
    """Registers / local memory (spills) / shared memory per compiled kernel signature."""
    out = []
    try:
        dispatchers = _all_dispatchers()
    except Exception as exc:
        return [{"kernel": "n/a", "error": f"{type(exc).__name__}: {exc}"}]
    for dispatcher in dispatchers:
        fn = dispatcher.py_func
        consts = {name: cell.cell_contents for name, cell in
                  zip(fn.__code__.co_freevars, fn.__closure__ or ())
                  if isinstance(cell.cell_contents, (int, str))}
        stats = {}
        for what, meth in (("registers", "get_regs_per_thread"),
                           ("local_bytes", "get_local_mem_per_thread"),
                           ("shared_bytes", "get_shared_mem_per_block"),
                           ("max_threads", "get_max_threads_per_block")):
            try:
                stats[what] = getattr(dispatcher, meth)()
            except Exception as exc:
                stats[what] = {"n/a": f"{type(exc).__name__}: {exc}"}
        for sig in list(getattr(dispatcher, "overloads", {}).keys()):
            rec = {"kernel": fn.__name__, "constants": consts, "signature": str(sig)}
            for what, d in stats.items():
                rec[what] = d.get(sig, "n/a") if isinstance(d, dict) else d
            out.append(rec)
    return out


def _all_dispatchers():
    import gc
    import warnings

    from numba.cuda.dispatcher import CUDADispatcher

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance() on some torch objects warns
        return [o for o in gc.get_objects() if type(o) is CUDADispatcher
                and getattr(o.py_func, "__module__", "").startswith("fastconv")]


# --- per-call host overhead -----------------------------------------------------------------------

#: (label, N, C = K, H = W) of the overhead problems; every one is a 3x3 convolution, padding 1.
OVERHEAD_PROBLEMS = (("N1 C=K=8 8x8", 1, 8, 8), ("N1 C=K=16 16x16", 1, 16, 16),
                     ("N1 C=K=64 56x56", 1, 64, 56))
SMOKE_OVERHEAD_PROBLEMS = (("N1 C=K=4 4x4", 1, 4, 4),)
#: The issue's target for the host time of one fastconv.conv2d call on torch CUDA tensors.
OVERHEAD_TARGET_US = 25.0
CUDNN = "cudnn"  # the name of cuDNN's rows (torch.nn.functional.conv2d)


def error_entry(exc, stage: str) -> dict:
    """What a failed candidate leaves in the report: the error, where, a short traceback."""
    return {"error": f"{type(exc).__name__}: {exc}"[:500], "stage": stage,
            "traceback": traceback.format_exc()[-1500:]}


def host_and_wall(fn, sync, number: int, warmup: int = 3) -> tuple:
    """(host, wall) microseconds per call of ``number`` back-to-back calls of ``fn``.

    ``warmup`` calls and a synchronisation first; then ``time.perf_counter()`` around the
    Python loop with no synchronisation inside it (host: the time the caller's thread spends
    per call), then ``sync()`` (wall: including the final synchronisation, i.e. until the GPU
    has finished the queued work).
    """
    for _ in range(warmup):
        fn()
    sync()
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    t1 = time.perf_counter()
    sync()
    t2 = time.perf_counter()
    return (t1 - t0) / number * 1e6, (t2 - t0) / number * 1e6


def _syncer(kind):
    if kind.startswith("torch"):
        import torch
        return torch.cuda.synchronize
    if kind == "cupy":
        import cupy
        return cupy.cuda.runtime.deviceSynchronize
    from numba import cuda
    return cuda.synchronize


def overhead(kinds, number: int = 300, warmup: int = 3, problems=OVERHEAD_PROBLEMS,
             deadline: float = float("inf")) -> tuple:
    """Host and wall time per call on small problems, for every CUDA algorithm, ``auto`` and
    (on torch tensors) cuDNN.  Returns (rows, problems skipped for time)."""
    from fastconv._dispatch import supported
    from fastconv._params import normalize

    f = front_end()
    rows, skipped = [], []
    rng = np.random.default_rng(11)
    for label, N, C, H in problems:
        if elapsed() > deadline:
            skipped.append(label)
            continue
        p = normalize((N, C, H, H), (C, C, 3, 3), (C,), np.float32, padding=1)
        algs = sorted(a.name for a in supported("cuda", p)) + ["auto"]
        x = rng.standard_normal((N, C, H, H)).astype(np.float32)
        w = (rng.standard_normal((C, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32)
        for kind in kinds:
            try:
                xd, wd, bd = (to_kind(a, kind) for a in (x, w, b))
                sync = _syncer(kind)
            except Exception as exc:
                rows.append({"problem": label, "kind": kind, "algorithm": None,
                             **error_entry(exc, "setup")})
                continue
            calls = {a: (lambda a: lambda: f(xd, wd, bd, padding=1, algorithm=a))(a) for a in algs}
            if kind == "torch":
                import torch.nn.functional as F
                calls[CUDNN] = lambda: F.conv2d(xd, wd, bd, padding=1)
            for alg, fn in calls.items():
                row = {"problem": label, "kind": kind, "algorithm": alg}
                try:
                    row["host_us"], row["wall_us"] = host_and_wall(fn, sync, number, warmup)
                    if alg != CUDNN:
                        row["meets_target"] = row["host_us"] <= OVERHEAD_TARGET_US
                except Exception as exc:
                    row.update(error_entry(exc, "overhead"))
                rows.append(row)
    return rows, skipped


def overhead_table(rows) -> list:
    """Compact lines: one per (problem, kind), each entry ``algorithm host/wall us``, fastconv
    entries marked ok / MISS against OVERHEAD_TARGET_US."""
    lines, groups = [], {}
    for r in rows:
        groups.setdefault((r["problem"], r["kind"]), []).append(r)
    for (problem, kind), rs in groups.items():
        cells = []
        for r in rs:
            if "error" in r:
                cells.append(f"{r['algorithm']} FAILED ({r['error'][:60]})")
                continue
            mark = "" if r["algorithm"] == CUDNN else (" ok" if r["meets_target"] else " MISS")
            cells.append(f"{r['algorithm']} {r['host_us']:.1f}/{r['wall_us']:.1f}{mark}")
        lines.append(f"  {problem:17s} {kind:6s} " + " | ".join(cells))
    return lines


# --- timing -----------------------------------------------------------------------------------------

class cudnn_settings:
    """TF32 off, cudnn.benchmark on (as fastconv.bench.cuda.run_suite), restored on exit."""

    def __enter__(self):
        from fastconv.bench import cuda as bench

        self.torch, self.saved = bench._torch(), None
        if self.torch is not None:
            b = self.torch.backends
            self.saved = (b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark)
            b.cudnn.allow_tf32 = b.cuda.matmul.allow_tf32 = False
            b.cudnn.benchmark = True
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            b = self.torch.backends
            b.cudnn.allow_tf32, b.cuda.matmul.allow_tf32, b.cudnn.benchmark = self.saved
        return False


def time_candidates(calls, per_call, repeat: int, *, check=None, min_round_s: float = 0.02,
                    max_number: int = 1000) -> tuple:
    """Time each candidate of ``calls`` (name -> zero-argument callable), failures isolated.

    As :func:`fastconv.bench.cuda.bench_layer`: two untimed calls (JIT, autotuning),
    ``check(name, result)`` on the second one's result, one call to calibrate ``number`` (calls
    per round, a round lasting at least ``min_round_s``), then ``repeat`` rounds with the
    candidates interleaved; ``per_call(fn, number)`` gives the seconds per call of one round.
    A candidate that raises anywhere is dropped from then on with an error entry; the others
    carry on.

    Returns
    -------
    measured : dict name -> {"times": [s per call, one per round], "number", "max_rel_error"}
    errors : dict name -> :func:`error_entry`
    """
    measured, errors = {}, {}
    for name, fn in calls.items():
        stage = "warm-up"
        try:
            fn()
            y = fn()
            stage = "check"
            err = float("nan") if check is None else float(check(name, y))
            stage = "calibration"
            t1 = per_call(fn, 1)
            # The simulator's events return -1: one call per round there.
            number = 1 if t1 <= 0 else int(min(max_number, max(1, np.ceil(min_round_s / t1))))
            measured[name] = {"times": [], "number": number, "max_rel_error": err}
        except Exception as exc:
            errors[name] = error_entry(exc, stage)
    for _ in range(repeat):
        for name in list(measured):
            try:
                measured[name]["times"].append(per_call(calls[name], measured[name]["number"]))
            except Exception as exc:
                errors[name] = error_entry(exc, "timing")
                del measured[name]
    return measured, errors


def layer_rows(layer: str, N: int, flops: int, measured: dict, errors: dict, auto: str) -> dict:
    """Rows of one layer from :func:`time_candidates`' results (cuDNN under the name CUDNN).

    One row per measured candidate (median ms, TFLOP/s, ratio to cuDNN, >1 = faster than
    cuDNN), one error row per failed one; ``best`` is the fastest fastconv algorithm that ran,
    ``auto_hit`` whether ``auto`` (which must have run) is it.
    """
    medians = {n: float(np.median(m["times"])) for n, m in measured.items() if m["times"]}
    cud = medians.get(CUDNN)
    rows = []
    for name, med in medians.items():
        rows.append({"layer": layer, "N": N, "algorithm": name, "auto": name == auto,
                     "median_ms": med * 1e3, "tflops": flops / med / 1e12 if med else None,
                     "ratio_vs_cudnn": cud / med if cud is not None and med else None,
                     "max_rel_error": measured[name]["max_rel_error"],
                     "number": measured[name]["number"], "phases_ms": {}})
    for name, e in errors.items():
        rows.append({"layer": layer, "N": N, "algorithm": name, "auto": name == auto, **e})
    algs = {n: m for n, m in medians.items() if n != CUDNN}
    best = min(algs, key=algs.get) if algs else None
    return {"rows": rows, "best": best, "auto": auto,
            "auto_hit": best is not None and best == auto and auto in medians,
            "failed": sorted(errors)}


def time_layer(layer, repeat: int, phases: bool) -> dict:
    """Every CUDA algorithm that supports ``layer``, ``auto``'s choice and cuDNN, each timed
    (and checked against torch's float64 result) on its own: see :func:`time_candidates`."""
    from numba import cuda

    from fastconv._dispatch import algorithms as all_algorithms
    from fastconv._dispatch import auto_choice
    from fastconv.bench import cuda as bench

    f = front_end()
    p = layer.params(np.float32)
    names = [a for a in all_algorithms("cuda") if a not in ("auto", "winograd")]
    chosen, unsupported = bench._concrete(names, p)
    auto = auto_choice(p, "cuda")
    if auto not in chosen:
        chosen.append(auto)
    x, w, b = layer.arrays(np.float32, 0)
    kw = layer.conv_kwargs
    xd, wd, bd = cuda.to_device(x), cuda.to_device(w), cuda.to_device(b)
    yd = {n: cuda.device_array(p.output_shape, dtype=np.float32) for n in chosen}
    calls = {n: (lambda n: lambda: f(xd, wd, bd, algorithm=n, out=yd[n], **kw))(n) for n in chosen}
    torch, ref = bench._torch(), None
    if torch is not None:
        import torch.nn.functional as F

        tx, tw, tb = (torch.from_numpy(a).cuda() for a in (x, w, b))
        with torch.no_grad():
            ref = F.conv2d(tx.double(), tw.double(), tb.double(), **kw).cpu().numpy()

        def cudnn():
            with torch.no_grad():
                return F.conv2d(tx, tw, tb, **kw)
        calls[CUDNN] = cudnn

    def check(name, y):
        if ref is None:
            return float("nan")
        yh = to_host(y)
        return float(np.max(np.abs(yh - ref)) / (np.max(np.abs(ref)) or 1.0))

    measured, errors = time_candidates(calls, bench._Timer().per_call, repeat, check=check)
    out = layer_rows(layer.name, layer.N, p.flops, measured, errors, auto)
    out["unsupported"] = unsupported
    if phases:
        for r in out["rows"]:
            if r["algorithm"].startswith("winograd") and "error" not in r:
                try:
                    r["phases_ms"] = {k: v * 1e3 for k, v in
                                      bench.profile_phases(r["algorithm"], xd, wd, bd, layer).items()}
                except Exception as exc:
                    r["phases_error"] = f"{type(exc).__name__}: {exc}"[:500]
    return out


def time_suite(layer_names, batch, repeat, deadline, layers=None) -> dict:
    """Time the layers (default: all of conv_layers.json) at ``batch``; no new layer is started
    past ``deadline`` (seconds since the start of the script)."""
    from fastconv.bench.layers import select_layers

    if layers is None:
        layers = select_layers(layer_names) if layer_names else select_layers()
    done, skipped = [], []
    with cudnn_settings():
        for layer in layers:
            if elapsed() > deadline:
                skipped.append(layer.name)
                continue
            layer = layer.with_batch(batch)
            try:
                res = time_layer(layer, repeat, phases=layer.R == 3 and layer.stride == 1
                                 and layer.dilation == 1)
            except Exception as exc:  # the layer's setup failed: nothing of it was timed
                done.append({"layer": layer.name, "N": batch, "algorithm": None,
                             **error_entry(exc, "setup")})
                log(f"  N={batch} {layer.name:20s} FAILED {type(exc).__name__}: {exc}")
                continue
            done.extend(res["rows"])
            log("  " + layer_line(layer.name, batch, res))
    return {"batch": batch, "rows": done, "skipped_for_time": skipped}


def layer_line(name, batch, res) -> str:
    by = {r["algorithm"]: r for r in res["rows"] if "error" not in r}
    cud, best, auto = by.get(CUDNN), by.get(res["best"]), by.get(res["auto"])
    s = f"N={batch} {name:20s}"
    if best:
        s += f" best {best['algorithm']:18s} {best['tflops'] or 0:6.2f} TFLOP/s"
    if cud:
        s += f", cuDNN {cud['tflops'] or 0:6.2f} TFLOP/s"
    if best and cud:
        s += f", best/cuDNN {best['ratio_vs_cudnn'] or 0:5.2f}x"
    s += f", auto={res['auto']}{' (hit)' if res['auto_hit'] else ''}"
    if auto and cud:
        s += f" {auto['ratio_vs_cudnn'] or 0:5.2f}x cuDNN"
    for r in res["rows"]:
        if "error" in r:
            s += f"; {r['algorithm']} FAILED ({r['stage']}) {r['error'][:80]}"
        elif "phases_error" in r:
            s += f"; {r['algorithm']} phases failed: {r['phases_error'][:80]}"
    return s


def _geomean(values):
    values = [v for v in values if v is not None and v > 0]
    return float(np.exp(np.mean(np.log(values)))) if values else None


def summarise(timing: dict) -> dict:
    """Per-algorithm geometric-mean speed vs cuDNN, best per layer, auto's hits and its
    geometric mean vs cuDNN, and the failures, from a :func:`time_suite` result."""
    rows = [r for r in timing["rows"] if "error" not in r]
    per_alg: dict = {}
    for r in rows:
        if r["algorithm"] != CUDNN:
            per_alg.setdefault(r["algorithm"], []).append(r.get("ratio_vs_cudnn"))
    geo = {a: _geomean(v) for a, v in per_alg.items()}
    best = {}
    for r in rows:
        if r["algorithm"] == CUDNN:
            continue
        cur = best.get(r["layer"])
        if cur is None or r["median_ms"] < cur["median_ms"]:
            best[r["layer"]] = r
    auto = {r["layer"]: r for r in rows if r.get("auto")}
    auto_ratios = [r.get("ratio_vs_cudnn") for r in auto.values()]
    return {
        "geomean_ratio_vs_cudnn_per_algorithm": geo,
        "best_per_layer": {k: {"algorithm": v["algorithm"], "tflops": v["tflops"],
                               "ratio_vs_cudnn": v["ratio_vs_cudnn"]} for k, v in best.items()},
        "auto_hits": sum(k in auto and auto[k]["algorithm"] == v["algorithm"]
                         for k, v in best.items()),
        "auto_near_hits": sum(k in auto and auto[k]["median_ms"] <= 1.05 * v["median_ms"]
                              for k, v in best.items()),
        "auto_geomean_ratio_vs_cudnn": _geomean(auto_ratios),
        "auto_layers_vs_cudnn": sum(1 for v in auto_ratios if v is not None and v > 0),
        "layers": len(best),
        "layers_skipped_for_time": len(timing.get("skipped_for_time", ())),
        "failures": [{"layer": r["layer"], "algorithm": r.get("algorithm"), "stage": r.get("stage"),
                      "error": r["error"]} for r in timing["rows"] if "error" in r],
    }


# --- the targets ------------------------------------------------------------------------

SUITE_LAYERS = 18
AUTO_HITS_TARGET = 16
AUTO_B1_TARGET = 0.3


def compute_targets(report: dict) -> dict:
    """The issue's targets, each ``{value, target, met, note}``; ``met`` is None when the run
    did not measure enough to tell."""
    out = {}
    corr = report.get("correctness") or {}
    f = corr.get("failures")
    out["correctness_failures"] = {
        "value": f, "target": "0", "met": None if f is None else f == 0,
        "note": f"{corr.get('checks', 0)} checks"}

    rows = [r for r in report.get("overhead") or () if r.get("kind") == "torch"
            and r.get("algorithm") != CUDNN]
    ok = [r for r in rows if "error" not in r]
    failed = len(rows) - len(ok)
    worst = max(ok, key=lambda r: r["host_us"]) if ok else None
    out["worst_fastconv_host_overhead_us_torch"] = {
        "value": None if worst is None else round(worst["host_us"], 2),
        "target": f"<= {OVERHEAD_TARGET_US:g} us",
        "met": None if worst is None else bool(worst["host_us"] <= OVERHEAD_TARGET_US and not failed),
        "note": ("no fastconv call timed on torch CUDA tensors" if worst is None else
                 f"{worst['algorithm']} on {worst['problem']}; {len(ok)} rows"
                 + (f", {failed} calls failed" if failed else ""))}

    timing = report.get("timing") or {}
    s1 = timing.get("batch1_summary")
    g = None if s1 is None else s1.get("auto_geomean_ratio_vs_cudnn")
    out["auto_geomean_vs_cudnn_batch1"] = {
        "value": None if g is None else round(g, 4), "target": f">= {AUTO_B1_TARGET:g}x",
        "met": None if g is None else bool(g >= AUTO_B1_TARGET),
        "note": ("batch 1 not timed" if s1 is None else
                 f"over {s1['auto_layers_vs_cudnn']} layers (>1 = faster than cuDNN)")}

    s32 = timing.get("batch32_summary")
    if s32 is None:
        out["auto_hits_batch32"] = {"value": None, "target": f">= {AUTO_HITS_TARGET}/{SUITE_LAYERS}",
                                    "met": None, "note": "batch 32 not timed"}
    else:
        hits, n = s32["auto_hits"], s32["layers"]
        misses_allowed = SUITE_LAYERS - AUTO_HITS_TARGET
        met = True if hits >= AUTO_HITS_TARGET else False if n - hits > misses_allowed else None
        out["auto_hits_batch32"] = {
            "value": f"{hits}/{n}", "target": f">= {AUTO_HITS_TARGET}/{SUITE_LAYERS}", "met": met,
            "note": f"{n} of {SUITE_LAYERS} layers timed" + (", not enough to tell" if met is None
                                                             else "")}
    return out


def targets_lines(targets: dict) -> list:
    verdict = {True: "met", False: "MISSED", None: "n/a"}
    return [f"  {k:40s} {v['value']!s:>10}  (target {v['target']})  {verdict[v['met']]}"
            f"  [{v['note']}]" for k, v in targets.items()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"))
    ap.add_argument("--quick", action="store_true",
                    help="24 random configurations, 6 timing layers at each batch")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="stop starting new timing layers after this many seconds (default 300)")
    ap.add_argument("--configs", type=int, default=None, help="random configurations (default 48)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes and a tiny timing layer: a test of this script itself, e.g. "
                         "under NUMBA_ENABLE_CUDASIM=1 (timings are meaningless there)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_check.json")
    report = {"versions": versions(), "argv": sys.argv[1:] if argv is None else list(argv)}

    def save():
        report["wall_s"] = elapsed()
        with open(path, "w") as f:
            json.dump(report, f, indent=1, default=str)

    import fastconv.cuda as fc

    report["status"] = fc.status()
    log(f"fastconv.cuda.status(): {report['status']}")
    log(f"versions: {report['versions']}")
    if not report["status"]["available"]:
        save()
        print(f"CUDA backend unavailable: {report['status']['reason']}")
        return 2
    have_torch = False
    try:
        import torch
        have_torch = torch.cuda.is_available()
    except Exception:
        pass
    have_cupy = False
    try:
        import cupy  # noqa: F401
        have_cupy = True
    except Exception:
        pass
    kinds = ["numba"] + (["torch", "torch_channels_last"] if have_torch else []) \
        + (["cupy"] if have_cupy else [])
    report["input_kinds"] = kinds

    # 1. correctness
    n_cfg = args.configs or (24 if args.quick else 48)
    configs = random_configs(np.random.default_rng(2026), n_cfg, dim=5 if args.smoke else 40)
    log(f"correctness: {n_cfg} random configurations x supported algorithms, kinds {kinds}")
    results = check_random(configs, kinds, have_torch)
    special = check_special(args.smoke)
    bad = [r for r in results + special if not r.get("ok")]
    report["correctness"] = {"random": results, "special": special, "failures": len(bad),
                             "checks": len(results) + len(special)}
    log(f"correctness: {len(results) + len(special) - len(bad)}/{len(results) + len(special)} passed")
    for r in bad[:10]:
        log(f"  FAIL {json.dumps({k: v for k, v in r.items() if k != 'traceback'}, default=str)}")
    report["kernel_resources"] = kernel_resources()
    for r in report["kernel_resources"]:
        log(f"  {r['kernel']:28s} regs {r.get('registers')!s:>4} local {r.get('local_bytes')!s:>5} B "
            f"shared {r.get('shared_bytes')!s:>6} B  {r.get('constants')} {r.get('signature', '')[:50]}")
    save()
    if args.smoke:  # the simulator is slow, and its timings mean nothing anyway
        args.budget_s = max(args.budget_s, elapsed() + 600)

    # 2. per-call host overhead
    okinds = ["numba"] if args.smoke else \
        (["torch"] if have_torch else []) + ["numba"] + (["cupy"] if have_cupy else [])
    st = report["status"]
    log(f"overhead: host / wall us per call ({'3 calls' if args.smoke else '300 calls'} back to "
        f"back; fastconv target <= {OVERHEAD_TARGET_US:g} us host on torch tensors), kinds "
        f"{okinds}, on {st.get('device')} cc {st.get('compute_capability')} numba-cuda "
        f"{st.get('numba_cuda_version')}; status {st}")
    with cudnn_settings():
        rows, oskipped = overhead(okinds, number=3 if args.smoke else 300,
                                  warmup=1 if args.smoke else 3,
                                  problems=SMOKE_OVERHEAD_PROBLEMS if args.smoke else OVERHEAD_PROBLEMS,
                                  deadline=args.budget_s)
    report["overhead"] = rows
    report["overhead_skipped_for_time"] = oskipped
    for line in overhead_table(rows):
        log(line)
    save()

    # 3. batch 32, then 4. batch 1; batch 32 leaves part of the budget to batch 1
    quick_layers = ["lenet5_c3", "resnet50_stem", "resnet50_3x3_64", "resnet50_3x3_s2",
                    "resnet50_1x1_exp", "mobilenet_dw_s1"]
    layer_names = quick_layers if args.quick else None
    tiny = None
    if args.smoke:
        from fastconv.bench.layers import Layer
        tiny = [Layer("smoke_3x3", 1, 4, 5, 5, 4, 3, 3, padding=1),
                Layer("smoke_s2", 1, 3, 6, 6, 2, 3, 3, stride=2)]
    reserve_b1 = min(75.0, 0.3 * max(0.0, args.budget_s - elapsed()))
    report["timing"] = {}
    log(f"timing: batch {1 if args.smoke else 32} (TF32 off) until "
        f"{args.budget_s - reserve_b1:.0f} s ...")
    report["timing"]["batch32"] = time_suite(layer_names, 1 if args.smoke else 32,
                                             1 if args.smoke else 5,
                                             args.budget_s - reserve_b1, layers=tiny)
    report["timing"]["batch32_summary"] = summarise(report["timing"]["batch32"])
    save()
    log(f"timing: batch 1 until {args.budget_s:.0f} s ...")
    report["timing"]["batch1"] = time_suite(layer_names, 1, 1 if args.smoke else 5, args.budget_s,
                                            layers=tiny[:1] if tiny else None)
    report["timing"]["batch1_summary"] = summarise(report["timing"]["batch1"])
    for b in ("batch32", "batch1"):
        s = report["timing"][f"{b}_summary"]
        log(f"summary {b}: {s['layers']} layers timed, {s['layers_skipped_for_time']} skipped for "
            f"time, {len(s['failures'])} failed candidates; auto hits {s['auto_hits']}/{s['layers']}; "
            f"geomean vs cuDNN {json.dumps(s['geomean_ratio_vs_cudnn_per_algorithm'])}")

    report["targets"] = compute_targets(report)
    save()
    log("targets:")
    for line in targets_lines(report["targets"]):
        print(line, flush=True)
    log(f"wrote {path}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
