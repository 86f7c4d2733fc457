"""fastconv.torch: custom operators, autograd, torch.compile, the Conv2d drop-in and convert()."""

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import fastconv.torch as ft  # noqa: E402

OPS = torch.ops.fastconv
# float32: sums of at most a few hundred products, unit roundoff 6e-8; float64: ulps.
ATOL = {torch.float32: 1e-4, torch.float64: 1e-11}


def _rand(*shape, dtype=torch.float64, grad=False):
    return torch.randn(*shape, dtype=dtype).requires_grad_(grad)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.subprocess
def test_import_fastconv_does_not_import_torch():
    code = "import sys, fastconv, fastconv.grad; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------
# The operators
# --------------------------------------------------------------------------

def _noncontig(t):
    # Same values, transposed storage (channels-last-like strides).
    return t.detach().transpose(-1, -2).contiguous().transpose(-1, -2).requires_grad_(t.requires_grad)


CFG = ([2, 1], [1, 0, 2, 1], [1, 2], 2, "auto")  # stride, padding (t, b, l, r), dilation, groups


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("contiguous", [True, False])
def test_opcheck_conv2d(dtype, contiguous):
    x, w, b = _rand(2, 4, 7, 6, dtype=dtype, grad=True), _rand(6, 2, 3, 2, dtype=dtype, grad=True), \
        _rand(6, dtype=dtype, grad=True)
    if not contiguous:
        x, w = _noncontig(x), _noncontig(w)
        assert not x.is_contiguous()
    torch.library.opcheck(OPS.conv2d.default, (x, w, b, *CFG))
    torch.library.opcheck(OPS.conv2d.default, (x.detach(), w.detach(), None, *CFG))


def test_opcheck_gradient_ops():
    x, w = _rand(2, 4, 7, 6, grad=True), _rand(6, 2, 3, 2, grad=True)
    gy = _noncontig(_rand(*F.conv2d(F.pad(x, (2, 1, 1, 0)), w, stride=(2, 1), dilation=(1, 2),
                                    groups=2).shape, grad=True))
    torch.library.opcheck(OPS.conv2d_grad_input.default, (gy, w, list(x.shape), *CFG))
    torch.library.opcheck(OPS.conv2d_grad_weight.default, (x, gy, list(w.shape), *CFG))
    torch.library.opcheck(OPS.conv2d_backward.default, (gy, x, w, *CFG))
    # The one-call backward equals the two single operators, also on a non-contiguous grad_y.
    gy_t = gy.transpose(2, 3).contiguous().transpose(2, 3)
    gx, gw = OPS.conv2d_backward(gy_t, x, w, *CFG)
    torch.testing.assert_close(gx, OPS.conv2d_grad_input(gy, w, list(x.shape), *CFG), rtol=0, atol=0)
    torch.testing.assert_close(gw, OPS.conv2d_grad_weight(x, gy, list(w.shape), *CFG), rtol=0, atol=0)


# --------------------------------------------------------------------------
# Values and gradients against torch.nn.functional
# --------------------------------------------------------------------------

GRID = [
    # x shape, w shape, kwargs
    ((2, 3, 9, 8), (4, 3, 3, 3), dict()),
    ((2, 3, 9, 8), (4, 3, 3, 3), dict(padding=1, stride=2)),
    ((1, 4, 10, 7), (6, 2, 2, 3), dict(padding=(1, 2), stride=(3, 2), dilation=(2, 1), groups=2)),
    ((2, 4, 8, 8), (4, 1, 3, 3), dict(padding="same", groups=4)),  # depthwise
    ((2, 4, 10, 8), (8, 4, 5, 3), dict(padding="valid", dilation=2)),
    ((3, 11, 9), (5, 3, 1, 1), dict(stride=2)),  # unbatched, 1x1
    ((2, 16, 8, 8), (16, 16, 3, 3), dict(padding=1)),  # Winograd under "auto"
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("x_shape, w_shape, kw", GRID)
def test_conv2d_values_and_grads_match_torch(x_shape, w_shape, kw, dtype):
    x, w = _rand(*x_shape, dtype=dtype, grad=True), _rand(*w_shape, dtype=dtype, grad=True)
    b = _rand(w_shape[0], dtype=dtype, grad=True)
    y = ft.conv2d(x, w, b, **kw)
    yr = F.conv2d(x, w, b, **kw)
    assert y.shape == yr.shape and y.dtype == dtype
    torch.testing.assert_close(y, yr, atol=ATOL[dtype], rtol=0)
    gy = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, (x, w, b), gy),
                         torch.autograd.grad(yr, (x, w, b), gy)):
        scale = max(1.0, want.abs().max().item())
        torch.testing.assert_close(got, want, atol=ATOL[dtype] * scale, rtol=0)


