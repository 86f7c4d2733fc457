"""PyTorch adapter: fastconv kernels as PyTorch custom operators and an ``nn.Conv2d`` drop-in.

Four operators are registered with :func:`torch.library.custom_op`, each
with a fake (meta) implementation so they trace under :func:`torch.compile`
without graph breaks:

``fastconv::conv2d(Tensor x, Tensor w, Tensor? bias, SymInt[] stride, SymInt[] padding, SymInt[] dilation, SymInt groups, str algorithm) -> Tensor``
``fastconv::conv2d_grad_input(Tensor grad_y, Tensor w, SymInt[] x_size, ...same...) -> Tensor``
``fastconv::conv2d_grad_weight(Tensor x, Tensor grad_y, SymInt[] w_size, ...same...) -> Tensor``
``fastconv::conv2d_backward(Tensor grad_y, Tensor x, Tensor w, ...same...) -> (Tensor, Tensor)``

``padding`` is always the 4-list ``(top, bottom, left, right)``; the Python
wrappers below turn every padding form of :func:`fastconv.conv2d` (and
PyTorch's ``"same"``/``"valid"``) into it.  The operators take NCHW tensors
only (PyTorch's own convolution layout; channels-last tensors are accepted
and read through their strides).

``conv2d`` has autograd registered (input, weight and bias gradients through
the two gradient operators), and so do the two gradient operators (each is
linear in both tensor arguments, so their derivatives are again these three
operators): second derivatives (``gradgradcheck``, double backward) work.
A backward that needs both the input and the weight gradient makes one
``conv2d_backward`` call instead, which converts ``grad_y`` once for both
(and has autograd registered too).

CPU tensors reach the Numba kernels as NumPy views (``Tensor.numpy()``,
no copy; fastconv itself makes the one contiguous copy a kernel needs);
CUDA tensors are passed to :func:`fastconv.conv2d`, which forwards them to
the CUDA backend (:class:`fastconv.CudaUnavailableError` if it cannot run).
Supported dtypes are float32 and float64.
"""

import numbers
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import grad as _grad
from ._api import conv2d as _np_conv2d
from ._params import _padding, _pair

__all__ = ["conv2d", "conv_transpose2d", "Conv2d", "convert"]

Tensor = torch.Tensor
_FLOATS = (torch.float32, torch.float64)


# --------------------------------------------------------------------------
# Tensor <-> array plumbing
# --------------------------------------------------------------------------

def _np(t: Tensor) -> np.ndarray:
    """A CPU tensor as a NumPy view of the same memory (no copy)."""
    return t.detach().resolve_conj().resolve_neg().numpy()


def _device_check(*ts) -> str:
    kind = ts[0].device.type
    if kind not in ("cpu", "cuda"):
        raise RuntimeError(f"fastconv runs on CPU and CUDA tensors, got a tensor on {ts[0].device}")
    return kind


def _as_tensor(y, like: Tensor) -> Tensor:
    if isinstance(y, Tensor):
        return y
    if isinstance(y, np.ndarray):
        return torch.from_numpy(y)
    return torch.as_tensor(y, device=like.device)  # __cuda_array_interface__ / DLPack


def _kw(stride, padding, dilation, groups):
    return dict(stride=(int(stride[0]), int(stride[1])),
                padding=((int(padding[0]), int(padding[1])), (int(padding[2]), int(padding[3]))),
                dilation=(int(dilation[0]), int(dilation[1])), groups=int(groups))


def _out_size(size, pad_lo, pad_hi, k, s, d):
    return (size + pad_lo + pad_hi - d * (k - 1) - 1) // s + 1


class _TorchOps:
    """The array operations of :mod:`fastconv.grad`'s derivations, on torch tensors.

    CPU tensors reach those derivations as NumPy views; CUDA tensors stay
    tensors, and this is what the derivations do to them (see ``_NumpyOps``
    in :mod:`fastconv.grad` for the NumPy twin).
    """

    @staticmethod
    def zeros(shape, like):
        return torch.zeros(shape, dtype=like.dtype, device=like.device)

    @staticmethod
    def permute(a, axes):
        return a.permute(*axes)

    @staticmethod
    def flip_hw(a):
        return a.flip((2, 3))

    @staticmethod
    def contiguous(a):
        return a.contiguous()

    @staticmethod
    def swap_middle(a, flip=False):
        b = a.permute(0, 2, 1, 3, 4)
        return (b.flip((3, 4)) if flip else b).contiguous()

    @staticmethod
    def zero_insert(g, shape, h0, sh, w0, sw):
        out = torch.zeros(shape, dtype=g.dtype, device=g.device)
        P, Q = g.shape[2], g.shape[3]
        if P and Q:
            out[:, :, h0:h0 + (P - 1) * sh + 1:sh, w0:w0 + (Q - 1) * sw + 1:sw] = g
        return out

    @staticmethod
    def result(y, like):
        # Whatever the backend returned (a CUDA array interface object on a
        # GPU) back to a torch tensor.
        return y if isinstance(y, Tensor) else torch.as_tensor(y, device=like.device)


