"""The machine the CPU kernels are compiled for: its vector width and register count.

The register-blocked kernels keep a block of accumulators, the vectors of
weights that meet them and a broadcast in vector registers, so their
blocking depends on two numbers of the *target* Numba compiles for, not of
the host: AVX-512 has 64-byte vectors and 32 of them, AVX2 32-byte vectors
and 16, SSE 16-byte vectors and 16, AArch64's NEON 16-byte vectors and 32.
A blocking made for 32 registers spills half its accumulators to the stack
on a 16-register machine, on every multiply-add.

The target is what Numba's code generator uses: ``NUMBA_CPU_NAME`` (else
the host's CPU name) with ``NUMBA_CPU_FEATURES`` (else the host's
features; set it empty to get the named CPU's own features, e.g.
``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=`` compiles for AVX2 on an
AVX-512 host).  Rather than keep a table of CPU names, :func:`detect` asks
LLVM: it compiles one 64-byte vector addition for that CPU and features and
reads which registers the assembly uses (``zmm``: 64-byte vectors, ``ymm``:
32, else 16).  That takes a few milliseconds, once per process.

There is deliberately no override of the width alone: Numba's on-disk cache
tells compiled kernels apart by CPU name and features, not by the values of
module constants such as the width, so a width that disagreed with the
target could load kernels compiled for the other one.  To compile for
another machine, name its CPU as above.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

#: One 64-byte vector addition; which registers LLVM picks for it tells the vector width.
_PROBE_IR = """
define void @probe(ptr %p, ptr %q) {
  %a = load <16 x float>, ptr %p
  %b = load <16 x float>, ptr %q
  %c = fadd <16 x float> %a, %b
  store <16 x float> %c, ptr %p
  ret void
}
"""


@dataclass(frozen=True)
class Target:
    """Vector width and register file of the target the CPU kernels are compiled for.

    ``isa`` names the instruction set family (``"avx512"``, ``"avx2"``,
    ``"sse"``, ``"neon"`` or ``"generic"``), ``cpu`` the LLVM CPU name.
    """

    isa: str
    cpu: str
    vector_bytes: int
    registers: int

    def lanes(self, dtype) -> int:
        """Elements of ``dtype`` per vector (16 float32 on AVX-512, 8 on AVX2)."""
        import numpy as np

        return self.vector_bytes // np.dtype(dtype).itemsize


def _from_width(arch: str, cpu: str, width: int) -> Target:
    if arch.startswith(("aarch64", "arm64")):
        return Target("neon", cpu, 16, 32)
    if arch.startswith(("x86_64", "i386", "i686", "amd64")):
        isa = {64: "avx512", 32: "avx2", 16: "sse"}[width]
        return Target(isa, cpu, width, 32 if width == 64 else 16)
    return Target("generic", cpu, width, 16)


@lru_cache(maxsize=None)
def detect() -> Target:
    """The :class:`Target` of this process (computed once)."""
    import llvmlite.binding as llvm
    import numba  # noqa: F401  (initialises LLVM's native target)
    from numba.core import config

    cpu = config.CPU_NAME or llvm.get_host_cpu_name()
    features = (config.CPU_FEATURES if config.CPU_FEATURES is not None
                else llvm.get_host_cpu_features().flatten())
    triple = llvm.get_process_triple()
    arch = triple.split("-", 1)[0]
    width = 16
    try:
        machine = llvm.Target.from_triple(triple).create_target_machine(
            cpu=cpu, features=features, opt=2)
        asm = machine.emit_assembly(llvm.parse_assembly(_PROBE_IR))
        width = 64 if "zmm" in asm else 32 if "ymm" in asm else 16
    except RuntimeError:  # pragma: no cover - an LLVM without this target's printer
        pass
    return _from_width(arch, cpu, width)
