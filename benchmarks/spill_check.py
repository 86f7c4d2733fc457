"""Count vector-register spills in the compiled CPU micro-kernels (``inspect_asm``).

Runs one small call of every register-blocked path so that its kernels are
compiled (with Numba's on-disk cache off: cached code cannot be inspected),
then reads the x86 assembly Numba produced for each of them.  Its hot loops
are the innermost loops (a label and the last backward branch to it, with
no other such loop inside) that contain fused multiply-adds; in those it
counts the instructions that move a vector register to or from the stack
(``%rsp``/``%rbp``-relative ``vmov*`` with an ``xmm``/``ymm``/``zmm``
operand): a spill or its reload.  A kernel whose register block fits the
target's registers has none.  (Moves outside the hot loops -- array
descriptors copied through vector registers, set-up -- are not counted.)

Usage (the target is Numba's: the host, or e.g. AVX2 on an AVX-512 host)::

    python benchmarks/spill_check.py
    NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES= python benchmarks/spill_check.py

Prints one line per kernel and exits 1 if any kernel spills.
"""

from __future__ import annotations

import os
import re
import sys

import numpy as np

os.environ["FASTCONV_CACHE"] = "0"  # before fastconv is imported: inspect_asm needs fresh code

import fastconv
from fastconv.cpu import _gemm, grad_depthwise, grad_gemm, grad_rows, grad_winograd, simd
from fastconv.cpu.direct import blocked, channels, pointwise, width
from fastconv.cpu.winograd import few, stream, vec

#: A vector register moved to or from a stack slot.
_SPILL = re.compile(r"\bv?mov\w*\s+(%[xyz]mm\d+,\s*-?\d*\((%rsp|%rbp)\)|-?\d*\((%rsp|%rbp)\),\s*%[xyz]mm\d+)")

#: (label, x shape, w shape, conv2d keywords, algorithm): one call per kernel family.
CALLS = [
    ("blocked", (1, 64, 14, 14), (64, 64, 3, 3), dict(padding=1), "direct"),
    ("blocked-NKB1", (1, 32, 12, 12), (16, 32, 3, 3), dict(padding=1), "direct"),
    ("width", (1, 32, 28, 28), (32, 1, 3, 3), dict(groups=32, padding=1), "direct"),
    ("channels", (1, 32, 6, 6), (32, 1, 3, 3), dict(groups=32, padding=1), "direct"),
    ("channels-window", (1, 32, 28, 28), (32, 1, 13, 13), dict(groups=32, padding=6), "direct"),
    ("pointwise", (1, 64, 14, 14), (60, 64, 1, 1), dict(), "direct"),  # Kg: not whole vectors
    ("winograd-vec", (1, 64, 14, 14), (64, 64, 3, 3), dict(padding=1), "winograd_f4x4_3x3"),
    ("winograd-stream", (1, 256, 4, 4), (256, 256, 3, 3), dict(padding=1), "winograd_f4x4_3x3"),
    ("winograd-few", (1, 3, 64, 64), (48, 3, 3, 3), dict(padding=1), "winograd_f4x4_3x3"),
]

#: (label, x shape, w shape, conv2d keywords): both gradients of a layer per gradient kernel.
GRAD_CALLS = [
    ("grad-depthwise", (2, 32, 14, 14), (32, 1, 3, 3), dict(groups=32, padding=1)),
    ("grad-tap-gemm", (2, 64, 4, 4), (64, 64, 3, 3), dict(padding=1)),
    ("grad-tap-gemm-chunks", (1, 3, 66, 64), (4, 3, 3, 3), dict(padding=1)),  # a first layer
    ("grad-tap-gemm-swapped", (1, 3, 66, 64), (40, 3, 3, 3), dict(padding=1)),  # taps x channels
    ("grad-winograd", (2, 64, 14, 14), (64, 64, 3, 3), dict(padding=1)),
    ("grad-rows", (4, 6, 8, 8), (16, 6, 5, 5), dict(padding=2)),  # rows of one vector, either dtype
    ("grad-rows-2", (4, 6, 14, 14), (16, 6, 5, 5), dict(padding=2)),  # two vectors on AVX2
    ("grad-rows-2w", (4, 6, 20, 20), (16, 6, 5, 5), dict(padding=2)),  # ... and on AVX-512
]