# --------------------------------------------------------------------------
# The three operators
# --------------------------------------------------------------------------

@torch.library.custom_op("fastconv::conv2d", mutates_args=())
def _conv2d_op(x: Tensor, w: Tensor, bias: Optional[Tensor], stride: List[int],
               padding: List[int], dilation: List[int], groups: int, algorithm: str) -> Tensor:
    return _conv2d_impl(x, w, bias, stride, padding, dilation, groups, algorithm)


def _conv2d_impl(x, w, bias, stride, padding, dilation, groups, algorithm):
    kw = _kw(stride, padding, dilation, groups)
    if _device_check(x) == "cpu":
        y = _np_conv2d(_np(x), _np(w), None if bias is None else _np(bias), algorithm=algorithm, **kw)
        return torch.from_numpy(y)
    y = _np_conv2d(x.detach(), w.detach(), None if bias is None else bias.detach(),
                   algorithm=algorithm, **kw)
    return _as_tensor(y, x)


@_conv2d_op.register_fake
def _conv2d_fake(x, w, bias, stride, padding, dilation, groups, algorithm):
    N, _, H, W = x.shape
    K, _, R, S = w.shape
    P = _out_size(H, padding[0], padding[1], R, stride[0], dilation[0])
    Q = _out_size(W, padding[2], padding[3], S, stride[1], dilation[1])
    return x.new_empty((N, K, P, Q))


@torch.library.custom_op("fastconv::conv2d_grad_input", mutates_args=())
def _grad_input_op(grad_y: Tensor, w: Tensor, x_size: List[int], stride: List[int],
                   padding: List[int], dilation: List[int], groups: int, algorithm: str) -> Tensor:
    return _grad_input_impl(grad_y, w, x_size, stride, padding, dilation, groups, algorithm)


def _grad_input_impl(grad_y, w, x_size, stride, padding, dilation, groups, algorithm):
    # grad_y may have fewer rows than the forward output of x_size (they
    # count as zero): conv_transpose2d with output_padding >= stride needs it.
    kw = _kw(stride, padding, dilation, groups)
    pads = (kw["padding"][0] + kw["padding"][1])
    hw = (int(x_size[2]), int(x_size[3]))
    if _device_check(grad_y) == "cpu":
        gx = _grad._input_grad_nchw(_np(grad_y), _np(w), hw, pads, kw["stride"], kw["dilation"],
                                    kw["groups"], None, algorithm, "conv2d_grad_input")
        return torch.from_numpy(np.ascontiguousarray(gx))
    gx = _grad._input_grad_nchw(grad_y.detach(), w.detach(), hw, pads, kw["stride"],
                                kw["dilation"], kw["groups"], None, algorithm, "conv2d_grad_input",
                                ops=_TorchOps)
    return _as_tensor(gx, grad_y)


@_grad_input_op.register_fake
def _grad_input_fake(grad_y, w, x_size, stride, padding, dilation, groups, algorithm):
    return grad_y.new_empty(tuple(x_size))


@torch.library.custom_op("fastconv::conv2d_grad_weight", mutates_args=())
def _grad_weight_op(x: Tensor, grad_y: Tensor, w_size: List[int], stride: List[int],
                    padding: List[int], dilation: List[int], groups: int, algorithm: str) -> Tensor:
    return _grad_weight_impl(x, grad_y, w_size, stride, padding, dilation, groups, algorithm)


