"""JAX adapter: :func:`fastconv.conv2d` as a differentiable JAX function.

``conv2d`` runs fastconv's CPU kernels through :func:`jax.pure_callback`, so
it works under :func:`jax.jit` and :func:`jax.vmap`, and its gradients come
from :mod:`fastconv.grad` through :func:`jax.custom_vjp`.  All argument
validation and the output shape come from :func:`fastconv._params.normalize`
at trace time: a bad call raises ``ValueError``/``TypeError`` when it is
traced, never inside the callback (JAX treats exceptions raised inside a
pure callback as undefined behaviour).

``jax`` is imported only when :func:`conv2d` is first called, so
``import fastconv.jax`` works without JAX installed.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from ._params import FLOAT_DTYPES, _same_padding, normalize

__all__ = ["conv2d"]


class _Cfg(NamedTuple):
    """Static (hashable) description of one call; a nondiff argument of the custom VJP."""

    stride: tuple
    dilation: tuple
    padding: tuple  # ((top, bottom), (left, right)), already resolved
    groups: int
    layout: str
    algorithm: str
    has_bias: bool

    def kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups, layout=self.layout)


def _check_dtype(a, name: str) -> np.dtype:
    dtype = np.dtype(a.dtype)
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {dtype}; cast explicitly, "
                        f"e.g. {name}.astype(jnp.float32)")
    return dtype


def _lax_padding(padding, R: int, S: int, H: int, W: int, stride, dilation):
    """Translate lax's padding spellings to the ones :func:`normalize` takes.

    ``jax.lax.conv_general_dilated`` upper-cases its padding strings, so
    "same", "Same" and "SAME" are one thing; "SAME_LOWER" puts the odd
    padding element first (top/left) instead of last.  Sequences of
    ``(low, high)`` pairs are fastconv's ``((top, bottom), (left, right))``.
    """
    if isinstance(padding, str) and padding.upper() == "SAME_LOWER":
        from ._params import _pair
        sh, sw = _pair(stride, "stride", 1)
        dh, dw = _pair(dilation, "dilation", 1)
        top, bottom = _same_padding(H, R, sh, dh)
        left, right = _same_padding(W, S, sw, dw)
        return ((bottom, top), (right, left))
    if isinstance(padding, str):
        return padding.lower()
    return padding


def _lead(a: np.ndarray, core_ndim: int) -> tuple:
    return a.shape[:a.ndim - core_ndim]


def _batched_apply(fn, args, core_ndims, fold_arg, out_core_shape, out_dtype):
    """Run ``fn`` on arrays that may carry leading vmap axes.

    With ``vmap_method="expand_dims"`` every argument of the callback gains
    one leading axis per enclosing :func:`jax.vmap`, of size 1 where that
    argument is not batched.  When only ``args[fold_arg]`` is batched (the
    common case: a batch of inputs through shared weights) its leading axes
    are folded into the convolution's own batch axis N and ``fn`` runs once.
    Otherwise (per-example weights, or a weight gradient that must stay
    per-example) ``fn`` runs once per leading index.  ``fn`` receives the
    list of core arrays (``None`` stays ``None``) and returns one array.
    """
    # np.asarray of a JAX array is a read-only view; Numba would compile (and
    # cache) a second, read-only specialisation of every kernel for it, so
    # the callback copies instead (O(size) next to the O(size * R * S * C/g)
    # convolution).
    arrays = [None if a is None else np.array(a) for a in args]
    nlead = arrays[0].ndim - core_ndims[0]
    if nlead == 0:
        return fn(arrays)
    leads = [None if a is None else _lead(a, c) for a, c in zip(arrays, core_ndims)]
    batch = np.broadcast_shapes(*(l for l in leads if l is not None))
    others_unbatched = all(l is None or all(d == 1 for d in l)
                           for i, l in enumerate(leads) if i != fold_arg)
    if fold_arg is not None and others_unbatched:
        core = [None if (a is None or i == fold_arg) else a.reshape(a.shape[nlead:])
                for i, a in enumerate(arrays)]
        # The other arguments' leading axes are all 1, so the vmap batch shape
        # is exactly xa's: a plain reshape (of a writeable copy) folds it.
        xa = arrays[fold_arg]
        core[fold_arg] = xa.reshape((-1,) + xa.shape[nlead + 1:])
        y = fn(core)
        return y.reshape(batch + (xa.shape[nlead],) + y.shape[1:])
    out = np.empty(batch + out_core_shape, dtype=out_dtype)
    for idx in np.ndindex(*batch):
        core = []
        for a, l in zip(arrays, leads):
            if a is None:
                core.append(None)
            else:
                sub = tuple(i if d != 1 else 0 for i, d in zip(idx, l))
                core.append(a[sub])
        out[idx] = fn(core)
    return out


def _forward_cb(x, w, b, *, cfg: _Cfg, y_shape, dtype):
    from ._api import conv2d as np_conv2d

    def fn(core):
        xx, ww, bb = core
        return np_conv2d(xx, ww, bb, algorithm=cfg.algorithm, **cfg.kwargs())

    return _batched_apply(fn, (x, w, b), (4, 4, 1), 0, y_shape, dtype).astype(dtype, copy=False)


def _grad_input_cb(g, w, *, cfg: _Cfg, x_shape, dtype):
    from .grad import conv2d_grad_input

    def fn(core):
        gg, ww = core
        shape = (gg.shape[0],) + tuple(x_shape[1:])
        return conv2d_grad_input(gg, ww, shape, **cfg.kwargs())

    return _batched_apply(fn, (g, w), (4, 4), 0, tuple(x_shape), dtype).astype(dtype, copy=False)


def _grad_weight_cb(x, g, *, cfg: _Cfg, w_shape, dtype):
    from .grad import conv2d_grad_weight

    def fn(core):
        xx, gg = core
        return conv2d_grad_weight(xx, gg, tuple(w_shape), **cfg.kwargs())

    # The weight gradient sums over the batch, so a vmapped batch must not be
    # folded into N: fold_arg=None keeps one result per vmap index.
    return _batched_apply(fn, (x, g), (4, 4), None, tuple(w_shape), dtype).astype(dtype, copy=False)


@functools.lru_cache(maxsize=None)
def _custom_conv():
    """Build the custom-VJP function once (jax imported lazily)."""
    import jax
    import jax.numpy as jnp

    def _call(cfg, x, w, b):
        p = normalize(x.shape, w.shape, None if b is None else b.shape, x.dtype, **cfg.kwargs())
        out = jax.ShapeDtypeStruct(p.output_shape, x.dtype)
        cb = functools.partial(_forward_cb, cfg=cfg, y_shape=p.output_shape,
                               dtype=np.dtype(x.dtype))
        return jax.pure_callback(cb, out, x, w, b, vmap_method="expand_dims")

    @functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
    def conv(cfg, x, w, b):
        return _call(cfg, x, w, b)

    def fwd(cfg, x, w, b):
        return _call(cfg, x, w, b), (x, w)

    def bwd(cfg, res, g):
        x, w = res
        dtype = np.dtype(x.dtype)
        gx = jax.pure_callback(
            functools.partial(_grad_input_cb, cfg=cfg, x_shape=x.shape, dtype=dtype),
            jax.ShapeDtypeStruct(x.shape, x.dtype), g, w, vmap_method="expand_dims")
        gw = jax.pure_callback(
            functools.partial(_grad_weight_cb, cfg=cfg, w_shape=w.shape, dtype=dtype),
            jax.ShapeDtypeStruct(w.shape, w.dtype), x, g, vmap_method="expand_dims")
        gb = None
        if cfg.has_bias:
            gb = jnp.sum(g, axis=(0, 2, 3) if cfg.layout == "NCHW" else (0, 1, 2))
        return gx, gw, gb

    conv.defvjp(fwd, bwd)
    return conv


def conv2d(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
           algorithm="auto"):
    """2-D convolution (cross-correlation) of JAX arrays with fastconv's CPU kernels.

    Same result as ``jax.lax.conv_general_dilated(x, w, stride, padding,
    rhs_dilation=dilation, feature_group_count=groups,
    dimension_numbers=(layout, "OIHW", layout))`` plus ``bias``, computed by
    :func:`fastconv.conv2d`; usable under :func:`jax.jit`, :func:`jax.grad`
    (reverse mode) and :func:`jax.vmap`.

    Parameters
    ----------
    x : jax.Array, shape (N, C, H, W) or (N, H, W, C)
        3-D ``(C, H, W)`` (or ``(H, W, C)``) is one unbatched image.
        float32 or float64 (float64 needs ``jax_enable_x64``).
    w : jax.Array, shape (K, C/groups, R, S)
        lax's ``"OIHW"`` kernel layout, whatever ``layout`` is.
    bias : jax.Array, shape (K,), optional
    stride, dilation : int or (int, int)
        ``window_strides`` and ``rhs_dilation`` of lax.
    padding : int, (ph, pw), ((top, bottom), (left, right)) or str
        As lax: ``"SAME"``, ``"SAME_LOWER"`` and ``"VALID"`` in any case,
        or explicit ``(low, high)`` pairs per spatial axis (non-negative);
        also fastconv's ``"full"`` and integer forms.
    groups : int
        lax's ``feature_group_count``.
    layout : {"NCHW", "NHWC"}
        Layout of ``x`` and of the result: lax's ``dimension_numbers``
        ``("NCHW", "OIHW", "NCHW")`` or ``("NHWC", "OIHW", "NHWC")``.
    algorithm : str
        Forward algorithm, as in :func:`fastconv.conv2d`; checked at trace
        time.  The gradients use :mod:`fastconv.grad`'s own choice.

    Returns
    -------
    y : jax.Array, shape (N, K, P, Q) or (N, P, Q, K)
        dtype ``jnp.result_type(x, w, bias)``.

    Raises
    ------
    TypeError, ValueError
        At trace time, for the same arguments :func:`fastconv.conv2d`
        rejects (including dtypes other than float32/float64, e.g.
        bfloat16), and for negative padding, which lax accepts.

    Notes
    -----
    The kernels run on the host through :func:`jax.pure_callback`; JAX
    device arrays are copied to host memory and back, and the call is
    opaque to XLA (no fusion).  Gradients are defined with
    :func:`jax.custom_vjp`: ``x`` and ``w`` gradients call
    :func:`fastconv.grad.conv2d_grad_input` and
    :func:`fastconv.grad.conv2d_grad_weight` (the same formulas as
    Dumoulin & Visin 2016, "A guide to convolution arithmetic for deep
    learning", section 4), the bias gradient is a sum in JAX.  Only first
    order reverse mode is supported: :func:`jax.jvp` / :func:`jax.jacfwd`
    raise JAX's ``TypeError`` for custom-VJP functions, and
    differentiating the gradient again is not supported (the backward
    callbacks are not themselves differentiable).

    Under :func:`jax.vmap` the callbacks use ``vmap_method="expand_dims"``:
    a vmapped batch of inputs with shared weights is folded into the
    convolution's N axis and runs as *one* kernel call, not one call per
    element as ``"sequential"`` would; per-example weights, and the weight
    gradient of a vmapped batch (which must stay per example), loop over
    the vmapped axis inside one callback.  ``"broadcast_all"`` was not used
    because it would tile the shared weights once per batch element.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> import fastconv.jax as fj
    >>> x = jnp.ones((1, 2, 5, 5)); w = jnp.ones((3, 2, 3, 3))
    >>> fj.conv2d(x, w, padding="SAME").shape
    (1, 3, 5, 5)
    >>> jax.grad(lambda w: fj.conv2d(x, w).sum())(w).shape
    (3, 2, 3, 3)
    """
    import jax.numpy as jnp

    x = jnp.asarray(x)
    w = jnp.asarray(w)
    b = None if bias is None else jnp.asarray(bias)
    dtypes = [_check_dtype(x, "x"), _check_dtype(w, "w")]
    if b is not None:
        dtypes.append(_check_dtype(b, "bias"))
    dtype = np.result_type(*dtypes)
    if not isinstance(algorithm, str):
        raise TypeError(f"algorithm must be a string, got {algorithm!r}")
    if not isinstance(layout, str):
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    if x.ndim in (3, 4) and w.ndim == 4:
        hw = x.shape[-2:] if layout == "NCHW" else x.shape[-3:-1]
        padding = _lax_padding(padding, w.shape[2], w.shape[3], hw[0], hw[1], stride, dilation)
    # All validation, the resolved padding and the output shape, at trace time.
    p = normalize(x.shape, w.shape, None if b is None else b.shape, dtype, stride=stride,
                  padding=padding, dilation=dilation, groups=groups, layout=layout)
    from ._dispatch import resolve
    resolve(algorithm, p, "cpu")  # an unsupported named algorithm fails here, not in the callback

    pt, pb, pl, pr = p.padding
    cfg = _Cfg(stride=p.stride, dilation=p.dilation, padding=((pt, pb), (pl, pr)),
               groups=p.groups, layout=p.layout, algorithm=algorithm, has_bias=b is not None)
    x = x.astype(dtype)
    w = w.astype(dtype)
    b = None if b is None else b.astype(dtype)
    if not p.batched:
        return _custom_conv()(cfg, x[None], w, b)[0]
    return _custom_conv()(cfg, x, w, b)
