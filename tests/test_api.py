"""fastconv.conv2d: every algorithm x dtype x layout against the float64 reference."""

from __future__ import annotations

import threading

import numba
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastconv
from fastconv import accuracy, reference
from fastconv._dispatch import get
from fastconv._params import normalize
from fastconv.cpu import simd

from conftest import CONCRETE, TOLERANCE, random_problem, rel_err

# (id, x shape NCHW, w shape, kwargs): stride, asymmetric padding, 'same' with stride, dilation,
# groups, depthwise, 1x1, non-square kernels, tiny and odd sizes.
GRID = [
    ("3x3-pad1", (2, 8, 9, 10), (6, 8, 3, 3), dict(padding=1)),
    ("3x3-valid-odd", (1, 5, 7, 5), (3, 5, 3, 3), dict()),
    ("stride2", (2, 4, 11, 9), (5, 4, 3, 3), dict(stride=2, padding=1)),
    ("stride-2x3", (1, 3, 10, 13), (4, 3, 2, 3), dict(stride=(2, 3))),
    ("asym-pad", (2, 4, 8, 7), (4, 4, 3, 3), dict(padding=((0, 2), (1, 0)))),
    ("same-stride2", (1, 3, 9, 8), (4, 3, 3, 3), dict(padding="same", stride=2)),
    ("same-stride3-5x5", (1, 2, 10, 11), (3, 2, 5, 5), dict(padding="same", stride=3)),
    ("full", (1, 2, 5, 6), (3, 2, 3, 2), dict(padding="full")),
    ("dilation2", (1, 3, 12, 11), (4, 3, 3, 3), dict(dilation=2, padding=2)),
    ("dilation-2x1", (2, 2, 9, 9), (2, 2, 3, 2), dict(dilation=(2, 1))),
    ("groups2", (2, 8, 7, 7), (6, 4, 3, 3), dict(groups=2, padding=1)),
    ("depthwise", (2, 6, 9, 8), (6, 1, 3, 3), dict(groups=6, padding=1)),
    ("depthwise-x2", (1, 4, 8, 8), (8, 1, 3, 3), dict(groups=4)),
    ("1x1", (2, 16, 5, 6), (8, 16, 1, 1), dict()),
    ("1x1-stride2", (1, 8, 7, 7), (4, 8, 1, 1), dict(stride=2)),
    ("1x5", (1, 3, 6, 9), (2, 3, 1, 5), dict(padding=(0, 2))),
    ("7x7-s2-stem", (1, 3, 17, 17), (8, 3, 7, 7), dict(stride=2, padding=3)),
    ("kernel-eq-input", (1, 2, 3, 3), (2, 2, 3, 3), dict()),
    ("1-pixel", (1, 3, 1, 1), (2, 3, 1, 1), dict()),
    ("1x1-output-3x3-pad", (1, 3, 1, 1), (2, 3, 3, 3), dict(padding=1)),
    ("wide-channels", (1, 40, 6, 6), (24, 40, 3, 3), dict(padding=1)),
]


def supports(alg, x_shape, w_shape, kw, dtype=np.float32):
    p = normalize(x_shape, w_shape, None, np.dtype(dtype), **kw)
    return get("cpu", alg).supports(p) is None


# Every (case, algorithm) pair the algorithm supports; unsupported pairs are
# covered by test_property_random_configs, which expects UnsupportedError.
GRID_PAIRS = [pytest.param(case, alg, id=f"{case[0]}-{alg}") for case in GRID for alg in CONCRETE
              if supports(alg, case[1], case[2], case[3])]


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case,alg", GRID_PAIRS)
def test_grid(rng, case, alg, dtype, layout):
    _, xs, ws, kw = case
    x, w, b = random_problem(rng, xs, ws, dtype)
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kw)
    xin = x if layout == "NCHW" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    copies = [a.copy() for a in (xin, w, b)]
    y = fastconv.conv2d(xin, w, b, layout=layout, algorithm=alg, **kw)
    for a, c in zip((xin, w, b), copies):  # inputs never modified
        np.testing.assert_array_equal(a, c)
    assert y.dtype == dtype
    if layout == "NHWC":
        y = y.transpose(0, 3, 1, 2)
    assert y.shape == ref.shape
    assert rel_err(y, ref) <= TOLERANCE[(alg, np.dtype(dtype).name)]
    bound = accuracy.error_bound(alg, x, w, b, **kw)
    assert np.all(np.abs(y - ref) <= bound)


