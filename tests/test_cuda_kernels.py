"""CUDA kernels (fastconv.cuda) against fastconv.reference, on a GPU or under the simulator.

Runs in-process when a GPU is usable (default block sizes) or when
``NUMBA_ENABLE_CUDASIM=1`` is set; otherwise the whole module is skipped and
``test_cuda.py::test_kernels_under_the_simulator`` runs it in a subprocess
with the simulator on and tiny block sizes (``test_cuda.SIM_ENV``).
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
import fastconv.cuda
from fastconv import UnsupportedError
from fastconv.reference import conv2d as ref_conv2d

from conftest import TOLERANCE, random_problem, rel_err
from test_cuda import ALGORITHMS, MODE

# The simulator runs kernels on numpy scalars, which warn about inf * 0 and overflow where a GPU
# silently produces the IEEE result; the tests check those results.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

if MODE not in ("sim", "gpu"):
    pytest.skip("no GPU and no simulator in this process: test_cuda.py runs this module under "
                "NUMBA_ENABLE_CUDASIM=1 in a subprocess" if MODE == "subprocess"
                else "numba-cuda is not installed", allow_module_level=True)

def _cuda():
    from numba import cuda
    return cuda


# Every kernel specialisation launched in this module, checked at the end against the list the
# compile check (python -m fastconv check --cuda-compile) compiles.
LAUNCHED: set = set()


@pytest.fixture(autouse=True)
def _record_launches(monkeypatch):
    from fastconv.cuda import _runtime

    inner = _runtime._LAUNCHERS[_runtime._state.get("mode") or "simulator"]

    def recording(spec, *args):
        LAUNCHED.add(spec)
        return inner(spec, *args)

    monkeypatch.setitem(_runtime._LAUNCHERS, _runtime._state.get("mode") or "simulator", recording)


def dev(a):
    return None if a is None else _cuda().to_device(np.ascontiguousarray(a))


def host(y):
    return y.copy_to_host()


def check(y, yr, algorithm, dtype):
    y = np.asarray(y)
    assert y.shape == yr.shape and y.dtype == np.dtype(dtype)
    assert np.isfinite(y).all()
    err = rel_err(y, yr)
    assert err <= TOLERANCE[(algorithm, np.dtype(dtype).name)], (algorithm, err)


def run(algorithm, x, w, b=None, **kw):
    return host(fastconv.cuda.conv2d(dev(x), dev(w), dev(b), algorithm=algorithm, **kw))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_kernel_matches_the_reference_and_its_error_bound(rng, algorithm):
    from fastconv.accuracy import error_bound

    x, w, b = random_problem(rng, (2, 3, 7, 6), (5, 3, 3, 3))
    x0, w0, b0 = x.copy(), w.copy(), b.copy()
    xd, wd, bd = dev(x), dev(w), dev(b)
    y = fastconv.cuda.conv2d(xd, wd, bd, padding=1, algorithm=algorithm)
    assert type(y) is type(xd)  # numba in, numba out
    y = host(y)
    yr = ref_conv2d(x, w, b, padding=1)
    check(y, yr, algorithm, np.float32)
    bound = error_bound(algorithm, x, w, b, padding=1)
    assert np.all(np.abs(y - yr) <= bound * 1.01 + 1e-30)
    for a, a0, d in ((x, x0, xd), (w, w0, wd), (b, b0, bd)):  # inputs never modified
        assert np.array_equal(host(d), a0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_many_tiles_and_slices(rng, algorithm):
    # Kg = 10 > BM (2 row tiles), Cg * R * S = 45 (12 K-slices), N*P*Q = 70 (9 column tiles);
    # and with the 1 MiB simulator workspace Winograd still runs in one chunk.
    x, w, b = random_problem(rng, (2, 5, 5, 7), (10, 5, 3, 3))
    check(run(algorithm, x, w, b, padding=1), ref_conv2d(x, w, b, padding=1), algorithm, np.float32)


@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
@pytest.mark.parametrize("kw", [
    {"stride": 2, "padding": ((1, 2), (0, 1)), "dilation": (2, 1)},
    {"stride": (1, 3), "padding": "same"},
    {"stride": 2, "padding": "same", "dilation": 2},
    {"padding": "full"},
], ids=["stride-asym-dilation", "same-stride13", "same-stride2-dil2", "full"])
def test_stride_padding_dilation(rng, algorithm, kw):
    x, w, b = random_problem(rng, (1, 3, 8, 9), (4, 3, 3, 2))
    check(run(algorithm, x, w, b, **kw), ref_conv2d(x, w, b, **kw), algorithm, np.float32)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_winograd_padding_modes_and_asymmetry(rng, algorithm):
    x, w, _ = random_problem(rng, (1, 2, 7, 9), (3, 2, 3, 3), bias=False)
    kw = {"padding": ((0, 2), (1, 0))}
    check(run(algorithm, x, w, **kw), ref_conv2d(x, w, **kw), algorithm, np.float32)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_groups(rng, algorithm):
    x, w, b = random_problem(rng, (2, 4, 6, 5), (6, 2, 3, 3))
    check(run(algorithm, x, w, b, padding=1, groups=2),
          ref_conv2d(x, w, b, padding=1, groups=2), algorithm, np.float32)


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "winograd_f2x2_3x3"])
@pytest.mark.parametrize("K", [3, 6], ids=["depthwise", "multiplier2"])
def test_depthwise(rng, algorithm, K):
    x, w, b = random_problem(rng, (1, 3, 6, 6), (K, 1, 3, 3))
    check(run(algorithm, x, w, b, padding=1, groups=3),
          ref_conv2d(x, w, b, padding=1, groups=3), algorithm, np.float32)


@pytest.mark.parametrize("algorithm", ["direct", "im2col", "winograd_f4x4_3x3"])
def test_nhwc(rng, algorithm):
    x, w, b = random_problem(rng, (2, 3, 6, 5), (4, 3, 3, 3))
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y = run(algorithm, xh, w, b, padding=1, layout="NHWC")
    yr = ref_conv2d(x, w, b, padding=1).transpose(0, 2, 3, 1)
    check(y, yr, algorithm, np.float32)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_float64(rng, algorithm):
    x, w, b = random_problem(rng, (1, 3, 6, 6), (4, 3, 3, 3), dtype=np.float64)
    check(run(algorithm, x, w, b, padding=1), ref_conv2d(x, w, b, padding=1), algorithm, np.float64)


def test_mixed_dtypes_promote_like_numpy(rng):
    x, w, b = random_problem(rng, (1, 2, 5, 5), (3, 2, 3, 3))
    y = run("auto", x, w.astype(np.float64), b)
    assert y.dtype == np.float64
    check(y, ref_conv2d(x, w.astype(np.float64), b), "direct", np.float64)


def test_unbatched_input(rng):
    x, w, b = random_problem(rng, (3, 6, 5), (4, 3, 2, 2))
    y = run("im2col", x, w, b, padding=(1, 0))
    assert y.shape == (4, 7, 4)
    check(y, ref_conv2d(x, w, b, padding=(1, 0)), "im2col", np.float32)


def test_non_contiguous_input_is_copied_on_the_device(rng):
    x, w, b = random_problem(rng, (2, 3, 10, 7), (4, 3, 3, 3))
    xd = dev(x)[:, :, ::2, :]  # a strided device view
    y = host(fastconv.cuda.conv2d(xd, dev(w), dev(b), algorithm="im2col"))
    check(y, ref_conv2d(x[:, :, ::2, :], w, b), "im2col", np.float32)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_out(rng, layout):
    x, w, b = random_problem(rng, (1, 2, 5, 6), (3, 2, 3, 3))
    xin = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    yr = ref_conv2d(x, w, b, padding=1)
    if layout == "NHWC":
        yr = yr.transpose(0, 2, 3, 1)
    out = dev(np.full(yr.shape, np.nan, np.float32))  # unwritten elements would stay NaN
    got = fastconv.cuda.conv2d(dev(xin), dev(w), dev(b), padding=1, layout=layout,
                               algorithm="direct", out=out)
    assert got is out
    check(host(out), yr, "direct", np.float32)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_nonfinite_inputs_propagate_exactly(rng, algorithm):
    x, w, b = random_problem(rng, (1, 2, 9, 8), (3, 2, 3, 3))
    x[0, 0, 2, 3] = np.nan
    x[0, 1, 7, 1] = np.inf
    w[1, 0, 0, 0] = -np.inf if algorithm == "winograd_f4x4_3x3" else w[1, 0, 0, 0]
    y = run(algorithm, x, w, b, padding=1)
    with np.errstate(invalid="ignore"):
        yr = ref_conv2d(x, w, b, padding=1)
    assert np.array_equal(np.isnan(y), np.isnan(yr))
    assert np.array_equal(np.isposinf(y), np.isposinf(yr))
    assert np.array_equal(np.isneginf(y), np.isneginf(yr))
    fin = np.isfinite(yr)
    assert rel_err(y[fin], yr[fin]) <= TOLERANCE[(algorithm, "float32")]


@pytest.mark.parametrize("algorithm", ["winograd_f2x2_3x3", "winograd_f4x4_3x3"])
def test_winograd_transform_overflow_falls_back_to_direct(algorithm):
    # Finite inputs and a finite exact result, but B^T d B overflows float32.
    x = np.zeros((1, 1, 6, 6), np.float32)
    x[0, 0, 2:4, 2:4] = 3e38
    x[0, 0, 2, 3] = -3e38
    w = np.zeros((1, 1, 3, 3), np.float32)
    w[0, 0, 1, 1] = 1.0
    y = run(algorithm, x, w, padding=1)
    np.testing.assert_array_equal(y, x[0:1])


def test_direct_fallback_for_a_patch_too_large_for_shared_memory(rng):
    # The input patch of one block spans (R-1)*dilation+1 rows and columns: over 48 KiB here.
    x, w, b = random_problem(rng, (1, 1, 125, 125), (2, 1, 2, 2))
    kw = {"dilation": 120}
    from fastconv._params import normalize
    from fastconv.cuda import direct
    from fastconv.cuda._runtime import SHARED_BYTES, SETTINGS

    PH, PW = direct.patch_shape(normalize(x.shape, w.shape, None, np.float32, **kw))
    assert PH * PW * 4 > SHARED_BYTES or SETTINGS.block > 4
    check(run("direct", x, w, b, **kw), ref_conv2d(x, w, b, **kw), "direct", np.float32)


def test_auto_and_alias(rng):
    x, w, b = random_problem(rng, (1, 2, 6, 6), (3, 2, 3, 3))
    yr = ref_conv2d(x, w, b, padding=1)
    check(run("winograd", x, w, b, padding=1), yr, "winograd_f4x4_3x3", np.float32)
    check(run("auto", x, w, b, padding=1), yr, "direct", np.float32)


def test_empty_batch(rng):
    x, w, b = random_problem(rng, (0, 2, 5, 5), (3, 2, 3, 3))
    y = run("im2col", x, w, b)
    assert y.shape == (0, 3, 3, 3)


def test_front_end_dispatches_device_arrays(rng):
    from fastconv import _api

    x, w, b = random_problem(rng, (1, 2, 5, 5), (3, 2, 3, 3))
    xd = dev(x)
    if not _api._is_device_array(xd):
        pytest.skip("fastconv.conv2d does not recognise the simulator's device arrays")
    y = fastconv.conv2d(xd, dev(w), dev(b), algorithm="im2col")
    assert type(y) is type(xd)
    check(host(y), ref_conv2d(x, w, b), "im2col", np.float32)


def test_errors():
    x = dev(np.ones((1, 2, 5, 5), np.float32))
    w = dev(np.ones((3, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match=r"x \(.*\) on the GPU but w \(numpy.ndarray\) on the host"):
        fastconv.cuda.conv2d(x, np.ones((3, 2, 3, 3), np.float32))
    with pytest.raises(TypeError, match=r"bias \(numpy.ndarray\) on the host"):
        fastconv.cuda.conv2d(x, w, np.ones(3, np.float32))
    with pytest.raises(TypeError, match="out must be a CUDA array"):
        fastconv.cuda.conv2d(x, w, out=np.empty((1, 3, 3, 3), np.float32))
    with pytest.raises(ValueError, match=r"out must have shape \(1, 3, 3, 3\)"):
        fastconv.cuda.conv2d(x, w, out=dev(np.empty((1, 3, 3, 4), np.float32)))
    with pytest.raises(ValueError, match="out must have dtype float32"):
        fastconv.cuda.conv2d(x, w, out=dev(np.empty((1, 3, 3, 3), np.float64)))
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int32"):
        fastconv.cuda.conv2d(dev(np.ones((1, 2, 5, 5), np.int32)), w)
    with pytest.raises(ValueError, match="stride must be >= 1"):
        fastconv.cuda.conv2d(x, w, stride=0)
    with pytest.raises(ValueError, match="channel mismatch"):
        fastconv.cuda.conv2d(x, dev(np.ones((3, 4, 3, 3), np.float32)))
    with pytest.raises(UnsupportedError, match="3x3 kernel with stride 1"):
        fastconv.cuda.conv2d(x, w, stride=2, algorithm="winograd_f2x2_3x3")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        fastconv.cuda.conv2d(x, w, algorithm="fft")
    with pytest.raises(TypeError, match="x must be a CUDA array"):
        fastconv.cuda.conv2d(np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32))


@pytest.mark.parametrize("bias", [True, False])
def test_im2col_split_k(rng, monkeypatch, bias):
    from fastconv.cuda import implicit_gemm
    from fastconv.cuda._runtime import SETTINGS

    monkeypatch.setattr(SETTINGS, "splitk", 3)
    x, w, b = random_problem(rng, (1, 5, 4, 5), (6, 5, 3, 3), bias=bias)
    p = fastconv._params.normalize(x.shape, w.shape, None, np.float32, padding=1)
    assert implicit_gemm.plan(p).splits == 3
    check(run("im2col", x, w, b, padding=1), ref_conv2d(x, w, b, padding=1), "im2col", np.float32)


@pytest.mark.parametrize("algorithm,m", [("winograd_f2x2_3x3", 2), ("winograd_f4x4_3x3", 4)])
def test_winograd_workspace_chunks(rng, monkeypatch, algorithm, m):
    # A workspace for 3 tiles at a time: several chunks, the last one partial.
    from fastconv.cuda._runtime import SETTINGS

    x, w, b = random_problem(rng, (2, 3, 6, 5), (4, 3, 3, 3))
    A2 = (m + 2) ** 2
    monkeypatch.setattr(SETTINGS, "workspace_bytes", 4 * A2 * (3 * 4 + 3 * (3 + 4)))
    check(run(algorithm, x, w, b, padding=1), ref_conv2d(x, w, b, padding=1), algorithm, np.float32)


def test_connections_table(rng):
    """LeNet-5's C3 table on the GPU: unconnected weights read as zero, NaN in them included."""
    from fastconv import lenet5_c3_table

    table = lenet5_c3_table()
    # small maps: the simulator runs every thread in Python (the table is applied before
    # any algorithm's kernel, so the maps' size adds nothing to what is checked)
    x, w, b = random_problem(rng, (1, 6, 5, 4), (16, 6, 3, 3))
    w0 = w.copy()
    w[~table] = np.nan  # never read: the table disconnects these pairs
    yr = ref_conv2d(x, w0 * table[:, :, None, None], b, padding=1)
    for algorithm in ALGORITHMS:
        wd = dev(w)
        y = host(fastconv.cuda.conv2d(dev(x), wd, dev(b), padding=1, algorithm=algorithm,
                                      connections=table))
        check(y, yr, algorithm, np.float32)
        assert np.array_equal(host(wd), w, equal_nan=True)  # the weights are untouched
    with pytest.raises(ValueError, match="connections must have shape"):
        fastconv.cuda.conv2d(dev(x), dev(w0), connections=table[:, :5])


