"""The register-tiled product of one shared-memory slice: the core of both CUDA GEMMs.

:mod:`fastconv.cuda.implicit_gemm` and :mod:`fastconv.cuda.winograd` stage
their operands differently (an im2col gather, transformed tiles) but
multiply them the same way, with this device function: a block of ``TB x TB``
threads holds ``BK``-deep slices ``As`` (``BK`` x rows, the M side) and
``Bs`` (``BK`` x columns, the N side) in shared memory, and thread
``(ty, tx)`` owns the ``RTM x RTN`` accumulators ``acc[i * RTN + j]`` of
rows ``ty + i * TB`` and columns ``tx + j * TB``.  Those rows and columns
are ``TB`` apart, so a warp reads consecutive shared words of ``Bs`` (no bank
conflicts) and broadcasts from ``As``.

It is a jitable function inlined into the kernel's Numba IR (not a separate
device function, which numba-cuda would compile for the current GPU and so
could not be compiled without one): every index into ``acc`` is then a
constant after unrolling, and the accumulators stay in registers
(``python -m fastconv check --cuda-compile`` fails on local memory in the
kernels that use it).
"""

from __future__ import annotations

import functools

from ._runtime import simulator


@functools.lru_cache(maxsize=None)
def slice_product(dtype_str: str, TB: int, RTM: int, RTN: int, BK: int):
    """The device function ``gemm_slice(As, Bs, acc, ty, tx)`` for these constants."""
    def gemm_slice(As, Bs, acc, ty, tx):
        """acc[i * RTN + j] += sum over kk < BK of As[kk, ty + i * TB] * Bs[kk, tx + j * TB]."""
        for kk in range(BK):
            for i in range(RTM):
                a = As[kk, ty + i * TB]
                for j in range(RTN):
                    acc[i * RTN + j] += a * Bs[kk, tx + j * TB]

    if simulator():
        return gemm_slice  # the simulated kernels call it as Python
    from numba.cuda.extending import register_jitable
    return register_jitable(inline="always")(gemm_slice)
