"""Reuse of prepared weights between calls whose weights have not changed.

Every CPU call of Winograd transforms its kernels (``U = G w G^T``: 36
values per 3x3 kernel for F(4x4, 3x3), four times the weights) and every
call of the blocked direct kernel repacks them.  For inference -- the same
weights, call after call -- that work is the same each time; on ResNet-50's
3x3 layers over 256 or 512 channels it cost more than the convolution.
:func:`fastconv.plan` is the explicit way to do it once; this cache does it
for plain :func:`fastconv.conv2d` calls.

Safety: an entry is found by the weight array's address, shape, strides and
dtype plus what was prepared (algorithm and its blocking), and it is used
only if the array's current contents are **bitwise equal** to the snapshot
taken when the entry was built.  Writing into the array (``w[...] = ...``,
an optimiser step, a new array at a recycled address) therefore makes the
next call rebuild; a result never depends on the cache (tests compare
every path with and without it).  The comparison reads the weights once,
which costs a fraction of the transform it saves (a 9.4 MB weight tensor:
0.13 ms to compare with two threads vs 0.65 ms to repack or 5 ms to
Winograd-transform).

Bounds: entries are evicted least-recently-used beyond
``FASTCONV_WEIGHT_CACHE_MB`` (default 256; ``0`` disables the cache), and
weights smaller than ``MIN_BYTES`` are not cached (preparing them costs
about as much as looking them up).  Weights below ``SERIAL_BYTES`` are
compared by NumPy in the calling thread: waking the Numba pool costs more
than the comparison (LeNet-5 C3's 9.6 KB of weights: a cache hit saves a
10 us packing call).  :func:`clear` empties it.  Lookups are
thread-safe; two threads missing at once may both build, and one result is
kept.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import numba
import numpy as np

from . import _config
from ._config import PJIT

#: Weights smaller than this are prepared on every call instead.
MIN_BYTES = 4 * 1024
#: Weights below this are compared in the calling thread.
SERIAL_BYTES = 256 * 1024
#: Weights below this are compared as two ``bytes`` copies (a C ``memcmp``):
#: 0.3 us for LeNet-5 C3's 9.6 KB against 3.6 us for ``np.array_equal``.
BYTES_COMPARE_MAX = 64 * 1024

_CHUNK = 1 << 16  # elements per parallel comparison job


@numba.njit(**PJIT)
def _same_bits(a, b):
    # a, b: flat unsigned-integer views of equal length; True if every element is equal.
    n = a.shape[0]
    nchunk = (n + _CHUNK - 1) // _CHUNK
    differs = np.zeros(nchunk, dtype=np.bool_)
    for job in numba.prange(nchunk):
        lo = job * _CHUNK
        hi = min(n, lo + _CHUNK)
        # An OR of XORs over 0-based views: vectorises (indexing a[i] with a signed
        # i would add wraparound checks that block it; measured 8x slower).
        av, bv = a[lo:hi], b[lo:hi]
        acc = av[0] ^ bv[0]
        for i in range(1, hi - lo):
            acc |= av[i] ^ bv[i]
        differs[job] = acc != 0
    return not differs.any()


def _bits(a):
    """Flat unsigned view of ``a``'s bytes (elements compared exactly: -0.0 != 0.0, NaN == NaN)."""
    return np.ascontiguousarray(a).reshape(-1).view(np.dtype(f"u{a.dtype.itemsize}"))


def same_contents(a, b) -> bool:
    """True if ``a`` and ``b`` have the same shape, dtype and bits."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.size == 0:
        return True
    if a.nbytes <= BYTES_COMPARE_MAX:
        return a.tobytes() == b.tobytes()  # C-order bytes of both: exactly the bits
    if a.nbytes < SERIAL_BYTES:
        return bool(np.array_equal(_bits(a), _bits(b)))
    return bool(_same_bits(_bits(a), _bits(b)))


def _nbytes(value) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return int(getattr(value, "nbytes", 0))


class _Entry:
    __slots__ = ("snapshot", "value", "nbytes")

    def __init__(self, snapshot, value):
        self.snapshot, self.value = snapshot, value
        self.nbytes = snapshot.nbytes + _nbytes(value)


class WeightCache:
    """LRU map from (weight array, tag) to prepared weights, verified by content."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def enabled_for(self, w: np.ndarray) -> bool:
        """Whether :meth:`get` would cache ``w`` (enabled, and ``w`` not too small)."""
        return self.max_bytes > 0 and w.nbytes >= MIN_BYTES

    def get(self, w: np.ndarray, tag, build):
        """``build(snapshot)`` for weights ``w``, or the value built for equal weights before.

        ``build`` receives a private C-contiguous copy of ``w`` (never the
        caller's array), so what it returns may keep referring to it.
        """
        if not self.enabled_for(w):
            return build(np.array(w, order="C", copy=True))
        key = (w.__array_interface__["data"][0], w.shape, w.strides, w.dtype.str, tag)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is not None and same_contents(w, entry.snapshot):
            self.hits += 1
            return entry.value
        self.misses += 1
        snapshot = np.array(w, order="C", copy=True)
        snapshot.flags.writeable = False
        entry = _Entry(snapshot, build(snapshot))
        if entry.nbytes <= self.max_bytes:
            with self._lock:
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= old.nbytes
                self._entries[key] = entry
                self._bytes += entry.nbytes
                while self._bytes > self.max_bytes:
                    _, ev = self._entries.popitem(last=False)
                    self._bytes -= ev.nbytes
        return entry.value

    def clear(self):
        with self._lock:
            self._entries.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        """Bytes held (snapshots plus prepared weights)."""
        return self._bytes

    def __len__(self):
        return len(self._entries)


CACHE = WeightCache(_config.WEIGHT_CACHE_BYTES)


def clear():
    """Drop every prepared weight kept between calls (frees their memory).

    ``conv2d`` keeps Winograd-transformed and packed weights of unchanged
    weight arrays (bounded by ``FASTCONV_WEIGHT_CACHE_MB``, default 256 MiB;
    reused only when the weights are bitwise unchanged).  Results never
    depend on it; call this to release the memory.
    """
    CACHE.clear()