def _grad_weight_impl(x, grad_y, w_size, stride, padding, dilation, groups, algorithm):
    kw = _kw(stride, padding, dilation, groups)
    pads = (kw["padding"][0] + kw["padding"][1])
    RS = (int(w_size[2]), int(w_size[3]))
    if _device_check(x) == "cpu":
        gw = _grad._weight_grad_nchw(_np(x), _np(grad_y), RS, pads, kw["stride"], kw["dilation"],
                                     kw["groups"], algorithm, "conv2d_grad_weight")
        return torch.from_numpy(np.ascontiguousarray(gw))
    gw = _grad._weight_grad_nchw(x.detach(), grad_y.detach(), RS, pads, kw["stride"],
                                 kw["dilation"], kw["groups"], algorithm, "conv2d_grad_weight",
                                 ops=_TorchOps)
    return _as_tensor(gw, x)


@_grad_weight_op.register_fake
def _grad_weight_fake(x, grad_y, w_size, stride, padding, dilation, groups, algorithm):
    return x.new_empty(tuple(w_size))


@torch.library.custom_op("fastconv::conv2d_backward", mutates_args=())
def _backward_op(grad_y: Tensor, x: Tensor, w: Tensor, stride: List[int], padding: List[int],
                 dilation: List[int], groups: int, algorithm: str) -> Tuple[Tensor, Tensor]:
    """Both gradients of ``conv2d(x, w)`` in one call: ``(grad_x, grad_w)``.

    What the two share is done once: ``grad_y`` is made C-contiguous once
    (autograd hands over expanded or permuted gradients, e.g. of a ``sum``),
    and both read that copy.  The results equal the two single operators'.
    """
    return _backward_impl(grad_y, x, w, stride, padding, dilation, groups, algorithm)


def _backward_impl(grad_y, x, w, stride, padding, dilation, groups, algorithm):
    kw = _kw(stride, padding, dilation, groups)
    pads = (kw["padding"][0] + kw["padding"][1])
    hw, RS = (int(x.shape[2]), int(x.shape[3])), (int(w.shape[2]), int(w.shape[3]))
    args = (pads, kw["stride"], kw["dilation"], kw["groups"])
    if _device_check(grad_y) == "cpu":
        gy = np.ascontiguousarray(_np(grad_y))
        gx = _grad._input_grad_nchw(gy, _np(w), hw, *args, None, algorithm, "conv2d_grad_input")
        gw = _grad._weight_grad_nchw(_np(x), gy, RS, *args, algorithm, "conv2d_grad_weight")
        return (torch.from_numpy(np.ascontiguousarray(gx)),
                torch.from_numpy(np.ascontiguousarray(gw)))
    gy = grad_y.detach().contiguous()
    gx = _grad._input_grad_nchw(gy, w.detach(), hw, *args, None, algorithm, "conv2d_grad_input",
                                ops=_TorchOps)
    gw = _grad._weight_grad_nchw(x.detach(), gy, RS, *args, algorithm, "conv2d_grad_weight",
                                 ops=_TorchOps)
    return _as_tensor(gx, grad_y), _as_tensor(gw, x)


@_backward_op.register_fake
def _backward_fake(grad_y, x, w, stride, padding, dilation, groups, algorithm):
    return x.new_empty(x.shape), w.new_empty(w.shape)


# --------------------------------------------------------------------------
# Autograd: every operator is linear in each tensor argument, so each
# derivative is one of the three operators again.
# --------------------------------------------------------------------------

def _cfg_context(ctx, cfg):
    ctx.cfg = tuple(cfg)


def _conv2d_setup(ctx, inputs, output):
    x, w, bias, *cfg = inputs
    ctx.save_for_backward(x, w)
    ctx.has_bias = bias is not None
    _cfg_context(ctx, cfg)


def _conv2d_grads(ctx, grad_y, both, grad_input, grad_weight):
    """conv2d's gradients through ``both`` (input and weight at once), ``grad_input`` and
    ``grad_weight``: the operators, or (eager, no graph of the backward) their bodies."""
    x, w = ctx.saved_tensors
    gx = gw = gb = None
    if ctx.needs_input_grad[0] and ctx.needs_input_grad[1]:
        gx, gw = both(grad_y, x, w, *ctx.cfg)
    elif ctx.needs_input_grad[0]:
        gx = grad_input(grad_y, w, list(x.shape), *ctx.cfg)
    elif ctx.needs_input_grad[1]:
        gw = grad_weight(x, grad_y, list(w.shape), *ctx.cfg)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        gb = grad_y.sum((0, 2, 3))
    return gx, gw, gb, None, None, None, None, None


def _conv2d_backward(ctx, grad_y):
    ops = torch.ops.fastconv
    return _conv2d_grads(ctx, grad_y, ops.conv2d_backward, ops.conv2d_grad_input,
                         ops.conv2d_grad_weight)


