"""16-bit inputs (fastconv._half): float16 and bfloat16 computed in float32, rounded back.

Checked against the float64 reference within the stated bound (the float32
algorithm's, plus the final rounding to 16 bits), and bitwise against the float32
call on the widened arrays.
"""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import _half, accuracy, reference

from conftest import CONCRETE

ml_dtypes = pytest.importorskip("ml_dtypes")
HALVES = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]


def _arrays(rng, dtype, x_shape=(2, 16, 9, 10), w_shape=(12, 16, 3, 3)):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = (rng.standard_normal(w_shape) / 12).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("alg", CONCRETE)
@pytest.mark.parametrize("dtype", HALVES, ids=lambda d: d.name)
def test_every_algorithm_within_bound(rng, alg, dtype):
    x, w, b = _arrays(rng, dtype)
    x0 = x.copy()
    y = fastconv.conv2d(x, w, b, padding=1, algorithm=alg)
    assert y.dtype == dtype and np.array_equal(x, x0)
    x32, w32, b32 = (a.astype(np.float32) for a in (x, w, b))
    y32 = fastconv.conv2d(x32, w32, b32, padding=1, algorithm=alg)
    assert np.array_equal(fastconv.conv2d(x, w, b, padding=1, algorithm=alg,
                                          out_dtype=np.float32), y32)
    assert np.array_equal(y, y32.astype(dtype))
    ref = reference.conv2d(x32.astype(np.float64), w32.astype(np.float64),
                           b32.astype(np.float64), padding=1)
    bound = _half.error_bound(accuracy.error_bound(alg, x32, w32, b32, padding=1), ref, dtype)
    assert (np.abs(y.astype(np.float64) - ref) <= bound).all()


@pytest.mark.parametrize("dtype", HALVES, ids=lambda d: d.name)
def test_layouts_epilogue_and_out(rng, dtype):
    x, w, b = _arrays(rng, dtype)
    xn = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    r = rng.standard_normal((2, 9, 10, 12)).astype(dtype)
    y = fastconv.conv2d(xn, w, b, padding=1, layout="NHWC", activation="relu", residual=r)
    y32 = fastconv.conv2d(xn.astype(np.float32), w.astype(np.float32), b.astype(np.float32),
                          padding=1, layout="NHWC", activation="relu",
                          residual=r.astype(np.float32))
    assert y.dtype == dtype and np.array_equal(y, y32.astype(dtype))
    out = np.empty(y.shape, dtype)
    assert fastconv.conv2d(xn, w, b, padding=1, layout="NHWC", activation="relu", residual=r,
                           out=out) is out
    assert np.array_equal(out, y)
    # unbatched; out=residual
    r1 = r[0].copy()
    assert fastconv.conv2d(xn[0], w, b, padding=1, layout="NHWC", activation="relu",
                           residual=r1, out=r1) is r1
    assert np.array_equal(r1, y[0])
    with pytest.raises(ValueError, match="out must have dtype"):
        fastconv.conv2d(xn, w, b, padding=1, layout="NHWC", out=np.empty(y.shape, np.float32))


def test_dtype_rules(rng):
    x, w, b = _arrays(rng, np.float16)
    bf = ml_dtypes.bfloat16
    y = fastconv.conv2d(x, w.astype(np.float32), padding=1)  # float16 with float32: float32
    assert y.dtype == np.float32
    assert np.array_equal(y, fastconv.conv2d(x.astype(np.float32), w.astype(np.float32),
                                             padding=1))
    assert fastconv.conv2d(x, w.astype(np.float64), padding=1).dtype == np.float64
    with pytest.raises(TypeError, match="float16 and bfloat16"):
        fastconv.conv2d(x, w.astype(bf), padding=1)
    with pytest.raises(ValueError, match="out_dtype"):
        fastconv.conv2d(x, w, padding=1, out_dtype=np.float64)
    with pytest.raises(ValueError, match="out_dtype"):
        fastconv.conv2d(x.astype(np.float32), w.astype(np.float32), out_dtype=np.float16)
    assert fastconv.conv2d(x.astype(np.float32), w.astype(np.float32),
                           out_dtype=np.float32).dtype == np.float32
    with pytest.raises(TypeError, match="out_dtype"):
        fastconv.conv2d(x, w, out_dtype="not a dtype")
    with pytest.raises(TypeError, match="x must have dtype"):
        fastconv.conv2d(x.astype(np.int16), w)


