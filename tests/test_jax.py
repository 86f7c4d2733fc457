"""fastconv.jax.conv2d against jax.lax.conv_general_dilated: values, gradients, jit, vmap."""

import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")
from jax import lax  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import fastconv  # noqa: E402
import fastconv.jax as fj  # noqa: E402


@pytest.fixture
def x64():
    """float64 in JAX for the duration of one test, then the previous setting."""
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", old)


def _lax(x, w, b, *, stride, padding, dilation, groups, layout):
    """The JAX spelling of the same convolution, bias added in JAX."""
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    stride = (stride, stride) if isinstance(stride, int) else stride
    dilation = (dilation, dilation) if isinstance(dilation, int) else dilation
    y = lax.conv_general_dilated(x, w, window_strides=stride, padding=padding,
                                 rhs_dilation=dilation, feature_group_count=groups,
                                 dimension_numbers=(layout, "OIHW", layout),
                                 precision=lax.Precision.HIGHEST)
    if b is not None:
        y = y + (b[None, :, None, None] if layout == "NCHW" else b)
    return y


def _rand(rng, shape, dtype=np.float64):
    return jnp.asarray(rng.standard_normal(shape).astype(dtype))


# (N, C, H, W), (K, C/groups, R, S), stride, padding, dilation, groups, layout
CASES = [
    ((2, 3, 7, 8), (4, 3, 3, 3), (1, 1), ((0, 0), (0, 0)), (1, 1), 1, "NCHW"),
    ((2, 3, 7, 8), (4, 3, 3, 3), (1, 1), "SAME", (1, 1), 1, "NCHW"),
    ((1, 2, 9, 7), (3, 2, 3, 2), (2, 1), ((1, 0), (2, 1)), (1, 1), 1, "NCHW"),
    ((2, 4, 8, 9), (6, 2, 3, 3), (1, 2), "same", (2, 1), 2, "NCHW"),
    ((1, 4, 9, 9), (4, 1, 3, 3), (2, 2), "SAME", (1, 1), 4, "NCHW"),   # depthwise, stride 2
    ((2, 3, 6, 7), (5, 3, 2, 3), (1, 1), "VALID", (2, 2), 1, "NHWC"),
    ((1, 6, 8, 8), (6, 2, 3, 3), (2, 1), ((2, 1), (0, 3)), (1, 2), 3, "NHWC"),
    ((1, 2, 10, 9), (3, 2, 4, 3), (3, 2), "SAME_LOWER", (1, 1), 1, "NCHW"),
    ((2, 2, 5, 5), (2, 2, 1, 1), (2, 2), "valid", (1, 1), 1, "NHWC"),
]


def _ids(case):
    x, w, s, pad, d, g, lay = case
    return f"x={'x'.join(map(str, x))}-w={'x'.join(map(str, w))}-s={s}-p={pad}-d={d}-g={g}-{lay}"


def _inputs(case, rng, dtype=np.float64):
    xs, ws, s, pad, d, g, lay = case
    if lay == "NHWC":
        xs = (xs[0], xs[2], xs[3], xs[1])
    return (_rand(rng, xs, dtype), _rand(rng, ws, dtype), _rand(rng, (ws[0],), dtype),
            dict(stride=s, padding=pad, dilation=d, groups=g, layout=lay))


@pytest.mark.parametrize("case", CASES, ids=[_ids(c) for c in CASES])
def test_values_and_grads_match_lax(case, x64):
    rng = np.random.default_rng(0)
    x, w, b, kw = _inputs(case, rng)
    y = fj.conv2d(x, w, b, **kw)
    y_ref = _lax(x, w, b, **kw)
    assert y.shape == y_ref.shape and y.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-12, atol=1e-12)

    # A non-uniform cotangent, so every gradient entry is weighted differently.
    ct = _rand(rng, y_ref.shape)
    grads = jax.grad(lambda x, w, b: jnp.vdot(ct, fj.conv2d(x, w, b, **kw)), argnums=(0, 1, 2))(x, w, b)
    grads_ref = jax.grad(lambda x, w, b: jnp.vdot(ct, _lax(x, w, b, **kw)), argnums=(0, 1, 2))(x, w, b)
    for name, g, g_ref in zip("xwb", grads, grads_ref):
        assert g.shape == g_ref.shape, name
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-11, atol=1e-11,
                                   err_msg=f"gradient of {name}")


GRAD_CASES = [CASES[2], CASES[3], CASES[6]]


