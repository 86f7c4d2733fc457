"""One normalisation step for every convolution argument.

:class:`ConvParams` is built once per call by :func:`normalize`.  It owns all
argument validation and the output-shape arithmetic; kernels receive a
``ConvParams`` plus contiguous arrays and never re-validate.

Shape letters: input ``x`` is ``(N, C, H, W)``, weights ``w`` are
``(K, C/groups, R, S)``, output ``y`` is ``(N, K, P, Q)`` with::

    P = (H + pad_top + pad_bottom - dilation_h * (R - 1) - 1) // stride_h + 1
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field

import numpy as np

from . import _config

#: The memo entry holding the settings generation its decisions were made under.
_GENERATION_KEY = "_config.generation"

LAYOUTS = ("NCHW", "NHWC")
PADDING_MODES = ("valid", "same", "full")
FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass(frozen=True)
class ConvParams:
    """Normalised description of one 2-D convolution (cross-correlation)."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    P: int
    Q: int
    stride: tuple
    dilation: tuple
    padding: tuple  # (top, bottom, left, right)
    groups: int
    layout: str
    dtype: np.dtype
    batched: bool = True
    #: Per-shape decisions of the dispatcher and kernels (the ``auto`` choice, blocking
    #: plans), kept with the params: :func:`normalize` returns the same object for
    #: repeated identical calls, so a call with a known shape skips re-deriving them.
    #: Not part of equality or hashing; ``dataclasses.replace`` starts a fresh one.
    memo: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def remembered(self, key, compute):
        """``memo[key]``, computed by ``compute()`` on first use (a per-shape decision).

        The memo is emptied when a setting of :mod:`fastconv._config` has
        changed since it was filled (:func:`fastconv._config.generation`).
        """
        gen = _config.generation()
        if self.memo.get(_GENERATION_KEY) != gen:
            self.memo.clear()
            self.memo[_GENERATION_KEY] = gen
        value = self.memo.get(key)
        if value is None:
            value = self.memo[key] = compute()
        return value

    @property
    def Cg(self) -> int:
        """Input channels per group (the kernel's depth)."""
        return self.C // self.groups

    @property
    def Kg(self) -> int:
        """Output channels per group."""
        return self.K // self.groups

    @property
    def depthwise(self) -> bool:
        return self.groups == self.C and self.groups > 1

    @property
    def flops(self) -> int:
        """Floating-point operations of the direct definition (2 per multiply-add)."""
        return 2 * self.N * self.K * self.P * self.Q * self.Cg * self.R * self.S

    @property
    def padded_hw(self) -> tuple:
        pt, pb, pl, pr = self.padding
        return self.H + pt + pb, self.W + pl + pr

    @property
    def output_shape(self) -> tuple:
        """Shape of the result in the caller's layout and rank."""
        if self.layout == "NCHW":
            shape = (self.N, self.K, self.P, self.Q)
        else:
            shape = (self.N, self.P, self.Q, self.K)
        return shape if self.batched else shape[1:]

    @property
    def is_3x3_unit(self) -> bool:
        return (self.R, self.S) == (3, 3) and self.stride == (1, 1) and self.dilation == (1, 1)

    def key(self) -> tuple:
        """A hashable description used by caches (autotuning, plans)."""
        return (self.N, self.C, self.H, self.W, self.K, self.R, self.S, self.stride,
                self.dilation, self.padding, self.groups, self.layout, self.dtype.str)


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _pair(value, name: str, minimum: int) -> tuple:
    """An int or a pair of ints, each >= minimum."""
    if _is_int(value):
        items = (int(value), int(value))
    elif isinstance(value, (tuple, list)) and len(value) == 2 and all(_is_int(v) for v in value):
        items = (int(value[0]), int(value[1]))
    else:
        raise TypeError(f"{name} must be an int or a pair of ints (h, w), got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{name} must be >= {minimum} in each dimension, got {value!r}")
    return items


