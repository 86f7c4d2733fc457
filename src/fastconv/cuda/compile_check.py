"""Compile every CUDA kernel the dispatcher can launch, without a GPU.

``python -m fastconv check --cuda-compile`` runs :func:`main`.  numba's CUDA
simulator runs kernels as Python and never type-checks them, so a kernel can
pass every simulator test and still fail to compile on a GPU (a shared array
whose shape is an expression, say).  This check compiles each
:class:`~fastconv.cuda._runtime.KernelSpec` that the launch code can ask for
(every kernel factory x dtype x the compile-time constants the current
``FASTCONV_CUDA_*`` settings give) to PTX with NVVM, under the same typing as
a GPU, for each requested compute capability.  It needs numba-cuda with its
CUDA 13 compiler libraries (``pip install "fastconv[cuda-dev]"``) but no
GPU and no driver.

Where ``ptxas`` is found (on ``PATH``, under ``CUDA_HOME``, or in the
``nvidia-cuda-nvcc`` wheel the ``cuda-dev`` extra installs) each PTX is also
assembled with ``ptxas -v``, and the table reports registers, stack frame
(local memory), spill stores/loads and static shared memory per kernel.

It also checks each kernel's PTX parameter list against what the fast
launcher packs for it (:meth:`~fastconv.cuda._runtime.KernelSpec.launch_words`).

The exit status is 1 when a kernel fails to compile or assemble, when its
parameters differ from the launcher's packing, or when a register-blocked
kernel (its accumulator tile must live in registers) uses local memory: a
stack frame or spills.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

DEFAULT_CCS = ((8, 0), (9, 0))


def specializations() -> list:
    """Every KernelSpec the CUDA dispatcher can launch under the current settings."""
    from . import _arrays, _connections, _epilogue, _runtime, direct, implicit_gemm, winograd

    specs = []
    for mod in (direct, implicit_gemm, winograd, _arrays, _connections, _epilogue):
        specs.extend(mod.specializations())
    specs.append(_runtime._probe_spec())
    seen, unique = set(), []
    for s in specs:
        if id(s) not in seen:
            seen.add(id(s))
            unique.append(s)
    return unique


def find_ptxas():
    """The path of a ptxas executable, or None.

    The ``nvidia-cuda-nvcc`` wheel comes first: it is the toolkit release of
    the NVVM that numba-cuda compiles with, and an older ptxas (a system
    CUDA on ``PATH``, say) rejects PTX of a newer ISA version.
    """
    candidates = []
    try:
        import nvidia

        for base in nvidia.__path__:
            for sub in ("cu13", "cu12", "cuda_nvcc"):
                candidates.append(os.path.join(base, sub, "bin", "ptxas"))
    except ImportError:
        pass
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(os.path.join(os.environ[var], "bin", "ptxas"))
    found = shutil.which("ptxas")
    if found:
        candidates.append(found)
    for c in candidates:
        if os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    return None


_PROPS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


_ENTRY = re.compile(r"\.entry\s+\S+\s*\((.*?)\)", re.S)
_PARAM = re.compile(r"\.param\s+\.(\w+)")


def check_abi(spec, ptx: str) -> None:
    """The kernel's PTX parameters must be what the fast launcher packs: one 8-byte word each.

    The launcher (:func:`fastconv.cuda._runtime.launch`) passes an array as
    meminfo, parent, size, itemsize, data, shape..., strides... and a scalar as
    one int64; a different count or width would misplace every later argument.
    """
    m = _ENTRY.search(ptx)
    if m is None:
        raise RuntimeError("no .entry in the PTX")
    kinds = _PARAM.findall(m.group(1))
    wide = {"u64", "b64", "s64", "f64"}
    if len(kinds) != spec.launch_words() or any(k not in wide for k in kinds):
        raise RuntimeError(f"kernel parameters {len(kinds)} x {sorted(set(kinds))} differ from the "
                           f"{spec.launch_words()} 8-byte words the fast launcher packs")


def assemble(ptxas: str, ptx: str, cc) -> dict:
    """Run ``ptxas -v`` on one kernel's PTX; registers, local memory and shared memory."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, f"-arch=sm_{cc[0]}{cc[1]}", "-v", "-o",
                               os.path.join(tmp, "kernel.cubin"), src],
                              capture_output=True, text=True, timeout=600)
    text = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise RuntimeError(f"ptxas failed: {text.strip()[-1500:]}")
    props, used, smem = _PROPS.search(text), _USED.search(text), _SMEM.search(text)
    return {"registers": int(used.group(1)) if used else None,
            "stack_bytes": int(props.group(1)) if props else None,
            "spill_store_bytes": int(props.group(2)) if props else None,
            "spill_load_bytes": int(props.group(3)) if props else None,
            "shared_bytes": int(smem.group(1)) if smem else 0}


