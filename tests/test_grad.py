"""Gradients and the transposed convolution against finite differences and PyTorch."""

import itertools

import numpy as np
import pytest

import fastconv
from fastconv import reference
from fastconv._params import normalize
from fastconv.grad import conv2d_grad_bias, conv2d_grad_input, conv2d_grad_weight, conv_transpose2d

RNG = np.random.default_rng(20260126)

# float64: the derived convolutions are exact sums of the same products in a
# different order, so they agree with any float64 reference to a few ulps of
# the magnitude of the terms.  float32: K*R*S or N*P*Q products accumulated in
# float32 (unit roundoff 6e-8), times a margin of ~30.
TOL = {np.float64: 1e-11, np.float32: 2e-5}


def _rand(shape, dtype=np.float64):
    return RNG.standard_normal(shape).astype(dtype)


def _close(got, want, dtype):
    want = np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.abs(want).max()))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=TOL[dtype] * scale * 10)


# --------------------------------------------------------------------------
# Finite differences of the float64 scipy reference (no torch needed)
# --------------------------------------------------------------------------

FD_CASES = [
    # x shape, w shape, kwargs
    ((1, 2, 5, 6), (2, 2, 3, 2), dict(stride=2, padding=1)),
    ((2, 2, 6, 5), (2, 1, 2, 3), dict(stride=(3, 2), padding=((1, 0), (2, 1)), groups=2)),
    ((1, 2, 7, 6), (3, 2, 2, 2), dict(stride=2, dilation=2, padding="same")),
    ((1, 1, 4, 5), (2, 1, 3, 2), dict(padding="full", dilation=(1, 2))),
    ((1, 6, 5, 4), (2, 2, 2, 2), dict(stride=2, groups=2, layout="NHWC")),
    ((2, 5, 4), (2, 2, 3, 3), dict(padding=1)),  # 3-D unbatched NCHW
]


@pytest.mark.parametrize("x_shape, w_shape, kw", FD_CASES)
def test_gradients_match_finite_differences_of_reference(x_shape, w_shape, kw):
    x, w = _rand(x_shape), _rand(w_shape)
    y0 = reference.conv2d(x, w, **kw)
    gy = _rand(y0.shape)

    def loss(xx, ww):
        return float(np.sum(reference.conv2d(xx, ww, **kw) * gy))

    # The loss is bilinear, so central differences are exact up to rounding.
    def fd(a, f):
        g = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            e = np.zeros_like(a)
            e[i] = 0.5
            g[i] = f(a + e) - f(a - e)
        return g

    gx_fd = fd(x, lambda xx: loss(xx, w))
    gw_fd = fd(w, lambda ww: loss(x, ww))
    gx = conv2d_grad_input(gy, w, x.shape, **kw)
    gw = conv2d_grad_weight(x, gy, w.shape, **kw)
    np.testing.assert_allclose(gx, gx_fd, atol=1e-9)
    np.testing.assert_allclose(gw, gw_fd, atol=1e-9)
    layout = kw.get("layout", "NCHW")
    gb_want = gy.reshape(-1, gy.shape[-1]).sum(0) if layout == "NHWC" else \
        np.moveaxis(gy, -3, 0).reshape(gy.shape[-3], -1).sum(1)
    np.testing.assert_allclose(conv2d_grad_bias(gy, layout=layout), gb_want, atol=1e-12)


def test_floored_rows_get_zero_gradient():
    # H + pads - reach = 8 + 0 - 3 = 5, 5 % 3 = 2: the last two rows of x are
    # never read by the forward call and must get exactly zero.
    x, w = _rand((1, 1, 8, 8)), _rand((1, 1, 3, 3))
    gy = _rand(fastconv.conv2d(x, w, stride=3).shape)
    gx = conv2d_grad_input(gy, w, x.shape, stride=3)
    assert np.all(gx[..., 6:, :] == 0) and np.all(gx[..., :, 6:] == 0)
    assert np.all(gx[..., 5, :5] != 0)
    # ... and x's unread rows must not leak into the weight gradient.
    x2 = x.copy()
    x2[..., 6:, :] = 1e6
    np.testing.assert_allclose(conv2d_grad_weight(x2, gy, w.shape, stride=3),
                               conv2d_grad_weight(x, gy, w.shape, stride=3), atol=1e-12)


def test_padding_only_windows():
    # Padding larger than the kernel reach: some outputs see only zeros.
    x, w = _rand((1, 2, 3, 3)), _rand((2, 2, 2, 2))
    kw = dict(stride=(4, 1), padding=((5, 0), (0, 3)))
    y = reference.conv2d(x, w, **kw)
    gy = _rand(y.shape)
    gx = conv2d_grad_input(gy, w, x.shape, **kw)
    gw = conv2d_grad_weight(x, gy, w.shape, **kw)
    # Adjoint identity <conv(x), gy> = <x, gx> and, bilinearity, <w, gw>.
    assert np.isclose(np.sum(y * gy), np.sum(x * gx))
    assert np.isclose(np.sum(y * gy), np.sum(w * gw))


