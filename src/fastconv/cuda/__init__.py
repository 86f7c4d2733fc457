"""CUDA kernels (numba-cuda) and the CUDA ``auto`` rule.

``fastconv.conv2d`` sends arrays that live on a GPU here; the call has the
CPU's semantics (one :func:`fastconv._params.normalize`, every padding mode,
stride, dilation, groups, bias, NCHW/NHWC, float32/float64, ``out=``, exact
NaN/inf propagation) and returns the caller's kind of array: numba in, numba
out; CuPy in, CuPy out; torch in, torch out (anything else with
``__cuda_array_interface__`` gives a numba device array).  Inputs are viewed
without copies; layout changes, casts and non-contiguous inputs are handled
by a copy kernel on the device.  Nothing is copied to or synchronised with
the host inside a call: kernels run on the caller's current stream (torch's
or CuPy's) and allocate through the caller's framework.

Importing this package never imports numba.cuda: without numba-cuda, without
a GPU, or with a numba-cuda that cannot load, :func:`conv2d` raises
:class:`fastconv.CudaUnavailableError` saying why, and :func:`status` reports
it (``python -m fastconv info``).

Algorithms (``fastconv.algorithms("cuda")``)
--------------------------------------------
``direct``
    Shared-memory tiled direct convolution with register blocking
    (:mod:`fastconv.cuda.direct`); every configuration.
``im2col``
    Implicit GEMM: the im2col matrix is gathered tile by tile into shared
    memory, never materialised; 128 x 128 block tiles, 8 x 8 register tiles
    (:mod:`fastconv.cuda.implicit_gemm`); every configuration.
``winograd_f2x2_3x3``, ``winograd_f4x4_3x3`` (alias ``winograd``)
    Input transform, batched shared-memory GEMM, output transform, with the
    workspace on the device (:mod:`fastconv.cuda.winograd`); 3x3, stride 1,
    dilation 1.

The ``auto`` rule (:func:`auto_rule`)
-------------------------------------
A few comparisons on the call's shape, every threshold in one table
(:mod:`fastconv.cuda.auto`, where the clauses are explained): ``direct`` for
short reductions and small layers, Winograd F(4x4) (F(2x2) on outputs under
4x4) for large 3x3 stride-1 layers with enough channels, ``im2col``
otherwise.  How the thresholds were fitted on GPU timings, and how to refit
them, is in ``docs/cuda_auto.md``.

How a call runs
---------------
Arguments are described as :class:`~fastconv.cuda._views.DevView` objects
(address, shape, strides, dtype) read from the caller's library, never
converted to numba device arrays.  Every kernel is a
:class:`~fastconv.cuda._runtime.KernelSpec` compiled for one fixed
signature, and launched by a launcher chosen once per process
(:mod:`fastconv.cuda._runtime`): on a GPU the parameters are packed straight
into numba's kernel ABI and sent with ``cuda.core`` (checked at start-up
on a probe kernel; numba's own launch path is the fallback), and a repeated
call replays its recorded launches with the new addresses
(:mod:`fastconv.cuda._replay`).  Allocations go through the caller's
framework (torch's caching allocator, CuPy's pool) on its current stream.
Non-finite detection happens on the device: nothing in a call waits for the
GPU.

Checking without a GPU
----------------------
``python -m fastconv check --cuda-compile`` compiles every specialisation
the dispatcher can launch to PTX under the GPU's real typing (the simulator
never type-checks) and assembles it with ``ptxas`` (registers, local memory,
shared memory; it fails on local memory in a register-blocked kernel) and
checks each kernel's parameter list against the launcher's packing
(:mod:`fastconv.cuda.compile_check`).  ``tests/test_cuda_kernels.py`` runs
every kernel under numba's simulator (``NUMBA_ENABLE_CUDASIM=1``, started by
``tests/test_cuda.py`` in a subprocess with 4 x 4 thread blocks, 2 x 2
register tiles and 4-deep K-slices so that multi-block grids, partial tiles
and many slices per output run) against ``fastconv.reference.conv2d``: stride,
asymmetric/"same"/"full" padding, dilation, groups, depthwise, bias, NHWC,
unbatched input, float32/float64, mixed dtypes, non-contiguous input,
``out=``, ``connections=``, an empty batch, NaN/inf propagation (including
the Winograd fallback on an overflowing transform), the Winograd error bound,
split-K, workspace chunking and the argument errors.
``tests/test_cuda_replay.py`` checks that replayed launches carry exactly
the parameters of the ordinary path.  Speed, occupancy and the torch/CuPy
stream and allocator paths need a GPU: ``benchmarks/gpu_check.py`` is the
one script that measures them.
"""

from __future__ import annotations

import numpy as np

