"""Inference plans: validate and transform the weights once, then convolve many inputs.

:func:`plan` does everything of :func:`fastconv.conv2d` that depends only on
the weights and the input shape -- argument validation, the choice of
algorithm, and the algorithm's weight preparation (for Winograd, the kernel
transform ``U = G w G^T``) -- and returns a :class:`ConvPlan` to call on each
input, like a cuDNN/oneDNN primitive or an FFTW plan.
"""

from __future__ import annotations

import numpy as np

from ._api import execute
from ._dispatch import check_out, resolve
from ._epilogue import NONE, check_activation, parse_epilogue
from ._params import as_float_array, normalize

_KEEP = object()


class _Prepared:
    """Adapter giving a prepared algorithm the ``run(x, w, bias, params, y)`` signature."""

    __slots__ = ("name", "run_prepared", "packed")

    def __init__(self, name, run_prepared, packed):
        self.name, self.run_prepared, self.packed = name, run_prepared, packed

    # The CPU's run_prepared functions all take the fused epilogue (fastconv._algorithm).
    epilogue = True

    def run(self, x, w, bias, p, y, epi=NONE):
        self.run_prepared(x, self.packed, bias, p, y, epi=epi)


class ConvPlan:
    """A convolution with fixed weights and input shape; call it as ``plan(x, out=None)``.

    Built by :func:`plan`.  The plan holds its own copy of the weights (and,
    for Winograd, of the transformed weights): changing the array passed to
    :func:`plan` afterwards does **not** change the plan's results.  Call
    :meth:`update` to load new weights.

    Attributes
    ----------
    params : fastconv._params.ConvParams
        The normalised convolution (shapes, padding, dtype, layout).
    algorithm : str
        The concrete algorithm the plan runs.
    x_shape, output_shape : tuple
        Shapes of the accepted input and of the result.
    dtype : numpy.dtype
        dtype of the weights and of the result.
    nbytes : int
        Memory held by the plan's weights (including transformed ones).

    Notes
    -----
    Calls are thread-safe: several Python threads may call one plan at once,
    and :meth:`update` swaps the weights atomically (a call sees either the
    old or the new weights, never a mix).
    """

    def __init__(self, w, bias, params, alg, activation=None):
        self.params = params
        self._alg = alg
        self.activation = activation
        self._w_shape = w.shape
        self._state = self._build(w, bias)

    # -- weights ---------------------------------------------------------------------------
    def _build(self, w, bias):
        p = self.params
        w = as_float_array(w, "w")
        if w.shape != self._w_shape:
            raise ValueError(f"w must have shape {self._w_shape} (the plan's), got {w.shape}")
        ww = np.array(w, dtype=p.dtype, order="C", copy=True)
        bb = None
        if bias is not None:
            b = as_float_array(bias, "bias")
            if b.shape != (p.K,):
                raise ValueError(f"bias must have shape ({p.K},), got {b.shape}")
            bb = np.array(b, dtype=p.dtype, order="C", copy=True)
        prepare, run_prepared = self._alg.prepare, self._alg.run_prepared
        if prepare is not None and run_prepared is not None:
            runner = _Prepared(self._alg.name, run_prepared, prepare(ww, p))
        else:
            runner = self._alg
        # ww and bb are private copies that nothing writes to.  They stay flagged writeable:
        # the kernels are compiled for writeable arrays, so execute() would copy read-only
        # ones on every call (9.4 MB for a 512-channel 3x3 layer).
        return ww, bb, runner

    def update(self, w, bias=_KEEP):
        """Load new weights (and bias; omitted keeps the current one, ``None`` removes it).

        ``w`` must have the plan's shape; it is copied (and transformed), so
        later changes to it do not reach the plan either.
        """
        if bias is _KEEP:
            bias = self._state[1]
        self._state = self._build(w, bias)

    # -- calls -----------------------------------------------------------------------------
    @property
    def algorithm(self):
        return self._alg.name

    @property
    def dtype(self):
        return self.params.dtype

    @property
    def x_shape(self):
        p = self.params
        shape = (p.N, p.C, p.H, p.W) if p.layout == "NCHW" else (p.N, p.H, p.W, p.C)
        return shape if p.batched else shape[1:]

    @property
    def output_shape(self):
        return self.params.output_shape

    @property
    def nbytes(self):
        ww, bb, runner = self._state
        packed = getattr(runner, "packed", None)
        extra = getattr(packed, "nbytes", 0) if packed is not None else 0
        return ww.nbytes + (0 if bb is None else bb.nbytes) + extra

    def __call__(self, x, out=None, *, residual=None):
        """Convolve ``x`` (of the plan's shape) with the plan's weights; see :func:`fastconv.conv2d`.

        ``residual`` (the result's shape) is added before the plan's activation, as in
        ``conv2d(..., activation=, residual=)``.
        """
        p = self.params
        x = as_float_array(x, "x")
        if x.shape != self.x_shape:
            raise ValueError(f"x must have shape {self.x_shape} (layout {p.layout!r}) to match "
                             f"this plan, got {x.shape}; make a new plan for other shapes")
        if not np.can_cast(x.dtype, p.dtype, "safe"):
            raise ValueError(f"x has dtype {x.dtype} but the plan computes in {p.dtype}; cast x "
                             f"or make the plan with dtype=np.{x.dtype}")
        epi = parse_epilogue(self.activation, residual, p)
        if out is not None:
            check_out(out, p)
        ww, bb, runner = self._state  # one read: update() may swap it concurrently
        return execute(runner, x, ww, bb, p, out, epi)

    def __repr__(self):
        p = self.params
        return (f"ConvPlan(algorithm={self.algorithm!r}, x_shape={self.x_shape}, "
                f"w_shape={self._w_shape}, stride={p.stride}, padding={p.padding}, "
                f"dilation={p.dilation}, groups={p.groups}, layout={p.layout!r}, "
                f"dtype={p.dtype.name}, activation={self.activation!r})")


