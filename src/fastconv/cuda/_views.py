"""A plain description of device memory: address, shape, strides, dtype and owner.

Every array a CUDA call touches (the caller's inputs, its result, the
workspaces) is handled as a :class:`DevView` between the entry point and the
kernel launch.  A view is a few Python attributes: making, reshaping or
permuting one costs well under a microsecond, where building a numba
``DeviceNDArray`` from a torch tensor costs tens of microseconds.  The
launcher (:func:`fastconv.cuda._runtime.launch`) turns a view into the
kernel's array arguments directly.

Under numba's CUDA simulator there is no device memory: a view then also
holds ``host``, the numpy array the simulator's "device" array wraps, and
every view operation applies to it as well, so the same host code runs in
both worlds (``ptr`` is then a host address, used only for overlap checks).
"""

from __future__ import annotations

import numpy as np


def c_strides(shape, itemsize: int) -> tuple:
    """Byte strides of a C-contiguous array of ``shape``."""
    strides, acc = [], itemsize
    for d in reversed(shape):
        strides.append(acc)
        acc *= int(d)
    return tuple(reversed(strides))


class DevView:
    """Device memory seen as an n-d array (byte strides, like numpy's).

    ``owner`` keeps the memory alive and is what a result is returned as
    (a torch tensor, a CuPy array, a numba device array); ``kind`` names the
    library the caller used ("torch", "cupy", "numba", "other").
    """

    __slots__ = ("ptr", "shape", "strides", "dtype", "owner", "kind", "host", "readonly")

    def __init__(self, ptr, shape, strides, dtype, owner=None, kind="other", host=None,
                 readonly=False):
        self.ptr = ptr if type(ptr) is int else int(ptr)
        self.shape = shape if type(shape) is tuple else tuple(int(d) for d in shape)
        self.dtype = dtype if isinstance(dtype, np.dtype) else np.dtype(dtype)
        if strides is None:
            strides = c_strides(self.shape, self.dtype.itemsize)
        elif type(strides) is not tuple:
            strides = tuple(int(s) for s in strides)
        self.strides = strides
        self.owner = owner
        self.kind = kind
        self.host = host
        self.readonly = bool(readonly)

    @classmethod
    def of_host(cls, host, owner=None, kind="numba"):
        """A view of a numpy array (the simulator's device memory)."""
        return cls(host.__array_interface__["data"][0], host.shape, host.strides, host.dtype,
                   owner=owner, kind=kind, host=host)

    def _derive(self, shape, strides, host):
        return DevView(self.ptr, shape, strides, self.dtype, self.owner, self.kind, host,
                       self.readonly)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def itemsize(self) -> int:
        return self.dtype.itemsize

    def is_c_contiguous(self) -> bool:
        if 0 in self.shape:
            return True
        expect = self.itemsize
        for d, s in zip(reversed(self.shape), reversed(self.strides)):
            if d != 1 and s != expect:
                return False
            expect *= d
        return True

    def reshape(self, shape):
        """The same memory with a new shape; the view must be C-contiguous."""
        shape = tuple(int(d) for d in shape)
        if not self.is_c_contiguous():
            raise ValueError("reshape needs a C-contiguous view")
        host = None if self.host is None else self.host.reshape(shape)
        return self._derive(shape, c_strides(shape, self.itemsize), host)

    def flat(self):
        """The C-contiguous view as one dimension (the kernels' argument form)."""
        return self.reshape((self.size,))

    def permute(self, axes):
        """The view with its axes permuted (no copy)."""
        axes = tuple(axes)
        if axes == tuple(range(len(axes))):
            return self
        host = None if self.host is None else self.host.transpose(axes)
        return self._derive(tuple(self.shape[a] for a in axes),
                            tuple(self.strides[a] for a in axes), host)

    def expand(self, ndim: int):
        """The view with unit axes prepended up to ``ndim`` dimensions (no copy)."""
        extra = ndim - self.ndim
        if extra <= 0:
            return self
        host = None if self.host is None else self.host[(None,) * extra]
        return self._derive((1,) * extra + self.shape, (self.itemsize,) * extra + self.strides,
                            host)

    def head(self, n: int):
        """The first ``n`` elements of a 1-D view."""
        host = None if self.host is None else self.host[:n]
        return self._derive((n,), self.strides, host)

    def extent(self):
        """(first byte, one past the last byte) the view can touch."""
        lo = hi = self.ptr
        for d, s in zip(self.shape, self.strides):
            if d == 0:
                return self.ptr, self.ptr
            if s > 0:
                hi += (d - 1) * s
            else:
                lo += (d - 1) * s
        return lo, hi + self.itemsize

    def overlaps(self, other) -> bool:
        alo, ahi = self.extent()
        blo, bhi = other.extent()
        return alo < bhi and blo < ahi

    def __repr__(self):
        return (f"DevView(ptr=0x{self.ptr:x}, shape={self.shape}, strides={self.strides}, "
                f"dtype={self.dtype}, kind={self.kind!r})")