def _same_padding(size: int, k: int, stride: int, dilation: int) -> tuple:
    # TF/JAX SAME: out = ceil(size / stride); the odd element goes last.
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _padding(value, R: int, S: int, H: int, W: int, stride: tuple, dilation: tuple) -> tuple:
    """Normalise padding to (top, bottom, left, right)."""
    if isinstance(value, str):
        mode = value.lower()
        if mode == "valid":
            return (0, 0, 0, 0)
        if mode == "same":
            return _same_padding(H, R, stride[0], dilation[0]) + _same_padding(W, S, stride[1], dilation[1])
        if mode == "full":
            ph, pw = (R - 1) * dilation[0], (S - 1) * dilation[1]
            return (ph, ph, pw, pw)
        raise ValueError(f"padding must be an int, a pair, a pair of pairs or one of "
                         f"{', '.join(repr(m) for m in PADDING_MODES)}; got {value!r}")
    if _is_int(value):
        pads = (int(value),) * 4
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        if all(_is_int(v) for v in value):
            pads = (int(value[0]), int(value[0]), int(value[1]), int(value[1]))
        elif all(isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_int(e) for e in v)
                 for v in value):
            pads = (int(value[0][0]), int(value[0][1]), int(value[1][0]), int(value[1][1]))
        else:
            raise TypeError(f"padding must be an int, (ph, pw), ((top, bottom), (left, right)) "
                            f"or a string; got {value!r}")
    else:
        raise TypeError(f"padding must be an int, (ph, pw), ((top, bottom), (left, right)) "
                        f"or one of {', '.join(repr(m) for m in PADDING_MODES)}; got {value!r}")
    if min(pads) < 0:
        raise ValueError(f"padding must be non-negative, got {value!r}")
    return pads


def as_float_array(a, name: str) -> np.ndarray:
    """np.asarray with a dtype check that names the argument."""
    try:
        arr = np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be an array-like of floats: {exc}") from None
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {arr.dtype}; "
                        f"cast explicitly, e.g. {name}.astype(np.float32)")
    return arr