def test_asymmetric_and_strided_same_padding_match_padded_torch():
    x, w = _rand(2, 3, 9, 10, grad=True), _rand(4, 3, 3, 2, grad=True)
    for padding, pads in [(((2, 0), (1, 3)), (1, 3, 2, 0)), ("same", None), ("full", (1, 1, 2, 2))]:
        y = ft.conv2d(x, w, padding=padding, stride=2)
        if pads is None:  # TF/JAX 'same', stride 2: P = ceil(9/2) = 5 needs 2 rows, Q 0 columns
            pads = (0, 0, 1, 1)
            assert y.shape[2:] == (5, 5)
        yr = F.conv2d(F.pad(x, pads), w, stride=2)
        torch.testing.assert_close(y, yr, atol=1e-12, rtol=0)
        g = torch.randn_like(y)
        torch.testing.assert_close(torch.autograd.grad(y, (x, w), g),
                                   torch.autograd.grad(yr, (x, w), g), atol=1e-11, rtol=0)


def test_gradcheck_and_gradgradcheck():
    x, w, b = _rand(2, 4, 5, 4, grad=True), _rand(4, 2, 3, 2, grad=True), _rand(4, grad=True)

    def f(x, w, b):
        return ft.conv2d(x, w, b, stride=(2, 1), padding=((1, 0), (0, 2)), dilation=(1, 2),
                         groups=2)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b), fast_mode=True)


@pytest.mark.parametrize("stride, padding, output_padding, dilation, groups",
                         [(1, 0, 0, 1, 1), (2, 1, 1, 1, 2), ((3, 2), (1, 0), (2, 1), 1, 1),
                          (2, 2, (1, 2), 3, 2)])
def test_conv_transpose2d_matches_torch_and_gradchecks(stride, padding, output_padding,
                                                       dilation, groups):
    x, w = _rand(2, 4, 5, 4, grad=True), _rand(4, 3, 3, 2, grad=True)
    b = _rand(3 * groups, grad=True)
    kw = dict(stride=stride, padding=padding, output_padding=output_padding, groups=groups,
              dilation=dilation)
    y, yr = ft.conv_transpose2d(x, w, b, **kw), F.conv_transpose2d(x, w, b, **kw)
    torch.testing.assert_close(y, yr, atol=1e-11, rtol=0)
    g = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, (x, w, b), g),
                               torch.autograd.grad(yr, (x, w, b), g), atol=1e-10, rtol=0)
    # Numerical checks (first and second order) on a tiny input: they cost
    # one call per input element.
    xs, ws, bs = (t.detach().clone().requires_grad_() for t in (x[:1, :2, :3, :3], w[:2], b))
    assert torch.autograd.gradcheck(lambda *a: ft.conv_transpose2d(*a, **kw), (xs, ws, bs))
    if output_padding != 0:  # fast_mode: random projections instead of full Jacobians
        assert torch.autograd.gradgradcheck(lambda *a: ft.conv_transpose2d(*a, **kw),
                                            (xs, ws, bs), fast_mode=True)


def test_algorithm_argument_and_errors():
    x, w = _rand(1, 16, 6, 6), _rand(16, 16, 3, 3)
    want = F.conv2d(x, w, padding=1)
    for alg in ("direct", "im2col", "winograd_f2x2_3x3"):
        torch.testing.assert_close(ft.conv2d(x, w, padding=1, algorithm=alg), want,
                                   atol=1e-10, rtol=0)
    import fastconv
    with pytest.raises(fastconv.UnsupportedError):
        ft.conv2d(x, w, stride=2, algorithm="winograd")
    with pytest.raises(ValueError, match="algorithm"):
        ft.conv2d(x, w, algorithm="no_such_algorithm")
    with pytest.raises(TypeError, match="float32 or float64"):
        ft.conv2d(x.to(torch.complex64), w.to(torch.complex64))
    with pytest.raises(TypeError, match="one dtype"):
        ft.conv2d(x.float(), w)
    with pytest.raises(ValueError, match="channels"):
        ft.conv2d(x, w[:, :8])
    with pytest.raises(ValueError, match="padding"):
        ft.conv2d(x, w, padding="half")


# --------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=3),
    dict(kernel_size=(3, 2), stride=2, padding=(1, 0), bias=False),
    dict(kernel_size=3, padding="same", dilation=2, groups=2),
    dict(kernel_size=3, padding=1, padding_mode="reflect"),
    dict(kernel_size=3, padding=(2, 1), padding_mode="circular", stride=2),
    dict(kernel_size=3, padding=1, padding_mode="replicate"),
])
def test_conv2d_module_is_a_drop_in(kwargs):
    torch.manual_seed(1)
    ref = torch.nn.Conv2d(4, 6, **kwargs, dtype=torch.float64)
    torch.manual_seed(1)
    mod = ft.Conv2d(4, 6, **kwargs, dtype=torch.float64, algorithm="im2col")
    # Same initialisation from the same seed, same keys.
    assert list(mod.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(mod.state_dict()[k], v, atol=0, rtol=0)
    # Round trip both ways.
    other = torch.nn.Conv2d(4, 6, **kwargs, dtype=torch.float64)
    mod.load_state_dict(other.state_dict())
    ref.load_state_dict(mod.state_dict())
    x = _rand(2, 4, 9, 8)
    y, yr = mod(x), ref(x)
    torch.testing.assert_close(y, yr, atol=1e-11, rtol=0)
    y.sum().backward()
    yr.sum().backward()
    for p, q in zip(mod.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-10, rtol=0)
    assert isinstance(mod, torch.nn.Conv2d)
    assert "algorithm='im2col'" in repr(mod)


def test_conv2d_module_rejects_what_nn_conv2d_rejects():
    with pytest.raises(ValueError):
        ft.Conv2d(4, 6, 3, padding_mode="mirror")
    with pytest.raises(ValueError):
        ft.Conv2d(4, 6, 3, stride=2, padding="same")  # torch's own rule
    with pytest.raises(TypeError, match="algorithm"):
        ft.Conv2d(4, 6, 3, algorithm=3)


def _small_model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, groups=8, stride=2)),
        torch.nn.Flatten(), torch.nn.Linear(8 * 7 * 7, 5))