def check(ccs=DEFAULT_CCS, use_ptxas: bool = True, out=print) -> tuple:
    """Compile (and assemble) every specialisation for every ``cc``; (rows, failures)."""
    from ._runtime import simulator

    if simulator():
        raise RuntimeError("the compile check needs the real CUDA target; unset NUMBA_ENABLE_CUDASIM")
    ptxas = find_ptxas() if use_ptxas else None
    if ptxas is not None:
        out(f"ptxas: {ptxas}")
    elif use_ptxas:
        out("ptxas not found (pip install nvidia-cuda-nvcc, or put CUDA's bin on PATH): "
            "compiling to PTX only; registers and spills are not reported")
    specs = specializations()
    rows, failures = [], 0
    out(f"{'kernel':<24}{'constants':<42}{'sm':>4}{'regs':>6}{'stack':>7}{'spill st/ld':>13}"
        f"{'smem':>7}{'s':>6}  result")
    for spec in specs:
        consts = ",".join(f"{k}={v}" for k, v in sorted(spec.constants.items()))
        for cc in ccs:
            row = {"kernel": spec.name, "constants": dict(spec.constants), "cc": f"{cc[0]}{cc[1]}",
                   "register_blocked": spec.register_blocked}
            t0 = time.perf_counter()
            problem = None
            try:
                ptx = spec.ptx(cc)
                check_abi(spec, ptx)
                if ptxas is not None:
                    row.update(assemble(ptxas, ptx, cc))
                    local = (row["stack_bytes"] or 0) + (row["spill_store_bytes"] or 0) + \
                        (row["spill_load_bytes"] or 0)
                    if spec.register_blocked and local:
                        problem = "local memory in a register-blocked kernel"
            except Exception as exc:
                msg = " ".join(str(exc).split())
                problem = f"{type(exc).__name__}: {msg[:400]}"
            row["seconds"] = round(time.perf_counter() - t0, 2)
            row["ok"] = problem is None
            if problem:
                row["error"] = problem
                failures += 1
            rows.append(row)

            def fmt(k):
                v = row.get(k)
                return "-" if v is None else str(v)

            spill = f"{fmt('spill_store_bytes')}/{fmt('spill_load_bytes')}"
            out(f"{spec.name:<24}{consts[:41]:<42}{row['cc']:>4}{fmt('registers'):>6}"
                f"{fmt('stack_bytes'):>7}{spill:>13}{fmt('shared_bytes'):>7}{row['seconds']:>6.1f}"
                f"  {'ok' if row['ok'] else 'FAIL: ' + problem}")
    return rows, failures


def _parse_ccs(text: str) -> tuple:
    ccs = []
    for part in text.split(","):
        part = part.strip()
        if not re.fullmatch(r"\d{2,3}", part):
            raise argparse.ArgumentTypeError(f"--cc takes compute capabilities like 80,90; got {part!r}")
        ccs.append((int(part[:-1]), int(part[-1])))
    return tuple(ccs)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fastconv check --cuda-compile",
                                 description="Compile every CUDA kernel specialisation to PTX "
                                             "(and assemble it with ptxas) without a GPU.")
    ap.add_argument("--cc", type=_parse_ccs, default=DEFAULT_CCS,
                    help="compute capabilities, comma-separated (default 80,90)")
    ap.add_argument("--no-ptxas", action="store_true", help="only compile to PTX")
    ap.add_argument("--json", help="also write the table to this JSON file")
    args = ap.parse_args(argv)
    try:
        import numba.cuda  # noqa: F401
    except Exception as exc:
        print(f"numba-cuda cannot be imported ({exc}); pip install 'fastconv[cuda-dev]'",
              file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        rows, failures = check(args.cc, use_ptxas=not args.no_ptxas)
    except RuntimeError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"\n{len(rows)} compilations in {time.perf_counter() - t0:.0f} s: "
          f"{'all ok' if not failures else f'{failures} FAILED'}")
    return 1 if failures else 0