def parse_arrays(x, w, bias=None, **conv_kwargs):
    """Host arrays and their :class:`ConvParams`: ``(x, w, bias, params)``.

    The arrays are ``np.asarray`` views (never copies) with their dtypes
    checked; ``params.dtype`` is their promoted dtype.  ``conv_kwargs`` are
    those of :func:`normalize`.
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w")
    b = None if bias is None else as_float_array(bias, "bias")
    if x.dtype == w.dtype and (b is None or b.dtype == x.dtype):
        dtype = x.dtype
    else:
        dtype = np.result_type(*(a.dtype for a in (x, w, b) if a is not None))
    p = normalize(x.shape, w.shape, None if b is None else b.shape, dtype, **conv_kwargs)
    return x, w, b, p


def _memory_limit() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2**40


#: Successful :func:`normalize` results by their arguments (cleared when full).
_NORMALIZED: dict = {}
_NORMALIZED_MAX = 512


def _plain(value) -> bool:
    """True for None, an exact int or str, or a tuple of those (nested): exact memo keys.

    Exact types only: ``True == 1`` and ``np.int64(1) == 1`` hash alike but are
    validated differently (bools are rejected).
    """
    t = type(value)
    if t is int or t is str or value is None:
        return True
    if t is not tuple:
        return False
    for v in value:
        if type(v) is not int and not _plain(v):
            return False
    return True


def normalize(x_shape, w_shape, bias_shape, dtype, *, stride=1, padding=0, dilation=1,
              groups=1, layout="NCHW", check_memory=True) -> ConvParams:
    """Validate every argument and compute the output shape.

    Takes shapes (not arrays) so the same rules serve the CPU, CUDA and
    framework adapters.  Raises ValueError / TypeError naming the argument.
    ``check_memory=False`` skips the "fits in this machine's memory" check,
    for lazy arrays (Dask) that are computed a block at a time.

    Repeated calls with the same plain arguments (ints, strings, tuples of
    them, a NumPy dtype) return the same :class:`ConvParams` object: on
    small layers the validation would otherwise be a visible share of the
    call.
    """
    key = (x_shape, w_shape, bias_shape, dtype, stride, padding, dilation, groups, layout,
           check_memory)
    if isinstance(dtype, np.dtype) and _plain(key[:3]) and _plain(key[4:9]):
        params = _NORMALIZED.get(key)
        if params is None:
            params = _normalize(*key)
            if len(_NORMALIZED) >= _NORMALIZED_MAX:
                _NORMALIZED.clear()
            _NORMALIZED[key] = params
        return params
    return _normalize(*key)


def _normalize(x_shape, w_shape, bias_shape, dtype, stride, padding, dilation, groups, layout,
               check_memory) -> ConvParams:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(repr(l) for l in LAYOUTS)}, got {layout!r}")
    x_shape, w_shape = tuple(int(d) for d in x_shape), tuple(int(d) for d in w_shape)
    nchw_text = "(N, C, H, W) or 3-D (C, H, W)" if layout == "NCHW" else "(N, H, W, C) or 3-D (H, W, C)"
    if len(x_shape) not in (3, 4):
        raise ValueError(f"x must be 4-D {nchw_text} for layout={layout!r}; got shape {x_shape}")
    batched = len(x_shape) == 4
    if not batched:
        x_shape = (1,) + x_shape
    if layout == "NCHW":
        N, C, H, W = x_shape
    else:
        N, H, W, C = x_shape
    if len(w_shape) != 4:
        raise ValueError(f"w must be 4-D (K, C/groups, R, S); got shape {w_shape}")
    K, Cg_w, R, S = w_shape

    if not _is_int(groups):
        raise TypeError(f"groups must be an int, got {groups!r}")
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if C <= 0 or H <= 0 or W <= 0:
        raise ValueError(f"x must have non-empty channel and spatial dimensions; got shape "
                         f"{x_shape if batched else x_shape[1:]} (layout {layout!r})")
    if K <= 0 or Cg_w <= 0 or R <= 0 or S <= 0:
        raise ValueError(f"w must have non-empty dimensions (K, C/groups, R, S); got shape {w_shape}")
    if C % groups:
        raise ValueError(f"groups={groups} must divide the input channels C={C}")
    if K % groups:
        raise ValueError(f"groups={groups} must divide the output channels K={K} (w.shape[0])")
    if Cg_w * groups != C:
        raise ValueError(f"channel mismatch: x has C={C} channels but w.shape[1] * groups = "
                         f"{Cg_w} * {groups} = {Cg_w * groups}; w must be (K, C/groups, R, S)")
    if bias_shape is not None and tuple(bias_shape) != (K,):
        raise ValueError(f"bias must have shape (K,) = ({K},), got {tuple(bias_shape)}")

    stride = _pair(stride, "stride", 1)
    dilation = _pair(dilation, "dilation", 1)
    pads = _padding(padding, R, S, H, W, stride, dilation)
    Hp, Wp = H + pads[0] + pads[1], W + pads[2] + pads[3]
    reach_h, reach_w = (R - 1) * dilation[0] + 1, (S - 1) * dilation[1] + 1
    if reach_h > Hp or reach_w > Wp:
        raise ValueError(f"kernel larger than the padded input: w spans {reach_h}x{reach_w} "
                         f"(R={R}, S={S}, dilation={dilation}) but the padded input is {Hp}x{Wp} "
                         f"(H={H}, W={W}, padding={pads}); the output would be empty")
    P = (Hp - reach_h) // stride[0] + 1
    Q = (Wp - reach_w) // stride[1] + 1

    dtype = np.dtype(dtype)
    out_bytes = N * K * P * Q * dtype.itemsize
    pad_bytes = N * C * Hp * Wp * dtype.itemsize
    limit = _memory_limit()
    if check_memory and (out_bytes > limit or pad_bytes > limit):
        raise ValueError(f"sizes too large: the result ({N}, {K}, {P}, {Q}) needs {out_bytes:,} bytes "
                         f"and the padded input {pad_bytes:,} bytes, more than this machine's "
                         f"{limit:,} bytes of memory")
    return ConvParams(N=N, C=C, H=H, W=W, K=K, R=R, S=S, P=P, Q=Q, stride=stride,
                      dilation=dilation, padding=pads, groups=groups, layout=layout,
                      dtype=dtype, batched=batched)


def connection_mask(connections, p: ConvParams):
    """Validate a (K, C) connection table and return it as a (K, C/groups) mask of ``w``.

    Entry ``[k, c]`` says whether output map ``k`` reads input map ``c``
    (LeCun et al. 1998, Table 1, transposed to output-major).  With groups,
    output ``k`` of group ``g`` can only read maps of its group, so entry
    ``[k, g*Cg + c]`` masks ``w[k, c]``; entries outside the group's block
    must be False.
    """
    if connections is None:
        return None
    try:
        table = np.asarray(connections)
    except Exception as exc:
        raise TypeError(f"connections must be a bool array of shape (K, C), got {exc}") from None
    if table.dtype != np.bool_:
        raise TypeError(f"connections must be a bool array of shape (K, C) = ({p.K}, {p.C}), "
                        f"got dtype {table.dtype}; use e.g. table.astype(bool)")
    if table.shape != (p.K, p.C):
        raise ValueError(f"connections must have shape (K, C) = ({p.K}, {p.C}), got {table.shape}")
    reads = table.any(axis=1)
    if not reads.all():
        raise ValueError(f"connections: every output map must read at least one input map; "
                         f"output maps {np.flatnonzero(~reads).tolist()} read none")
    groups, Cg, Kg = p.groups, p.Cg, p.Kg
    block = np.kron(np.eye(groups, dtype=bool), np.ones((Kg, Cg), dtype=bool))
    if (table & ~block).any():
        k, c = map(int, np.argwhere(table & ~block)[0])
        raise ValueError(f"connections[{k}, {c}] is True, but with groups={groups} output map {k} "
                         f"can only read input maps {(k // Kg) * Cg}..{(k // Kg + 1) * Cg - 1}")
    rows = np.arange(p.K)[:, None]
    cols = (rows // Kg) * Cg + np.arange(Cg)[None, :]
    return table[rows, cols]