def hot_loop_spills(asm: str) -> tuple:
    """``(spills, fmas)`` in the innermost FMA loops of ``asm`` (see the module docstring)."""
    lines = asm.splitlines()
    labels, loops = {}, {}
    for i, line in enumerate(lines):
        m = re.match(r"^(\.LBB\d+_\d+):", line)
        if m:
            labels[m.group(1)] = i
        m = re.match(r"^\s+j\w+\s+(\.LBB\d+_\d+)", line)
        if m and m.group(1) in labels:
            loops[labels[m.group(1)]] = i  # the last backward branch to a label closes its loop
    spans = sorted(loops.items())
    inner = [(a, b) for a, b in spans
             if not any((c, d) != (a, b) and a <= c and d <= b for c, d in spans)]
    spills = fmas = 0
    for a, b in inner:
        body = lines[a:b + 1]
        nf = sum("vfmadd" in line or "vfnmadd" in line for line in body)
        if nf:
            fmas += nf
            spills += sum(bool(_SPILL.search(line)) for line in body)
    return spills, fmas


def _dispatchers():
    """(name, dispatcher) of every compiled register-blocked kernel."""
    out = [("_gemm.panel_gemm (inlined in vec)", _gemm.panel_gemm)]
    out += [(f"blocked.driver{key}", d) for key, d in blocked._DRIVERS.items()]
    out += [(f"width.driver{key[:3]}", d) for key, d in width._DRIVERS.items()]
    out += [(f"channels.driver{key}", d) for key, d in channels._DRIVERS.items()]
    out += [("pointwise.kernel", pointwise._kernel())]
    out += [(f"vec._FUSED[{m}]", d) for m, d in vec._FUSED.items()]
    out += [(f"vec._SPLIT[{m}, stream={st}]", d) for (m, st), d in vec._SPLIT.items()]
    out += [(f"stream._S4R{a}", getattr(stream, f"_S4R{a}")) for a in range(6)]
    out += [(f"few._JOB{c}", getattr(few, f"_JOB{c}")) for c in range(1, 5)]
    out += [("grad_depthwise._pair_weight", grad_depthwise._pair_weight),
            ("grad_gemm._panel_rows", grad_gemm._panel_rows),
            ("grad_gemm._unfold_gemm", grad_gemm._unfold_gemm),
            ("grad_gemm._unfold_gemm_t", grad_gemm._unfold_gemm_t),
            ("grad_winograd._products", grad_winograd._products),
            ] + [(f"grad_rows._ROWS[{nv}]", d) for nv, d in grad_rows._ROWS.items()]
    return out


def main() -> int:
    rng = np.random.default_rng(0)
    for _, xs, ws, kw, alg in CALLS:
        for dt in (np.float32, np.float64):
            x = rng.standard_normal(xs).astype(dt)
            w = rng.standard_normal(ws).astype(dt)
            fastconv.conv2d(x, w, algorithm=alg, **kw)
    from fastconv.grad import conv2d_grad_input, conv2d_grad_weight
    for _, xs, ws, kw in GRAD_CALLS:
        for dt in (np.float32, np.float64):
            x = rng.standard_normal(xs).astype(dt)
            w0 = rng.standard_normal(ws).astype(dt)
            gy = rng.standard_normal(fastconv.conv2d(x, w0, **kw).shape).astype(dt)
            conv2d_grad_weight(x, gy, ws, **kw)
            conv2d_grad_input(gy, w0, xs, **kw)
    t = simd.TARGET
    print(f"target {t.cpu} ({t.isa}): {t.vector_bytes}-byte vectors, {t.registers} registers, "
          f"{simd.ACCUMULATORS} accumulators")
    bad = 0
    for name, disp in _dispatchers():
        for sig in disp.signatures:
            spills, fmas = hot_loop_spills(disp.inspect_asm(sig))
            dtype = next((str(a.dtype) for a in sig if hasattr(a, "dtype")), "?")
            print(f"{name:34s} {dtype:8s} hot-loop FMAs {fmas:5d}  spills/reloads {spills}")
            bad += spills > 0
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
