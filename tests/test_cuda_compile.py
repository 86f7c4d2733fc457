"""``python -m fastconv check --cuda-compile``: every CUDA kernel compiled under real typing.

numba's CUDA simulator never type-checks a kernel, so these tests compile
every specialisation the dispatcher can launch to PTX with NVVM (no GPU
needed; the ``test`` extra installs numba-cuda's CUDA 13 compiler libraries
and ``ptxas``), and check what the fast launcher relies on: one 8-byte
parameter per packed word.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0"),
    reason="compiling needs the real CUDA target, not the simulator")


@pytest.mark.subprocess
def test_every_kernel_compiles_for_sm80_and_sm90(tmp_path):
    from fastconv.cuda.compile_check import specializations

    out = tmp_path / "compile.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FASTCONV_CUDA_")}
    proc = subprocess.run([sys.executable, "-m", "fastconv", "check", "--cuda-compile",
                           "--json", str(out)], capture_output=True, text=True, timeout=1200,
                          env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    rows = json.loads(out.read_text())
    specs = specializations()
    assert len(rows) == 2 * len(specs)
    assert {r["cc"] for r in rows} == {"80", "90"}
    assert {r["kernel"] for r in rows} >= {
        "direct_tiled_kernel", "direct_global_kernel", "implicit_gemm_kernel",
        "splitk_bias_kernel", "winograd_weight_kernel", "winograd_input_kernel",
        "winograd_gemm_kernel", "winograd_output_kernel", "copy4d_kernel", "mask_weights_kernel"}
    assert all(r["ok"] for r in rows)
    for r in rows:  # ptxas ran: registers are reported, and blocked kernels stay in registers
        assert isinstance(r["registers"], int) and 0 < r["registers"] <= 255, r
        if r["register_blocked"]:
            assert r["stack_bytes"] == r["spill_store_bytes"] == r["spill_load_bytes"] == 0, r


def test_the_parameter_check_catches_a_launcher_mismatch():
    """A 32-bit scalar parameter is not what the launcher packs: the check must say so."""
    from numba import types

    from fastconv.cuda._runtime import KernelSpec, array_type, bind_cuda
    from fastconv.cuda.compile_check import check_abi

    cuda = bind_cuda({})

    def narrow_kernel(a, n):
        i = cuda.grid(1)
        if i < n:
            a[i] = 0

    good = KernelSpec(narrow_kernel, (array_type(np.float32), types.int64))
    check_abi(good, good.ptx((9, 0)))
    bad = KernelSpec(narrow_kernel, (array_type(np.float32), types.int32))
    with pytest.raises(RuntimeError, match="differ from"):
        check_abi(bad, bad.ptx((9, 0)))


def test_shared_array_shapes_must_be_constants():
    """The hardware typing rejects what the simulator accepts (the implicit-GEMM bug)."""
    from numba import types

    from fastconv.cuda._runtime import KernelSpec, array_type, bind_cuda

    cuda = bind_cuda({})
    BM = 32

    def expression_shape_kernel(a, n):
        s = cuda.shared.array((8, BM + 1), types.float32)
        i = cuda.grid(1)
        if i < n:
            s[0, 0] = 1
            a[i] = s[0, 0]

    spec = KernelSpec(expression_shape_kernel, (array_type(np.float32), types.int64))
    with pytest.raises(Exception, match="shared.array"):
        spec.ptx((9, 0))


def test_launcher_packs_numba_kernel_arguments():
    """Arrays as meminfo, parent, size, itemsize, data, shape..., strides...; ints as one word."""
    from fastconv.cuda._runtime import KernelSpec, _pack, arg_types, array_type
    from fastconv.cuda._views import DevView

    def k(a, n, b):  # never compiled: only its argument list matters
        pass

    spec = KernelSpec(k, arg_types(k, a=array_type(np.float32), b=array_type(np.float64, 4, "A")))
    a = DevView(0x1000, (12,), None, np.float32)
    b = DevView(0x8000, (2, 3, 4, 5), None, np.float64).permute((0, 2, 3, 1))
    words = _pack(spec, (a, 7, b))
    assert words == [0, 0, 12, 4, 0x1000, 12, 4,
                     7,
                     0, 0, 120, 8, 0x8000, 2, 4, 5, 3, 480, 40, 8, 160]
    assert len(words) == spec.launch_words()
    assert all(type(w) is int for w in words)