def test_convert_in_place_keeps_parameters_and_outputs():
    model = _small_model()
    x = torch.randn(2, 3, 16, 16)
    want = model(x)
    params = [id(p) for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    keys = list(model.state_dict())
    assert ft.convert(model, algorithm="direct") is model
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 2 and all(type(m) is ft.Conv2d and m.algorithm == "direct" for m in convs)
    assert [id(p) for p in model.parameters()] == params and list(model.state_dict()) == keys
    got = model(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    got.square().sum().backward()
    opt.step()  # the optimizer built before convert() still updates the model
    assert not torch.allclose(model(x), got)
    ft.convert(model, algorithm="im2col")
    assert all(m.algorithm == "im2col" for m in convs)
    with pytest.raises(TypeError, match="Module"):
        ft.convert([torch.nn.Conv2d(1, 1, 1)])


def test_torch_compile_fullgraph_has_no_graph_breaks():
    model = ft.convert(_small_model())
    x = torch.randn(2, 3, 16, 16)
    want = model(x)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    got = compiled(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    got.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.slow
def test_torch_compile_inductor():
    # Inductor compiles C++ (about a minute on 2 cores), hence slow.
    model = ft.convert(_small_model())
    x = torch.randn(2, 3, 16, 16)
    want = model(x)
    got = torch.compile(model, fullgraph=True)(x)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_torch_ops_derivations_on_tensors():
    # The CUDA path runs fastconv.grad's derivations on torch tensors (with
    # fastconv.torch's array operations, _TorchOps); on CPU
    # tensors the same code runs through fastconv's NumPy path and must agree.
    from fastconv import grad
    x, w = _rand(2, 4, 9, 7), _rand(6, 2, 3, 2)
    kw = dict(stride=(2, 3), dilation=(1, 2), groups=2)
    pads = (1, 0, 2, 1)
    yr = F.conv2d(F.pad(x, (2, 1, 1, 0)), w, **kw)
    gy = torch.randn_like(yr)
    gx = grad._input_grad_nchw(gy, w, (9, 7), pads, (2, 3), (1, 2), 2, None, "auto", "t",
                               ops=ft._TorchOps)
    gw = grad._weight_grad_nchw(x, gy, (3, 2), pads, (2, 3), (1, 2), 2, "auto", "t",
                                ops=ft._TorchOps)
    assert isinstance(gx, torch.Tensor) and isinstance(gw, torch.Tensor)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    F.conv2d(F.pad(xg, (2, 1, 1, 0)), wg, **kw).backward(gy)
    torch.testing.assert_close(gx, xg.grad, atol=1e-11, rtol=0)
    torch.testing.assert_close(gw, wg.grad, atol=1e-11, rtol=0)
    # The polyphase route (NumPy's "auto" on strided layers) on tensors too: its
    # per-phase sub-kernels from torch's indexing and swap_middle.
    gxp = grad._input_grad_polyphase(gy, w, (9, 7), pads, (2, 3), (1, 2), 2, None, "t",
                                     ops=ft._TorchOps)
    torch.testing.assert_close(gxp, xg.grad, atol=1e-11, rtol=0)


def test_eager_path_equals_the_operator():
    """Eager CPU calls skip the operator's dispatch (_EagerConv2d); values and all three
    gradients equal the fastconv::conv2d operator's with its registered autograd, bitwise."""
    x, w, b = _rand(2, 4, 7, 6, grad=True), _rand(6, 2, 3, 2, grad=True), _rand(6, grad=True)
    gy = _rand(2, 6, 4, 5)
    kw = dict(stride=(2, 1), padding=((2, 1), (1, 0)), dilation=(1, 2), groups=2)
    y1 = ft.conv2d(x, w, b, **kw)
    g1 = torch.autograd.grad(y1, (x, w, b), gy)
    y2 = OPS.conv2d(x, w, b, [2, 1], [2, 1, 1, 0], [1, 2], 2, "auto")
    g2 = torch.autograd.grad(y2, (x, w, b), gy)
    assert y1.grad_fn is not None and "EagerConv2d" in type(y1.grad_fn).__name__
    torch.testing.assert_close(y1, y2, rtol=0, atol=0)
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