from .._algorithm import Algorithm
from .._dispatch import resolve
from .._params import FLOAT_DTYPES, connection_mask, normalize
from . import direct, implicit_gemm, winograd
from .auto import auto_rule, winograd_rule
from ._runtime import Context, status as _status

__all__ = ["conv2d", "status", "auto_rule", "winograd_rule"]


def status() -> dict:
    """Whether the CUDA backend can run here, and on what.

    Returns
    -------
    dict
        ``available`` (bool), ``reason`` (why not, or "ok"), ``device``
        (name), ``compute_capability`` (tuple), ``numba_cuda_version``,
        ``simulator`` (bool).  The target is probed once per process by
        compiling and running a tiny kernel, so an incompatible numpy (numba-cuda
        0.30 with numpy >= 2.5) is reported here rather than at the first call.
    """
    return _status()


def _with_ctx(fn):
    def run(x, w, bias, params, y, ctx=None):
        if ctx is None:
            ctx = Context()
        return fn(x, w, bias, params, y, ctx)
    run.__name__ = getattr(fn, "__name__", "run")
    run.__doc__ = fn.__doc__
    return run


# Read by fastconv._dispatch when CUDA is first used (see its BACKENDS).
ALGORITHMS = (
    Algorithm("direct", "cuda", direct.supports, _with_ctx(direct.run),
              "shared-memory tiled direct convolution; every configuration"),
    Algorithm("im2col", "cuda", implicit_gemm.supports, _with_ctx(implicit_gemm.run),
              "implicit GEMM (im2col gathered into shared memory); every configuration"),
    Algorithm("winograd_f2x2_3x3", "cuda", winograd.supports, _with_ctx(winograd.run_f2x2),
              "Winograd F(2x2,3x3); 3x3, stride 1, dilation 1"),
    Algorithm("winograd_f4x4_3x3", "cuda", winograd.supports, _with_ctx(winograd.run_f4x4),
              "Winograd F(4x4,3x3); 3x3, stride 1, dilation 1"),
)
ALIASES = {"winograd": winograd_rule}


def conv2d(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
           algorithm="auto", out=None, connections=None, activation=None, residual=None):
    """2-D multi-channel convolution (cross-correlation) of CUDA arrays.

    Same arguments and result as :func:`fastconv.conv2d`, for arrays that
    live on a GPU: numba device arrays, CuPy arrays, torch CUDA tensors, or
    any object with ``__cuda_array_interface__`` (or DLPack on a CUDA
    device).  ``x``, ``w``, ``bias`` and ``out`` must all be on the GPU;
    ``connections`` is a host table (it is copied to the GPU once per
    distinct table and kept).

    Returns
    -------
    y : device array of the caller's kind, shape (N, K, P, Q) or (N, P, Q, K)
        CuPy in gives CuPy out, torch gives torch, numba (or any other
        ``__cuda_array_interface__`` producer) gives a numba device array;
        ``out`` itself when given.  The call returns once the work is
        queued on the caller's current stream (no host synchronisation).

    Raises
    ------
    TypeError
        Arguments split between host and GPU, non-float dtypes, ``out`` not
        a device array.
    ValueError
        Inconsistent shapes or values; a wrong ``out`` shape/dtype.
    fastconv.UnsupportedError
        The named algorithm does not support this configuration.
    fastconv.CudaUnavailableError
        numba-cuda is missing, finds no GPU, or cannot compile here.

    Notes
    -----
    The kernels and their blocking are described in
    :mod:`fastconv.cuda.direct`, :mod:`fastconv.cuda.implicit_gemm` (Chetlur
    et al. 2014, cuDNN's implicit GEMM) and :mod:`fastconv.cuda.winograd`
    (Lavin & Gray 2016).  Winograd recomputes the call with the direct
    kernel, on the device, when the input or weights hold NaN/inf.
    """
    from . import _arrays, _runtime

    if not (_arrays.is_device_array(x) and _arrays.is_device_array(w)
            and (bias is None or _arrays.is_device_array(bias))
            and (residual is None or _arrays.is_device_array(residual))):
        _arrays.check_placement({"x": x, "w": w, "bias": bias, "residual": residual})
        raise TypeError(f"x must be a CUDA array for fastconv.cuda.conv2d, got "
                        f"{type(x).__name__}; use fastconv.conv2d for host arrays")
    if out is not None and not _arrays.is_device_array(out):
        raise TypeError(f"out must be a CUDA array like x (the inputs are on the GPU), got "
                        f"{type(out).__module__.split('.')[0]}.{type(out).__name__}")
    _runtime.require()
    _arrays.check_same_gpu({"x": x, "w": w, "bias": bias, "out": out, "residual": residual})
    with _arrays.device_of(x):
        return _run(x, w, bias, out, stride, padding, dilation, groups, layout, algorithm,
                    connections, activation, residual)


