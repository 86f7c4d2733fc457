"""The algorithm registry and the ``auto`` rule.

Every kernel is registered once, by name, with the device it runs on, a
``supports(params)`` predicate (returns ``None`` when supported, else the
reason) and a ``run(x, w, bias, params, y)`` function that receives
C-contiguous NCHW arrays of the call's dtype and writes the NCHW result into
``y``.  ``auto`` is a short documented rule (:func:`auto_choice`), like
NNPACK's ``nnp_convolution_algorithm_auto``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ._params import ConvParams
from .errors import UnsupportedError

AUTO = "auto"
TUNED = "tuned"  # CPU: measure the candidates once per configuration, cache the winner on disk


@dataclass(frozen=True)
class Algorithm:
    name: str
    device: str
    supports: Callable[[ConvParams], Optional[str]]
    run: Callable
    summary: str = ""
    # Optional split for inference plans: prepare(w, params) -> packed weights
    # (e.g. Winograd-transformed), run_prepared(x, packed, bias, params, y).
    prepare: Optional[Callable] = None
    run_prepared: Optional[Callable] = None


_REGISTRY: dict = {}
_ALIASES: dict = {}  # name -> function(params) -> concrete name


def register_algorithm(alg: Algorithm) -> Algorithm:
    key = (alg.device, alg.name)
    if key in _REGISTRY:
        raise ValueError(f"algorithm {alg.name!r} is already registered for {alg.device}")
    _REGISTRY[key] = alg
    return alg


def register_alias(device: str, name: str, resolve: Callable[[ConvParams], str]) -> None:
    _ALIASES[(device, name)] = resolve


def _ensure_loaded(device: str) -> None:
    if device == "cpu":
        from . import cpu  # noqa: F401  (registers the CPU kernels)
    elif device == "cuda":
        from . import cuda  # noqa: F401


def algorithms(device: str = "cpu") -> tuple:
    """Names accepted by ``conv2d(..., algorithm=...)`` on ``device`` ("cpu" or "cuda")."""
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    _ensure_loaded(device)
    names = [n for (d, n) in _REGISTRY if d == device]
    names += [n for (d, n) in _ALIASES if d == device]
    if device == "cpu":
        names.append(TUNED)
    return (AUTO,) + tuple(sorted(names))


def get(device: str, name: str) -> Algorithm:
    """The registered kernel ``name`` (a concrete name, not an alias)."""
    _ensure_loaded(device)
    try:
        return _REGISTRY[(device, name)]
    except KeyError:
        raise ValueError(f"algorithm must be one of {', '.join(repr(a) for a in algorithms(device))}; "
                         f"got {name!r}") from None


def supported(device: str, params: ConvParams) -> list:
    """Concrete algorithms on ``device`` that support ``params``."""
    _ensure_loaded(device)
    return [a for (d, _), a in _REGISTRY.items() if d == device and a.supports(params) is None]


def auto_choice(params: ConvParams, device: str = "cpu") -> str:
    """The ``auto`` rule.  See :mod:`fastconv.cpu` (or ``fastconv.cuda``) for the rule itself."""
    _ensure_loaded(device)
    if device == "cpu":
        from .cpu import auto_rule
    else:
        from .cuda import auto_rule
    return auto_rule(params)


def resolve(name, params: ConvParams, device: str = "cpu") -> Algorithm:
    """Turn a user's ``algorithm=`` value into a registered kernel that supports ``params``."""
    if not isinstance(name, str):
        raise TypeError(f"algorithm must be a string, one of {', '.join(repr(a) for a in algorithms(device))}; "
                        f"got {name!r}")
    _ensure_loaded(device)
    if name == AUTO:
        # Both rules depend on the shapes only: decided once per ConvParams (see its memo).
        return params.remembered(("auto", device), lambda: get(device, auto_choice(params, device)))
    if name == TUNED and device == "cpu":
        from .tuning import tuned_algorithm
        return get(device, tuned_algorithm(params))
    requested = name
    if (device, name) in _ALIASES:
        name = _ALIASES[(device, name)](params)
    alg = get(device, name)
    reason = alg.supports(params)
    if reason is not None:
        raise UnsupportedError(f"algorithm={requested!r} does not support this call: {reason}")
    return alg


def check_out(out, params: ConvParams) -> None:
    """Validate a user-supplied ``out=`` array for a CPU call."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != params.output_shape:
        raise ValueError(f"out must have shape {params.output_shape}, got {out.shape}")
    if out.dtype != params.dtype:
        raise ValueError(f"out must have dtype {params.dtype}, got {out.dtype}")
    if not out.flags.writeable:
        raise ValueError("out must be writeable, got a read-only array")
