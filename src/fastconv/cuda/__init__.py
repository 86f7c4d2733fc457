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
1. few multiply-adds per output (``Cg * R * S < 32``: depthwise, 1-3 input
   channels): ``direct`` (an implicit GEMM would waste most of its 128-row
   tiles);
2. 3x3, stride 1, dilation 1 with at least 64 input and 64 output channels
   per group: Winograd, F(4x4) unless the output is smaller than 4x4;
3. everything else: ``im2col``.

The thresholds follow the published cuDNN/Lavin & Gray trade-offs; they have
not yet been fitted on a GPU (``benchmarks/gpu_check.py`` writes the timings
that will fit them).

What has been verified, and what has not
----------------------------------------
Verified under numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``,
``tests/test_cuda_kernels.py``, run by ``tests/test_cuda.py`` in a subprocess
with 4 x 4 thread blocks, 2 x 2 register tiles and 4-deep K-slices so that
multi-block grids, partial tiles and many slices per output run): every
kernel against ``fastconv.reference.conv2d`` for stride, asymmetric/"same"/
"full" padding, dilation, groups, depthwise (with channel multipliers), bias,
NHWC, unbatched input, float32/float64, mixed dtypes, non-contiguous input,
``out=`` (NCHW and NHWC), an empty batch, NaN/inf propagation (including the
Winograd fallback on an overflowing transform), the Winograd error bound of
:func:`fastconv.accuracy.error_bound`, split-K, Winograd workspace chunking,
the shared-memory-overflow fallback of ``direct``, and the argument errors
(mixed host/device, bad ``out``, dtypes).  The simulator runs kernels as
Python threads, so it checks indexing, barriers and shared-memory logic; it
does not check speed, occupancy, register spilling, the torch/CuPy interop
(no CUDA torch here), or races that Python's scheduling happens to hide.

Not yet measured on a GPU (this code was written in a session without one):
the throughput of every kernel against cuDNN, whether the register tiles stay
in registers (no local-memory spills), compile times, the torch/CuPy stream
and allocator paths, and the thresholds of the ``auto`` rule.
``benchmarks/gpu_check.py`` is the one-shot script that checks all of this
on a GPU and writes the numbers to fit the rule with.
"""

from __future__ import annotations

import numpy as np

from .._dispatch import Algorithm, register_algorithm, register_alias, resolve
from .._params import FLOAT_DTYPES, normalize
from . import direct, implicit_gemm, winograd
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


def winograd_rule(p) -> str:
    """F(4x4, 3x3) unless the output is too small to fill 4x4 tiles."""
    return "winograd_f4x4_3x3" if min(p.P, p.Q) >= 4 else "winograd_f2x2_3x3"


def auto_rule(p) -> str:
    """The CUDA ``auto`` choice for ``p`` (see the module docstring)."""
    if p.Cg * p.R * p.S < 32:
        return "direct"
    if winograd.supports(p) is None and p.Cg >= 64 and p.Kg >= 64:
        return winograd_rule(p)
    return "im2col"


def _with_ctx(fn):
    def run(x, w, bias, params, y, ctx=None):
        if ctx is None:
            from ._runtime import cuda_module
            ctx = Context(stream=cuda_module().default_stream())
        return fn(x, w, bias, params, y, ctx)
    run.__name__ = getattr(fn, "__name__", "run")
    run.__doc__ = fn.__doc__
    return run


register_algorithm(Algorithm("direct", "cuda", direct.supports, _with_ctx(direct.run),
                             "shared-memory tiled direct convolution; every configuration"))
register_algorithm(Algorithm("im2col", "cuda", implicit_gemm.supports, _with_ctx(implicit_gemm.run),
                             "implicit GEMM (im2col gathered into shared memory); every configuration"))
register_algorithm(Algorithm("winograd_f2x2_3x3", "cuda", winograd.supports, _with_ctx(winograd.run_f2x2),
                             "Winograd F(2x2,3x3); 3x3, stride 1, dilation 1"))
register_algorithm(Algorithm("winograd_f4x4_3x3", "cuda", winograd.supports, _with_ctx(winograd.run_f4x4),
                             "Winograd F(4x4,3x3); 3x3, stride 1, dilation 1"))
register_alias("cuda", "winograd", winograd_rule)


def _flat(arr):
    from ._arrays import reshape
    return reshape(arr, (int(np.prod(arr.shape, dtype=np.int64)),))


def conv2d(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
           algorithm="auto", out=None):
    """2-D multi-channel convolution (cross-correlation) of CUDA arrays.

    Same arguments and result as :func:`fastconv.conv2d`, for arrays that
    live on a GPU: numba device arrays, CuPy arrays, torch CUDA tensors, or
    any object with ``__cuda_array_interface__`` (or DLPack on a CUDA
    device).  ``x``, ``w``, ``bias`` and ``out`` must all be on the GPU.

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

    _arrays.check_placement({"x": x, "w": w, "bias": bias})
    if not _arrays.is_device_array(x):
        raise TypeError(f"x must be a CUDA array for fastconv.cuda.conv2d, got "
                        f"{type(x).__name__}; use fastconv.conv2d for host arrays")
    if out is not None and not _arrays.is_device_array(out):
        raise TypeError(f"out must be a CUDA array like x (the inputs are on the GPU), got "
                        f"{type(out).__module__.split('.')[0]}.{type(out).__name__}")
    _runtime.require()
    _arrays.check_same_gpu({"x": x, "w": w, "bias": bias, "out": out})
    with _arrays.device_of(x):
        return _run(x, w, bias, out, dict(stride=stride, padding=padding, dilation=dilation,
                                          groups=groups, layout=layout), algorithm)