def _forward_to(x, w, y_shape, cfg):
    """conv2d(x, w) with exactly y_shape's P x Q outputs.

    The gradient operators accept a ``grad_y`` with more or fewer rows than
    the forward output of ``x`` (rows beyond the input read zeros, as in a
    transposed convolution with ``output_padding``); their adjoint is the
    forward convolution with the bottom/right zero padding extended (or the
    result cropped) to that many rows.
    """
    stride, padding, dilation, groups, algorithm = cfg
    P, Q = y_shape[2], y_shape[3]
    H, W = x.shape[2], x.shape[3]
    R, S = w.shape[2], w.shape[3]
    need_b = (P - 1) * stride[0] + (R - 1) * dilation[0] + 1 - H - padding[0]
    need_r = (Q - 1) * stride[1] + (S - 1) * dilation[1] + 1 - W - padding[2]
    pads = [padding[0], max(padding[1], need_b), padding[2], max(padding[3], need_r)]
    y = torch.ops.fastconv.conv2d(x, w, None, stride, pads, dilation, groups, algorithm)
    return y[:, :, :P, :Q]


def _grad_input_setup(ctx, inputs, output):
    grad_y, w, x_size, *cfg = inputs
    ctx.save_for_backward(grad_y, w)
    _cfg_context(ctx, cfg)


def _grad_input_backward(ctx, gg):
    # grad_x = A_w^T grad_y; <A_w^T gy, gg> = <gy, A_w gg>.
    grad_y, w = ctx.saved_tensors
    d_gy = d_w = None
    if ctx.needs_input_grad[0]:
        # conv2d(gg) may have more rows than grad_y (transposed conv with
        # output_padding >= stride): those rows did not take part.
        d_gy = _forward_to(gg, w, grad_y.shape, ctx.cfg)
    if ctx.needs_input_grad[1]:
        d_w = torch.ops.fastconv.conv2d_grad_weight(gg, grad_y, list(w.shape), *ctx.cfg)
    return d_gy, d_w, None, None, None, None, None, None


def _grad_weight_setup(ctx, inputs, output):
    x, grad_y, w_size, *cfg = inputs
    ctx.save_for_backward(x, grad_y)
    _cfg_context(ctx, cfg)


def _grad_weight_backward(ctx, gg):
    # grad_w = B_x^T grad_y with B_x w = conv2d(x, w); <B_x^T gy, gg> = <gy, conv2d(x, gg)>.
    x, grad_y = ctx.saved_tensors
    d_x = d_gy = None
    if ctx.needs_input_grad[0]:
        d_x = torch.ops.fastconv.conv2d_grad_input(grad_y, gg, list(x.shape), *ctx.cfg)
    if ctx.needs_input_grad[1]:
        d_gy = _forward_to(x, gg, grad_y.shape, ctx.cfg)
    return d_x, d_gy, None, None, None, None, None, None


def _backward_setup(ctx, inputs, output):
    grad_y, x, w, *cfg = inputs
    ctx.save_for_backward(grad_y, x, w)
    _cfg_context(ctx, cfg)


def _backward_backward(ctx, ggx, ggw):
    # (grad_x, grad_w) = (A_w^T gy, B_x^T gy): the sum of the two single operators' rules.
    grad_y, x, w = ctx.saved_tensors
    d_gy = d_x = d_w = None
    if ctx.needs_input_grad[0]:
        parts = []
        if ggx is not None:
            parts.append(_forward_to(ggx, w, grad_y.shape, ctx.cfg))
        if ggw is not None:
            parts.append(_forward_to(x, ggw, grad_y.shape, ctx.cfg))
        d_gy = sum(parts) if parts else None
    if ctx.needs_input_grad[1] and ggw is not None:
        d_x = torch.ops.fastconv.conv2d_grad_input(grad_y, ggw, list(x.shape), *ctx.cfg)
    if ctx.needs_input_grad[2] and ggx is not None:
        d_w = torch.ops.fastconv.conv2d_grad_weight(ggx, grad_y, list(w.shape), *ctx.cfg)
    return d_gy, d_x, d_w, None, None, None, None, None


_conv2d_op.register_autograd(_conv2d_backward, setup_context=_conv2d_setup)
_backward_op.register_autograd(_backward_backward, setup_context=_backward_setup)
_grad_input_op.register_autograd(_grad_input_backward, setup_context=_grad_input_setup)
_grad_weight_op.register_autograd(_grad_weight_backward, setup_context=_grad_weight_setup)