def _run(x, w, bias, out, stride, padding, dilation, groups, layout, algorithm, connections,
         activation=None, residual=None):
    from . import _arrays, _epilogue, _replay, _runtime
    from .._epilogue import Epilogue, check_activation

    xv, wv = _arrays.view_of(x, "x"), _arrays.view_of(w, "w")
    bv = None if bias is None else _arrays.view_of(bias, "bias")
    for name, v in (("x", xv), ("w", wv), ("bias", bv)):
        if v is not None and v.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64, got {v.dtype}; "
                            f"cast explicitly, e.g. {name}.astype(np.float32)")
    dtype = np.result_type(*(v.dtype for v in (xv, wv, bv) if v is not None))
    p = normalize(xv.shape, wv.shape, None if bv is None else bv.shape, dtype, stride=stride,
                  padding=padding, dilation=dilation, groups=groups, layout=layout)
    mask = None if connections is None else connection_mask(connections, p)
    activation = check_activation(activation)
    rv = None
    if residual is not None:
        rv = _arrays.view_of(residual, "residual")
        if rv.dtype not in FLOAT_DTYPES:
            raise TypeError(f"residual must have dtype float32 or float64, got {rv.dtype}")
        if rv.shape != p.output_shape:
            raise ValueError(f"residual must have the result's shape {p.output_shape}, "
                             f"got {rv.shape}")
    epi = Epilogue(activation, rv)
    alg = resolve(algorithm, p, "cuda")
    ov = None
    if out is not None:
        ov = _arrays.view_of(out, "out")
        if ov.shape != p.output_shape:
            raise ValueError(f"out must have shape {p.output_shape}, got {ov.shape}")
        if ov.dtype != p.dtype:
            raise ValueError(f"out must have dtype {p.dtype}, got {ov.dtype}")
        if ov.readonly:
            raise ValueError("out must be writeable, got a read-only CUDA array")
    ctx = _arrays.context_for(x, xv)
    if rv is not None and ov is not None and rv.overlaps(ov):
        # the convolution writes out before the epilogue reads the residual
        copy = ctx.empty(rv.shape, rv.dtype)
        _arrays.copy4d(rv.expand(4), copy.expand(4), ctx)
        rv = copy
    if epi.active:
        result = _execute(alg, xv, wv, bv, ov, p, ctx, mask)
        _epilogue.apply(result, rv, epi, ctx)
        return out if out is not None else result.owner
    if ov is None and mask is None and _runtime._state.get("mode") == "fast":
        # The launches of a repeated call are recorded once and replayed (see _replay).
        key = ("cuda_plan", alg.name, ctx.device, xv.strides, xv.dtype.str, wv.strides,
               wv.dtype.str, None if bv is None else (bv.strides, bv.dtype.str),
               _replay.settings_key())
        plan = p.remembered(key, lambda: _replay.record(_execute, alg, xv, wv, bv, p, ctx.device))
        return plan.replay(xv, wv, bv, ctx).owner
    result = _execute(alg, xv, wv, bv, ov, p, ctx, mask)
    return out if out is not None else result.owner


def _execute(alg, xv, wv, bv, ov, p, ctx, mask=None):
    """Run a resolved CUDA algorithm on device views and lay out its result (a DevView)."""
    from . import _arrays as A
    from ._connections import masked_weights

    dtype = p.dtype
    shape4 = (p.N, p.K, p.P, p.Q)
    x4 = xv if p.batched else xv.expand(4)
    if p.layout == "NHWC":
        x4 = x4.permute((0, 3, 1, 2))
    xc = A.as_contiguous(x4, dtype, ctx)
    wc = A.as_contiguous(wv, dtype, ctx)
    if mask is not None:
        wc = masked_weights(wc, mask, p, ctx)
    bc = None if bv is None else A.as_contiguous(bv, dtype, ctx)
    reads = [a for a in (xc, wc, bc) if a is not None]
    direct_out = (ov is not None and p.layout == "NCHW" and ov.is_c_contiguous()
                  and not any(ov.overlaps(a) for a in reads))
    if direct_out:
        result = ov
        y4 = ov.reshape(shape4)
    elif ov is None and p.layout == "NCHW":
        result = ctx.empty(p.output_shape, dtype)
        y4 = result.reshape(shape4)
    else:
        result = None
        y4 = ctx.empty(shape4, dtype)
    if p.N:
        alg.run(xc.flat(), wc.flat(), None if bc is None else bc.flat(), p, y4.flat(), ctx)
    if result is None:
        if ov is not None:
            result = ov
            dst = ov.expand(4)
        else:
            result = ctx.empty(p.output_shape, dtype)
            dst = result.reshape((p.N,) + tuple(p.output_shape[-3:]))
        if p.layout == "NHWC":
            dst = dst.permute((0, 3, 1, 2))
        if p.N:
            A.copy4d(y4, dst, ctx)
    return result