def _run(x, w, bias, out, kw, algorithm):
    from . import _arrays

    args = {"x": _arrays.DeviceArg(x, "x"), "w": _arrays.DeviceArg(w, "w")}
    if bias is not None:
        args["bias"] = _arrays.DeviceArg(bias, "bias")
    for name, a in args.items():
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}; "
                            f"cast explicitly, e.g. {name}.astype(np.float32)")
    dtype = np.result_type(*(a.dtype for a in args.values()))
    xa, wa, ba = args["x"], args["w"], args.get("bias")
    p = normalize(xa.shape, wa.shape, None if ba is None else ba.shape, dtype, **kw)
    alg = resolve(algorithm, p, "cuda")
    oa = None
    if out is not None:
        oa = _arrays.DeviceArg(out, "out")
        if oa.shape != p.output_shape:
            raise ValueError(f"out must have shape {p.output_shape}, got {oa.shape}")
        if oa.dtype != p.dtype:
            raise ValueError(f"out must have dtype {p.dtype}, got {oa.dtype}")
        if _arrays.read_only(out):
            raise ValueError("out must be writeable, got a read-only CUDA array")
    return _execute(alg, xa, wa, ba, oa, p, _arrays.context_for(x))


def _execute(alg, xa, wa, ba, oa, p, ctx):
    from . import _arrays as A

    dtype = p.dtype
    shape4 = (p.N, p.K, p.P, p.Q)
    xv = xa.arr if p.batched else A.reshape_any(xa.arr, (1,) + xa.shape)
    if p.layout == "NHWC":
        xv = A.permute(xv, (0, 3, 1, 2))
    xc = A.as_contiguous(xv, dtype, ctx)
    wc = A.as_contiguous(wa.arr, dtype, ctx)
    bc = None if ba is None else A.as_contiguous(ba.arr, dtype, ctx)
    reads = [a for a in (xc, wc, bc) if a is not None]
    direct_out = (oa is not None and p.layout == "NCHW" and A.is_c_contiguous(oa.arr)
                  and not any(A.overlaps(oa.arr, a) for a in reads))
    if direct_out:
        result = oa.arr
        y4 = A.reshape(oa.arr, shape4)
    elif oa is None and p.layout == "NCHW":
        result = ctx.empty(p.output_shape, dtype)
        y4 = A.reshape(result, shape4)
    else:
        result = None
        y4 = ctx.empty(shape4, dtype)
    if p.N:
        alg.run(_flat(xc), _flat(wc), None if bc is None else _flat(bc), p, _flat(y4), ctx)
    if result is None:
        if oa is not None:
            dst = A.reshape_any(oa.arr, (1,) + oa.shape) if not p.batched else oa.arr
        else:
            result = ctx.empty(p.output_shape, dtype)
            dst = A.reshape(result, (p.N,) + tuple(p.output_shape[-3:]))
        if p.layout == "NHWC":
            dst = A.permute(dst, (0, 3, 1, 2))
        if p.N:
            A.copy4d(y4, dst, ctx)
    if oa is not None:
        return oa.obj
    if xa.kind in ("torch", "cupy"):
        return A.owner(result)
    return result