class _EagerConv2d(torch.autograd.Function):
    """``conv2d`` with autograd in eager mode on CPU tensors: the ``fastconv::conv2d``
    operator's computation and its registered derivative, called directly.

    A ``torch.library`` custom operator passes every call through the dispatcher
    and a Python autograd wrapper, a fixed cost per call that small layers
    (LeNet-5's take tens of microseconds) feel; this path skips it.  Under
    :func:`torch.compile` and for CUDA tensors :func:`conv2d` calls the operator.
    A backward that records its own graph (``create_graph=True``) goes through
    the operators, which are differentiable again.
    """

    @staticmethod
    def forward(ctx, x, w, bias, stride, padding, dilation, groups, algorithm):
        ctx.save_for_backward(x, w)
        ctx.has_bias = bias is not None
        ctx.cfg = (stride, padding, dilation, groups, algorithm)
        return _conv2d_impl(x, w, bias, stride, padding, dilation, groups, algorithm)

    @staticmethod
    def backward(ctx, grad_y):
        if torch.is_grad_enabled():
            return _conv2d_backward(ctx, grad_y)
        return _conv2d_grads(ctx, grad_y, _backward_impl, _grad_input_impl, _grad_weight_impl)


# --------------------------------------------------------------------------
# Functional API
# --------------------------------------------------------------------------

def _check_tensors(x, w, bias, what):
    for name, t in (("input", x), ("weight", w), ("bias", bias)):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _FLOATS:
            raise TypeError(f"{what}: {name} must be float32 or float64, got {t.dtype}")
        if t.dtype != x.dtype:
            raise TypeError(f"{what}: input, weight and bias must have one dtype; got input "
                            f"{x.dtype}, {name} {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{what}: input, weight and bias must be on one device; got input "
                             f"on {x.device}, {name} on {t.device}")
    if w.dim() != 4:
        raise ValueError(f"{what}: weight must be 4-D, got shape {tuple(w.shape)}")
    if x.dim() not in (3, 4):
        raise ValueError(f"{what}: input must be 4-D (N, C, H, W) or 3-D (C, H, W), "
                         f"got shape {tuple(x.shape)}")


def _check_algorithm(algorithm):
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be a string such as 'auto', got {algorithm!r}")


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
           algorithm="auto", activation=None, residual=None):
    """``torch.nn.functional.conv2d`` computed by fastconv's kernels, with an optional fused epilogue.

    Parameters
    ----------
    input : Tensor, shape (N, C, H, W) or (C, H, W)
    weight : Tensor, shape (K, C/groups, R, S)
    bias : Tensor, shape (K,), optional
    stride, dilation : int or (int, int)
    padding : int, (ph, pw), ((top, bottom), (left, right)), or str
        As :func:`fastconv.conv2d`: ``"valid"``, ``"same"`` (for stride 1
        exactly PyTorch's rule; for larger strides the TF/JAX rule, which
        PyTorch does not offer), ``"full"``, or asymmetric pads.
    groups : int
    algorithm : str
        ``"auto"`` or one of :func:`fastconv.algorithms`; it also names the
        kernel that runs the derived convolutions of the backward pass.
    activation : {None, "relu", "relu6", "silu", "gelu"}
        ``act(conv + bias + residual)`` as :func:`fastconv.conv2d` computes it
        (``F.relu``, ``F.relu6``, ``F.silu``, ``F.gelu`` semantics).
    residual : Tensor, optional
        The result's shape, dtype and device; added before the activation.

    Returns
    -------
    Tensor, shape (N, K, P, Q) (or (K, P, Q))
        Differentiable (twice without an epilogue) with respect to input,
        weight, bias and residual.

    Notes
    -----
    NCHW only, as PyTorch's convolution; float32/float64 CPU or CUDA tensors,
    and bfloat16/float16 ones, computed in float32 (their casts are part of
    the autograd graph).
    Works under :func:`torch.compile` (``fullgraph=True``): the call is one
    opaque ``fastconv::conv2d`` node.  Eager CPU calls run the same
    computation without the operator's dispatch (``_EagerConv2d``).

    The epilogue runs fused (one fastconv call) when no gradient is needed,
    and with gradients for ``relu`` and ``relu6``, whose derivative the
    backward reads off the output (``_EagerConvAct``).  ``silu`` and
    ``gelu`` need the pre-activation for their derivative: with gradients
    they run the convolution with the residual fused, then PyTorch's
    activation.  Under :func:`torch.compile` the epilogue is PyTorch's
    operations after the ``fastconv::conv2d`` node.
    """
    if isinstance(input, Tensor) and input.dtype in _HALVES:
        return _conv2d_half(input, weight, bias, stride, padding, dilation, groups, algorithm,
                            activation, residual)
    _check_tensors(input, weight, bias, "conv2d")
    _check_algorithm(algorithm)
    activation = _check_activation(activation)
    if residual is not None:
        _check_residual(residual, input)
    batched = input.dim() == 4
    x = input if batched else input.unsqueeze(0)
    _, _, H, W = x.shape
    _, _, R, S = weight.shape
    s = _pair(stride, "stride", 1)
    d = _pair(dilation, "dilation", 1)
    if not isinstance(groups, numbers.Integral) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    pads = _padding(padding, R, S, H, W, s, d)
    if x.shape[1] != weight.shape[1] * groups:
        raise ValueError(f"conv2d: input has {x.shape[1]} channels but weight.shape[1] * groups "
                         f"= {weight.shape[1]} * {groups}; weight must be (K, C/groups, R, S)")
    if weight.shape[0] % groups:
        raise ValueError(f"conv2d: groups={groups} must divide the output channels "
                         f"{weight.shape[0]} (weight.shape[0])")
    if H + pads[0] + pads[1] < (R - 1) * d[0] + 1 or W + pads[2] + pads[3] < (S - 1) * d[1] + 1:
        raise ValueError(f"conv2d: kernel {R}x{S} (dilation {d}) is larger than the padded input "
                         f"{H}x{W} + padding {pads}")
    args = (x, weight, bias, list(s), list(pads), list(d), int(groups), algorithm)
    if activation is not None or residual is not None:
        r = None if residual is None else (residual if batched else residual.unsqueeze(0))
        y = _conv2d_epilogue(args, activation, r)
    elif x.device.type == "cpu" and not torch.compiler.is_compiling():
        y = _EagerConv2d.apply(*args)
    else:
        y = torch.ops.fastconv.conv2d(*args)
    return y if batched else y.squeeze(0)