@pytest.mark.parametrize("alg", ("auto", "winograd") + CONCRETE)
def test_noncontiguous_and_negative_stride_views(rng, alg):
    base = rng.standard_normal((3, 10, 14, 12)).astype(np.float32)
    x = base[::2, ::3, ::-1, 1::1][:, :, :, ::-1]  # (2, 4, 14, 11) strided, reversed view
    wbase = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    w = wbase[:, ::2, ::-1]
    assert not x.flags.c_contiguous and not w.flags.c_contiguous
    y = fastconv.conv2d(x, w, padding=1, algorithm=alg)
    ref = reference.conv2d(np.array(x, np.float64), np.array(w, np.float64), padding=1)
    assert rel_err(y, ref) < 2e-4


def test_array_likes_and_unbatched(rng):
    x = rng.standard_normal((2, 5, 5)).tolist()
    w = rng.standard_normal((3, 2, 3, 3)).tolist()
    y = fastconv.conv2d(x, w, [0.5, 1.0, -1.0])
    assert y.shape == (3, 3, 3) and y.dtype == np.float64
    ref = reference.conv2d(np.array(x)[None], np.array(w), np.array([0.5, 1.0, -1.0]))[0]
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    y_nhwc = fastconv.conv2d(np.array(x).transpose(1, 2, 0), w, [0.5, 1.0, -1.0], layout="NHWC")
    np.testing.assert_allclose(y_nhwc, ref.transpose(1, 2, 0), rtol=1e-12, atol=1e-12)


def test_dtype_promotion(rng):
    x32 = rng.standard_normal((1, 2, 6, 6)).astype(np.float32)
    w64 = rng.standard_normal((3, 2, 3, 3))
    y = fastconv.conv2d(x32, w64)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, reference.conv2d(x32.astype(np.float64), w64), rtol=1e-12)
    assert fastconv.conv2d(x32, w64.astype(np.float32), np.zeros(3)).dtype == np.float64


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_out_argument(rng, layout):
    x, w, b = random_problem(rng, (2, 4, 6, 6), (3, 4, 3, 3))
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    expect = fastconv.conv2d(x, w, b, layout=layout)
    out = np.full(expect.shape, np.nan, np.float32)
    assert fastconv.conv2d(x, w, b, layout=layout, out=out) is out
    np.testing.assert_array_equal(out, expect)
    # a strided out view is filled in place
    big = np.full((2,) + expect.shape, np.nan, np.float32)
    view = big[1]
    assert fastconv.conv2d(x, w, b, layout=layout, out=view) is view
    np.testing.assert_array_equal(big[1], expect)
    assert np.isnan(big[0]).all()


def test_out_aliasing_input(rng):
    # out may share memory with x: the result must still be the convolution of the old x
    x = rng.standard_normal((1, 2, 5, 5)).astype(np.float32)
    w = rng.standard_normal((2, 2, 1, 1)).astype(np.float32)
    expect = reference.conv2d(x.astype(np.float64), w.astype(np.float64)).astype(np.float32)
    fastconv.conv2d(x, w, out=x)
    np.testing.assert_allclose(x, expect, rtol=1e-5, atol=1e-6)


def test_empty_batch():
    y = fastconv.conv2d(np.zeros((0, 3, 5, 5), np.float32), np.zeros((2, 3, 3, 3), np.float32))
    assert y.shape == (0, 2, 3, 3)


def test_algorithms_listing():
    names = fastconv.algorithms()
    assert names[0] == "auto"
    assert set(CONCRETE + ("winograd",)) <= set(names)
    with pytest.raises(ValueError, match="device must be 'cpu' or 'cuda'"):
        fastconv.algorithms("tpu")


def test_auto_never_raises_and_winograd_alias():
    x = np.ones((1, 2, 9, 9), np.float32)
    for w_shape, kw in [((2, 2, 5, 5), {}), ((2, 2, 3, 3), dict(stride=2)),
                        ((2, 2, 3, 3), dict(dilation=2)), ((2, 2, 3, 3), {})]:
        fastconv.conv2d(x, np.ones(w_shape, np.float32), algorithm="auto", **kw)
    y = fastconv.conv2d(x, np.ones((2, 2, 3, 3), np.float32), algorithm="winograd")
    np.testing.assert_allclose(y, 18.0, rtol=1e-6)