@pytest.mark.parametrize("case", GRAD_CASES, ids=[_ids(c) for c in GRAD_CASES])
def test_check_grads_rev(case, x64):
    rng = np.random.default_rng(1)
    x, w, b, kw = _inputs(case, rng)
    check_grads(lambda x, w, b: fj.conv2d(x, w, b, **kw), (x, w, b), order=1, modes=["rev"],
                atol=1e-7, rtol=1e-7)


def test_float32_default():
    rng = np.random.default_rng(2)
    x, w, b, kw = _inputs(CASES[3], rng, np.float32)
    y = fj.conv2d(x, w, b, **kw)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y), np.asarray(_lax(x, w, b, **kw)), rtol=1e-5, atol=1e-5)
    gw = jax.grad(lambda w: fj.conv2d(x, w, b, **kw).sum())(w)
    gw_ref = jax.grad(lambda w: _lax(x, w, b, **kw).sum())(w)
    assert gw.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(gw), np.asarray(gw_ref), rtol=1e-4, atol=1e-4)


def test_mixed_dtypes_promote(x64):
    rng = np.random.default_rng(3)
    x = _rand(rng, (1, 2, 5, 5), np.float32)
    w = _rand(rng, (3, 2, 3, 3), np.float64)
    y = fj.conv2d(x, w)
    assert y.dtype == jnp.float64
    gx = jax.grad(lambda x: fj.conv2d(x, w).sum())(x)
    assert gx.dtype == jnp.float32   # the cotangent of x comes back in x's dtype
    np.testing.assert_allclose(np.asarray(y), np.asarray(fastconv.reference.conv2d(x, w)), rtol=1e-12)


def test_jit_matches_eager_and_numpy(x64):
    rng = np.random.default_rng(4)
    x, w, b, kw = _inputs(CASES[6], rng)
    f = jax.jit(lambda x, w, b: fj.conv2d(x, w, b, **kw))
    y = f(x, w, b)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(fj.conv2d(x, w, b, **kw)))
    np.testing.assert_allclose(np.asarray(y), fastconv.reference.conv2d(
        np.asarray(x), np.asarray(w), np.asarray(b), **kw), rtol=1e-12, atol=1e-12)
    # a second shape retraces with its own output shape
    x2 = _rand(rng, (3, 5, 6, 6))
    assert f(x2, w, b).shape == _lax(x2, w, b, **kw).shape
    gj = jax.jit(jax.grad(lambda w: fj.conv2d(x, w, b, **kw).sum()))(w)
    np.testing.assert_allclose(np.asarray(gj), np.asarray(jax.grad(lambda w: _lax(x, w, b, **kw).sum())(w)),
                               rtol=1e-11, atol=1e-11)


def test_vmap_over_inputs_weights_and_nested(x64):
    rng = np.random.default_rng(5)
    kw = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=2)
    w = _rand(rng, (6, 2, 3, 3))
    b = _rand(rng, (6,))
    xs = _rand(rng, (3, 2, 4, 7, 8))
    ws = _rand(rng, (3, 6, 2, 3, 3))
    f = lambda x, w: fj.conv2d(x, w, b, **kw)  # noqa: E731
    g = lambda x, w: _lax(x, w, b, layout="NCHW", **kw)  # noqa: E731
    for in_axes, args in (((0, None), (xs, w)), ((None, 0), (xs[0], ws)), ((0, 0), (xs, ws))):
        y = jax.jit(jax.vmap(f, in_axes=in_axes))(*args)
        np.testing.assert_allclose(np.asarray(y), np.asarray(jax.vmap(g, in_axes=in_axes)(*args)),
                                   rtol=1e-12, atol=1e-12, err_msg=str(in_axes))
    xss = _rand(rng, (2, 3, 1, 4, 7, 8))
    y = jax.vmap(jax.vmap(f, in_axes=(0, None)), in_axes=(0, None))(xss, w)
    y_ref = jax.vmap(jax.vmap(g, in_axes=(0, None)), in_axes=(0, None))(xss, w)
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-12, atol=1e-12)
    # vmap over the bias alone (callback loops), values and bias gradients
    bs = _rand(rng, (3, 6))
    yb = jax.vmap(lambda b: fj.conv2d(xs[0], w, b, **kw))(bs)
    np.testing.assert_allclose(np.asarray(yb), np.asarray(jax.vmap(
        lambda b: _lax(xs[0], w, b, layout="NCHW", **kw))(bs)), rtol=1e-12, atol=1e-12)
    gb = jax.vmap(jax.grad(lambda b: jnp.sum(fj.conv2d(xs[0], w, b, **kw) ** 2)))(bs)
    gb_ref = jax.vmap(jax.grad(lambda b: jnp.sum(_lax(xs[0], w, b, layout="NCHW", **kw) ** 2)))(bs)
    np.testing.assert_allclose(np.asarray(gb), np.asarray(gb_ref), rtol=1e-11, atol=1e-11)
    # vmap over the non-leading axis of x
    xt = jnp.moveaxis(xs, 0, 2)  # (2, 4, 3, 7, 8)
    y = jax.vmap(f, in_axes=(2, None))(xt, w)
    np.testing.assert_allclose(np.asarray(y), np.asarray(jax.vmap(g, in_axes=(2, None))(xt, w)),
                               rtol=1e-12, atol=1e-12)