_HALVES = (torch.bfloat16, torch.float16)


def _conv2d_half(x, w, bias, stride, padding, dilation, groups, algorithm, activation, residual):
    """:func:`conv2d` of bfloat16 / float16 tensors: widened to float32 (exactly), the float32
    kernels, the result rounded back; the casts are part of the autograd graph, so the
    gradients are float32 sums rounded to the tensors' dtype, as PyTorch's CPU kernels do."""
    for name, t in (("weight", w), ("bias", bias), ("residual", residual)):
        if t is not None and (not isinstance(t, Tensor) or t.dtype != x.dtype):
            got = t.dtype if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"conv2d: input is {x.dtype}, so {name} must be too; got {got}")

    def wide(t):
        return None if t is None else t.float()

    y = conv2d(x.float(), w.float(), wide(bias), stride, padding, dilation, groups,
               algorithm=algorithm, activation=activation, residual=wide(residual))
    return y.to(x.dtype)


_TORCH_ACT = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "gelu": F.gelu}


def _check_activation(activation):
    from ._epilogue import check_activation

    return check_activation(activation)


def _check_residual(residual, x):
    if not isinstance(residual, Tensor):
        raise TypeError(f"conv2d: residual must be a torch.Tensor, got {type(residual).__name__}")
    if residual.dtype != x.dtype or residual.device != x.device:
        raise TypeError(f"conv2d: residual must have the input's dtype and device ({x.dtype} on "
                        f"{x.device}), got {residual.dtype} on {residual.device}")


def _conv2d_epilogue(args, activation, r):
    """``act(conv2d(*args) + r)``: one fused call where the gradients allow it (see :func:`conv2d`)."""
    x, w, bias, stride, pads, dil, groups, algorithm = args
    tensors = [t for t in (x, w, bias, r) if t is not None]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if r is not None:
        P = _out_size(x.shape[2], pads[0], pads[1], w.shape[2], stride[0], dil[0])
        Q = _out_size(x.shape[3], pads[2], pads[3], w.shape[3], stride[1], dil[1])
        if tuple(r.shape) != (x.shape[0], w.shape[0], P, Q):
            raise ValueError(f"conv2d: residual must have the result's shape "
                             f"{(x.shape[0], w.shape[0], P, Q)}, got {tuple(r.shape)}")
    if torch.compiler.is_compiling():
        y = torch.ops.fastconv.conv2d(*args)
        y = y if r is None else y + r
        return y if activation is None else _TORCH_ACT[activation](y)
    if not needs_grad:
        return _fused_impl(x, w, bias, r, stride, pads, dil, groups, algorithm, activation)
    if activation in (None, "relu", "relu6"):
        return _EagerConvAct.apply(x, w, bias, r, stride, pads, dil, groups, algorithm, activation)
    z = _EagerConvAct.apply(x, w, bias, r, stride, pads, dil, groups, algorithm, None)
    return _TORCH_ACT[activation](z)


