"""fastconv.dask.conv2d against the float64 reference and the in-memory conv2d.

The blocked result is compared with ``fastconv.reference.conv2d`` (the scipy
oracle) and with ``fastconv.conv2d`` on the whole array.  Equality is to
rounding, not bitwise: the kernels' summation order depends on the block's
shape (batch size, row length), so a tile can round differently from the
same rows inside a whole image.  ``dask.array.utils.assert_eq`` also checks
that every computed block has the shape the graph's chunk metadata promised.
"""

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

da = pytest.importorskip("dask.array")
cloudpickle = pytest.importorskip("cloudpickle")
from dask.array.utils import assert_eq  # noqa: E402

import fastconv  # noqa: E402
import fastconv.dask as fd  # noqa: E402

# float64: fastconv's kernels agree with the float64 oracle to a few ulps of
# sum(|x| |w|); 1e-12 relative to values of order 1-10 leaves a wide margin
# and still catches any misplaced row, column or halo.
TOL64 = dict(rtol=1e-12, atol=1e-12)


def _layout(x, layout):
    return x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _chunks(layout, n, c, h, w):
    return (n, c, h, w) if layout == "NCHW" else (n, h, w, c)


def _check(y, x, w, b, kw, tol=TOL64):
    """y (dask) against the oracle and the in-memory call; returns the computed array."""
    ref = fastconv.reference.conv2d(x, w, b, **kw)
    mem = fastconv.conv2d(x, w, b, **kw)
    assert y.shape == ref.shape and y.dtype == ref.dtype
    assert_eq(y, ref, **tol)
    out = y.compute()
    np.testing.assert_allclose(out, mem, **tol)
    return out


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("kw", [
    dict(),
    dict(stride=2, padding=((1, 0), (2, 1)), dilation=(1, 2)),
    dict(padding="same", groups=2),
    dict(stride=(1, 2), padding=1, groups=4),   # depthwise
], ids=["plain", "stride-asympad-dil", "same-groups2", "depthwise"])
def test_batch_chunks(layout, kw):
    rng = np.random.default_rng(0)
    x = _layout(rng.standard_normal((5, 4, 9, 11)), layout)
    w = rng.standard_normal((8, 4 // kw.get("groups", 1), 3, 3))
    b = rng.standard_normal(8)
    # uneven batch chunks; channel and spatial axes split too, and merged back
    xd = da.from_array(x, chunks=_chunks(layout, (2, 1, 2), (3, 1), (9,), (11,)))
    kw = dict(kw, layout=layout)
    y = fd.conv2d(xd, w, b, spatial_tiling=False, **kw)
    assert y.chunks[0] == (2, 1, 2)
    assert y.numblocks[1:] == (1, 1, 1)
    _check(y, x, w, b, kw)


def test_channel_and_spatial_axes_rechunked_automatically():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 6, 10, 10))
    w = rng.standard_normal((2, 6, 3, 3))
    xd = da.from_array(x, chunks=(1, 2, 4, 3))
    y = fd.conv2d(xd, w, spatial_tiling=False)
    assert y.chunks == ((1, 1, 1), (2,), (8,), (8,))
    _check(y, x, w, None, {})


TILED = [
    # R x S, stride, padding, dilation, groups
    ((3, 3), 1, 0, 1, 1),
    ((3, 3), 1, "same", 1, 2),
    ((5, 3), 1, ((2, 1), (0, 3)), (2, 1), 1),
    ((3, 3), 2, 1, 1, 1),
    ((4, 2), (3, 2), "same", 1, 1),
    ((3, 3), (2, 1), "full", 2, 2),
    ((1, 1), 2, 0, 1, 1),          # reach < stride: tiles read no halo, skip rows
    ((2, 2), 3, ((0, 2), (1, 0)), 1, 4),
]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("case", TILED, ids=[f"k={k[0]}x{k[1]}-s={s}-p={p}-d={d}-g={g}"
                                             for k, s, p, d, g in TILED])
