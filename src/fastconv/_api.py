"""The public ``conv2d`` call: normalise once, dispatch, lay out the result."""

from __future__ import annotations

import numpy as np

from . import _config, _half
from ._aligned import empty_aligned
from ._dispatch import check_out, resolve
from ._epilogue import NONE, Epilogue, parse_epilogue
from ._params import ConvParams, connection_mask, parse_arrays
from ._placement import is_device_array as _is_device_array


def conv2d(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
           layout="NCHW", algorithm="auto", out=None, connections=None, activation=None,
           residual=None, out_dtype=None):
    """2-D multi-channel convolution (cross-correlation), as in PyTorch and JAX.

    Output map ``k`` is ``bias[k]`` plus the sum, over the input maps ``c``
    of its group, of the 2-D cross-correlation of ``x[:, c]`` with the kernel
    slice ``w[k, c]``.  The kernel is not flipped.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (N, H, W, C)
        Input maps; 3-D ``(C, H, W)`` (or ``(H, W, C)``) is one unbatched
        image and gives a 3-D result.  float32 or float64, any strides;
        float16 and bfloat16 (``ml_dtypes.bfloat16``) are computed in
        float32 (see ``out_dtype``).
        CUDA arrays (``__cuda_array_interface__`` or DLPack on a GPU) run on
        the GPU and return the same kind of array.
    w : array_like, shape (K, C/groups, R, S)
        Kernels: each of the K kernels is 3-D, one R x S slice per input map
        of its group.
    bias : array_like, shape (K,), optional
    stride, dilation : int or (int, int)
        Each >= 1.
    padding : int, (ph, pw), ((top, bottom), (left, right)), or str
        ``"valid"`` (no padding), ``"same"`` (TF/JAX rule for every stride:
        ``P = ceil(H / stride)``, the odd padding element at the bottom/right)
        or ``"full"`` (``(R - 1) * dilation`` on every side).
    groups : int
        Divides C and K; ``groups == C`` is a depthwise convolution.
    layout : {"NCHW", "NHWC"}
        Layout of ``x`` and of the result; ``w`` is always (K, C/groups, R, S).
    algorithm : str
        ``"auto"`` (a documented rule, see :mod:`fastconv.cpu`), ``"tuned"``
        (time every candidate once per configuration and cache the winner on
        disk, see :func:`fastconv.tuning.choose`), or one of
        :func:`fastconv.algorithms`.  Naming an algorithm that cannot run
        this configuration raises :class:`fastconv.UnsupportedError`;
        ``"auto"`` and ``"tuned"`` never do.
    out : numpy.ndarray, optional
        Writeable array of exactly the result's shape and dtype; returned.
    connections : array_like of bool, shape (K, C), optional
        Connection table: ``connections[k, c]`` says whether output map ``k``
        reads input map ``c`` (LeNet-5's C3 layer is
        :func:`fastconv.lenet5_c3_table`).  Weights of unconnected pairs are
        treated as zero (even if they hold NaN).  ``groups`` is the
        block-diagonal special case; with both, the table must stay inside
        the group blocks.  The fast kernels apply the table by zeroing the
        unconnected weights (a copy; ``w`` is untouched) and keep their dense
        register blocking: running each output map on its own subset of
        input maps would give up that blocking to save few products (in
        LeNet-5 C3, 60 of the 96 pairs are connected).  The reference
        skips unconnected pairs outright.
    activation : {None, "relu", "relu6", "silu", "gelu"}
        Applied to ``conv + bias + residual`` in the same call (a fused
        epilogue): ``relu`` is ``max(v, 0)``, ``relu6`` ``min(max(v, 0), 6)``,
        ``silu`` ``v / (1 + exp(-v))`` and ``gelu`` the exact, erf-based
        ``v / 2 * (1 + erf(v / sqrt(2)))``, as in PyTorch.  NaN stays NaN.
    residual : array_like, optional
        Added to ``conv + bias`` before the activation: float, exactly the
        result's shape (layout and rank), converted to the result's dtype.
        It may be ``out`` itself (``out += conv``, then the activation).
    out_dtype : numpy dtype, optional
        For 16-bit inputs, ``numpy.float32`` returns the float32 result instead
        of rounding it to the inputs' 16-bit dtype (the default); otherwise
        only the result's own dtype is accepted.  16-bit arrays are widened to
        float32 exactly and the float32 kernels run; the result's error is the
        float32 bound plus its rounding to 16 bits (:mod:`fastconv._half`).

    Returns
    -------
    y : numpy.ndarray, shape (N, K, P, Q) or (N, P, Q, K)
        dtype ``np.result_type(x, w, bias)`` (``out_dtype`` when given), with
        ``P = (H + pad_top + pad_bottom - dilation_h * (R - 1) - 1) // stride_h + 1``
        and likewise Q.

    Raises
    ------
    TypeError
        Non-float dtypes, or arguments of the wrong type.
    ValueError
        Inconsistent shapes or values; the message names the argument.
    UnsupportedError
        The named algorithm does not support this configuration.

    Notes
    -----
    The result is ``act((conv + bias) + residual)`` rounded in that order, so
    with ``relu`` or ``relu6`` it equals the unfused numpy expression on
    the same convolution bitwise; ``silu`` and ``gelu`` add their own
    rounding (see :mod:`fastconv._epilogue`).  The kernels that own their
    stores apply the epilogue to each block as they write it, while it is in
    cache; the others (BLAS's GEMM, the FFT's inverse transforms) in one pass
    after.  Inputs are never modified.  NaN and inf propagate exactly to the outputs
    whose receptive field holds them, whatever the algorithm.  Results do not
    depend on the number of threads, and calls from several Python threads
    are safe.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> x = np.ones((1, 2, 5, 5), np.float32)      # 2 input maps
    >>> w = np.ones((3, 2, 3, 3), np.float32)      # 3 kernels, each 2 x 3 x 3
    >>> fastconv.conv2d(x, w, padding=1).shape
    (1, 3, 5, 5)
    >>> float(fastconv.conv2d(x, w)[0, 0, 0, 0])   # 2 maps x 9 taps
    18.0
    """
    if (_is_device_array(x) or _is_device_array(w) or (bias is not None and _is_device_array(bias))
            or (residual is not None and _is_device_array(residual))):
        from .cuda import conv2d as cuda_conv2d
        if out_dtype is not None:
            raise ValueError("out_dtype applies to 16-bit host arrays; CUDA arrays (float32 or "
                             "float64) give a result of their own dtype: pass out_dtype=None")
        return cuda_conv2d(x, w, bias, stride=stride, padding=padding, dilation=dilation,
                           groups=groups, layout=layout, algorithm=algorithm, out=out,
                           connections=connections, activation=activation, residual=residual)

    if out_dtype is not None or _half.any_half(x, w, bias, residual):
        return _conv2d_16(x, w, bias, residual, out, out_dtype, dict(
            stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout,
            algorithm=algorithm, connections=connections, activation=activation))

    x, w, b, p = parse_arrays(x, w, bias, stride=stride, padding=padding, dilation=dilation,
                              groups=groups, layout=layout)
    epi = parse_epilogue(activation, residual, p)
    if out is not None:
        check_out(out, p)
    mask = connection_mask(connections, p)
    if mask is not None:
        w = np.where(mask[:, :, None, None], w, np.zeros((), dtype=w.dtype))
    alg = resolve(algorithm, p, "cpu")
    return execute(alg, x, w, b, p, out, epi)


