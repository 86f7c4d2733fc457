"""Fused epilogues: ``conv2d(..., activation=, residual=)`` = ``act(conv + bias + residual)``.

Every algorithm and every direct path (those that fuse the epilogue into their
stores and those that apply it after) is checked against the float64 reference
within the stated bound (:func:`fastconv._epilogue.error_bound`), and relu /
relu6 bitwise against the unfused numpy expression on the same convolution.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import _epilogue as E
from fastconv import accuracy, reference

from conftest import CONCRETE, direct_bound, direct_params

ACTS = (None, "relu", "relu6", "silu", "gelu")


def _reference(x, w, b, r, act, **kw):
    z = reference.conv2d(x.astype(np.float64), w.astype(np.float64),
                         None if b is None else b.astype(np.float64), **kw)
    if r is not None:
        z = z + r
    return z, E.reference(z, act)


def _check_bound(y, z, want, conv_bound, act, dtype):
    bound = E.error_bound(conv_bound, z, act, dtype) * (1 + 1e-9) + np.finfo(np.float64).tiny
    if np.dtype(dtype) == np.float64:  # the reference's own rounding
        bound = 2 * bound + 1e-15 * np.abs(want)
    err = np.abs(y.astype(np.float64) - want)
    bad = ~(err <= bound)
    assert not bad.any(), f"{bad.sum()} outputs exceed the bound; worst {err[bad].max()}"


def _unfused(y0, r, act):
    """The same epilogue in numpy on an unfused result (same dtype, same rounding order)."""
    v = y0 if r is None else y0 + r
    if act == "relu":
        return np.where(v < 0, v.dtype.type(0), v)
    if act == "relu6":
        return np.where(v < 0, v.dtype.type(0), np.where(v > 6, v.dtype.type(6), v))
    return v


@pytest.mark.parametrize("alg", CONCRETE + ("auto",))
@pytest.mark.parametrize("act", ACTS)
def test_every_algorithm_within_bound(rng, alg, act):
    # 3x3 stride 1 with 32 channels: every algorithm runs it (Winograd's vectorised path).
    x = rng.standard_normal((2, 32, 10, 9)).astype(np.float32)
    w = (rng.standard_normal((20, 32, 3, 3)) / 17).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    kw = dict(padding=1)
    y0 = fastconv.conv2d(x, w, b, algorithm=alg, **kw)
    r = rng.standard_normal(y0.shape).astype(np.float32)
    r_copy = r.copy()
    y = fastconv.conv2d(x, w, b, algorithm=alg, activation=act, residual=r, **kw)
    assert np.array_equal(r, r_copy)  # the residual is never modified
    z, want = _reference(x, w, b, r, act, **kw)
    conv_bound = accuracy.error_bound("direct" if alg == "auto" else alg, x, w, b, **kw)
    _check_bound(y, z, want, conv_bound, act, np.float32)
    if act in (None, "relu", "relu6"):
        assert np.array_equal(y, _unfused(y0, r, act))


@pytest.mark.parametrize("path, dtype", [
    ("blocked", np.float32), ("blocked", np.float64), ("pointwise", np.float32),
    ("channels", np.float32), ("width", np.float32), ("simple", np.float32),
    ("simple", np.float64)])
def test_direct_paths(rng, path, dtype):
    # The fused paths (blocked, pointwise, channels) and those applied after (width, simple).
    from fastconv.cpu import direct

    if path == "pointwise":
        N, C, H, W, K, R, S, kw = 2, 24, 19, 21, 10, 1, 1, {}  # several pixel blocks
    elif path == "channels":
        N, C, H, W, K, R, S, kw = 2, 19, 6, 7, 38, 3, 3, dict(groups=19, padding=1)
    else:
        N, C, H, W, K, R, S, kw = 2, 5, 9, 11, 20, 3, 3, dict(padding=1, stride=(1, 2))
    groups = kw.get("groups", 1)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((K, C // groups, R, S)).astype(dtype)
    b = rng.standard_normal(K).astype(dtype)
    p = direct_params(x, w, b, **kw)
    y0 = np.full(p.output_shape, np.nan, dtype)
    direct.run(x, w, b, p, y0, path=path)
    r = (4 * rng.standard_normal(p.output_shape)).astype(dtype)
    for act in ACTS[1:]:
        y = np.full(p.output_shape, np.nan, dtype)  # unwritten outputs fail loudly
        direct.run(x, w, b, p, y, path=path, epi=E.Epilogue(act, r))
        z, want = _reference(x, w, b, r, act, **kw)
        _check_bound(y, z, want, direct_bound(x, w, b, dtype, **kw), act, dtype)
        if act in ("relu", "relu6"):
            assert np.array_equal(y, _unfused(y0, r, act))


@pytest.mark.parametrize("alg", ["winograd_f2x2_3x3", "winograd_f4x4_3x3"])
def test_winograd_dilated_and_tile_row(rng, alg):
    # Dilation runs through the phases (epilogue after them); 3 channels take the tile-row path.
    for C, kw in ((16, dict(padding=2, dilation=2)), (3, dict(padding=1))):
        x = rng.standard_normal((1, C, 12, 13)).astype(np.float32)
        w = (rng.standard_normal((8, C, 3, 3)) / 7).astype(np.float32)
        b = rng.standard_normal(8).astype(np.float32)
        y0 = fastconv.conv2d(x, w, b, algorithm=alg, **kw)
        r = rng.standard_normal(y0.shape).astype(np.float32)
        y = fastconv.conv2d(x, w, b, algorithm=alg, activation="relu6", residual=r, **kw)
        assert np.array_equal(y, _unfused(y0, r, "relu6"))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("batched", [True, False])
def test_layouts_and_out(rng, layout, batched):
    x = rng.standard_normal((2, 9, 8, 6)).astype(np.float64)  # NCHW
    w = rng.standard_normal((12, 9, 3, 3)) / 9
    b = rng.standard_normal(12)
    z, want = _reference(x, w, b, None, None, padding=1)
    r = rng.standard_normal(z.shape)
    want = E.reference(z + r, "silu")
    if layout == "NHWC":
        x, r, want = (a.transpose(0, 2, 3, 1) for a in (x, r, want))
    if not batched:
        x, r, want = x[1], r[1], want[1]
    y = fastconv.conv2d(x, w, b, padding=1, layout=layout, activation="silu", residual=r)
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    out = np.empty_like(want)
    assert fastconv.conv2d(x, w, b, padding=1, layout=layout, activation="silu", residual=r,
                           out=out) is out
    np.testing.assert_array_equal(out, y)
    # out is the residual itself: conv added into it, then the activation
    rr = r.copy()
    assert fastconv.conv2d(x, w, b, padding=1, layout=layout, activation="silu", residual=rr,
                           out=rr) is rr
    np.testing.assert_array_equal(rr, y)


def test_residual_of_other_dtype_and_strides(rng):
    x = rng.standard_normal((1, 32, 7, 7)).astype(np.float32)
    w = rng.standard_normal((20, 32, 3, 3)).astype(np.float32)
    r64 = rng.standard_normal((1, 7, 7, 20)).transpose(0, 3, 1, 2)  # float64, not contiguous
    y = fastconv.conv2d(x, w, padding=1, residual=r64, activation="relu", algorithm="direct")
    y0 = fastconv.conv2d(x, w, padding=1, algorithm="direct")
    assert y.dtype == np.float32
    assert np.array_equal(y, _unfused(y0, r64.astype(np.float32), "relu"))


def test_nonfinite_values_propagate(rng):
    x = rng.standard_normal((1, 16, 6, 6)).astype(np.float32)
    w = rng.standard_normal((16, 16, 1, 1)).astype(np.float32)
    r = np.zeros((1, 16, 6, 6), np.float32)
    r[0, 3, 2, 2], r[0, 5, 1, 4], r[0, 7, 0, 0] = np.nan, np.inf, -np.inf
    for act in ACTS[1:]:
        y = fastconv.conv2d(x, w, activation=act, residual=r)
        assert np.isnan(y[0, 3, 2, 2])  # relu(NaN) is NaN, not 0
        want = E.reference(np.array([np.inf, -np.inf]), act)
        np.testing.assert_array_equal(y[0, [5, 7], [1, 0], [4, 0]], want.astype(np.float32))
        finite = np.isfinite(r)
        assert np.isfinite(y[finite]).all()


def test_epilogue_without_residual_and_empty_batch(rng):
    x = rng.standard_normal((3, 5, 6, 6)).astype(np.float32)
    w = rng.standard_normal((7, 5, 2, 2)).astype(np.float32)
    y0 = fastconv.conv2d(x, w)
    assert np.array_equal(fastconv.conv2d(x, w, activation="relu"), _unfused(y0, None, "relu"))
    y = fastconv.conv2d(x[:0], w, activation="gelu", residual=np.zeros((0, 7, 5, 5)))
    assert y.shape == (0, 7, 5, 5)


def test_bad_arguments_name_them(rng):
    x = np.ones((1, 2, 5, 5), np.float32)
    w = np.ones((3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match="activation"):
        fastconv.conv2d(x, w, activation="tanh")
    with pytest.raises(TypeError, match="activation"):
        fastconv.conv2d(x, w, activation=1)
    with pytest.raises(ValueError, match="residual"):
        fastconv.conv2d(x, w, residual=np.ones((1, 3, 5, 5), np.float32))  # output is 3x3
    with pytest.raises(ValueError, match="residual"):
        fastconv.conv2d(x, w, residual=np.ones((3, 3, 3), np.float32))  # no broadcasting
    with pytest.raises(TypeError, match="residual"):
        fastconv.conv2d(x, w, residual=np.ones((1, 3, 3, 3), np.int32))


def test_plan_epilogue(rng):
    x = rng.standard_normal((2, 32, 10, 9)).astype(np.float32)
    w = rng.standard_normal((20, 32, 3, 3)).astype(np.float32)
    b = rng.standard_normal(20).astype(np.float32)
    conv = fastconv.plan(w, b, x_shape=x.shape, padding=1, activation="relu")
    r = rng.standard_normal((2, 20, 10, 9)).astype(np.float32)
    want = fastconv.conv2d(x, w, b, padding=1, algorithm=conv.algorithm, activation="relu",
                           residual=r)
    np.testing.assert_array_equal(conv(x, residual=r), want)
    np.testing.assert_array_equal(
        conv(x), fastconv.conv2d(x, w, b, padding=1, algorithm=conv.algorithm, activation="relu"))
    with pytest.raises(ValueError, match="residual"):
        conv(x, residual=r[:1])
    with pytest.raises(ValueError, match="activation"):
        fastconv.plan(w, x_shape=x.shape, activation="swish")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTS[1:])
def test_error_bound_of_activation(act, dtype):
    # The activations' own rounding (the kernels' exp and erf included) stays within
    # ACTIVATION_ULPS u |v| of the float64 (scipy) value; inf, -inf, NaN as the reference.
    from fastconv.cpu import epilogue

    v = np.concatenate([np.linspace(-30, 30, 60001), np.geomspace(1e-8, 800, 6000),
                        -np.geomspace(1e-8, 800, 6000)]).astype(dtype)
    y = v.copy()
    epilogue.apply(y, E.Epilogue(act))
    want = E.reference(v.astype(np.float64), act)
    u = np.finfo(dtype).eps / 2
    if dtype == np.float64:  # the reference's own rounding (numpy's exp, scipy's erf)
        u *= 2
    bound = E.ACTIVATION_ULPS[act] * u * np.abs(v.astype(np.float64)) + 1e-300
    assert (np.abs(y - want) <= bound).all()
    special = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0], dtype)
    y = special.copy()
    epilogue.apply(y, E.Epilogue(act))
    np.testing.assert_array_equal(y, E.reference(special, act).astype(dtype))


# --- the PyTorch adapter ------------------------------------------------------------------

@pytest.mark.parametrize("act", ACTS)
def test_torch_functional_values_and_gradients(rng, act):
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    import fastconv.torch as ft

    x = torch.tensor(rng.standard_normal((2, 3, 6, 5)), requires_grad=True)
    w = torch.tensor(rng.standard_normal((4, 3, 3, 3)) / 5, requires_grad=True)
    b = torch.tensor(rng.standard_normal(4), requires_grad=True)
    r = torch.tensor(rng.standard_normal((2, 4, 6, 5)), requires_grad=True)

    def theirs(x, w, b, r):
        z = F.conv2d(x, w, b, padding=1) + r
        return z if act is None else {"relu": F.relu, "relu6": F.relu6, "silu": F.silu,
                                      "gelu": F.gelu}[act](z)

    def ours(x, w, b, r):
        return ft.conv2d(x, w, b, padding=1, activation=act, residual=r)

    with torch.no_grad():  # the fused call
        torch.testing.assert_close(ours(x, w, b, r), theirs(x, w, b, r), rtol=1e-12, atol=1e-12)
    y, want = ours(x, w, b, r), theirs(x, w, b, r)
    g = torch.tensor(rng.standard_normal(y.shape))
    got = torch.autograd.grad(y, (x, w, b, r), g)
    exp = torch.autograd.grad(want, (x, w, b, r), g)
    for a, e in zip(got, exp):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)
    if act in (None, "silu"):  # smooth: finite differences agree
        assert torch.autograd.gradcheck(ours, (x, w, b, r))


def test_torch_module_and_convert_fuse(rng):
    torch = pytest.importorskip("torch")
    import fastconv.torch as ft

    torch.manual_seed(0)
    conv = ft.Conv2d(3, 4, 3, padding=1, activation="relu6")
    assert "activation='relu6'" in repr(conv)
    x = torch.randn(2, 3, 7, 7)
    r = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        want = torch.nn.functional.relu6(torch.nn.functional.conv2d(x, conv.weight, conv.bias,
                                                                    padding=1) + r)
        torch.testing.assert_close(conv(x, r), want, rtol=1e-5, atol=1e-5)

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.Conv2d(8, 8, 1), torch.nn.GELU(),
                                torch.nn.Conv2d(8, 4, 3), torch.nn.GELU(approximate="tanh"),
                                torch.nn.Conv2d(4, 4, 1), torch.nn.Tanh())
    with torch.no_grad():
        want = model(x)
    keys = list(model.state_dict())
    ft.convert(model, fuse=True)
    assert [type(m).__name__ for m in model] == ["Conv2d", "Identity", "Conv2d", "Identity",
                                                 "Conv2d", "GELU", "Conv2d", "Tanh"]
    assert [m.activation for m in model if isinstance(m, ft.Conv2d)] == ["relu", "gelu", None,
                                                                          None]
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    loss = model(x).square().sum()
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(TypeError, match="fuse"):
        ft.convert(model, fuse="yes")
    with pytest.raises(ValueError, match="activation"):
        ft.Conv2d(3, 4, 3, activation="tanh")


def test_accuracy_error_bound_of_the_fused_call(rng):
    x = rng.standard_normal((1, 5, 8, 8)).astype(np.float32)
    w = rng.standard_normal((6, 5, 3, 3)).astype(np.float32)
    r = rng.standard_normal((1, 8, 8, 6)).astype(np.float32)  # NHWC
    xn = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    y = fastconv.conv2d(xn, w, padding=1, layout="NHWC", activation="gelu", residual=r)
    bound = accuracy.error_bound("direct", xn, w, padding=1, layout="NHWC", activation="gelu",
                                 residual=r)
    z = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    want = E.reference(z + r.transpose(0, 3, 1, 2), "gelu")
    assert bound.shape == want.shape
    assert (np.abs(y.transpose(0, 3, 1, 2) - want) <= bound).all()
    plain = accuracy.error_bound("direct", xn, w, padding=1, layout="NHWC")
    assert (bound > plain).all()
