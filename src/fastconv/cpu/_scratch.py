"""Reusable work arrays of the CPU kernels: no fresh pages on every call.

A kernel's scratch (packed input, blocked output, im2col columns, Winograd's
``V`` and ``M``) of a few MiB allocated with ``np.empty`` on every call comes
from fresh pages -- glibc maps large blocks with ``mmap`` -- and the first
write to each 4 KiB page costs a page fault.  Whether a block comes fresh
depends on glibc's dynamic mmap threshold, so the cost varies from one
process to the next.  These helpers keep one buffer per (name,
dtype) per Python thread, grown on demand, and hand out views of it.

Every array handed out here starts on a 64-byte boundary
(:mod:`fastconv._aligned`; the kernels' prepared weights use the same
:func:`empty_aligned`).

Bounds and safety: a request above ``CPU.scratch_keep_bytes``
(:class:`fastconv._config.CpuSettings`) is served by a fresh array that is
not kept, so what stays allocated is at most a few times that bound per
Python thread that ran a convolution; :func:`release`
frees the calling thread's buffers.  Buffers are per Python thread, so
concurrent calls never share one; callers use a name only while no other
use of the same name on the same thread is live, and never return a view of
one to the user.
"""

from __future__ import annotations

import threading

import numba
import numpy as np

from .._aligned import ALIGN, empty_aligned
from .._config import CPU

_local = threading.local()


def _store():
    return _local.__dict__.setdefault("buffers", {})


def buffer(name: str, dtype, n: int) -> np.ndarray:
    """A 1-D work array of exactly ``n`` elements of ``dtype`` (contents undefined)."""
    dtype = np.dtype(dtype)
    n = int(n)
    if n * dtype.itemsize > CPU.scratch_keep_bytes:
        return empty_aligned(n, dtype)
    key = (name, dtype.str)
    store = _store()
    buf = store.get(key)
    if buf is None or buf.shape[0] < n:
        buf = empty_aligned(n, dtype)
        store[key] = buf
    return buf[:n]


def per_thread(name: str, dtype, n: int) -> np.ndarray:
    """A ``(NUMBA_NUM_THREADS, >= n)`` work array: row ``numba.get_thread_id()`` per Numba thread.

    Rows are padded to whole cache lines, so each starts aligned.
    """
    dtype = np.dtype(dtype)
    rows = numba.config.NUMBA_NUM_THREADS
    per_line = ALIGN // dtype.itemsize
    n = -(-int(n) // per_line) * per_line
    if rows * n * dtype.itemsize > CPU.scratch_keep_bytes:
        return empty_aligned((rows, n), dtype)
    key = (name, dtype.str, "rows")
    store = _store()
    buf = store.get(key)
    if buf is None or buf.shape[1] < n:
        buf = empty_aligned((rows, n), dtype)
        store[key] = buf
    return buf


def release() -> None:
    """Free the calling Python thread's kept buffers."""
    _store().clear()