def _conv2d_16(x, w, bias, residual, out, out_dtype, kw):
    """:func:`conv2d` with 16-bit arrays among its inputs, or with ``out_dtype`` (:mod:`fastconv._half`)."""
    compute, result = _half.storage_dtype(dict(x=x, w=w, bias=bias, residual=residual), out_dtype)
    # 16-bit arrays widened (the weights through the weight cache); the others as they are
    wide = {n: _half.widen(a, compute) if _half.any_half(a) else a
            for n, a in dict(x=x, bias=bias, residual=residual).items()}
    wide["w"] = _half.widen_weights(w, compute) if _half.any_half(w) else w
    if out is not None:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
        if out.dtype != result:
            raise ValueError(f"out must have dtype {result.name}, got {out.dtype.name}")
        if not out.flags.writeable:
            raise ValueError("out must be writeable, got a read-only array")
    if result == compute:
        return conv2d(wide["x"], wide["w"], wide["bias"], residual=wide["residual"], out=out, **kw)
    y = conv2d(wide["x"], wide["w"], wide["bias"], residual=wide["residual"], **kw)
    if out is not None and out.shape != y.shape:
        raise ValueError(f"out must have shape {y.shape}, got {out.shape}")
    y = _half.narrow(y, result)  # to nearest, ties to even; float16 overflows to inf
    if out is None:
        return y
    out[...] = y
    return out


