"""16-bit inputs: float16 and bfloat16, computed in float32.

Frameworks store activations and weights in 16 bits (IEEE ``float16``, or
``bfloat16``: float32's exponent with 8 bits of significand; for numpy the
``ml_dtypes.bfloat16`` dtype, which JAX and TensorFlow use).
:func:`fastconv.conv2d` accepts both for ``x``, ``w``, ``bias`` and
``residual``:

* every 16-bit value is exactly a float32 value, so the arrays are widened to
  float32 and the float32 kernels run unchanged: products and sums in
  float32, as oneDNN and PyTorch do on CPUs.  The widened weights are kept
  by the weight cache (:func:`widen_weights`), so repeated calls with
  unchanged weights also keep their prepared forms;
* the result is rounded to the 16-bit dtype (to nearest, ties to even) unless
  ``out_dtype=numpy.float32`` asks for the float32 result itself.

Error: the float32 algorithm's bound (:mod:`fastconv.accuracy`, with ``u =
2**-24``) on the widened inputs, plus the final rounding, ``u16 |y|`` with
``u16 = 2**-11`` (float16) or ``2**-8`` (bfloat16); float16 results beyond
65504 become ``inf``, as any float16 rounding does.

Dtypes combine as numpy's promotion does for float16: 16-bit with float32
computes and returns float32, with float64 float64.  float16 with bfloat16 has
no common 16-bit type and is a TypeError (cast one of them).

The AVX512_BF16 dot-product instruction (``vdpbf16ps``), which would halve the
kernels' own input traffic, is not used: the kernels read float32.
"""

from __future__ import annotations

import numpy as np

#: The unit roundoff of each 16-bit storage dtype (by name).
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8}


def is_half(dtype) -> bool:
    """Whether ``dtype`` is float16 or bfloat16 (``ml_dtypes``' numpy dtype, found by name)."""
    return np.dtype(dtype).name in UNIT_ROUNDOFF


def _dtype_of(a):
    dt = getattr(a, "dtype", None)
    if dt is None:
        return None
    try:
        return np.dtype(dt)
    except TypeError:  # a framework's dtype object (torch): not a host 16-bit array
        return None


def any_half(*arrays) -> bool:
    """Whether any of ``arrays`` (array-likes with a dtype, or None) is float16 or bfloat16."""
    return any(dt is not None and is_half(dt) for dt in map(_dtype_of, arrays))


def storage_dtype(named: dict, out_dtype) -> tuple:
    """``(compute dtype, result dtype)`` for a call with 16-bit arrays among ``named``.

    ``named`` maps argument names to their arrays (None for absent ones).
    The compute dtype is float32 or float64 (numpy's promotion of the
    non-16-bit arrays with float32); the result is the 16-bit dtype when every
    float array is 16-bit, else the compute dtype, or ``out_dtype`` when given
    (float32 for 16-bit inputs, or the result dtype itself).
    """
    halves, others = {}, []
    for name, a in named.items():
        if a is None:
            continue
        dt = np.asarray(a).dtype
        if is_half(dt):
            halves[name] = dt
        elif dt in (np.dtype(np.float32), np.dtype(np.float64)):
            others.append(dt)
        else:
            raise TypeError(f"{name} must have dtype float16, bfloat16, float32 or float64, got "
                            f"{dt}; cast explicitly, e.g. {name}.astype(np.float32)")
    kinds = sorted({dt.name for dt in halves.values()})
    if len(kinds) > 1:
        listed = ", ".join(f"{n} {dt.name}" for n, dt in halves.items())
        raise TypeError(f"float16 and bfloat16 do not mix ({listed}); cast one of them, e.g. to "
                        f"float32")
    compute = np.result_type(np.float32, *others)
    result = next(iter(halves.values())) if not others else compute
    if out_dtype is not None:
        try:
            want = np.dtype(out_dtype)
        except TypeError:
            raise TypeError(f"out_dtype must be None or a numpy dtype, got {out_dtype!r}") from None
        if want not in (result, compute):
            raise ValueError(f"out_dtype must be None, {result.name} or {compute.name} for these "
                             f"inputs, got {want.name}")
        result = want
    return compute, result


def widen(a, dtype):
    """``a`` as a new C-contiguous array of ``dtype`` (None stays None); the input is not modified.

    16-bit to float32 runs on Numba's threads (:mod:`fastconv.cpu.convert16`).
    """
    if a is None:
        return None
    a = np.asarray(a)
    if is_half(a.dtype) and np.dtype(dtype) == np.float32:
        from .cpu import convert16

        return convert16.widen(a)
    return np.array(a, dtype=dtype, order="C", copy=True)


def narrow(y, dtype):
    """float32 ``y`` rounded to 16-bit ``dtype`` (to nearest, ties to even; float16
    overflows to inf), on Numba's threads; other conversions by numpy."""
    if is_half(dtype) and y.dtype == np.float32:
        from .cpu import convert16

        return convert16.narrow(y, dtype)
    with np.errstate(over="ignore"):
        return y.astype(dtype)


def widen_weights(w, dtype):
    """16-bit weights widened to ``dtype``, kept by the weight cache.

    Unchanged weights then give the same widened array on every call, so the
    algorithms' own prepared weights (Winograd's transforms, the packed
    layouts), which the cache keys by the array they were built from, are
    found again instead of being rebuilt from a new array each call.
    """
    from . import _weight_cache

    w = np.asarray(w)
    return _weight_cache.CACHE.get(w, ("widened", np.dtype(dtype).str),
                                   lambda snap: widen(snap, dtype))


def error_bound(bound32, y_exact, dtype) -> np.ndarray:
    """A 16-bit result's bound: the float32 computation's ``bound32`` plus the final
    rounding ``u16 |y|`` (``y_exact`` the exact result) for storage ``dtype``."""
    u = UNIT_ROUNDOFF.get(np.dtype(dtype).name, 0.0)
    return np.asarray(bound32) + u * (np.abs(y_exact) + np.asarray(bound32))