#: The auto rule's stored choices hold for the blocking it was fitted with (AVX-512's 32
#: registers: F(4x4)'s stream schedule in groups of 4 tiles); other targets choose by the same
#: model with their own register blocks.
FITTED_TARGET = pytest.mark.skipif(simd.TARGET.isa != "avx512",
                                   reason="choices fitted for AVX-512's register blocking")


@FITTED_TARGET
@pytest.mark.parametrize("x_shape, C, expected", [
    ((1, 512, 7, 7), 512, "winograd_f4x4_3x3"),   # one 7x7 image: F(4x4) streams its kernels
    ((2, 256, 7, 7), 256, "winograd_f4x4_3x3"),   # two images (8 tiles): still streams
    ((4, 256, 7, 7), 256, "winograd_f4x4_3x3"),   # 16 tiles: reads U, and the tiles outweigh it
    ((1, 384, 6, 6), 384, "winograd_f4x4_3x3"),
    ((1, 256, 14, 14), 256, "winograd_f4x4_3x3"),
    ((1, 64, 56, 56), 64, "winograd_f4x4_3x3"),
    ((1, 512, 4, 4), 512, "winograd_f2x2_3x3"),     # one 4x4 tile: F(2x2)'s 4 tiles cost less
    ((1, 1024, 3, 3), 1024, "winograd_f2x2_3x3"),   # under 6x6, but 256 channels or more
    ((1, 128, 4, 4), 128, "direct"),                # under 6x6, one tile
    ((4, 128, 3, 3), 128, "winograd_f4x4_3x3"),     # ... but four: the stream arm
    ((2, 128, 5, 5), 128, "direct"),                # 8 tiles on 5x5 maps: mostly padding
    ((1, 96, 7, 7), 96, "winograd_f4x4_3x3"),       # 64-127 channels: one group of tiles ...
    ((2, 96, 7, 7), 96, "direct"),                  # ... not two
    ((1, 64, 7, 7), 64, "direct"),                  # ... and at least 8192 pairs of channels
    ((1, 512, 2, 2), 512, "direct"),                # under 3x3
    ((1, 96, 11, 11), 96, "direct"),                # few channels on a small map
    ((1, 64, 28, 28), 64, "direct"),                # stride 2 below
])
def test_auto_rule_3x3_clauses(x_shape, C, expected):
    """The documented clauses of fastconv.cpu.auto_rule (including the small-map cost model)."""
    from fastconv.cpu import auto_rule
    stride = 2 if expected == "direct" and x_shape[2] == 28 else 1
    p = normalize(x_shape, (C, C, 3, 3), None, np.float32, padding=1, stride=stride)
    assert auto_rule(p) == expected


@FITTED_TARGET
@pytest.mark.parametrize("x_shape, C, expected", [
    ((1, 16, 8, 8), 16, "winograd_f4x4_3x3"),      # 8x8 and more: F(4x4)
    ((1, 512, 7, 7), 512, "winograd_f4x4_3x3"),    # F(4x4) streams its kernels
    ((1, 16, 7, 7), 16, "winograd_f2x2_3x3"),      # no stream schedule: the cost model's F(2x2)
    ((1, 512, 3, 3), 512, "winograd_f2x2_3x3"),    # one 4x4 tile
])
def test_winograd_alias_tile_size(x_shape, C, expected):
    """algorithm="winograd": F(4x4) from 8x8 outputs, below that the small-map cost model."""
    from fastconv.cpu import winograd_rule
    p = normalize(x_shape, (C, C, 3, 3), None, np.float32, padding=1)
    assert winograd_rule(p) == expected


@pytest.mark.parametrize("x_shape, K, expected", [
    ((1, 3, 224, 224), 64, "winograd_f4x4_3x3"),   # VGG-16 conv1_1
    ((1, 4, 112, 112), 20, "winograd_f4x4_3x3"),   # 20+ outputs from 100 wide
    ((1, 2, 128, 128), 64, "winograd_f4x4_3x3"),
    ((1, 3, 36, 36), 40, "winograd_f4x4_3x3"),     # 40+ outputs from 33 wide
    ((1, 3, 56, 56), 32, "direct"),
    ((1, 3, 224, 224), 16, "direct"),               # too few outputs to share the transforms
    ((8, 3, 32, 32), 64, "direct"),                 # 8 tiles a row: half-empty tile vectors
    ((1, 1, 224, 224), 64, "direct"),               # one channel: direct
])
def test_auto_rule_few_channels(x_shape, K, expected):
    """Clause 2c of fastconv.cpu.auto_rule: the few-channel Winograd schedule."""
    from fastconv.cpu import auto_rule
    p = normalize(x_shape, (K, x_shape[1], 3, 3), None, np.float32, padding=1)
    assert auto_rule(p) == expected