def test_per_example_gradients(x64):
    """vmap(grad): the weight gradient must stay per example, not be summed over the vmap."""
    rng = np.random.default_rng(6)
    kw = dict(stride=1, padding="SAME", dilation=1, groups=1, layout="NHWC")
    xs = _rand(rng, (4, 1, 6, 5, 3))
    w = _rand(rng, (2, 3, 3, 3))
    b = _rand(rng, (2,))

    def loss(f):
        return lambda x, w, b: jnp.sum(jnp.tanh(f(x, w, b, **kw)))

    per_ex = jax.vmap(jax.grad(loss(fj.conv2d), argnums=(0, 1, 2)), in_axes=(0, None, None))(xs, w, b)
    ref = jax.vmap(jax.grad(loss(_lax), argnums=(0, 1, 2)), in_axes=(0, None, None))(xs, w, b)
    for name, g, g_ref in zip("xwb", per_ex, ref):
        assert g.shape == g_ref.shape, name
        np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-11, atol=1e-11,
                                   err_msg=name)


def test_unbatched_3d_input(x64):
    rng = np.random.default_rng(7)
    x = _rand(rng, (6, 7, 3))
    w = _rand(rng, (4, 3, 2, 2))
    y = fj.conv2d(x, w, padding=1, layout="NHWC")
    y_ref = _lax(x[None], w, None, stride=(1, 1), padding=1, dilation=(1, 1), groups=1, layout="NHWC")[0]
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(np.asarray(y), np.asarray(y_ref), rtol=1e-12, atol=1e-12)
    gx = jax.grad(lambda x: fj.conv2d(x, w, padding=1, layout="NHWC").sum())(x)
    assert gx.shape == x.shape


def test_named_algorithm_and_errors_at_trace_time(x64):
    rng = np.random.default_rng(8)
    x = _rand(rng, (1, 2, 8, 8))
    w3 = _rand(rng, (2, 2, 3, 3))
    y = fj.conv2d(x, w3, padding=1, algorithm="winograd_f2x2_3x3")
    np.testing.assert_allclose(np.asarray(y), np.asarray(_lax(x, w3, None, stride=(1, 1), padding=1,
                                                               dilation=(1, 1), groups=1, layout="NCHW")),
                               rtol=1e-9, atol=1e-9)
    w5 = _rand(rng, (2, 2, 5, 5))
    with pytest.raises(fastconv.UnsupportedError, match="winograd"):
        jax.jit(lambda x, w: fj.conv2d(x, w, algorithm="winograd_f2x2_3x3"))(x, w5)
    with pytest.raises(TypeError, match="x must have dtype"):
        fj.conv2d(x.astype(jnp.bfloat16), w3)
    with pytest.raises(TypeError, match="w must have dtype"):
        fj.conv2d(x, jnp.ones((2, 2, 3, 3), jnp.int32))
    with pytest.raises(ValueError, match="channel mismatch"):
        jax.jit(lambda x: fj.conv2d(x, _rand(rng, (2, 3, 3, 3))))(x)
    with pytest.raises(ValueError, match="padding must be non-negative"):
        fj.conv2d(x, w3, padding=((-1, 0), (0, 0)))
    with pytest.raises(ValueError, match="padding must be"):
        fj.conv2d(x, w3, padding="CIRCULAR")
    with pytest.raises(ValueError, match="layout"):
        fj.conv2d(x, w3, layout="CHWN")


def test_forward_mode_is_refused_explicitly(x64):
    """Documented limit: custom_vjp functions have no forward-mode derivative."""
    x = jnp.ones((1, 1, 4, 4))
    w = jnp.ones((1, 1, 2, 2))
    with pytest.raises(TypeError, match="forward-mode|jvp"):
        jax.jvp(lambda x: fj.conv2d(x, w), (x,), (x,))


@pytest.mark.subprocess
def test_import_does_not_import_jax():
    code = ("import sys, fastconv, fastconv.jax; "
            "assert 'jax' not in sys.modules, 'jax imported eagerly'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