def test_spatial_tiles_uneven_chunks(case, layout):
    (R, S), stride, padding, dilation, groups = case
    rng = np.random.default_rng(2)
    x = _layout(rng.standard_normal((3, 4, 23, 19)), layout)
    w = rng.standard_normal((4, 4 // groups, R, S))
    b = rng.standard_normal(4)
    xd = da.from_array(x, chunks=_chunks(layout, (2, 1), 4, (5, 7, 2, 9), (3, 3, 3, 10)))
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout)
    y = fd.conv2d(xd, w, b, **kw)  # spatial_tiling=None: x is chunked along H and W -> tiles
    h_ax, w_ax = (2, 3) if layout == "NCHW" else (1, 2)
    assert len(y.chunks[h_ax]) > 1 and len(y.chunks[w_ax]) > 1, y.chunks
    _check(y, x, w, b, kw)


def test_requested_tile_size_and_chunks_smaller_than_halo():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 40, 33))
    w = rng.standard_normal((5, 3, 5, 5))
    kw = dict(padding=2, dilation=2)
    xd = da.from_array(x, chunks=(1, 3, 40, 33))
    y = fd.conv2d(xd, w, spatial_tiling=(16, 11), **kw)
    # output tiles of 16 x 11; the padded input is 44 x 37, the output 36 x 29
    assert y.chunks[2] == (16, 16, 4) and y.chunks[3] == (11, 11, 7)
    _check(y, x, w, None, kw)
    # one-row chunks: each is smaller than the halo (R - 1) * dilation = 8, so
    # boundaries are dropped until every tile can hold its halo
    y = fd.conv2d(da.from_array(x, chunks=(2, 3, 1, 33)), w, spatial_tiling=True, **kw)
    assert min(y.chunks[2]) >= 1 and len(y.chunks[2]) > 1
    _check(y, x, w, None, kw)


def test_same_padding_stride_1_keeps_the_input_chunks():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 40, 33))
    w = rng.standard_normal((4, 3, 5, 3))
    xd = da.from_array(x, chunks=(1, 3, (10, 10, 20), (11, 22)))
    y = fd.conv2d(xd, w, padding="same")
    assert y.chunks[2:] == xd.chunks[2:]
    _check(y, x, w, None, dict(padding="same"))


def test_float32_unbatched_and_unknown_batch_chunks():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 2, 12, 12)).astype(np.float32)
    w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    xd = da.from_array(x, chunks=(2, 2, 5, 12))
    y = fd.conv2d(xd, w, padding=1)
    assert y.dtype == np.float32
    assert_eq(y, fastconv.reference.conv2d(x, w, padding=1), rtol=1e-5, atol=1e-5)
    # one unbatched (C, H, W) image, tiled
    y3 = fd.conv2d(xd[1], w, padding=1, spatial_tiling=True)
    assert y3.ndim == 3
    assert_eq(y3, fastconv.reference.conv2d(x[1], w, padding=1), rtol=1e-5, atol=1e-5)
    # a boolean selection leaves the batch chunk sizes unknown (nan)
    keep = da.from_array(np.array([True, False, True, True]), chunks=2)
    xs = da.from_array(x, chunks=(2, 2, 12, 12))[keep]
    assert np.isnan(xs.shape[0])
    ys = fd.conv2d(xs, w, padding=1).compute()
    np.testing.assert_allclose(ys, fastconv.reference.conv2d(x[[0, 2, 3]], w, padding=1),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="compute_chunk_sizes"):
        fd.conv2d(xs, w, padding=1, spatial_tiling=4)


def test_lazy_batch_larger_than_memory():
    """Validation looks at one image: a 200 GB lazy batch builds, and a slice of it computes."""
    x = da.ones((100_000, 64, 64, 64), chunks=(16, 64, 64, 64))
    w = np.full((8, 64, 3, 3), 0.5)
    y = fd.conv2d(x, w, padding=1)
    assert x.nbytes > 2**37 and y.numblocks == (6250, 1, 1, 1)   # 214 GB of input
    part = y[:2].compute()
    np.testing.assert_allclose(part, fastconv.reference.conv2d(np.ones((2, 64, 64, 64)), w, padding=1),
                               **TOL64)