def _fused_impl(x, w, bias, r, stride, padding, dilation, groups, algorithm, activation):
    kw = _kw(stride, padding, dilation, groups)
    if x.device.type == "cpu":
        y = _np_conv2d(_np(x), _np(w), None if bias is None else _np(bias), algorithm=algorithm,
                       activation=activation, residual=None if r is None else _np(r), **kw)
        return torch.from_numpy(y)
    y = _np_conv2d(x.detach(), w.detach(), None if bias is None else bias.detach(),
                   algorithm=algorithm, activation=activation,
                   residual=None if r is None else r.detach(), **kw)
    return _as_tensor(y, x)


class _EagerConvAct(torch.autograd.Function):
    """``act(conv2d(x, w, bias) + r)`` in one fused call, for ``act`` in (None, relu, relu6).

    Their derivative is a mask of the output (``0 < y`` for relu, ``0 < y < 6``
    for relu6: PyTorch's convention at the kinks), so the backward needs only
    ``y``: ``dz = dy * mask``, then the convolution's gradients of ``dz``
    (one ``conv2d_backward`` call where both are needed) and ``dr = dz``.
    """

    @staticmethod
    def forward(ctx, x, w, bias, r, stride, padding, dilation, groups, algorithm, activation):
        y = _fused_impl(x, w, bias, r, stride, padding, dilation, groups, algorithm, activation)
        ctx.save_for_backward(x, w, y if activation is not None else None)
        ctx.has_bias = bias is not None
        ctx.activation = activation
        ctx.cfg = (stride, padding, dilation, groups, algorithm)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, w, y = ctx.saved_tensors
        if ctx.activation == "relu":
            grad_y = grad_y * (y > 0)
        elif ctx.activation == "relu6":
            grad_y = grad_y * ((y > 0) & (y < 6))
        ops = torch.ops.fastconv
        gx, gw, gb, *_ = _conv2d_grads(_GradContext(ctx, x, w), grad_y, ops.conv2d_backward,
                                       ops.conv2d_grad_input, ops.conv2d_grad_weight)
        gr = grad_y if ctx.needs_input_grad[3] else None
        return gx, gw, gb, gr, None, None, None, None, None, None


class _GradContext:
    """The fields :func:`_conv2d_grads` reads, from an ``_EagerConvAct`` context."""

    def __init__(self, ctx, x, w):
        self.saved_tensors = (x, w)
        self.needs_input_grad = ctx.needs_input_grad[:3]
        self.has_bias = ctx.has_bias
        self.cfg = ctx.cfg


def conv_transpose2d(input, weight, bias=None, stride=1, padding=0, output_padding=0, groups=1,
                     dilation=1, *, algorithm="auto"):
    """``torch.nn.functional.conv_transpose2d`` (same argument order) computed by fastconv.

    ``weight`` is (C_in, K/groups, R, S).  ``padding`` also takes the
    asymmetric ``((top, bottom), (left, right))`` form and ``"same"`` /
    ``"valid"`` / ``"full"`` as :func:`fastconv.grad.conv_transpose2d`.
    Runs as the ``fastconv::conv2d_grad_input`` operator, so it is
    differentiable (twice) and compiles like :func:`conv2d`.
    """
    _check_tensors(input, weight, bias, "conv_transpose2d")
    _check_algorithm(algorithm)
    batched = input.dim() == 4
    x = input if batched else input.unsqueeze(0)
    out_shape, pads, s, d, _ = _grad._transpose_params(
        tuple(x.shape), tuple(weight.shape), None if bias is None else tuple(bias.shape),
        stride=stride, padding=padding, output_padding=output_padding, dilation=dilation,
        groups=groups, layout="NCHW")
    y = torch.ops.fastconv.conv2d_grad_input(x, weight, list(out_shape), list(s), list(pads),
                                             list(d), int(groups), algorithm)
    if bias is not None:
        y = y + bias.view(1, -1, 1, 1)
    return y if batched else y.squeeze(0)


