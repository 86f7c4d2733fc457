"""The fast launcher's recorded plans replay exactly what the ordinary host path launches.

No GPU is needed: the device calls are replaced by recorders (the launch
itself, the allocator, the stream), and every kernel parameter word of a
replayed call is compared with the words the ordinary path
(``fastconv.cuda._execute`` with the fast launcher) produces for the same
addresses.  What the words mean on a GPU is checked by the compile check
(``check_abi``) and, on a GPU, by the probe kernel and the kernel tests.
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

import fastconv
import fastconv.cuda as fc
from fastconv.cuda import _arrays, _runtime
from fastconv.cuda._views import DevView

pytestmark = pytest.mark.skipif(_runtime.simulator(), reason="exercises the GPU launch path")


class FakeDeviceArray:
    """Device memory at a made-up address, described by __cuda_array_interface__."""

    def __init__(self, shape, ptr, dtype=np.float32, strides=None):
        self.shape = shape
        self.__cuda_array_interface__ = {"shape": shape, "typestr": np.dtype(dtype).str,
                                         "data": (ptr, False), "version": 3, "strides": strides}


@pytest.fixture
def fake_gpu(monkeypatch):
    launches, state = [], {"next": 0x7000_0000}

    def empty(shape, dtype):
        state["next"] += 1 << 24
        return DevView(state["next"], shape, None, dtype, owner=("buffer", state["next"]))

    monkeypatch.setitem(_runtime._state, "info", {
        "available": True, "reason": "ok", "device": "recorded", "compute_capability": (9, 0),
        "numba_cuda_version": "test", "simulator": False, "launcher": "fast"})
    monkeypatch.setitem(_runtime._state, "mode", "fast")
    monkeypatch.setattr(_runtime, "_core_launch",
                        lambda stream, config, kernel, *words: launches.append((kernel, config, words)))
    monkeypatch.setattr(_runtime, "_LaunchConfig", lambda **kw: tuple(sorted(kw.items())))
    monkeypatch.setattr(_runtime, "_configs", {})
    monkeypatch.setattr(_runtime.Context, "core_stream", lambda self: "stream")
    monkeypatch.setattr(_runtime.KernelSpec, "core_kernel", lambda self, device: self)
    monkeypatch.setattr(_runtime.Context, "epoch", lambda self: 4242)
    monkeypatch.setitem(_runtime._dummies, ("<i8", 0), DevView(0x5000, (1,), None, np.int64))
    monkeypatch.setattr(_arrays, "context_for", lambda obj, view: _runtime.Context(empty=empty))
    monkeypatch.setattr(_arrays, "device_of", lambda obj: contextlib.nullcontext())
    from fastconv.cuda import implicit_gemm
    monkeypatch.setitem(implicit_gemm._sm_counts, 0, 132)
    return launches, state


CASES = [
    ((2, 8, 10, 10), (16, 8, 3, 3), dict(padding=1), "direct"),
    ((2, 8, 10, 10), (16, 8, 3, 3), dict(padding=1), "im2col"),
    ((1, 64, 7, 7), (64, 64, 3, 3), dict(padding=1), "im2col"),  # split-K: a second launch
    ((2, 8, 10, 10), (16, 8, 3, 3), dict(padding=1), "winograd_f2x2_3x3"),
    ((2, 8, 10, 10), (16, 8, 3, 3), dict(padding=1), "winograd_f4x4_3x3"),
    ((2, 10, 10, 8), (16, 8, 3, 3), dict(padding=1, layout="NHWC"), "auto"),
    ((8, 9, 9), (4, 8, 3, 3), dict(stride=2, padding="same"), "auto"),  # unbatched
    ((2, 12, 11, 11), (12, 1, 5, 5), dict(groups=12, dilation=2), "auto"),
]


@pytest.mark.parametrize("x_shape, w_shape, kw, algorithm", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_replay_matches_the_ordinary_path(fake_gpu, x_shape, w_shape, kw, algorithm, dtype):
    launches, state = fake_gpu
    K = w_shape[0]
    x, w, b = (FakeDeviceArray(x_shape, 0x1000_0000, dtype), FakeDeviceArray(w_shape, 0x2000_0000, dtype),
               FakeDeviceArray((K,), 0x3000_0000, dtype))
    # The ordinary path, launching through the fast launcher.
    state["next"] = 0x7000_0000
    xv, wv, bv = (_arrays.view_of(a, n) for a, n in ((x, "x"), (w, "w"), (b, "bias")))
    p = fastconv._params.normalize(xv.shape, wv.shape, bv.shape, np.dtype(dtype), **kw)
    alg = fastconv._dispatch.resolve(algorithm, p, "cuda")
    expected_result = fc._execute(alg, xv, wv, bv, None, p, _runtime.Context(
        empty=_arrays.context_for(None, None)._empty), None)
    ordinary = list(launches)
    assert ordinary
    # The same call through conv2d: recorded on first use, then replayed (twice).
    for _ in range(2):
        launches.clear()
        state["next"] = 0x7000_0000
        y = fastconv.conv2d(x, w, b, algorithm=algorithm, **kw)
        assert y == expected_result.owner
        assert launches == ordinary
    # New addresses: only the address words change, and by the inputs' displacement.
    launches.clear()
    state["next"] = 0x7000_0000
    x2 = FakeDeviceArray(x_shape, 0x1000_0000 + 0x40_0000, dtype)
    fastconv.conv2d(x2, w, b, algorithm=algorithm, **kw)
    assert len(launches) == len(ordinary)
    moved = 0
    for (k1, c1, w1), (k2, c2, w2) in zip(launches, ordinary):
        assert k1 is k2 and c1 == c2 and len(w1) == len(w2)
        for a, e in zip(w1, w2):
            if a != e:
                assert a - e == 0x40_0000
                moved += 1
    assert moved >= 1


def test_epoch_is_fresh_per_replay(fake_gpu, monkeypatch):
    launches, state = fake_gpu
    epochs = iter(range(100, 200))
    monkeypatch.setattr(_runtime.Context, "epoch", lambda self: next(epochs))
    x, w = FakeDeviceArray((1, 4, 8, 8), 0x1000_0000), FakeDeviceArray((4, 4, 3, 3), 0x2000_0000)
    seen = []
    for _ in range(3):
        launches.clear()
        fastconv.conv2d(x, w, padding=1, algorithm="winograd_f2x2_3x3")
        gated = launches[-1][2]  # the gated direct fallback: ..., flag, gated, epoch, ...
        seen.append(gated)
    assert len({words for words in seen}) == 3
