"""What the benchmark ran on: CPU, threads, library versions, BLAS kernel.

:func:`machine_info` returns pytest-benchmark's ``machine_info`` fields
(``node``, ``processor``, ``machine``, ``python_*``, ``system``, ``cpu``)
plus a ``fastconv`` section with what decides convolution speed: the CPU
model and core count, the Numba threading layer and thread count, numpy /
numba / scipy / torch versions, the BLAS library and the kernel it
selected (``threadpoolctl.threadpool_info()``), and whether
``OPENBLAS_CORETYPE`` forces a kernel.
"""

from __future__ import annotations

import os
import platform
import sys

#: Environment variables that change BLAS speed; recorded and warned about.
BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
            "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER")


def cpu_model() -> str:
    """The CPU model string (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            import subprocess
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.processor()
        except Exception:
            pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_flags() -> list:
    """SIMD flags that matter for the kernels (avx2, avx512f, fma, ...)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return sorted(flags & {"avx", "avx2", "fma", "avx512f", "avx512bw",
                                           "avx512vl", "avx512_bf16", "avx512_fp16", "amx_tile"})
    except OSError:
        pass
    return []


def blas_info() -> list:
    """BLAS libraries loaded by numpy: threadpoolctl's view, else ``numpy.show_config``."""
    from threadpoolctl import threadpool_info

    info = [dict(d) for d in threadpool_info() if d.get("user_api") == "blas"]
    if info:
        return info
    try:  # threadpoolctl found no BLAS library: what numpy was built with
        import numpy as np
        cfg = np.show_config(mode="dicts")
        blas = cfg.get("Build Dependencies", {}).get("blas", {})
        return [{"internal_api": blas.get("name"), "version": blas.get("version"),
                 "architecture": None, "source": "numpy.show_config (threadpoolctl found no BLAS)"}]
    except Exception:
        return []


def load_average():
    """1-minute load average (None where the OS has none): other work skews every timing."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def load_warning(load=None):
    """A warning when other processes keep the CPUs busy (load above half the cores), else None."""
    load = load_average() if load is None else load
    cpus = os.cpu_count() or 1
    if load is not None and load > 0.5 * cpus:
        return (f"the 1-minute load average is {load:.1f} on {cpus} CPUs: other processes are "
                f"running and the timings are slowed and noisy (ratios measured in the same "
                f"run are affected less than absolute GFLOP/s)")
    return None


def blas_warnings() -> list:
    """Human-readable warnings about settings that slow BLAS down."""
    out = []
    core = os.environ.get("OPENBLAS_CORETYPE")
    if core:
        out.append(f"OPENBLAS_CORETYPE={core} is set: OpenBLAS uses the {core} kernel instead of "
                   f"the best one for this CPU, which can halve GEMM speed (im2col, Winograd and "
                   f"the numpy peer). Run with `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`.")
    return out


def _version(module: str):
    try:
        mod = __import__(module)
    except Exception:
        return None
    return getattr(mod, "__version__", None)


def fastconv_info(threads=None, torch_threads=None) -> dict:
    import numba

    import fastconv
    from .. import _config

    return {
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "numba_threading_layer": _threading_layer(),
        "numba_threads": numba.get_num_threads() if threads is None else int(threads),
        "torch_threads": torch_threads,
        "versions": {"fastconv": fastconv.__version__, "numpy": _version("numpy"),
                     "numba": numba.__version__, "scipy": _version("scipy"),
                     "torch": _version("torch") if "torch" in sys.modules else None,
                     "python": platform.python_version()},
        "fastmath": _config.FASTMATH,
        "blas": blas_info(),
        "env": {k: os.environ.get(k) for k in BLAS_ENV},
        "load_average_1min": load_average(),
        "warnings": blas_warnings() + [w for w in (load_warning(),) if w],
    }


def _threading_layer() -> str:
    import numba

    try:
        return numba.threading_layer()  # only valid after a parallel kernel ran
    except Exception:
        return f"{numba.config.THREADING_LAYER} (configured)"


def machine_info(threads=None, torch_threads=None) -> dict:
    """pytest-benchmark-compatible ``machine_info`` plus a ``fastconv`` section."""
    impl = platform.python_implementation()
    info = {
        "node": platform.node(),
        "processor": platform.processor(),
        "machine": platform.machine(),
        "python_compiler": platform.python_compiler(),
        "python_implementation": impl,
        "python_implementation_version": platform.python_version(),
        "python_version": platform.python_version(),
        "python_build": list(platform.python_build()),
        "release": platform.release(),
        "system": platform.system(),
        "cpu": {"brand_raw": cpu_model(), "count": os.cpu_count(), "arch": platform.machine(),
                "flags": cpu_flags()},
    }
    info["fastconv"] = fastconv_info(threads, torch_threads)
    return info


def commit_info() -> dict:
    """pytest-benchmark's ``commit_info`` of the current directory's repository (if any)."""
    try:
        from pytest_benchmark.utils import get_commit_info
        return get_commit_info()
    except Exception as exc:
        return {"id": None, "dirty": None, "error": f"{type(exc).__name__}: {exc}"}