# --------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------

class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` whose forward and backward run fastconv's kernels.

    Same constructor, parameters (``weight``, ``bias``), initialisation,
    ``state_dict`` keys and ``padding_mode`` handling (``'zeros'``,
    ``'reflect'``, ``'replicate'``, ``'circular'``) as ``torch.nn.Conv2d``,
    of which it is a subclass, plus ``algorithm=`` (see :func:`conv2d`) and
    ``activation=``: the module then computes ``act(conv(x) + residual)`` in
    one fused call, ``residual`` an optional second argument of
    :meth:`forward` (a ResNet block's skip connection).  float32/float64
    only.

    Examples
    --------
    >>> import torch, fastconv.torch
    >>> conv = fastconv.torch.Conv2d(3, 8, 3, padding="same", algorithm="im2col")
    >>> conv(torch.randn(2, 3, 16, 16)).shape
    torch.Size([2, 8, 16, 16])
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0,
                 dilation=1, groups=1, bias=True, padding_mode="zeros", device=None,
                 dtype=None, *, algorithm="auto", activation=None):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, bias=bias, padding_mode=padding_mode,
                         device=device, dtype=dtype)
        _check_algorithm(algorithm)
        self.algorithm = algorithm
        self.activation = _check_activation(activation)

    def forward(self, input, residual=None):
        """``act(conv(input) + residual)`` (``residual`` optional, the result's shape)."""
        return self._conv_forward(input, self.weight, self.bias, residual)

    def _conv_forward(self, input, weight, bias, residual=None):
        if self.padding_mode != "zeros":
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        else:
            padding = self.padding
        return conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                      algorithm=self.algorithm, activation=getattr(self, "activation", None),
                      residual=residual)

    def extra_repr(self):
        text = super().extra_repr()
        if self.algorithm != "auto":
            text += f", algorithm={self.algorithm!r}"
        if getattr(self, "activation", None) is not None:
            text += f", activation={self.activation!r}"
        return text


_ACT_MODULES = {torch.nn.ReLU: "relu", torch.nn.ReLU6: "relu6", torch.nn.SiLU: "silu"}


def _module_activation(m):
    """The fused activation equal to module ``m``, or None."""
    name = _ACT_MODULES.get(type(m))
    if name is None and type(m) is torch.nn.GELU and m.approximate == "none":
        name = "gelu"
    return name


def convert(model, algorithm="auto", *, fuse=False):
    """Make every ``torch.nn.Conv2d`` in ``model`` run on fastconv, in place; returns ``model``.

    Each ``nn.Conv2d`` (including ``model`` itself) becomes a
    :class:`Conv2d` with the given ``algorithm``; modules that already are
    :class:`Conv2d` get the new ``algorithm``.  The modules are converted
    where they stand, so their parameters (the same ``Parameter`` objects:
    an optimizer built before the call keeps working), buffers, hooks and
    ``state_dict`` keys are untouched.  Subclasses of ``nn.Conv2d`` other
    than :class:`Conv2d` are left alone (their ``forward`` may differ).

    With ``fuse=True``, a convolution followed directly by ``nn.ReLU``,
    ``nn.ReLU6``, ``nn.SiLU`` or the exact ``nn.GELU`` in an
    ``nn.Sequential`` takes that activation into its fused epilogue
    (:class:`Conv2d`'s ``activation``), and the activation module is replaced
    by ``nn.Identity`` (so indices and ``state_dict`` keys stay; activation
    modules hold no parameters).  Only ``nn.Sequential`` is fused: there the
    order of execution is the order of the children.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    _check_algorithm(algorithm)
    if not isinstance(fuse, bool):
        raise TypeError(f"fuse must be a bool, got {fuse!r}")
    for m in model.modules():
        if type(m) is torch.nn.Conv2d:
            m.__class__ = Conv2d
            m.activation = None
        if isinstance(m, Conv2d):
            m.algorithm = algorithm
    if fuse:
        for seq in model.modules():
            if type(seq) is not torch.nn.Sequential:
                continue
            names = list(seq._modules)
            for a, b in zip(names, names[1:]):
                conv, act = seq._modules[a], seq._modules[b]
                name = _module_activation(act)
                if isinstance(conv, Conv2d) and conv.activation is None and name is not None:
                    conv.activation = name
                    seq._modules[b] = torch.nn.Identity()
    return model
