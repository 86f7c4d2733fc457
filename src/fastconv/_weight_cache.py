"""Reuse of prepared weights between calls whose weights have not changed.

Every CPU call of Winograd transforms its kernels (``U = G w G^T``: 36
values per 3x3 kernel for F(4x4, 3x3), four times the weights) and every
call of the blocked direct kernel repacks them.  For inference -- the same
weights, call after call -- that work is the same each time, and on deep 3x3
layers (256 or 512 channels on small maps) it can cost more than the
convolution.
:func:`fastconv.plan` is the explicit way to do it once; this cache does it
for plain :func:`fastconv.conv2d` calls.

Safety: an entry is found by the weight array's address, shape, strides and
dtype plus what was prepared (algorithm and its blocking), and it is used
only if the array's current contents are **bitwise equal** to the snapshot
taken when the entry was built.  Writing into the array (``w[...] = ...``,
an optimiser step, a new array at a recycled address) therefore makes the
next call rebuild; a result never depends on the cache (tests compare
every path with and without it).  The comparison reads the weights once
and does one XOR per word, a fraction of the work of repacking or
Winograd-transforming them.

Admission: an entry is made on the second sighting of unchanged weights --
when a call misses and finds the array's contents as they were at the
previous miss (a 64-bit checksum, used only as this hint).  Weights that
change between calls (training steps, or arrays made for one call, such as
the rearranged kernels of :mod:`fastconv.grad`) are prepared for the call
alone, with no snapshot and no entry, into reused work arrays
(:func:`prepared_empty`); inference pays one extra preparation, on its
first call, and training pays no snapshot copy and no comparison.

Bounds: entries are evicted least-recently-used beyond
``FASTCONV_WEIGHT_CACHE_MB`` (default 256; ``0`` disables the cache), and
weights smaller than ``MIN_BYTES`` are not cached (preparing them costs
about as much as looking them up).  Weights below ``SERIAL_BYTES`` are
compared by NumPy in the calling thread: waking the Numba pool costs more
than the comparison (LeNet-5 C3's 9.6 KB of weights are compared serially,
and a cache hit still saves a packing call).  :func:`clear` empties it.  Lookups are
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
#: Arrays whose last checksum is remembered (the admission hint of WeightCache.get).
SEEN_KEYS = 256
#: Weights below this are compared as two ``bytes`` copies (a C ``memcmp``), which on
#: small arrays has far less overhead than ``np.array_equal``.
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
        # i would add wraparound checks that block it).
        av, bv = a[lo:hi], b[lo:hi]
        acc = av[0] ^ bv[0]
        for i in range(1, hi - lo):
            acc |= av[i] ^ bv[i]
        differs[job] = acc != 0
    return not differs.any()


@numba.njit(**PJIT)
def _checksum(a):
    # a: flat unsigned-integer view; a position-weighted sum of its elements (mod 2**64),
    # only ever a hint (see WeightCache.get), never a proof of equality.
    n = a.shape[0]
    nchunk = (n + _CHUNK - 1) // _CHUNK
    part = np.zeros(nchunk, dtype=np.uint64)
    for job in numba.prange(nchunk):
        lo = job * _CHUNK
        hi = min(n, lo + _CHUNK)
        av = a[lo:hi]
        acc = np.uint64(0)
        for i in range(hi - lo):
            acc += np.uint64(av[i]) * np.uint64(2 * i + 1)
        part[job] = acc * np.uint64(2 * job + 1)
    total = np.uint64(0)
    for job in range(nchunk):  # a loop: part.sum() would compile a parallel reduction
        total += part[job]
    return total


def checksum(a) -> int:
    """A 64-bit checksum of ``a``'s bits (a hint that contents repeat; equal arrays agree)."""
    if a.size == 0:
        return 0
    if a.nbytes < SERIAL_BYTES:
        return hash(a.tobytes())
    return int(_checksum(_bits(a)))


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


_building = threading.local()


def building_for_one_call() -> bool:
    """Whether the calling thread is inside a :meth:`WeightCache.get` build whose value
    serves one call only (weights not kept: changed since the last call on the array, a
    disabled cache, or weights under ``MIN_BYTES``).  Preparations may then choose
    schedules that do not keep their transformed weights."""
    return getattr(_building, "one_call", False)


def _build_for_one_call(build, w):
    outer = building_for_one_call()
    _building.one_call = True
    try:
        return build(w)
    finally:
        _building.one_call = outer


def prepared_empty(name: str, shape, dtype) -> np.ndarray:
    """An uninitialised array for prepared weights (64-byte aligned).

    While :meth:`WeightCache.get` prepares weights for one call only (see
    Admission), this is the calling thread's reusable work array ``name``
    (:mod:`fastconv.cpu._scratch`), so a training step does not take fresh
    pages for prepared weights that live for one call (F(4x4) turns the 2.4
    MB of ResNet-50's 256-channel weights into 9.4 MB).  Otherwise a new
    array, which the cache may keep.
    """
    from ._aligned import empty_aligned
    if building_for_one_call():
        from .cpu import _scratch
        return _scratch.buffer(name, dtype, int(np.prod(shape))).reshape(shape)
    return empty_aligned(shape, dtype)


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
        self._seen: OrderedDict = OrderedDict()  # key -> checksum at its last miss
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = self.transient = 0

    def enabled_for(self, w: np.ndarray) -> bool:
        """Whether :meth:`get` would cache ``w`` (enabled, and ``w`` not too small)."""
        return self.max_bytes > 0 and w.nbytes >= MIN_BYTES

    def get(self, w: np.ndarray, tag, build):
        """``build(snapshot)`` for weights ``w``, or the value built for equal weights before.

        ``build`` receives a C-contiguous array with ``w``'s contents: a private,
        read-only copy when the value is to be kept (what it returns may keep
        referring to it), else ``w`` itself or a contiguous copy, for this call
        only.  ``build`` must not write to it.
        """
        if not self.enabled_for(w):
            return _build_for_one_call(build, np.array(w, order="C", copy=True))
        key = (w.__array_interface__["data"][0], w.shape, w.strides, w.dtype.str, tag)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
        if entry is not None and same_contents(w, entry.snapshot):
            self.hits += 1
            return entry.value
        self.misses += 1
        # Admission on the second sighting: weights are snapshotted and kept only when a
        # call finds them as they were at the previous call on the same array (checksum
        # hint; a kept value is still used only after the exact comparison above).
        # Weights that change between calls (training, or arrays built for one call, such
        # as the gradients' rearranged kernels) are prepared for the call alone: no
        # snapshot copy, no entry, and a stale entry of the array is dropped.
        digest = checksum(w)
        with self._lock:
            seen = self._seen.pop(key, None)
            self._seen[key] = digest
            while len(self._seen) > SEEN_KEYS:
                self._seen.popitem(last=False)
            if entry is not None:
                old = self._entries.pop(key, None)
                if old is not None:
                    self._bytes -= old.nbytes
        if seen != digest:
            self.transient += 1
            return _build_for_one_call(build, np.ascontiguousarray(w))
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
            self._seen.clear()
            self._bytes = 0
            self.hits = self.misses = self.transient = 0

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