def test_fused_epilogue(rng):
    """activation= and residual= on the GPU: act(conv + bias + residual), relu bitwise like
    the unfused expression; NHWC, a residual that is out, and a float64 residual."""
    from fastconv import _epilogue as E

    x, w, b = random_problem(rng, (2, 3, 4, 3), (4, 3, 3, 3))
    y0 = run("direct", x, w, b, padding=1)
    r = rng.standard_normal(y0.shape).astype(np.float32)
    r[0, 1, 2, 2] = np.nan
    for act in ("relu", "relu6", "silu", "gelu"):
        rd = dev(r)
        y = host(fastconv.cuda.conv2d(dev(x), dev(w), dev(b), padding=1, algorithm="direct",
                                      activation=act, residual=rd))
        assert np.array_equal(host(rd), r, equal_nan=True)  # the residual is untouched
        want = E.reference(y0.astype(np.float64) + r, act)
        np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
        assert np.isnan(y[0, 1, 2, 2])
        if act == "relu":
            v = y0 + r
            assert np.array_equal(y, np.where(v < 0, np.float32(0), v), equal_nan=True)
    # NHWC, out=residual
    xin = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    rn = np.ascontiguousarray(r.transpose(0, 2, 3, 1))
    rd = dev(rn)
    got = fastconv.cuda.conv2d(dev(xin), dev(w), dev(b), padding=1, layout="NHWC",
                               algorithm="im2col", activation="relu6", residual=rd, out=rd)
    assert got is rd
    want = E.reference(y0.astype(np.float64) + r, "relu6").transpose(0, 2, 3, 1)
    np.testing.assert_allclose(host(rd), want, rtol=1e-6, atol=1e-6)
    # a float64 residual is converted to the result's dtype
    y = host(fastconv.cuda.conv2d(dev(x), dev(w), dev(b), padding=1, algorithm="direct",
                                  residual=dev(r.astype(np.float64))))
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, y0 + r, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="residual"):
        fastconv.cuda.conv2d(dev(x), dev(w), residual=dev(r))  # unpadded: 2x1 maps
    with pytest.raises(TypeError, match="residual"):
        fastconv.conv2d(dev(x), dev(w), padding=1, residual=r)  # a host residual


def test_every_launched_kernel_is_compile_checked():
    """Runs last: what this module launched is a subset of the compile check's list."""
    from fastconv.cuda.compile_check import specializations

    assert LAUNCHED, "no kernel launch was recorded"
    known = {(s.name, tuple(sorted(s.constants.items()))) for s in specializations()}
    launched = {(s.name, tuple(sorted(s.constants.items()))) for s in LAUNCHED}
    launched = {k for k in launched if k[0] != "_probe_kernel"}
    assert launched <= known, sorted(launched - known)
