"""Command line: ``python -m fastconv {info,check,bench}``."""

from __future__ import annotations

import argparse
import platform
import sys
import time

import numpy as np


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def info(argv=None) -> int:
    """Print versions, CPU features, threading, algorithms and CUDA status."""
    import numba
    import scipy

    import fastconv
    from fastconv import _config

    print(f"fastconv        {fastconv.__version__}")
    print(f"python          {platform.python_version()} ({platform.machine()})")
    print(f"numpy           {np.__version__}")
    print(f"scipy           {scipy.__version__}")
    print(f"numba           {numba.__version__}")
    print(f"cpu             {_cpu_model()}")
    try:
        from numba.misc.numba_sysinfo import get_sysinfo
        feats = get_sysinfo().get("CPU Features", "")
        wanted = [f for f in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl") if f in feats.split()]
        print(f"cpu features    {' '.join(wanted) or '(none of avx2/fma/avx512)'} "
              f"(LLVM target: {numba.config.CPU_NAME or 'host'})")
    except Exception as exc:  # sysinfo is best-effort
        print(f"cpu features    unknown ({exc})")
    from fastconv.cpu.target import detect
    t = detect()
    print(f"kernel target   {t.cpu} ({t.isa}): {t.vector_bytes}-byte vectors, {t.registers} registers")
    print(f"threading layer {_config.THREADING_LAYER} (configured), threads {numba.get_num_threads()}")
    print(f"fastmath        {_config.FASTMATH}; cache {_config.CACHE}; "
          f"workspace {_config.CPU.workspace_bytes // 2**20} MiB")
    print(f"algorithms      {', '.join(fastconv.algorithms())}")
    from threadpoolctl import threadpool_info
    for pool in threadpool_info():
        print(f"blas            {pool.get('internal_api')} {pool.get('version')} "
              f"kernel={pool.get('architecture')} threads={pool.get('num_threads')}")
    try:
        from fastconv import cuda
        st = cuda.status()
        if st.get("available"):
            print(f"cuda            available: {st.get('device')} (cc {st.get('compute_capability')}), "
                  f"numba-cuda {st.get('numba_cuda_version')}")
            print(f"cuda algorithms {', '.join(fastconv.algorithms('cuda'))}")
        else:
            print(f"cuda            not available: {st.get('reason')}")
    except Exception as exc:
        print(f"cuda            not available: {type(exc).__name__}: {exc}")
    return 0


# Representative layers for the self-test: (name, x shape, w shape, kwargs).
CHECK_LAYERS = [
    ("lenet5_c3", (8, 6, 14, 14), (16, 6, 5, 5), {}),
    ("resnet_3x3", (2, 64, 14, 14), (64, 64, 3, 3), {"padding": 1}),
    # deep and small: F(2x2) transforms its kernels inside the products (winograd.vec's stream)
    ("deep_7x7", (1, 256, 7, 7), (256, 256, 3, 3), {"padding": 1}),
    ("strided_asym", (2, 16, 15, 17), (32, 16, 3, 3), {"stride": 2, "padding": ((0, 1), (1, 2))}),
    ("dilated_same", (1, 8, 20, 20), (8, 8, 3, 3), {"dilation": 2, "padding": "same"}),
    ("depthwise", (2, 32, 28, 28), (32, 1, 3, 3), {"padding": 1, "groups": 32}),
    ("pointwise", (2, 128, 14, 14), (64, 128, 1, 1), {}),
]


def check(argv=None) -> int:
    """Every algorithm on representative layers vs the float64 reference."""
    import fastconv
    from fastconv import accuracy, reference
    from fastconv._dispatch import get
    from fastconv._params import normalize

    argv = list(argv or [])
    if "--cuda-compile" in argv:
        from fastconv.cuda.compile_check import main as compile_main
        return compile_main([a for a in argv if a != "--cuda-compile"])
    ap = argparse.ArgumentParser(prog="python -m fastconv check",
                                 description="Self-test: every algorithm against the float64 "
                                             "reference.  With --cuda-compile: compile every CUDA "
                                             "kernel without a GPU (see python -m fastconv check "
                                             "--cuda-compile --help).")
    ap.add_argument("--dtype", choices=["float32", "float64", "both"], default="both")
    ap.add_argument("--cuda-compile", action="store_true",
                    help="compile every CUDA kernel to PTX (and assemble it) instead")
    args = ap.parse_args(argv)
    dtypes = ["float32", "float64"] if args.dtype == "both" else [args.dtype]
    rng = np.random.default_rng(2024)
    failures = 0
    print(f"{'layer':<14}{'dtype':<9}{'algorithm':<19}{'max |err|':>11}{'max err/bound':>15}"
          f"{'rel err':>11}{'ms':>9}  result")
    for name, xs, ws, kw in CHECK_LAYERS:
        x64 = rng.standard_normal(xs)
        w64 = rng.standard_normal(ws) / np.sqrt(np.prod(ws[1:]))
        b64 = rng.standard_normal(ws[0])
        ref = reference.conv2d(x64, w64, b64, **kw)
        for dt in dtypes:
            x, w, b = (a.astype(dt) for a in (x64, w64, b64))
            p = normalize(x.shape, w.shape, b.shape, np.dtype(dt), **kw)
            for alg in fastconv.algorithms():
                if alg in ("auto", "tuned", "winograd") or get("cpu", alg).supports(p) is not None:
                    continue
                fastconv.conv2d(x, w, b, algorithm=alg, **kw)  # compile outside the timing
                t0 = time.perf_counter()
                y = fastconv.conv2d(x, w, b, algorithm=alg, **kw)
                ms = (time.perf_counter() - t0) * 1e3
                err = np.abs(y.astype(np.float64) - ref)
                bound = accuracy.error_bound(alg, x, w, b, **kw)
                ratio = float(np.max(err / np.maximum(bound, np.finfo(np.float64).tiny)))
                rel = float(np.linalg.norm(err) / np.linalg.norm(ref))
                ok = bool(np.all(np.isfinite(y))) and ratio <= 1.0
                failures += not ok
                print(f"{name:<14}{dt:<9}{alg:<19}{err.max():>11.2e}{ratio:>15.3g}{rel:>11.2e}"
                      f"{ms:>9.2f}  {'ok' if ok else 'FAIL'}")
    print(f"\n{'all within bounds' if not failures else f'{failures} result(s) broke their bound'}"
          " (bound: fastconv.accuracy.error_bound; err/bound must be <= 1)")
    return 1 if failures else 0


def bench(argv=None) -> int:
    try:
        from fastconv.bench.cli import main as bench_main
    except ImportError as exc:
        print(f"the benchmark runner is not available: {exc}", file=sys.stderr)
        return 2
    return bench_main(list(argv or []))


def calibrate(argv=None) -> int:
    """Measure the cost model's machine constants and store them (fastconv.cpu.cost)."""
    import time

    from fastconv.cpu import cost
    from fastconv.tuning import cache_path

    if argv:
        print("usage: python -m fastconv calibrate", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    m = cost.calibrate(store=True)
    print(f"target {m.isa}: {m.fma_rate / 1e9:.1f} G float32 multiply-adds/s per thread, "
          f"{m.bandwidth / 1e9:.1f} GB/s, {m.call_s * 1e6:.1f} us per call, "
          f"{m.pass_s * 1e6:.2f} us per parallel loop, {m.cache_bytes // 2**20} MiB cache")
    print(f"stored in {cache_path()} ({time.perf_counter() - t0:.1f} s)")
    return 0


def warmup(argv=None) -> int:
    """Compile the common CPU kernels into Numba's on-disk cache, in parallel processes."""
    import argparse

    from fastconv._warmup import warmup as run

    ap = argparse.ArgumentParser(prog="python -m fastconv warmup",
                                 description="compile the common CPU kernels into the cache")
    ap.add_argument("--jobs", type=int, default=None,
                    help="worker processes (default: the CPU count)")
    ap.add_argument("--dtype", choices=("float32", "float64", "both"), default="both")
    args = ap.parse_args(argv or [])
    if args.jobs is not None and args.jobs < 1:
        ap.error("--jobs must be >= 1")
    dtypes = ("float32", "float64") if args.dtype == "both" else (args.dtype,)
    r = run(jobs=args.jobs, dtypes=dtypes)
    print(f"compiled {r['tasks']} tasks in {r['jobs']} processes: {r['parallel_s']:.1f} s; "
          f"checked serially: {r['serial_s']:.1f} s")
    return 0


COMMANDS = {"info": info, "check": check, "bench": bench, "calibrate": calibrate,
            "warmup": warmup}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: python -m fastconv {info,check,bench,calibrate,warmup} [options]\n\n"
              "  info   versions, CPU features, threading layer, algorithms, CUDA status\n"
              "  check  self-test: every algorithm vs the float64 reference, with error bounds\n"
              "         (--cuda-compile: compile every CUDA kernel without a GPU)\n"
              "  bench  the benchmark suite against PyTorch (see --help)\n"
              "  calibrate  measure the machine constants of auto's cost model and store them\n"
              "  warmup     compile the common CPU kernels into the cache, in parallel processes")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