def test_numpy_input_and_mixed_dtypes():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 2, 6, 6)).astype(np.float32)
    w = rng.standard_normal((2, 2, 3, 3))  # float64 promotes the result
    y = fd.conv2d(x, w)
    assert y.dtype == np.float64
    assert_eq(y, fastconv.reference.conv2d(x, w), **TOL64)


def test_weights_enter_the_graph_once():
    rng = np.random.default_rng(6)
    x = da.from_array(rng.standard_normal((8, 16, 6, 6)), chunks=(1, 16, 6, 6))
    w = rng.standard_normal((64, 16, 3, 3))        # 73 728 bytes
    y = fd.conv2d(x, w, padding=1)
    assert y.numblocks[0] == 8
    # 8 tasks each carrying its own copy of w would weigh > 8 * 73 kB
    size = len(cloudpickle.dumps(dict(y.__dask_graph__())))
    assert size < x.nbytes + 2 * w.nbytes, size
    # and the weights are exactly one graph key holding an array of w's shape
    # (a DataNode's .value in dask >= 2024.12, the bare array before)
    values = {k: getattr(v, "value", v) for k, v in dict(y.__dask_graph__()).items()}
    w_keys = [k for k, v in values.items() if isinstance(v, np.ndarray) and v.shape == w.shape]
    assert len(w_keys) == 1, w_keys
    np.testing.assert_array_equal(values[w_keys[0]], w)


def test_errors_when_building_the_graph():
    x = da.ones((2, 3, 8, 8), chunks=(1, 3, 4, 8))
    w = np.ones((4, 3, 3, 3))
    with pytest.raises(ValueError, match="channel mismatch"):
        fd.conv2d(x, np.ones((4, 2, 3, 3)))
    with pytest.raises(TypeError, match="x must have dtype"):
        fd.conv2d(x.astype(np.int64), w)
    with pytest.raises(TypeError, match="spatial_tiling"):
        fd.conv2d(x, w, spatial_tiling="yes")
    with pytest.raises(ValueError, match="spatial_tiling"):
        fd.conv2d(x, w, spatial_tiling=(0, 4))
    with pytest.raises(fastconv.UnsupportedError, match="winograd"):
        fd.conv2d(x, np.ones((4, 3, 5, 5)), algorithm="winograd_f2x2_3x3")
    with pytest.raises(ValueError, match="kernel larger"):
        fd.conv2d(x, np.ones((4, 3, 9, 9)))


@pytest.mark.subprocess
def test_import_does_not_import_dask():
    code = ("import sys, fastconv, fastconv.dask; "
            "assert 'dask' not in sys.modules, 'dask imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.subprocess
def test_distributed_local_cluster():
    """Two worker processes on loopback, one Numba thread each, same result as in-process."""
    distributed = pytest.importorskip("distributed")
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3, 20, 16))
    w = rng.standard_normal((5, 3, 3, 3))
    b = rng.standard_normal(5)
    kw = dict(padding=1, stride=(2, 1))
    xd = da.from_array(x, chunks=(2, 3, 10, 8))
    # Compile (or load) the kernels here first, so that the workers find the
    # on-disk Numba cache warm and only load it.
    local = fd.conv2d(xd, w, b, **kw).compute(scheduler="threads")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address=None) as cluster, \
            distributed.Client(cluster, timeout=60) as client:
        y = fd.conv2d(xd, w, b, numba_threads=1, **kw)
        remote = client.compute(y).result(timeout=120)
    np.testing.assert_allclose(remote, local, **TOL64)
    np.testing.assert_allclose(remote, fastconv.reference.conv2d(x, w, b, **kw), **TOL64)
    assert remote.shape == (4, 5, 10, 16)


