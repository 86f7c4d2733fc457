"""fastconv.cpu.target: the compile target's vector width and register count, and the register
blocking every CPU kernel derives from them; the kernels' results on an AVX2 target."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from fastconv.cpu import simd, target

#: Numba compiles for AVX2 (8 float32 lanes, 16 registers) on any x86-64 host with these.
AVX2_ENV = {"NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}


def _run(code: str, env: dict) -> str:
    full = dict(os.environ, **env)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full,
                         capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-4000:]
    return out.stdout


def test_this_process_target_is_the_simd_width():
    t = target.detect()
    assert t.vector_bytes in (16, 32, 64) and t.registers in (16, 32)
    assert simd.VECTOR_BYTES == t.vector_bytes
    assert simd.lanes(np.float32) == t.lanes(np.float32) == t.vector_bytes // 4
    assert simd.ACCUMULATORS == t.registers * 3 // 4


_BLOCKING = """
    import json
    import numpy as np
    from fastconv._params import normalize
    from fastconv.cpu import _gemm, simd
    from fastconv.cpu.direct import blocked, pointwise, width
    from fastconv.cpu.winograd import few, stream
    t = simd.TARGET
    print(json.dumps(dict(isa=t.isa, vector_bytes=t.vector_bytes, registers=t.registers,
                          npx={str(k): v for k, v in blocked.BLOCKED_NPX.items()},
                          panel=[_gemm.PANEL_ROWS, _gemm.PANEL_VECS], pointwise=[pointwise.NK, pointwise.NV],
                          width=width.MAX_ACCUMULATORS, stream4=stream.STREAM4_TILES, few=few.NK,
                          # the output-channel blocking chosen for 1 to 10 blocks of V channels
                          nkb=[blocked._blocked_plan(normalize((1, 32, 8, 8), (kb * t.lanes(np.float32),
                               32, 3, 3), None, np.float32, padding=1), 1).NKB
                               for kb in range(1, 11)])))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="the AVX2 target is an x86-64 CPU")
@pytest.mark.subprocess
@pytest.mark.parametrize("env, expect", [
    (AVX2_ENV, dict(isa="avx2", vector_bytes=32, registers=16,
                    npx={"1": [12, 10, 8], "2": [6, 5, 4], "4": [2, 1]}, panel=[4, 2],
                    pointwise=[4, 3], width=16, stream4=1, few=1,
                    nkb=[1, 2, 2, 2, 2, 2, 2, 2, 2, 2])),
    ({"NUMBA_CPU_NAME": "skylake-avx512", "NUMBA_CPU_FEATURES": ""},
     dict(isa="avx512", vector_bytes=64, registers=32,
          npx={"1": [24, 20, 16], "2": [10, 8, 6], "4": [6, 5, 4]}, panel=[6, 4],
          pointwise=[4, 6], width=16, stream4=4, few=4,
          nkb=[1, 2, 1, 4, 1, 2, 1, 4, 1, 2])),
], ids=["avx2", "avx512"])
def test_register_blocking_follows_the_target(env, expect):
    """Each kernel's register block is sized for the target Numba compiles for, not the host."""
    assert json.loads(_run(_BLOCKING, env)) == expect


_AVX2_CALLS = """
    import numpy as np
    import fastconv
    from fastconv import reference
    from fastconv.accuracy import error_bound
    from fastconv.cpu import simd
    from fastconv.cpu.direct import choose_path
    from fastconv._params import normalize
    assert simd.VECTOR_BYTES == 32, simd.TARGET
    rng = np.random.default_rng(7)
    # (x shape, w shape, keywords, algorithm, direct path or None): every register-blocked
    # kernel at least once, odd sizes, both dtypes.
    cases = [
        ((2, 19, 9, 11), (20, 19, 3, 3), dict(padding=1), "direct", "blocked"),
        ((2, 5, 24, 41), (5, 1, 3, 3), dict(groups=5, padding=1, stride=2), "direct", "width"),
        ((1, 3, 30, 34), (16, 3, 3, 3), dict(padding=1), "direct", "width"),
        ((2, 24, 7, 9), (30, 24, 1, 1), dict(), "direct", "pointwise"),
        ((1, 40, 9, 10), (24, 40, 3, 3), dict(padding=1), "winograd_f4x4_3x3", None),
        ((1, 40, 9, 10), (24, 40, 3, 3), dict(padding=1), "winograd_f2x2_3x3", None),
        ((1, 3, 40, 44), (20, 3, 3, 3), dict(padding=1), "winograd_f4x4_3x3", None),
        ((1, 160, 4, 4), (64, 160, 3, 3), dict(padding=1), "winograd_f4x4_3x3", None),
        ((2, 8, 11, 13), (12, 8, 3, 3), dict(padding=1), "im2col", None),
    ]
    for xs, ws, kw, alg, path in cases:
        for dt in (np.float32, np.float64):
            x = rng.standard_normal(xs).astype(dt)
            w = rng.standard_normal(ws).astype(dt)
            b = rng.standard_normal(ws[0]).astype(dt)
            if path is not None:
                p = normalize(x.shape, w.shape, b.shape, np.dtype(dt), **kw)
                assert choose_path(p) == path, (xs, ws, choose_path(p))
            y = fastconv.conv2d(x, w, b, algorithm=alg, **kw)
            ref = reference.conv2d(x, w, b, **kw)
            # float64: the float64 reference's own rounding is as large as the kernel's
            bound = error_bound(alg, x, w, b, **kw) * (2 if dt == np.float64 else 1)
            assert y.dtype == dt and np.all(np.abs(y - ref) <= bound), (xs, ws, alg, dt)
    # the fused epilogue's vector code (8 float32 lanes), through the blocked path's stores
    from fastconv import _epilogue
    xs, ws, kw = cases[0][:3]
    for dt in (np.float32, np.float64):
        x = rng.standard_normal(xs).astype(dt)
        w = rng.standard_normal(ws).astype(dt)
        ref = reference.conv2d(x, w, None, **kw)
        r = rng.standard_normal(ref.shape).astype(dt)
        for act in ("relu6", "silu", "gelu"):
            y = fastconv.conv2d(x, w, algorithm="direct", activation=act, residual=r, **kw)
            bound = error_bound("direct", x, w, activation=act, residual=r, **kw)
            want = _epilogue.reference(ref + r, act)
            assert np.all(np.abs(y - want) <= bound * (2 if dt == np.float64 else 1)), (act, dt)
    print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.uname().machine != "x86_64",
                    reason="the AVX2 target is an x86-64 CPU")
@pytest.mark.subprocess
@pytest.mark.jit
def test_kernels_on_an_avx2_target():
    """Every register-blocked kernel compiled for AVX2 (8 lanes, 12 accumulators) stays
    within its error bound of the float64 reference."""
    assert _run(_AVX2_CALLS, AVX2_ENV).strip().endswith("ok")