def test_float16_overflow_is_inf():
    x = np.full((1, 4, 3, 3), 250.0, np.float16)
    w = np.full((1, 4, 3, 3), 10.0, np.float16)  # 36 products of 2500: 90000 > 65504
    y = fastconv.conv2d(x, w)
    assert y.dtype == np.float16 and np.isposinf(y).all()
    assert fastconv.conv2d(x, w, out_dtype=np.float32)[0, 0, 0, 0] == 90000.0


@pytest.mark.parametrize("dtype_name", ["bfloat16", "float16"])
def test_torch_half_tensors(rng, dtype_name):
    torch = pytest.importorskip("torch")
    import fastconv.torch as ft

    dt = getattr(torch, dtype_name)
    x = torch.tensor(rng.standard_normal((2, 3, 6, 5)), dtype=dt, requires_grad=True)
    w = torch.tensor(rng.standard_normal((4, 3, 3, 3)) / 5, dtype=dt, requires_grad=True)
    y = ft.conv2d(x, w, padding=1, activation="relu")
    assert y.dtype == dt
    xf, wf = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    want = torch.relu(torch.nn.functional.conv2d(xf, wf, padding=1))
    torch.testing.assert_close(y, want.to(dt), rtol=0, atol=0)
    g = torch.randn(y.shape, dtype=dt)
    gx, gw = torch.autograd.grad(y, (x, w), g)
    ex, ew = torch.autograd.grad(want, (xf, wf), g.float())
    assert gx.dtype == dt and gw.dtype == dt
    torch.testing.assert_close(gx.float(), ex, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(gw.float(), ew, rtol=1e-2, atol=1e-2)
    with pytest.raises(TypeError, match="weight must be too"):
        ft.conv2d(x, w.float())


@pytest.mark.parametrize("dtype", HALVES, ids=lambda d: d.name)
def test_conversions_match_numpy_and_ml_dtypes_bitwise(rng, dtype):
    from fastconv.cpu import convert16

    x = np.concatenate([rng.standard_normal(50_000) * 10.0 ** rng.integers(-9, 9, 50_000),
                        [np.inf, -np.inf, np.nan, 0.0, -0.0, 65504.0, 65519.0, 65520.0,
                         6e-8, 2.9e-8, 3.0e-8, 3.4e38, -3.4e38, 1e-40]]).astype(np.float32)
    with np.errstate(over="ignore"):
        want = x.astype(dtype)
    got = convert16.narrow(x, dtype)
    assert got.dtype == dtype
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))
    wide = convert16.widen(want[::3])  # a strided 16-bit view
    np.testing.assert_array_equal(wide, want[::3].astype(np.float32))


@pytest.mark.parametrize("dtype", HALVES, ids=lambda d: d.name)
def test_accuracy_error_bound_of_16_bit_calls(rng, dtype):
    from fastconv import _epilogue

    x, w, b = _arrays(rng, dtype, (1, 6, 8, 8), (5, 6, 3, 3))
    r = rng.standard_normal((1, 5, 8, 8)).astype(dtype)
    y = fastconv.conv2d(x, w, b, padding=1, activation="silu", residual=r)
    bound = accuracy.error_bound("direct", x, w, b, padding=1, activation="silu", residual=r)
    z = reference.conv2d(*(a.astype(np.float64) for a in (x, w, b)), padding=1) + r
    assert (np.abs(y.astype(np.float64) - _epilogue.reference(z, "silu")) <= bound).all()
    bound32 = accuracy.error_bound("direct", *(a.astype(np.float32) for a in (x, w, b)),
                                   padding=1, activation="silu", residual=r.astype(np.float32))
    assert (bound > bound32).all()  # the rounding to 16 bits is part of it