def test_numba_threads_set_inside_each_task_and_restored(monkeypatch):
    numba = pytest.importorskip("numba")
    from fastconv import _api

    seen = []
    real = _api.conv2d

    def spy(*args, **kwargs):
        seen.append(numba.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(_api, "conv2d", spy)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 2, 8, 8))
    w = rng.standard_normal((3, 2, 3, 3))
    before = numba.get_num_threads()
    y = fd.conv2d(da.from_array(x, chunks=(1, 2, 8, 8)), w, numba_threads=1)
    out = y.compute(scheduler="threads")
    assert seen == [1, 1, 1, 1]
    assert numba.get_num_threads() == before
    np.testing.assert_allclose(out, fastconv.reference.conv2d(x, w), **TOL64)
    with pytest.raises(ValueError, match="numba_threads"):
        fd.conv2d(da.from_array(x), w, numba_threads=0)
    with pytest.raises(TypeError, match="numba_threads"):
        fd.conv2d(da.from_array(x), w, numba_threads=1.5)


@settings(max_examples=300, deadline=None)
@given(length=st.integers(1, 60), stride=st.integers(1, 4), R=st.integers(1, 5),
                  dilation=st.integers(1, 3), data=st.data())
def test_tile_arithmetic_one_axis(length, stride, R, dilation, data):
    """The tiling rule, checked along one axis with a dilated, strided 1-D correlation in NumPy."""
    from fastconv.dask import _out_chunks, _tile_chunks

    reach = (R - 1) * dilation + 1
    assume(reach <= length)
    bounds = data.draw(st.lists(st.integers(1, length - 1), max_size=8)) if length > 1 else []
    chunks = _tile_chunks(bounds, length, stride, reach)
    P = (length - reach) // stride + 1
    out = _out_chunks(chunks, P, stride)
    halo = max(reach - stride, 0)
    assert sum(chunks) == length and sum(out) == P
    assert all(c % stride == 0 and c >= max(halo, 1) for c in chunks[:-1])
    assert chunks[-1] >= reach and all(o >= 1 for o in out)

    rng = np.random.default_rng(length * 1000 + stride * 100 + R * 10 + dilation)
    x = rng.standard_normal(length)
    k = rng.standard_normal(R)

    def corr(v):  # valid, strided, dilated correlation
        n = (len(v) - reach) // stride + 1
        return np.array([sum(v[p * stride + r * dilation] * k[r] for r in range(R)) for p in range(n)])

    starts = np.concatenate([[0], np.cumsum(chunks)[:-1]])
    tiles = [corr(x[a:min(a + c + halo, length)]) for a, c in zip(starts, chunks)]
    assert [len(t) for t in tiles] == list(out)
    np.testing.assert_allclose(np.concatenate(tiles), corr(x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("tiling", [False, (7, 5)], ids=["whole-images", "tiles"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_fused_epilogue_per_block(tiling, layout):
    rng = np.random.default_rng(5)
    x = _layout(rng.standard_normal((4, 3, 20, 18)), layout)
    w = rng.standard_normal((5, 3, 3, 3))
    r = _layout(rng.standard_normal((4, 5, 20, 18)), layout)
    kw = dict(padding=1, layout=layout, activation="silu")
    xd = da.from_array(x, chunks=_chunks(layout, 2, 3, 10, 9))
    rd = da.from_array(r, chunks=_chunks(layout, 1, 5, 20, 18))  # rechunked like the result
    y = fd.conv2d(xd, w, residual=rd, spatial_tiling=tiling, **kw)
    np.testing.assert_allclose(y.compute(), fastconv.conv2d(x, w, residual=r, **kw), **TOL64)
    y1 = fd.conv2d(da.from_array(x[0]), w, residual=r[0], **kw)  # unbatched, NumPy residual
    np.testing.assert_allclose(y1.compute(), fastconv.conv2d(x[0], w, residual=r[0], **kw),
                               **TOL64)
    with pytest.raises(ValueError, match="residual"):
        fd.conv2d(xd, w, residual=r[:2], **kw)
    with pytest.raises(ValueError, match="activation"):
        fd.conv2d(xd, w, padding=1, layout=layout, activation="tanh")
