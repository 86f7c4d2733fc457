"""Cache-line aligned arrays.

NumPy aligns large allocations to 16 bytes only.  A 64-byte vector load or
store that straddles two cache lines costs two accesses, so the CPU kernels'
work arrays, prepared weights and the results fastconv allocates start on a
64-byte boundary.  This matters most where a kernel streams a large operand
with full-width loads, e.g. the Winograd products reading the transformed
weights.
"""

from __future__ import annotations

import numpy as np

#: Alignment (bytes): one cache line, one zmm register.
ALIGN = 64


def empty_aligned(shape, dtype) -> np.ndarray:
    """``np.empty(shape, dtype)`` (C order) starting on an :data:`ALIGN`-byte boundary."""
    dtype = np.dtype(dtype)
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
    n = 1
    for s in shape:
        n *= int(s)
    raw = np.empty(n + ALIGN // dtype.itemsize, dtype=dtype)
    off = (-raw.ctypes.data % ALIGN) // dtype.itemsize  # malloc aligns to the element size
    return raw[off:off + n].reshape(shape)