# --- non-finite values ----------------------------------------------------------------------

NONFINITE = {"pad1": dict(padding=1), "groups": dict(padding=((2, 0), (0, 1)), groups=2),
             "s2d2": dict(stride=2, dilation=2, padding=2)}
NF_X = (2, 4, 12, 13)


def _nf_w(kw):
    return (6, 4 // kw.get("groups", 1), 3, 3)


@pytest.mark.parametrize("alg,kw", [pytest.param(a, kw, id=f"{name}-{a}") for name, kw in NONFINITE.items()
                                    for a in CONCRETE if supports(a, NF_X, _nf_w(kw), kw)])
def test_nonfinite_propagates_exactly(rng, alg, kw):
    xs, ws = NF_X, _nf_w(kw)
    x, w, b = random_problem(rng, xs, ws, np.float32)
    x[0, 1, 3, 4] = np.nan
    x[1, 2, 9, 0] = np.inf
    x[1, 3, 0, 12] = -np.inf
    bad = ~np.isfinite(x)
    # outputs whose receptive field holds a non-finite input: the convolution of the indicator
    reach = reference.conv2d(bad.astype(np.float64), np.ones(ws), **kw) > 0
    y = fastconv.conv2d(x, w, b, algorithm=alg, **kw)
    np.testing.assert_array_equal(~np.isfinite(y), reach)
    clean = np.where(bad, 0, x).astype(np.float64)
    ref = reference.conv2d(clean, w.astype(np.float64), b.astype(np.float64), **kw)
    np.testing.assert_allclose(y[~reach], ref[~reach], rtol=2e-4, atol=2e-4)


def test_nonfinite_weights(rng):
    x, w, _ = random_problem(rng, (1, 2, 8, 8), (2, 2, 3, 3))
    w[1, 0, 1, 1] = np.inf
    for alg in CONCRETE:
        y = fastconv.conv2d(x, w, algorithm=alg)
        assert np.isfinite(y[:, 0]).all() and not np.isfinite(y[:, 1]).any()


def test_huge_values_winograd_falls_back(rng):
    # F(4x4,3x3) transforms multiply by up to 8*5*... : finite inputs near the float32 limit
    # would overflow inside the transform; the result must equal the direct sum instead.
    x = np.full((1, 1, 8, 8), 1e37, np.float32)
    x[0, 0, ::2] = -1e37
    w = np.ones((1, 1, 3, 3), np.float32) * 0.1
    y = fastconv.conv2d(x, w, algorithm="winograd_f4x4_3x3")
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, ref, rtol=1e-5)


# --- threads ----------------------------------------------------------------------------------

def test_concurrent_python_threads(rng):
    problems = [random_problem(rng, (2, 8, 12, 12), (8, 8, 3, 3)) for _ in range(4)]
    algs = ["direct", "im2col", "winograd_f4x4_3x3", "auto"]
    serial = {(i, a): fastconv.conv2d(x, w, b, padding=1, algorithm=a)
              for i, (x, w, b) in enumerate(problems) for a in algs}
    results, errors = {}, []

    def worker(i, a):
        try:
            x, w, b = problems[i]
            for _ in range(3):
                results[(i, a)] = fastconv.conv2d(x, w, b, padding=1, algorithm=a)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=key) for key in serial]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors
    for key, y in serial.items():
        np.testing.assert_array_equal(results[key], y)


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
@pytest.mark.parametrize("alg", CONCRETE)
def test_thread_count_independent(rng, alg):
    x, w, b = random_problem(rng, (3, 16, 13, 11), (16, 16, 3, 3))
    before = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        y1 = fastconv.conv2d(x, w, b, padding=1, algorithm=alg)
        numba.set_num_threads(2)
        y2 = fastconv.conv2d(x, w, b, padding=1, algorithm=alg)
    finally:
        numba.set_num_threads(before)
    np.testing.assert_array_equal(y1, y2)