def plan(w, bias=None, *, x_shape, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
         algorithm="auto", dtype=None, activation=None):
    """Plan a CPU convolution with fixed weights for inputs of one shape.

    Parameters
    ----------
    w : array_like, shape (K, C/groups, R, S)
        Weights; copied (and, for Winograd, transformed) now.
    bias : array_like, shape (K,), optional
        Copied now.
    x_shape : tuple of int
        Shape of the inputs the plan accepts, in ``layout`` (4-D, or 3-D for
        one unbatched image).
    stride, padding, dilation, groups, layout, algorithm
        As in :func:`fastconv.conv2d`; ``algorithm`` is resolved once, here.
    dtype : {None, numpy.float32, numpy.float64}
        dtype of the computation and the result; default
        ``np.result_type(w, bias)``.  Inputs of a dtype that casts safely to
        it (float32 into a float64 plan) are accepted.
    activation : {None, "relu", "relu6", "silu", "gelu"}
        The fused epilogue's activation, applied on every call (with the
        call's ``residual=`` if given), as in :func:`fastconv.conv2d`.

    Returns
    -------
    ConvPlan
        Call it as ``plan(x, out=None, residual=None)``; it returns what
        ``fastconv.conv2d(x, w, bias, ..., activation=, residual=)`` would.

    Raises
    ------
    TypeError, ValueError, fastconv.UnsupportedError
        As :func:`fastconv.conv2d`, at planning time.

    Notes
    -----
    The plan snapshots the weights: mutating ``w`` or ``bias`` afterwards
    never changes (nor silently staleness-corrupts) its results -- call
    :meth:`ConvPlan.update` to load new weights.  Winograd plans keep the
    transformed weights ``U`` (``(m + 2)^2 / 9`` times the size of ``w``:
    4x for F(4x4, 3x3)) so that each call skips the kernel transform
    (Lavin & Gray 2016, section 4: the transform is amortised over a batch;
    a plan amortises it over calls).

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> w = np.ones((4, 3, 3, 3), np.float32)
    >>> conv = fastconv.plan(w, x_shape=(2, 3, 8, 8), padding=1)
    >>> conv(np.ones((2, 3, 8, 8), np.float32)).shape
    (2, 4, 8, 8)
    """
    w = as_float_array(w, "w")
    b = None if bias is None else as_float_array(bias, "bias")
    if dtype is None:
        dtype = np.result_type(*(a.dtype for a in (w, b) if a is not None))
    else:
        try:
            dtype = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be None, numpy.float32 or numpy.float64, got {dtype!r}") from None
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be None, numpy.float32 or numpy.float64, got {dtype}")
    if not isinstance(x_shape, (tuple, list)) or not all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in x_shape):
        raise TypeError(f"x_shape must be a tuple of ints, got {x_shape!r}")
    p = normalize(tuple(x_shape), w.shape, None if b is None else b.shape, dtype, stride=stride,
                  padding=padding, dilation=dilation, groups=groups, layout=layout)
    activation = check_activation(activation)
    alg = resolve(algorithm, p, "cpu")
    return ConvPlan(w, b, p, alg, activation)
