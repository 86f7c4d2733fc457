"""fastconv.cuda without kernels (registration, auto rule, status, errors), and the simulator run.

The kernel tests live in ``test_cuda_kernels.py``.  They run in-process on a
GPU or when ``NUMBA_ENABLE_CUDASIM=1`` is already set.  Otherwise (CI, no
GPU) :func:`test_kernels_under_the_simulator` runs that file in a subprocess
with numba's CUDA simulator on and the block sizes shrunk (``SIM_ENV``), so
multi-block grids, partial tiles and several shared-memory slices per output
run on tiny shapes.  A subprocess is the robust way: the simulator must be
chosen before ``numba.cuda`` is first imported, and other test modules may
import it first.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import CudaUnavailableError

# Block sizes of the simulator run: 4x4 threads, 2x2 register tiles, K-slices of 4, 2 output
# channels per direct thread, so the test shapes below span several blocks in every grid axis.
SIM_ENV = {
    "NUMBA_ENABLE_CUDASIM": "1",
    "FASTCONV_CUDA_BLOCK": "4",
    "FASTCONV_CUDA_REGTILE": "2",
    "FASTCONV_CUDA_BK": "4",
    "FASTCONV_CUDA_DIRECT_K": "2",
    "FASTCONV_CUDA_DIRECT_Q": "2",
    "FASTCONV_CUDA_WORKSPACE_MB": "1",
}
ALGORITHMS = ("direct", "im2col", "winograd_f2x2_3x3", "winograd_f4x4_3x3")


def _mode() -> str:
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"):
        return "sim"
    try:
        import numba.cuda  # noqa: F401
    except Exception:
        return "none"
    import fastconv.cuda

    return "gpu" if fastconv.cuda.status()["available"] else "subprocess"


MODE = _mode()
KERNEL_TESTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_cuda_kernels.py")


# --- every mode -------------------------------------------------------------------------------

def test_import_and_registry_need_no_gpu():
    import fastconv.cuda as fc

    names = fastconv.algorithms("cuda")
    assert set(ALGORITHMS) | {"auto", "winograd"} == set(names)
    st = fc.status()
    assert {"available", "reason", "device", "compute_capability", "numba_cuda_version"} <= set(st)
    assert isinstance(st["available"], bool) and isinstance(st["reason"], str) and st["reason"]


@pytest.mark.parametrize("x_shape, w_shape, kw, expected", [
    ((32, 256, 56, 56), (256, 256, 3, 3), {"padding": 1}, "winograd_f4x4_3x3"),  # 59 GMAC
    ((1024, 512, 3, 3), (512, 512, 3, 3), {"padding": 1}, "winograd_f2x2_3x3"),  # 3x3 outputs
    ((32, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}, "im2col"),  # 3.7 GMAC: too little for Winograd
    ((32, 128, 56, 56), (128, 128, 3, 3), {"padding": 1, "stride": 2}, "im2col"),
    ((32, 64, 56, 56), (256, 64, 1, 1), {}, "im2col"),
    ((32, 32, 112, 112), (32, 1, 3, 3), {"padding": 1, "groups": 32}, "direct"),  # depthwise
    ((1, 512, 3, 3), (512, 512, 3, 3), {"padding": 1}, "direct"),  # 0.02 GMAC: one launch wins
])
def test_auto_rule(x_shape, w_shape, kw, expected):
    from fastconv._params import normalize
    from fastconv.cuda import auto_rule

    p = normalize(x_shape, w_shape, None, np.float32, **kw)
    assert auto_rule(p) == expected


class _FakeDeviceArray:
    """Says it lives on a GPU; enough to reach the availability check."""

    def __init__(self, shape):
        self.shape = shape
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (0, False),
                                         "version": 3, "strides": None}


def test_unavailable_cuda_is_a_clear_error(monkeypatch):
    from fastconv.cuda import _runtime

    monkeypatch.setitem(_runtime._state, "info", {
        "available": False, "reason": "numba-cuda is not installed; pip install 'fastconv[cuda]'",
        "device": None, "compute_capability": None, "numba_cuda_version": None, "simulator": False})
    x, w = _FakeDeviceArray((1, 1, 4, 4)), _FakeDeviceArray((1, 1, 3, 3))
    with pytest.raises(CudaUnavailableError, match=r"fastconv\[cuda\]"):
        fastconv.cuda.conv2d(x, w)
    # Mixed host/device is reported before availability: it is the caller's mistake either way.
    with pytest.raises(TypeError, match=r"x \(.*\) on the GPU but w \(numpy.ndarray\) on the host"):
        fastconv.cuda.conv2d(x, np.ones((1, 1, 3, 3), np.float32))


@pytest.mark.subprocess
@pytest.mark.skipif(MODE != "subprocess", reason="runs only where no GPU or simulator is active")
def test_kernels_under_the_simulator():
    env = dict(os.environ, **SIM_ENV)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.path.dirname(__file__),
                                                    env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
           "--rootdir", os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
           KERNEL_TESTS]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, f"simulator run failed:\n{tail}"
    assert " passed" in proc.stdout and " failed" not in proc.stdout, tail


def test_implicit_gemm_plan(monkeypatch):
    """Row tiles follow Kg; split-K only when the grid would leave SMs idle."""
    from fastconv._params import normalize
    from fastconv.cuda import implicit_gemm
    from fastconv.cuda._runtime import SETTINGS

    monkeypatch.setattr(implicit_gemm, "_sm_count", lambda device=0: 132)
    monkeypatch.setattr(SETTINGS, "block", 16)
    monkeypatch.setattr(SETTINGS, "regtile", 8)
    monkeypatch.setattr(SETTINGS, "bk", 8)
    monkeypatch.setattr(SETTINGS, "splitk", 0)
    small = normalize((1, 512, 7, 7), (512, 512, 3, 3), None, np.float32, padding=1)
    pl = implicit_gemm.plan(small)
    RTM, splits, kchunk = pl.RTM, pl.splits, pl.kchunk
    assert RTM == 8 and 1 < splits <= 32 and kchunk % 8 == 0 and splits * kchunk >= 512 * 9
    big = normalize((32, 64, 56, 56), (64, 64, 3, 3), None, np.float32, padding=1)
    pl = implicit_gemm.plan(big)
    assert (pl.RTM, pl.splits) == (4, 1)  # 64 channels: 64-row tiles, no split
    assert implicit_gemm.plan(normalize((32, 3, 9, 9), (6, 3, 3, 3), None, np.float32)).RTM == 2


def test_arguments_on_different_gpus_are_an_error():
    from types import SimpleNamespace

    from fastconv.cuda._arrays import check_same_gpu

    Tensor = type("Tensor", (), {"__module__": "torch"})  # stands in for torch tensors
    a, b = Tensor(), Tensor()
    a.device, b.device = SimpleNamespace(index=0), SimpleNamespace(index=1)
    with pytest.raises(ValueError, match=r"x on cuda:0, w on cuda:1"):
        check_same_gpu({"x": a, "w": b, "bias": None})
    check_same_gpu({"x": a, "w": a, "bias": None})