def _kernel_array(a: np.ndarray, dtype) -> np.ndarray:
    """C-contiguous, writeable-typed array for a kernel.

    Numba compiles a separate specialisation for read-only buffers (JAX
    callback and Dask worker inputs are read-only), so those are copied:
    a copy is cheaper than a second compilation.  Kernels never write to it.
    """
    out = np.ascontiguousarray(a, dtype=dtype)
    return out if out.flags.writeable else out.copy()


def to_nchw(x: np.ndarray, p: ConvParams) -> np.ndarray:
    """The input as a C-contiguous (N, C, H, W) array of the call's dtype."""
    xx = x if p.batched else x[None]
    if p.layout == "NHWC":
        xx = xx.transpose(0, 3, 1, 2)
    return _kernel_array(xx, p.dtype)


def execute(alg, x, w, b, p: ConvParams, out=None, epi: Epilogue = NONE):
    """Run a resolved CPU algorithm on validated arrays and lay out its result.

    ``epi`` (residual in the call's layout and rank) goes to the kernels for NCHW results
    (``alg.epilogue``) and is applied after the layout for NHWC ones.
    """
    if epi.residual is not None and out is not None and np.may_share_memory(out, epi.residual):
        # the kernels write each output before they add its residual
        epi = epi.with_residual(epi.residual.copy())
    inner, outer = NONE, NONE  # the epilogue on the NCHW buffer / on the laid-out result
    if epi.active:
        if p.layout == "NCHW":
            r = epi.residual
            inner = epi if r is None else epi.with_residual(
                np.ascontiguousarray(r if p.batched else r[None]))
        else:
            outer = epi
    xx = to_nchw(x, p)
    ww = _kernel_array(w, p.dtype)
    bb = None if b is None else _kernel_array(b, p.dtype)
    direct_out = (out is not None and p.layout == "NCHW" and p.batched
                  and out.flags.c_contiguous
                  and not any(np.may_share_memory(out, a) for a in (x, w, b) if a is not None))
    shape = (p.N, p.K, p.P, p.Q)
    try:
        # 64-byte aligned: kernels that store vectors straight into y (pointwise, depthwise)
        # then never split a store across two cache lines.
        y = out if direct_out else empty_aligned(shape, p.dtype)
    except MemoryError:
        raise ValueError(f"sizes too large: could not allocate the result of shape {shape}") from None
    if p.N:
        # NaN/inf inputs propagate by design: no "invalid value" warnings from BLAS calls.
        with _config.parallel_section(), np.errstate(invalid="ignore", over="ignore"):
            if inner.active and getattr(alg, "epilogue", False):
                alg.run(xx, ww, bb, p, y, epi=inner)
            else:
                alg.run(xx, ww, bb, p, y)
                if inner.active:
                    _cpu_epilogue().apply(y, inner)
    if direct_out:
        return out
    if p.layout == "NHWC":
        y = y.transpose(0, 2, 3, 1)
    if not p.batched:
        y = y[0]
    if outer.active:
        y = np.ascontiguousarray(y)
        with np.errstate(invalid="ignore", over="ignore"):
            _cpu_epilogue().apply(y, outer.with_residual(
                None if outer.residual is None else np.ascontiguousarray(outer.residual)))
    if out is not None:
        np.copyto(out, y)
        return out
    return np.ascontiguousarray(y)


def _cpu_epilogue():
    """:mod:`fastconv.cpu.epilogue`, imported on first use (``import fastconv`` imports no backend)."""
    from .cpu import epilogue

    return epilogue
