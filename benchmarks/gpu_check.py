#!/usr/bin/env python3
"""One-shot GPU check of fastconv's CUDA backend: correctness, then speed against cuDNN.

Written in a session without a GPU, for the first session that has one.  It
must finish in under 6 minutes on one H100 including numba-cuda's JIT (it
watches its own clock and skips the remaining timing layers past
``--budget-s``).  Everything it finds goes to ``$OUT/gpu_check.json``; a
summary goes to stdout.

How to run it with the device tool
----------------------------------
numba-cuda 0.30 cannot compile kernels with numpy >= 2.5 (``module 'numpy'
has no attribute 'row_stack'``) and the device machine has numpy 2.5.2, so
carry numpy 2.4.4 for its Python 3.12.  On this (CPU) machine, from the
repository root, once (``.whl/`` is git-ignored)::

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

``--quick`` halves the random configurations and times 6 layers only (for a
rerun with little device time left).

What it checks
--------------
1. Environment: fastconv.cuda.status() (device, compute capability,
   numba-cuda version), numpy/torch/cupy versions.
2. Differential correctness of every CUDA algorithm on seeded random
   configurations (stride, asymmetric padding, dilation, groups, depthwise,
   NCHW/NHWC, float32/float64, bias, unbatched) against torch's float64
   convolution on the GPU, with the test suite's tolerance table; input kinds
   rotate through numba arrays, torch tensors (also channels_last, i.e.
   non-contiguous, and on a non-default stream) and CuPy arrays when
   installed, and the result's kind is checked.  NaN/inf propagation and
   ``out=`` are checked against fastconv.reference on small shapes.
3. Registers, local memory (spills) and shared memory of every compiled
   kernel, from numba-cuda.
4. The benchmark suite (18 layers of ``conv_layers.json``) at batch 32 and
   batch 1: median time of every algorithm and of cuDNN (TF32 off,
   cudnn.benchmark=True) with CUDA events, TFLOP/s, ratio to cuDNN, Winograd
   phases, and how often ``auto`` picked the fastest.

Exit status: 0 when every correctness check passed, 1 otherwise (timings are
reported either way), 2 when the CUDA backend cannot run at all.
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


def conv2d(*args, **kwargs):
    """The public front end; under the simulator (a smoke test of this script) fastconv.cuda's,
    because fastconv.conv2d does not recognise the simulator's arrays as device arrays."""
    import fastconv
    import fastconv.cuda

    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        return fastconv.cuda.conv2d(*args, **kwargs)
    return fastconv.conv2d(*args, **kwargs)


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


# --- timing ---------------------------------------------------------------------------------------

def time_suite(layer_names, batch, repeat, budget_s, layers=None) -> dict:
    from fastconv.bench.layers import select_layers
    from fastconv.cuda import bench

    if layers is None:
        layers = select_layers(layer_names) if layer_names else select_layers()
    done, skipped = [], []
    for layer in layers:
        if elapsed() > budget_s:
            skipped.append(layer.name)
            continue
        try:
            res = bench.run_suite([layer], repeat=repeat, batch=batch,
                                  phases=layer.R == 3 and layer.stride == 1)
            done.extend(bench.rows(res))
            r = res.layers[0]
            cud = r.measurements.get(bench.CUDNN)
            best = r.measurements[r.best]
            log(f"  N={batch} {layer.name:20s} best {r.best:18s} {best.gflops / 1e3:6.2f} TFLOP/s"
                + (f", cuDNN {cud.gflops / 1e3:6.2f} TFLOP/s, best/cuDNN {cud.median / best.median:5.2f}x"
                   if cud else "") + f", auto={r.auto}{' (hit)' if r.auto_hit else ''}")
        except Exception as exc:
            done.append({"layer": layer.name, "N": batch, "error": f"{type(exc).__name__}: {exc}",
                         "traceback": traceback.format_exc()[-2000:]})
            log(f"  {layer.name}: FAILED {type(exc).__name__}: {exc}")
    return {"batch": batch, "rows": done, "skipped_for_time": skipped}


def summarise(timing: dict) -> dict:
    rows = [r for r in timing["rows"] if "error" not in r]
    per_alg: dict = {}
    for r in rows:
        if r["algorithm"] != "cudnn" and r.get("ratio_vs_cudnn"):
            per_alg.setdefault(r["algorithm"], []).append(r["ratio_vs_cudnn"])
    geo = {a: float(np.exp(np.mean(np.log(v)))) for a, v in per_alg.items()}
    best = {}
    for r in rows:
        if r["algorithm"] == "cudnn":
            continue
        cur = best.get(r["layer"])
        if cur is None or r["median_ms"] < cur["median_ms"]:
            best[r["layer"]] = r
    auto = {r["layer"]: r["algorithm"] for r in rows if r.get("auto")}
    return {
        "geomean_ratio_vs_cudnn_per_algorithm": geo,
        "best_per_layer": {k: {"algorithm": v["algorithm"], "tflops": v["tflops"],
                               "ratio_vs_cudnn": v["ratio_vs_cudnn"]} for k, v in best.items()},
        "auto_hits": sum(auto.get(k) == v["algorithm"] for k, v in best.items()),
        "layers": len(best),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-check-out"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="stop starting new timing layers after this many seconds (default 300)")
    ap.add_argument("--configs", type=int, default=None, help="random configurations (default 48)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes and a tiny timing layer: a test of this script itself, e.g. "
                         "under NUMBA_ENABLE_CUDASIM=1 (timings are meaningless there)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "gpu_check.json")
    report = {"versions": versions(), "argv": sys.argv[1:]}

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
    kinds = ["numba"]
    if have_torch:
        kinds += ["torch", "torch_channels_last"]
    try:
        import cupy  # noqa: F401
        kinds.append("cupy")
    except Exception:
        pass
    report["input_kinds"] = kinds

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

    quick_layers = ["lenet5_c3", "resnet50_stem", "resnet50_3x3_64", "resnet50_3x3_s2",
                    "resnet50_1x1_exp", "mobilenet_dw_s1"]
    layer_names = quick_layers if args.quick else None
    report["timing"] = {}
    log("timing: batch 32 (TF32 off) ...")
    tiny = None
    if args.smoke:
        from fastconv.bench.layers import Layer
        tiny = [Layer("smoke_3x3", 1, 4, 5, 5, 4, 3, 3, padding=1),
                Layer("smoke_s2", 1, 3, 6, 6, 2, 3, 3, stride=2)]
        args.budget_s = max(args.budget_s, elapsed() + 600)
    report["timing"]["batch32"] = time_suite(layer_names, 1 if args.smoke else 32, 1 if args.smoke else 5,
                                             args.budget_s, layers=tiny)
    report["timing"]["batch32_summary"] = summarise(report["timing"]["batch32"])
    save()
    if elapsed() < args.budget_s and not args.smoke:
        log("timing: batch 1 ...")
        report["timing"]["batch1"] = time_suite(layer_names or quick_layers, 1, 5, args.budget_s + 30)
        report["timing"]["batch1_summary"] = summarise(report["timing"]["batch1"])
        save()
    log(f"summary batch 32: {json.dumps(report['timing']['batch32_summary']['geomean_ratio_vs_cudnn_per_algorithm'])}")
    log(f"wrote {path}")
    return 0 if not bad else 1


if __name__ == "__main__":
    sys.exit(main())
