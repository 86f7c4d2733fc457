"""Recorded launch plans: the host side of a repeated CUDA call in a few microseconds.

A call's launches depend on its shapes, strides, dtypes, arguments,
algorithm, GPU and block settings, never on where its arrays live.  The
first call of a kind runs the ordinary host code (:func:`fastconv.cuda._execute`)
against a :class:`_Recording` context: its inputs and every allocation are
symbolic addresses ("slot s, byte offset o"), and each launch is kept with
its packed kernel parameters instead of being sent.  A :class:`CallPlan`
is the result: per launch, the kernel, its launch configuration, the
parameter words, and which words are addresses (slot, offset) or the call's
non-finite epoch.  Later calls of the same kind allocate the same buffers,
put the real addresses into a copy of the words and launch, skipping the
argument views, layout decisions and kernel planning.

Only the fast launcher replays (a real GPU; see :mod:`fastconv.cuda._runtime`);
calls with ``out=`` or ``connections=`` take the ordinary path.  The plan is
memoised on the call's :class:`~fastconv._params.ConvParams` (itself
memoised per argument set), keyed by everything else the launches depend on.
"""

from __future__ import annotations

import numpy as np

from . import _runtime
from ._runtime import Context, SETTINGS
from ._views import DevView

# Symbolic addresses: bit 60 set, the slot above bit 40, the byte offset below.  Real device
# addresses are below 2**57, so a word with bit 60 set can only be a recorded slot address.
_SYMBOLIC = 1 << 60
_SLOT_SHIFT = 40
_OFFSET_MASK = (1 << _SLOT_SHIFT) - 1


class _Epoch(int):
    """The placeholder a recording hands out for the call's epoch."""


_EPOCH = _Epoch(0)


def _symbolic(slot: int) -> int:
    return _SYMBOLIC | (slot << _SLOT_SHIFT)


class _Recording(Context):
    """A context whose allocations are symbolic and whose launches are recorded."""

    __slots__ = ("allocs",)

    def __init__(self, device):
        super().__init__(stream=0, device=device)
        self.recorder = []
        self.allocs = []   # ("empty", shape, dtype) or ("workspace", key, nbytes)

    def epoch(self) -> int:
        return _EPOCH

    def _slot(self) -> int:
        return 3 + len(self.allocs)   # slots 0, 1, 2: x, w, bias

    def empty(self, shape, dtype) -> DevView:
        view = DevView(_symbolic(self._slot()), shape, None, dtype, kind="recorded")
        self.allocs.append(("empty", tuple(shape), np.dtype(dtype)))
        return view

    def workspaces(self, key: str, parts) -> list:
        offsets, total = [], 0
        for n, dtype in parts:
            offsets.append(total)
            total += -(-max(int(n), 1) * np.dtype(dtype).itemsize // 256) * 256
        base = _symbolic(self._slot())
        self.allocs.append(("workspace", key, total))
        return [DevView(base + off, (int(n),), (np.dtype(dtype).itemsize,), dtype, kind="recorded")
                for (n, dtype), off in zip(parts, offsets)]

    def mark(self, label: str) -> None:
        pass


class CallPlan:
    """The launches of one kind of call, ready to replay with new addresses."""

    __slots__ = ("allocs", "launches", "result_slot", "uses_epoch")

    def __init__(self, allocs, launches, result_slot, uses_epoch):
        self.allocs = allocs
        self.launches = launches
        self.result_slot = result_slot
        self.uses_epoch = uses_epoch

    def replay(self, xv: DevView, wv: DevView, bv, ctx: Context) -> DevView:
        """Allocate, fill in the addresses and launch; the result view."""
        bases = [xv.ptr, wv.ptr, 0 if bv is None else bv.ptr]
        views = [xv, wv, bv]
        for kind, a, b in self.allocs:
            if kind == "empty":
                v = ctx.empty(a, b)
            else:
                v = ctx.workspaces(a, ((b, np.uint8),))[0]
            bases.append(v.ptr)
            views.append(v)
        epoch = ctx.epoch() if self.uses_epoch else 0
        send = _runtime.send
        for spec, config, template, addresses, epochs in self.launches:
            words = list(template)
            for pos, slot, offset in addresses:
                words[pos] = bases[slot] + offset
            for pos in epochs:
                words[pos] = epoch
            send(ctx, config, spec, words)
        return views[self.result_slot]


def record(execute, alg, xv, wv, bv, p, device) -> CallPlan:
    """Run ``execute`` (the ordinary host path) symbolically and keep its launches."""
    rec = _Recording(device)
    xs = DevView(_symbolic(0), xv.shape, xv.strides, xv.dtype, kind="recorded")
    ws = DevView(_symbolic(1), wv.shape, wv.strides, wv.dtype, kind="recorded")
    bs = None if bv is None else DevView(_symbolic(2), bv.shape, bv.strides, bv.dtype,
                                         kind="recorded")
    result = execute(alg, xs, ws, bs, None, p, rec, None)
    launches, uses_epoch = [], False
    for spec, grid, block, shared, args in rec.recorder:
        template, addresses, epochs = [], [], []
        for a in args:
            if type(a) is DevView:
                template += (0, 0, a.size, a.dtype.itemsize, a.ptr)
                if a.ptr & _SYMBOLIC:
                    off = a.ptr & _OFFSET_MASK
                    addresses.append((len(template) - 1, (a.ptr ^ _SYMBOLIC) >> _SLOT_SHIFT, off))
                template += a.shape
                template += a.strides
            elif type(a) is _Epoch:
                epochs.append(len(template))
                template.append(0)
                uses_epoch = True
            else:
                template.append(int(a))
        launches.append((spec, _runtime._launch_config(grid, block, shared), tuple(template),
                         tuple(addresses), tuple(epochs)))
    if not (result.ptr & _SYMBOLIC) or result.ptr & _OFFSET_MASK:
        raise RuntimeError("the recorded call's result is not one of its allocations")
    slot = (result.ptr ^ _SYMBOLIC) >> _SLOT_SHIFT
    return CallPlan(tuple(rec.allocs), tuple(launches), slot, uses_epoch)


def settings_key() -> tuple:
    """The block settings every kernel choice depends on (tests change them)."""
    s = SETTINGS
    return (s.block, s.regtile, s.bk, s.direct_k, s.direct_q, s.splitk, s.workspace_bytes)