def test_grad_weight_connections_masks_unconnected_pairs():
    x, w = _rand((2, 4, 6, 6)), _rand((6, 2, 3, 3))
    gy = _rand(fastconv.conv2d(x, w, groups=2).shape)
    # Random connections inside each output map's group (Cg = 2), at least one per map.
    conn = np.zeros((6, 4), bool)
    for k in range(6):
        g = k // 3
        conn[k, g * 2: g * 2 + 2] = RNG.random(2) < 0.5
        conn[k, g * 2 + RNG.integers(2)] = True
    assert not conn.all()
    full = conv2d_grad_weight(x, gy, w.shape, groups=2)
    masked = conv2d_grad_weight(x, gy, w.shape, groups=2, connections=conn)
    for k, c in itertools.product(range(6), range(2)):
        g = k // 3
        want = full[k, c] if conn[k, g * 2 + c] else 0.0
        np.testing.assert_array_equal(masked[k, c], want)
    with pytest.raises(ValueError, match="connections"):
        conv2d_grad_weight(x, gy, w.shape, groups=2, connections=conn[:, :3])
    with pytest.raises(TypeError, match="connections"):
        conv2d_grad_weight(x, gy, w.shape, groups=2, connections=conn * 0.5)
    outside = conn.copy()
    outside[0, 3] = True  # output map 0 is in group 0: it cannot read input 3
    with pytest.raises(ValueError, match="connections"):
        conv2d_grad_weight(x, gy, w.shape, groups=2, connections=outside)
    # The forward call with the same table has exactly these gradients
    # (masked weights contribute nothing).
    mask = np.take_along_axis(conn, (np.arange(6) // 3)[:, None] * 2 + np.arange(2), axis=1)
    y_conn = fastconv.conv2d(x, w, groups=2, connections=conn)
    np.testing.assert_allclose(y_conn, fastconv.conv2d(x, w * mask[:, :, None, None], groups=2),
                               atol=1e-12)


def test_algorithm_names_and_unsupported():
    x, w = _rand((1, 16, 8, 8)), _rand((16, 16, 3, 3))
    gy = _rand(fastconv.conv2d(x, w, stride=2, padding=1).shape)
    want = conv2d_grad_input(gy, w, x.shape, stride=2, padding=1, algorithm="direct")
    for alg in fastconv.algorithms():
        # The derived convolution is 3x3 stride 1: every algorithm runs it.
        got = conv2d_grad_input(gy, w, x.shape, stride=2, padding=1, algorithm=alg)
        tol = 1e-9 if "winograd" in alg else 1e-11
        np.testing.assert_allclose(got, want, atol=tol * np.abs(want).max())
    # With dilation 2 the derived convolution is a dilated 3x3: Winograd runs it on its phases.
    gyd = _rand(fastconv.conv2d(x, w, stride=2, padding=2, dilation=2).shape)
    want = conv2d_grad_input(gyd, w, x.shape, stride=2, padding=2, dilation=2, algorithm="direct")
    got = conv2d_grad_input(gyd, w, x.shape, stride=2, padding=2, dilation=2, algorithm="winograd")
    np.testing.assert_allclose(got, want, atol=1e-9 * np.abs(want).max())
    w5 = _rand((16, 16, 5, 5))
    gy5 = _rand(fastconv.conv2d(x, w5, stride=2, padding=2).shape)
    with pytest.raises(fastconv.UnsupportedError, match="conv2d_grad_input"):
        conv2d_grad_input(gy5, w5, x.shape, stride=2, padding=2, algorithm="winograd")
    # grad_weight's derived kernel is grad_y's P x Q = 4x4 map: not Winograd.
    with pytest.raises(fastconv.UnsupportedError, match="conv2d_grad_weight"):
        conv2d_grad_weight(x, gy, w.shape, stride=2, padding=1, algorithm="winograd")
    # A forward call whose output is 3x3 gives a 3x3 unit-stride derived kernel.
    x5 = _rand((2, 16, 5, 5))
    gy3 = _rand((2, 16, 3, 3))
    np.testing.assert_allclose(conv2d_grad_weight(x5, gy3, w.shape, algorithm="winograd"),
                               conv2d_grad_weight(x5, gy3, w.shape, algorithm="direct"),
                               atol=1e-9 * 50)


def test_validation_errors_and_inputs_unchanged():
    x, w = _rand((1, 2, 6, 6)), _rand((3, 2, 3, 3))
    gy = _rand((1, 3, 4, 4))
    with pytest.raises(ValueError, match="grad_y"):
        conv2d_grad_input(gy, w, (1, 2, 7, 7))
    with pytest.raises(ValueError, match="grad_y"):
        conv2d_grad_weight(x, gy[..., :3], w.shape)
    with pytest.raises(TypeError, match="grad_y"):
        conv2d_grad_input(gy.astype(np.int64), w, x.shape)
    with pytest.raises(TypeError, match="x_shape"):
        conv2d_grad_input(gy, w, "1,2,6,6")
    with pytest.raises(TypeError, match="w_shape"):
        conv2d_grad_weight(x, gy, (3, 2, 3.0, 3))
    with pytest.raises(ValueError, match="layout"):
        conv2d_grad_bias(gy, layout="HWNC")
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d(gy, w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match="output_padding"):
        conv_transpose2d(gy, w, padding="same", output_padding=1)
    with pytest.raises(ValueError, match=r"w\.shape\[0\]"):
        conv_transpose2d(gy, w.transpose(1, 0, 2, 3), stride=2)
    copies = [a.copy() for a in (x, w, gy)]
    conv2d_grad_input(gy, w, x.shape)
    conv2d_grad_weight(x, gy, w.shape)
    conv_transpose2d(gy, w)
    for a, b in zip((x, w, gy), copies):
        np.testing.assert_array_equal(a, b)


def test_conv_transpose_is_adjoint_for_string_and_asymmetric_padding():
    w = _rand((3, 2, 3, 2))  # (C_in, K, R, S)
    for kw in [dict(stride=2, padding="same"), dict(stride=3, padding="same", dilation=1),
               dict(stride=(2, 1), padding="valid"), dict(stride=2, padding="full", dilation=2),
               dict(stride=2, padding=((2, 0), (1, 3)), output_padding=1)]:
        x = _rand((2, 3, 4, 5))
        y = conv_transpose2d(x, w, **kw)
        if kw.get("padding") == "same":
            assert y.shape[2:] == (4 * kw["stride"], 5 * kw["stride"])
        fkw = {k: v for k, v in kw.items() if k != "output_padding"}
        u = _rand(y.shape)
        v = reference.conv2d(u, w, **fkw)  # forward conv K -> C_in
        assert v.shape == x.shape
        assert np.isclose(np.sum(u * y), np.sum(v * x), rtol=1e-12)


# --------------------------------------------------------------------------
# PyTorch on a grid
# --------------------------------------------------------------------------

PADDINGS = [0, 1, ((1, 2), (0, 1)), "same", "full"]
GROUPS = [(4, 6, 1), (4, 6, 2), (4, 4, 4)]  # (C, K, groups); the last is depthwise


def _torch_grads(x, w, gy, kw):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    layout = kw.get("layout", "NCHW")
    p = normalize(x.shape, w.shape, None, x.dtype, **{k: v for k, v in kw.items()
                                                       if k != "algorithm"})
    xt = torch.tensor(x, dtype=torch.float64)
    gyt = torch.tensor(gy, dtype=torch.float64)
    if layout == "NHWC":
        xt, gyt = xt.permute(0, 3, 1, 2), gyt.permute(0, 3, 1, 2)
    xt = xt.detach().requires_grad_(True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    pt, pb, pl, pr = p.padding
    y = F.conv2d(F.pad(xt, (pl, pr, pt, pb)), wt, stride=p.stride, dilation=p.dilation,
                 groups=p.groups)
    y.backward(gyt)
    gx = xt.grad
    if layout == "NHWC":
        gx = gx.permute(0, 2, 3, 1)
    return gx.numpy(), wt.grad.numpy()


@pytest.mark.parametrize("padding", PADDINGS, ids=str)
@pytest.mark.parametrize("dilation", [1, 2])
@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("C, K, groups", GROUPS)
def test_grads_match_torch_grid(stride, dilation, padding, C, K, groups):
    pytest.importorskip("torch")
    # 11 x 9 input, 3 x 2 kernel: (H + pads - reach) % stride is non-zero for
    # several grid points, which exercises the floored trailing rows.
    x, w = _rand((2, C, 11, 9)), _rand((K, C // groups, 3, 2))
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    gy = _rand(fastconv.conv2d(x, w, **kw).shape)
    gx_t, gw_t = _torch_grads(x, w, gy, kw)
    _close(conv2d_grad_input(gy, w, x.shape, **kw), gx_t, np.float64)
    _close(conv2d_grad_weight(x, gy, w.shape, **kw), gw_t, np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algorithm", ["direct", "im2col"])
@pytest.mark.parametrize("kw", [dict(stride=2, padding=((0, 1), (2, 1)), dilation=(1, 2)),
                                dict(stride=(3, 1), padding="same", groups=2),
                                dict(stride=1, padding=1, groups=4)], ids=["asym", "same", "dw"])
def test_grads_match_torch_layouts_dtypes_algorithms(dtype, layout, algorithm, kw):
    pytest.importorskip("torch")
    kw = dict(kw, layout=layout, algorithm=algorithm)
    groups = kw.get("groups", 1)
    xs = (2, 4, 10, 7)
    x = _rand(xs if layout == "NCHW" else (2, 10, 7, 4), dtype)
    w = _rand((8, 4 // groups, 2, 3), dtype)
    gy = _rand(fastconv.conv2d(x, w, **kw).shape, dtype)
    gx_t, gw_t = _torch_grads(x, w, gy, kw)
    gx = conv2d_grad_input(gy, w, x.shape, **kw)
    gw = conv2d_grad_weight(x, gy, w.shape, **kw)
    assert gx.dtype == dtype and gw.dtype == dtype
    _close(gx, gx_t, dtype)
    _close(gw, gw_t, dtype)
    gb = conv2d_grad_bias(gy, layout=layout)
    assert gb.dtype == dtype
    _close(gb, gy.astype(np.float64).sum(axis=(0, 2, 3) if layout == "NCHW" else (0, 1, 2)), dtype)


def test_unbatched_grads_match_batched():
    x, w = _rand((3, 7, 6)), _rand((4, 3, 3, 3))
    gy = _rand(fastconv.conv2d(x, w, stride=2).shape)
    assert gy.ndim == 3
    np.testing.assert_allclose(conv2d_grad_input(gy, w, x.shape, stride=2),
                               conv2d_grad_input(gy[None], w, (1,) + x.shape, stride=2)[0])
    np.testing.assert_allclose(conv2d_grad_weight(x, gy, w.shape, stride=2),
                               conv2d_grad_weight(x[None], gy[None], w.shape, stride=2))
    np.testing.assert_allclose(conv2d_grad_bias(gy), gy.sum((1, 2)))


@pytest.mark.parametrize("stride, dilation, padding, groups",
                         [(1, 1, 0, 1), (2, 1, 1, 1), (3, 1, (1, 2), 2), (2, 2, 2, 1),
                          (1, 3, 1, 3), (3, 2, 0, 1), (2, (1, 2), (0, 1), 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_transpose2d_matches_torch(stride, dilation, padding, groups, dtype):
    torch = pytest.importorskip("torch")
    s = stride if isinstance(stride, tuple) else (stride, stride)
    d = dilation if isinstance(dilation, tuple) else (dilation, dilation)
    x, w, b = _rand((2, 6, 5, 4), dtype), _rand((6, 2, 3, 2), dtype), _rand((2 * groups,), dtype)
    # Every output_padding torch allows, including stride <= op < dilation.
    for op in itertools.product(range(max(s[0], d[0])), range(max(s[1], d[1]))):
        want = torch.nn.functional.conv_transpose2d(
            torch.tensor(x, dtype=torch.float64), torch.tensor(w, dtype=torch.float64),
            torch.tensor(b, dtype=torch.float64), stride=stride, padding=padding,
            output_padding=op, dilation=dilation, groups=groups).numpy()
        got = conv_transpose2d(x, w, b, stride=stride, padding=padding, output_padding=op,
                               dilation=dilation, groups=groups)
        assert got.dtype == dtype
        _close(got, want, dtype)
        got_nhwc = conv_transpose2d(x.transpose(0, 2, 3, 1), w, b, stride=stride, padding=padding,
                                    output_padding=op, dilation=dilation, groups=groups,
                                    layout="NHWC", algorithm="im2col")
        _close(got_nhwc, want.transpose(0, 2, 3, 1), dtype)


@pytest.mark.parametrize("stride, dilation, padding", [
    ((2, 3), (1, 1), ((1, 0), (2, 1))),
    (2, 2, 1),  # gcd(stride, dilation) = 2: odd phases get no taps at all
    (3, (2, 3), ((4, 0), (0, 5))),  # padding wider than the kernel reach
    (4, 1, 0),  # stride > kernel: some phases have no taps
])
def test_polyphase_route_equals_zero_inserted_route(stride, dilation, padding):
    from fastconv import grad
    x, w = _rand((2, 4, 13, 11)), _rand((6, 2, 3, 2))
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=2)
    p = normalize(x.shape, w.shape, None, x.dtype, **kw)
    gy = _rand(p.output_shape)
    b = _rand((4,))
    poly = grad._input_grad_polyphase(gy, w, (13, 11), p.padding, p.stride, p.dilation, 2, b, "t")
    zero = grad._input_grad_nchw(gy, w, (13, 11), p.padding, p.stride, p.dilation, 2, b,
                                 "direct", "t")
    np.testing.assert_allclose(poly, zero, atol=1e-12)
    # And "auto" takes the polyphase route for these small channel counts.
    assert grad._polyphase_pays(gy, w, (13, 11), p.dilation, 2)


def _same_at_thread_counts(fn):
    """``fn()`` with all of Numba's threads and with one; asserts the two are bitwise equal."""
    import numba

    full = numba.config.NUMBA_NUM_THREADS
    got = fn()
    numba.set_num_threads(1)
    try:
        one = fn()
    finally:
        numba.set_num_threads(full)
    np.testing.assert_array_equal(one, got)
    return got


def _check_route(grad, a, b, shape, kw, route, n):
    """One gradient route against the derived direct convolution: ``grad(a, b, shape)``
    with ``"auto"`` (which takes the route) equal to ``algorithm="direct"`` in float64,
    ``route(a32, b32)`` in float32 within gamma_n of it and bitwise the same at every thread
    count, ``a`` and ``b`` unchanged.  ``a`` and ``b`` are float32-representable float64
    arrays (the bound is on the sums, not on rounding the inputs)."""
    a0, b0 = a.copy(), b.copy()
    want = grad(a, b, shape, algorithm="direct", **kw)
    mag = grad(np.abs(a), np.abs(b), shape, algorithm="direct", **kw)
    _close(grad(a, b, shape, **kw), want, np.float64)
    got = _same_at_thread_counts(lambda: route(a.astype(np.float32), b.astype(np.float32)))
    _assert_within_gamma(got, want, mag, n)
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(b, b0)


def _assert_within_gamma(got32, want, mag, n):
    """|got - want| <= gamma_n * mag elementwise, gamma_n = n u / (1 - n u) for float32."""
    u = np.finfo(np.float32).eps / 2
    assert np.all(np.abs(got32 - want) <= n * u / (1 - n * u) * mag + 1e-30)


@pytest.mark.parametrize("x_shape, K, kw", [
    ((2, 6, 9, 8), 4, {}),
    ((1, 8, 10, 11), 6, dict(stride=2)),
    ((3, 4, 7, 9), 6, dict(stride=(2, 3), padding=(1, 2))),          # padding: zero pixels
    ((2, 6, 5, 5), 9, dict(groups=3, padding=1, stride=2)),
    ((1, 4, 3, 3), 2, dict(padding=3, stride=4)),                    # reads padding only
    ((2, 5, 6, 7), 3, dict(layout="NHWC", stride=2, dilation=3)),   # dilation: no effect at 1x1
])
def test_weight_grad_1x1_gemm(x_shape, K, kw):
    """The 1x1 weight gradient (one GEMM per image and group) against the derived direct
    convolution in float64, and within its stated bound in float32."""
    g = kw.get("groups", 1)
    C = x_shape[3] if kw.get("layout") == "NHWC" else x_shape[1]
    x = _rand(x_shape)
    w_shape = (K, C // g, 1, 1)
    gy = _rand(fastconv.conv2d(x, _rand(w_shape), **kw).shape)
    x0, gy0 = x.copy(), gy.copy()
    got = conv2d_grad_weight(x, gy, w_shape, **kw)
    want = conv2d_grad_weight(x, gy, w_shape, algorithm="direct", **kw)
    _close(got, want, np.float64)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(gy, gy0)
    # float32: |err| <= gamma_n * sum |gy| |xs|, n = N*P*Q
    g32 = conv2d_grad_weight(x.astype(np.float32), gy.astype(np.float32), w_shape, **kw)
    mag = conv2d_grad_weight(np.abs(x), np.abs(gy), w_shape, algorithm="direct", **kw)
    _assert_within_gamma(g32, want, mag, gy.size // K)


def test_weight_grad_1x1_thread_count_independent():
    import numba
    from threadpoolctl import threadpool_limits
    x = _rand((3, 32, 20, 20), np.float32)
    gy = _rand((3, 48, 10, 10), np.float32)
    a = conv2d_grad_weight(x, gy, (48, 32, 1, 1), stride=2)
    with threadpool_limits(1):
        numba.set_num_threads(1)
        try:
            b = conv2d_grad_weight(x, gy, (48, 32, 1, 1), stride=2)
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("x_shape, K, kw", [
    ((2, 6, 9, 8), 4, {}),
    ((1, 8, 10, 11), 6, dict(stride=2)),                              # odd rows: floored, zero
    ((3, 4, 7, 9), 6, dict(stride=(2, 3), padding=(1, 2))),
    ((2, 6, 5, 5), 9, dict(groups=3, padding=1, stride=2)),
    ((1, 4, 3, 3), 2, dict(padding=3, stride=4)),                     # reads padding only
    ((2, 5, 6, 7), 3, dict(layout="NHWC", stride=2)),
])
def test_input_grad_1x1_gemm(x_shape, K, kw):
    """The 1x1 input gradient (one GEMM per image and group) against the derived direct
    convolution in float64, within its bound (n = K/groups terms) in float32; and the 1x1
    transposed convolution (bias, output padding) against the same route."""
    g = kw.get("groups", 1)
    C = x_shape[3] if kw.get("layout") == "NHWC" else x_shape[1]
    w = _rand((K, C // g, 1, 1))
    gy = _rand(fastconv.conv2d(_rand(x_shape), w, **kw).shape)
    w0, gy0 = w.copy(), gy.copy()
    got = conv2d_grad_input(gy, w, x_shape, **kw)
    want = conv2d_grad_input(gy, w, x_shape, algorithm="direct", **kw)
    _close(got, want, np.float64)
    np.testing.assert_array_equal(w, w0)
    np.testing.assert_array_equal(gy, gy0)
    g32 = conv2d_grad_input(gy.astype(np.float32), w.astype(np.float32), x_shape, **kw)
    mag = conv2d_grad_input(np.abs(gy), np.abs(w), x_shape, algorithm="direct", **kw)
    _assert_within_gamma(g32, want, mag, K // g)
    if kw.get("layout") is None:
        s = kw.get("stride", 1)
        kwt = dict(stride=s, padding=kw.get("padding", 0), groups=g,
                   output_padding=(s - 1) if isinstance(s, int) else (s[0] - 1, s[1] - 1))
        wt = _rand((C, K // g, 1, 1))
        b = _rand((K,))
        xt = _rand((x_shape[0], C, 4, 5))
        _close(conv_transpose2d(xt, wt, b, **kwt),
               conv_transpose2d(xt, wt, b, algorithm="direct", **kwt), np.float64)


@pytest.mark.parametrize("x_shape, R, S, kw", [
    ((2, 5, 9, 8), 3, 3, dict(padding=1)),
    ((1, 16, 12, 37), 3, 3, dict(stride=2, padding=1)),               # two vectors + a ragged end
    ((3, 4, 11, 10), 5, 3, dict(stride=(2, 3), padding=((2, 0), (1, 2)), dilation=(1, 2))),
    ((2, 3, 13, 13), 7, 7, dict(padding=3)),                           # several passes of taps
    ((1, 6, 8, 9), 3, 3, dict(stride=2)),                              # floored rows and columns
    ((2, 2, 3, 3), 3, 3, dict(padding=4, stride=3)),                   # windows of padding only
])
def test_weight_grad_depthwise(x_shape, R, S, kw):
    """The depthwise weight gradient (a vectorised per-channel reduction) against the
    derived direct convolution in float64, and within gamma_n, n = N*P*Q, in float32."""
    from fastconv.cpu import grad_depthwise

    C = x_shape[1]
    kw = dict(kw, groups=C)
    p = normalize(x_shape, (C, 1, R, S), None, np.float64, **kw)
    # float32-representable inputs: the bound is on the sums, not on rounding the inputs.
    x = _rand(x_shape).astype(np.float32).astype(np.float64)
    gy = _rand(p.output_shape).astype(np.float32).astype(np.float64)
    x0, gy0 = x.copy(), gy.copy()
    want = conv2d_grad_weight(x, gy, (C, 1, R, S), algorithm="direct", **kw)
    mag = conv2d_grad_weight(np.abs(x), np.abs(gy), (C, 1, R, S), algorithm="direct", **kw)
    for dtype in (np.float64, np.float32):
        got = grad_depthwise.depthwise_weight(x.astype(dtype), gy.astype(dtype), (R, S),
                                              p.padding, p.stride, p.dilation)
        assert got.shape == (C, 1, R, S) and got.dtype == dtype
        if dtype == np.float64:
            _close(got, want, np.float64)
        else:
            _assert_within_gamma(got, want, mag, p.N * p.P * p.Q)
    # The public call (which takes this route where grad_depthwise.pays says so).
    _close(conv2d_grad_weight(x, gy, (C, 1, R, S), **kw), want, np.float64)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(gy, gy0)


def test_weight_grad_depthwise_nonfinite_and_threads():
    """inf/NaN reach exactly the taps whose windows read them (not the lanes past a row's
    end), and the result does not depend on the thread count."""
    import numba
    from fastconv.cpu import grad_depthwise

    x = _rand((2, 16, 10, 21), np.float32)
    gy = _rand((2, 16, 10, 21), np.float32)
    a = grad_depthwise.depthwise_weight(x, gy, (3, 3), (1, 1, 1, 1), (1, 1), (1, 1))
    numba.set_num_threads(1)
    try:
        b = grad_depthwise.depthwise_weight(x, gy, (3, 3), (1, 1, 1, 1), (1, 1), (1, 1))
    finally:
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    np.testing.assert_array_equal(a, b)
    x[1, 3, 0, 20] = np.inf  # last column of the first row: read by taps r <= 1, s >= 1
    got = grad_depthwise.depthwise_weight(x, gy, (3, 3), (1, 1, 1, 1), (1, 1), (1, 1))
    want = conv2d_grad_weight(x.astype(np.float64), gy.astype(np.float64), (16, 1, 3, 3),
                              padding=1, groups=16, algorithm="direct")
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    assert not np.isfinite(got[3, 0, :2, 1:]).any()
    assert np.isfinite(got[3, 0, :2, 0]).all() and np.isfinite(got[3, 0, 2]).all()
    assert np.isfinite(np.delete(got, 3, axis=0)).all()


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((4, 8, 3, 3), (10, 8, 3, 3), dict(padding=1)),                    # 2 x 3 x 3 maps of a deep stage
    ((2, 5, 5, 6), (7, 5, 3, 2), dict(stride=2, padding=((1, 0), (2, 1)))),  # taps not whole vectors
    ((3, 3, 6, 6), (4, 3, 3, 3), dict(dilation=2, padding=2, stride=(1, 2))),
    ((2, 4, 5, 4), (9, 4, 3, 3), dict(stride=3)),                      # floored rows
    ((1, 2, 2, 2), (3, 2, 3, 3), dict(padding=3, stride=2)),           # windows of padding only
    ((2, 6, 33, 31), (5, 6, 3, 3), dict(stride=2, padding=1)),         # strided: N*P*Q = 544
    ((1, 3, 66, 64), (4, 3, 3, 3), dict(padding=1)),                   # a first layer: 4224 pixels
    ((1, 3, 66, 64), (40, 3, 3, 3), dict(padding=1)),                  # ... taps and K swapped
])
def test_weight_grad_tap_gemm(x_shape, w_shape, kw):
    """The small-map weight gradient (gy times the unfolded taps, panel_gemm's tiles)
    against the derived direct convolution in float64, and within gamma_n, n = N*P*Q,
    in float32; thread-count independent."""
    from fastconv.cpu import grad_gemm

    p = normalize(x_shape, w_shape, None, np.float64, **kw)
    assert grad_gemm.tap_gemm_pays(x_shape, p.output_shape, w_shape[2:], 1, p.stride)
    x, gy = (_rand(s).astype(np.float32).astype(np.float64) for s in (x_shape, p.output_shape))
    _check_route(conv2d_grad_weight, x, gy, w_shape, kw,
                 lambda x32, gy32: grad_gemm.tap_gemm_weight(x32, gy32, w_shape[2:], p.padding,
                                                            p.stride, p.dilation),
                 p.N * p.P * p.Q)


@pytest.mark.parametrize("dtype, x_shape, w_shape, kw", [
    (np.float32, (1, 3, 80, 70), (40, 3, 3, 3), dict(padding=1)),  # 27 taps: AVX-512 swaps
    (np.float32, (2, 2, 200, 45), (20, 2, 2, 2), dict(stride=2, padding=1)),  # 8 taps
    (np.float64, (2, 2, 200, 45), (20, 2, 2, 2), dict(stride=2, padding=1)),
])
def test_weight_grad_tap_gemm_swapped(monkeypatch, dtype, x_shape, w_shape, kw):
    """First layers where few taps make it cheaper (swaps_roles) run with taps and output
    channels swapped (_unfold_gemm_t, channels transposed in registers, a ragged channel
    block): bitwise the result of the other orientation."""
    from fastconv.cpu import grad_gemm

    if not grad_gemm.swaps_roles(int(np.prod(w_shape[1:])), w_shape[0], dtype):
        pytest.skip("this target and dtype keep taps as the tile's vectors")  # pragma: no cover
    p = normalize(x_shape, w_shape, None, dtype, **kw)
    x, gy = (_rand(s).astype(dtype) for s in (x_shape, p.output_shape))
    args = (x, gy, w_shape[2:], p.padding, p.stride, p.dilation)
    swapped = grad_gemm.tap_gemm_weight(*args)
    monkeypatch.setattr(grad_gemm, "swaps_roles", lambda *a: False)
    np.testing.assert_array_equal(swapped, grad_gemm.tap_gemm_weight(*args))


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((4, 8, 2, 2), (10, 8, 3, 3), dict(padding=1)),                    # 2x2 maps, stride 1
    ((2, 5, 9, 8), (7, 5, 3, 2), dict(stride=2, padding=((1, 0), (2, 1)))),  # taps not whole vectors
    ((3, 3, 11, 9), (4, 3, 3, 3), dict(dilation=2, padding=2, stride=(2, 3))),
    ((2, 4, 7, 6), (9, 4, 3, 3), dict(stride=3)),                      # floored rows: zero gradient
    ((1, 2, 2, 2), (3, 2, 3, 3), dict(padding=3, stride=2)),           # windows of padding only
])
def test_input_grad_tap_gemm(x_shape, w_shape, kw):
    """The small-map input gradient (a GEMM over the weights' taps and a col2im) against the
    derived direct convolution in float64, within gamma_n, n = K*R*S, in float32, and
    thread-count independent; the transposed convolution (bias) through the same route."""
    from fastconv.cpu import grad_gemm

    p = normalize(x_shape, w_shape, None, np.float64, **kw)
    assert grad_gemm.tap_gemm_input_pays(p.output_shape, w_shape, p.stride, 1)
    w, gy = (_rand(s).astype(np.float32).astype(np.float64) for s in (w_shape, p.output_shape))
    _check_route(conv2d_grad_input, gy, w, x_shape, kw,
                 lambda gy32, w32: grad_gemm.tap_gemm_input(gy32, w32, x_shape[2:], p.padding,
                                                           p.stride, p.dilation),
                 w_shape[0] * w_shape[2] * w_shape[3])
    if "dilation" not in kw:
        # conv_transpose2d (the same operator plus a bias) takes the route too.
        b = _rand((w_shape[1],))
        s = kw.get("stride", 1)
        kwt = dict(stride=s, padding=kw.get("padding", 0))
        y = conv_transpose2d(gy, w, b, **kwt)
        ref = conv_transpose2d(gy, w, b, algorithm="direct", **kwt)
        _close(y, ref, np.float64)


def test_input_grad_tap_gemm_leaves_deep_maps_to_winograd(cpu_settings):
    """Deep 3x3 stride-1 layers on maps of at least grad_input_gemm_winograd_side go to the
    derived convolution (F(4x4) streaming its kernels) where the target's register block
    holds several tiles, and to the GEMM otherwise; smaller maps, dilation, strides and
    other kernels keep the GEMM."""
    from fastconv.cpu import grad_gemm
    from fastconv.cpu.winograd.stream import STREAM4_TILES

    pays = grad_gemm.tap_gemm_input_pays
    gy, w = (1, 256, 7, 7), (256, 128, 3, 3)
    assert pays(gy, w, (1, 1), 1) == (STREAM4_TILES == 1)
    assert pays((1, 256, 6, 6), w, (1, 1), 1)
    assert pays(gy, w, (1, 1), 1, (2, 2))
    assert pays(gy, (256, 128, 5, 5), (1, 1), 1)
    assert pays(gy, w, (2, 2), 1)
    assert pays(gy, (256, 64, 3, 3), (1, 1), 1)  # channels under grad_input_gemm_winograd_channels
    cpu_settings.grad_input_gemm_winograd_side = 8
    assert pays(gy, w, (1, 1), 1)


def test_fresh_weights_rule(cpu_settings):
    """The input gradient's derived convolution (new flipped kernels on every call) runs
    direct where auto would run an F(4x4) that keeps its transformed kernels for the call on
    a small map, and keeps auto's choice on larger maps and where F(4x4) streams."""
    from fastconv.cpu import auto_rule, fresh_weights_rule
    from fastconv.cpu.winograd import vec as winograd_vec

    def derived(N, C, side):
        return normalize((N, C, side + 2, side + 2), (C, C, 3, 3), None, np.float32)

    p = derived(8, 128, 8)  # ResNet-18's second stage at batch 8
    assert auto_rule(p) == "winograd_f4x4_3x3"
    assert winograd_vec.plan(p, 4, fresh=True).mode != "stream"
    assert fresh_weights_rule(p) == "direct"
    for q in (derived(1, 128, 28), derived(1, 64, 56)):  # larger maps
        assert fresh_weights_rule(q) == auto_rule(q)
    q = derived(2, 256, 8)  # 8 tiles over 256 channels
    if winograd_vec.plan(q, 4, fresh=True).mode == "stream":
        assert fresh_weights_rule(q) == auto_rule(q)
    cpu_settings.fresh_direct_max_side = 7
    assert fresh_weights_rule(p) == auto_rule(p)


@pytest.mark.parametrize("x_shape, K, pads", [
    ((3, 48, 9, 11), 50, (1, 1, 1, 1)),      # odd P and Q: gy's zero row and column
    ((6, 50, 8, 7), 64, (0, 1, 2, 0)),        # asymmetric padding; a partial vector of channels
    ((1, 64, 20, 18), 48, (0, 0, 0, 0)),      # no padding
    ((2, 56, 12, 12), 49, (2, 2, 1, 1)),      # padding wider than the kernel's reach
])
def test_weight_grad_winograd(x_shape, K, pads):
    """The 3x3 stride-1 weight gradient by F(3x3, 2x2) against the derived direct convolution
    in float64, within winograd_math's bound (m=3, r=2, the tiles in place of the channels)
    in float32; thread-count independent; inputs unchanged."""
    from fastconv import winograd_math
    from fastconv.cpu import grad_winograd

    N, C, H, W = x_shape
    padding = ((pads[0], pads[1]), (pads[2], pads[3]))
    p = normalize(x_shape, (K, C, 3, 3), None, np.float64, padding=padding)
    assert grad_winograd.winograd_weight_pays(x_shape, p.output_shape, (3, 3), (1, 1), (1, 1), 1)
    x, gy = (_rand(s).astype(np.float32).astype(np.float64) for s in (x_shape, p.output_shape))
    x0, gy0 = x.copy(), gy.copy()
    want = conv2d_grad_weight(x, gy, (K, C, 3, 3), padding=padding, algorithm="direct")
    _close(conv2d_grad_weight(x, gy, (K, C, 3, 3), padding=padding), want, np.float64)  # auto
    got = _same_at_thread_counts(lambda: grad_winograd.winograd_weight(
        x.astype(np.float32), gy.astype(np.float32), p.padding))
    tiles = N * -(-p.P // 2) * -(-p.Q // 2)
    bound = winograd_math.error_bound(3, tiles, np.float32, np.abs(x).max(), np.abs(gy).max(), r=2)
    err = np.abs(got - want).max()
    assert 0 < err <= bound
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(gy, gy0)


def test_weight_grad_winograd_chunks_and_nonfinite(monkeypatch):
    """Chunks of tile rows carry one running sum: any chunk size gives the same bits.  An inf
    in x turns the result over to the direct route, which puts inf/NaN exactly where the
    float64 reference does."""
    from fastconv.cpu import grad_winograd

    x, gy = _rand((3, 48, 10, 9), np.float32), _rand((3, 52, 10, 9), np.float32)
    whole = grad_winograd.winograd_weight(x, gy, (1, 1, 1, 1))
    monkeypatch.setattr(grad_winograd, "CHUNK_BYTES", 1)  # one tile row per chunk
    np.testing.assert_array_equal(grad_winograd.winograd_weight(x, gy, (1, 1, 1, 1)), whole)
    x[1, 7, 0, 8] = np.inf  # top-right pixel of channel 7: read by the taps r <= 1, s >= 1
    assert grad_winograd.winograd_weight(x, gy, (1, 1, 1, 1)) is None
    got = conv2d_grad_weight(x, gy, (52, 48, 3, 3), padding=1)
    want = conv2d_grad_weight(x.astype(np.float64), gy.astype(np.float64), (52, 48, 3, 3),
                              padding=1, algorithm="direct")
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    assert not np.isfinite(got[:, 7, :2, 1:]).any()
    assert np.isfinite(np.delete(got, 7, axis=1)).all()


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((4, 6, 14, 14), (16, 6, 5, 5), {}),                               # LeNet-5 C3
    ((2, 3, 30, 9), (5, 3, 3, 3), dict(padding=1)),                    # several bands of rows
    ((3, 5, 7, 16), (4, 5, 3, 2), dict(padding=((2, 0), (1, 1)))),     # a whole vector; odd C
    ((2, 6, 12, 20), (16, 6, 5, 5), dict(padding=2)),                  # rows of two vectors
                                                                       # (C3 on AVX2 too)
    ((2, 4, 9, 1), (3, 4, 3, 1), dict(padding=(1, 0), dilation=2)),    # one column; dilation
    ((1, 1, 6, 5), (2, 1, 2, 2), dict(padding="full")),
])
def test_input_grad_rows(x_shape, w_shape, kw):
    """The input gradient with a vector per output row (few input channels, narrow maps)
    against the derived direct convolution in float64, within gamma_n, n = K*R*S, in
    float32, thread-count independent; inf in grad_y reaches exactly the pixels it should."""
    from fastconv.cpu import grad_rows

    p = normalize(x_shape, w_shape, None, np.float64, **kw)
    if not grad_rows.rows_pay(p.output_shape, w_shape, (p.H, p.W), p.stride, 1, np.float32):
        pytest.skip("rows wider than this target's MAX_VECTORS vectors")  # AVX-512 takes all
    w, gy = (_rand(s).astype(np.float32).astype(np.float64) for s in (w_shape, p.output_shape))
    _check_route(conv2d_grad_input, gy, w, x_shape, kw,
                 lambda gy32, w32: conv2d_grad_input(gy32, w32, x_shape, **kw),
                 w_shape[0] * w_shape[2] * w_shape[3])
    gy[0, 0, 0, -1] = np.inf
    got = conv2d_grad_input(gy.astype(np.float32), w.astype(np.float32), x_shape, **kw)
    want = conv2d_grad_input(gy, w, x_shape, algorithm="direct", **kw)
    np.testing.assert_array_equal(np.isfinite(got), np.isfinite(want))
    assert not np.isfinite(want).all()


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((4, 1, 32, 30), (6, 1, 5, 5), {}),                                # LeNet-5 C1
    ((3, 2, 11, 13), (4, 2, 3, 3), dict(stride=2, padding=1)),
    ((2, 4, 9, 10), (4, 2, 3, 2), dict(groups=2, padding=(1, 0), dilation=(2, 1))),
])
def test_weight_grad_pairs(x_shape, w_shape, kw):
    """A layer of few map pairs: one vectorised reduction per pair, against the derived
    direct convolution in float64, within gamma_n, n = N*P*Q, in float32; thread-count
    independent."""
    from fastconv.cpu import grad_depthwise

    p = normalize(x_shape, w_shape, None, np.float64, **kw)
    assert grad_depthwise.pays(x_shape, p.output_shape, w_shape[2:], p.groups)
    x, gy = (_rand(s).astype(np.float32).astype(np.float64) for s in (x_shape, p.output_shape))
    _check_route(conv2d_grad_weight, x, gy, w_shape, kw,
                 lambda x32, gy32: conv2d_grad_weight(x32, gy32, w_shape, **kw),
                 p.N * p.P * p.Q)