# --- connection tables ------------------------------------------------------------------------

@pytest.mark.parametrize("alg", ["auto", "direct", "im2col", "winograd"])
def test_connections_equal_masked_weights(rng, alg):
    x, w, b = random_problem(rng, (2, 6, 14, 14), (16, 6, 3, 3))
    table = rng.random((16, 6)) < 0.5
    table[np.arange(16), np.arange(16) % 6] = True
    w_nan = w.copy()
    w_nan[~table] = np.nan  # ignored, not multiplied
    y = fastconv.conv2d(x, w_nan, b, connections=table, algorithm=alg)
    ref = reference.conv2d(x.astype(np.float64), np.where(table[:, :, None, None], w, 0).astype(np.float64),
                           b.astype(np.float64))
    assert rel_err(y, ref) < 2e-4
    np.testing.assert_array_equal(w_nan[~table], np.nan)  # input untouched


def test_connections_with_groups(rng):
    x, w, _ = random_problem(rng, (1, 4, 7, 7), (6, 2, 3, 3), bias=False)
    table = np.zeros((6, 4), bool)
    table[:3, :2] = [[1, 0], [1, 1], [0, 1]]
    table[3:, 2:] = [[1, 1], [0, 1], [1, 0]]
    y = fastconv.conv2d(x, w, groups=2, connections=table)
    mask = np.array([[1, 0], [1, 1], [0, 1], [1, 1], [0, 1], [1, 0]], bool)
    ref = reference.conv2d(x.astype(np.float64), (w * mask[:, :, None, None]).astype(np.float64), groups=2)
    assert rel_err(y, ref) < 1e-5


# --- property test over random configurations -------------------------------------------------

@st.composite
def configs(draw):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    Cg = draw(st.integers(1, 4))
    Kg = draw(st.integers(1, 3))
    R, S = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = draw(st.one_of(st.sampled_from(["valid", "same", "full"]),
                          st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)),
                                    st.tuples(st.integers(0, 2), st.integers(0, 2)))))
    H = draw(st.integers((R - 1) * dh + 1, 12))
    W = draw(st.integers((S - 1) * dw + 1, 12))
    N = draw(st.integers(1, 2))
    layout = draw(st.sampled_from(["NCHW", "NHWC"]))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**31))
    return dict(x=(N, groups * Cg, H, W), w=(groups * Kg, Cg, R, S), groups=groups,
                stride=(sh, sw), dilation=(dh, dw), padding=pads, layout=layout, dtype=dtype,
                bias=bias, seed=seed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_property_random_configs(cfg):
    rng = np.random.default_rng(cfg["seed"])
    kw = dict(stride=cfg["stride"], dilation=cfg["dilation"], padding=cfg["padding"],
              groups=cfg["groups"])
    x, w, b = random_problem(rng, cfg["x"], cfg["w"], cfg["dtype"], bias=cfg["bias"])
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64),
                           None if b is None else b.astype(np.float64), **kw)
    xin = x if cfg["layout"] == "NCHW" else x.transpose(0, 2, 3, 1)
    for alg in ("auto",) + CONCRETE:
        if alg != "auto" and not supports(alg, cfg["x"], cfg["w"], kw):
            with pytest.raises(fastconv.UnsupportedError):
                fastconv.conv2d(xin, w, b, layout=cfg["layout"], algorithm=alg, **kw)
            continue
        y = fastconv.conv2d(xin, w, b, layout=cfg["layout"], algorithm=alg, **kw)
        if cfg["layout"] == "NHWC":
            y = y.transpose(0, 3, 1, 2)
        name = alg if alg != "auto" else "winograd_f4x4_3x3"  # loosest bound auto may use
        assert rel_err(y, ref) <= TOLERANCE[(name, np.dtype(cfg["dtype"]).name)]


def test_tuned_algorithm(rng, tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    x, w, b = random_problem(rng, (1, 8, 10, 10), (8, 8, 3, 3))
    y = fastconv.conv2d(x, w, b, padding=1, algorithm="tuned")
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), padding=1)
    assert rel_err(y, ref) <= TOLERANCE[("winograd_f4x4_3x3", "float32")]
    assert (tmp_path / "tuning.json").exists()
    # unsupported-by-some configurations never raise under "tuned"
    fastconv.conv2d(x, w[:, :, :2], padding=1, stride=2, algorithm="tuned")
