"""Fused epilogues: ``y = act(conv + bias + residual)`` in one call.

oneDNN's post-ops, cuDNN's fused convolution-bias-activation and NNPACK
apply the bias, an activation and a residual add while the result is still
in the kernel's cache or registers.  ``conv2d(..., activation=, residual=)``
does the same: each kernel that owns its stores applies the epilogue to the
block it has just written (still in its core's L1/L2), so the output is
written once and never read back by a separate pass over memory.

The order is fixed and is that of the unfused expression
``act((conv + bias) + residual)``: the convolution's rounded output, plus
the residual (one rounding), then the activation.  ``relu`` and ``relu6``
are therefore bitwise the same as the unfused numpy expression on the
same convolution output; ``silu`` and ``gelu`` agree with it to the
activation's own rounding (:data:`ACTIVATION_ULPS`).

This module is device-neutral: it validates the arguments and describes
the epilogue; :mod:`fastconv.cpu.epilogue` and the CUDA backend apply it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ._params import ConvParams, as_float_array

#: Accepted ``activation=`` values and their definitions (those of PyTorch's
#: ``relu``, ``relu6``, ``silu`` and exact, erf-based ``gelu``).
ACTIVATIONS = {
    "relu": "max(v, 0)",
    "relu6": "min(max(v, 0), 6)",
    "silu": "v / (1 + exp(-v))",
    "gelu": "v / 2 * (1 + erf(v / sqrt(2)))",
}

#: Codes the kernels branch on (the low three bits of :attr:`Epilogue.mode`).
CODES = {None: 0, "relu": 1, "relu6": 2, "silu": 3, "gelu": 4}
#: Bit of :attr:`Epilogue.mode` set when a residual is added.
RESIDUAL = 8

#: Largest derivative of each activation (its Lipschitz constant): an error
#: ``e`` in the activation's argument moves its value by at most this times ``e``.
LIPSCHITZ = {None: 1.0, "relu": 1.0, "relu6": 1.0, "silu": 1.0998, "gelu": 1.1289}

#: Rounding error of evaluating the activation, in units ``u |v|`` of its
#: argument ``v``: exact for the piecewise-linear ones; ``silu`` rounds in
#: ``exp`` (the CPU kernels' own, within 3 ulp: :func:`fastconv.cpu.epilogue._vexp`),
#: the sum and the quotient; ``gelu`` in the scaling, ``erf`` (float32: Numerical
#: Recipes' ``erfc``, fractional error below 1.2e-7 plus its evaluation's rounding;
#: float64: the C library's), the sum and the two products; on the GPU, libdevice's
#: ``exp`` and ``erf`` (within 2 ulp).  Both with a margin.
ACTIVATION_ULPS = {None: 0.0, "relu": 0.0, "relu6": 0.0, "silu": 6.0, "gelu": 8.0}


@dataclass(frozen=True)
class Epilogue:
    """A validated epilogue: the activation's name and the residual in the result's layout.

    ``residual`` has exactly the result's shape and the call's dtype (it is
    ``None`` when no residual is added).  :attr:`mode` is what the kernels
    receive: the activation's code plus :data:`RESIDUAL` when there is one.
    """

    activation: Optional[str] = None
    residual: Optional[np.ndarray] = None

    @property
    def mode(self) -> int:
        return CODES[self.activation] | (RESIDUAL if self.residual is not None else 0)

    @property
    def active(self) -> bool:
        return self.mode != 0

    def with_residual(self, residual) -> "Epilogue":
        return Epilogue(self.activation, residual)


NONE = Epilogue()


def check_activation(activation) -> Optional[str]:
    """``activation`` itself, or a TypeError/ValueError naming the argument."""
    if activation is None:
        return None
    if not isinstance(activation, str):
        raise TypeError(f"activation must be None or a string, one of "
                        f"{', '.join(map(repr, ACTIVATIONS))}; got {activation!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be None or one of {', '.join(map(repr, ACTIVATIONS))}; "
                         f"got {activation!r}")
    return activation


def parse_epilogue(activation, residual, p: ConvParams) -> Epilogue:
    """Validate ``activation=`` and a host ``residual=`` for a call with parameters ``p``.

    The residual must have exactly the result's shape (``p.output_shape``: the
    call's layout and rank; no broadcasting, as a residual branch has the
    output's shape) and a float dtype.  It is converted to the call's dtype,
    as ``out=`` would be written in it; it is never modified.
    """
    activation = check_activation(activation)
    if residual is None:
        return Epilogue(activation) if activation is not None else NONE
    r = as_float_array(residual, "residual")
    if r.shape != p.output_shape:
        raise ValueError(f"residual must have the result's shape {p.output_shape}, got {r.shape}")
    return Epilogue(activation, np.asarray(r, dtype=p.dtype))


def error_bound(conv_bound, z, activation, dtype) -> np.ndarray:
    """Bound on ``|y - act(z_exact + r)|`` given the convolution's bound.

    ``conv_bound`` bounds the convolution (bias included) elementwise, and
    ``z`` is the exact ``conv + bias + residual`` (float64).  Adding the
    residual rounds once (``u |z|``), the activation's slope scales what
    came before (:data:`LIPSCHITZ`) and its evaluation adds
    :data:`ACTIVATION_ULPS` ``u |z|``; to first order in ``u``.
    """
    u = np.finfo(dtype).eps / 2
    L = LIPSCHITZ[activation]
    return L * (np.asarray(conv_bound) + u * np.abs(z)) + ACTIVATION_ULPS[activation] * u * np.abs(z)


def reference(z, activation) -> np.ndarray:
    """The activation in float64 numpy, elementwise (the tests' and checks' reference)."""
    z = np.asarray(z, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if activation is None:
            return z
        if activation == "relu":
            return np.where(z < 0, 0.0, z)
        if activation == "relu6":
            return np.where(z < 0, 0.0, np.where(z > 6, 6.0, z))
        if activation == "silu":
            return z / (1 + np.exp(-z))
        if activation == "gelu":
            from scipy.special import erf
            return z / 2 * (1 + erf(z / math.sqrt(2)))
    raise ValueError(f"activation must be None or one of {', '.join(map(repr, ACTIVATIONS))}")
