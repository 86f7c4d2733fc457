"""The algorithm registry and the ``auto`` rule.

Every kernel is listed once, by name, in its backend's ``ALGORITHMS`` (the
backends are modules named in :data:`BACKENDS`, imported on first use), with
the device it runs on, a ``supports(params)`` predicate (returns ``None`` when
supported, else the reason) and a ``run(x, w, bias, params, y)`` function
that receives C-contiguous NCHW arrays of the call's dtype and writes the
NCHW result into ``y``.  ``auto`` is a short documented rule
(:func:`auto_choice`), like NNPACK's ``nnp_convolution_algorithm_auto``.
Every ``algorithm=`` value is turned into a kernel name by :func:`concrete`,
the one place that reads the aliases and the rules.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import replace
from typing import Callable

import numpy as np

from ._algorithm import Algorithm
from ._params import ConvParams
from .errors import UnsupportedError

__all__ = ["Algorithm", "BACKENDS", "algorithms", "registered", "get", "supported", "auto_choice",
           "concrete", "resolve", "register_algorithm", "register_alias", "check_out"]

AUTO = "auto"

#: Device -> the module that implements it, imported on first use (so ``import fastconv``
#: never imports a backend).  Each module lists its kernels as data: ``ALGORITHMS`` (a
#: sequence of :class:`Algorithm` for that device), ``ALIASES`` (``{name: rule(params) ->
#: registered name}``) and ``auto_rule(params) -> registered name``.
BACKENDS = {"cpu": "fastconv.cpu", "cuda": "fastconv.cuda"}

# Filled from BACKENDS by _load, and only read through the functions below.
_REGISTRY: dict = {}  # (device, name) -> Algorithm
_ALIASES: dict = {}  # (device, name) -> function(params) -> registered name
_AUTO: dict = {}  # device -> its auto rule; present once the device is loaded
_LOCK = threading.Lock()


def _load(device: str) -> None:
    """Read ``device``'s tables from its module, once per process."""
    if isinstance(device, str) and device in _AUTO:
        return
    if not isinstance(device, str) or device not in BACKENDS:
        raise ValueError(f"device must be {' or '.join(map(repr, BACKENDS))}, got {device!r}")
    module = importlib.import_module(BACKENDS[device])
    with _LOCK:
        if device in _AUTO:
            return
        table = {}
        for alg in module.ALGORITHMS:
            if alg.device != device or alg.name in table:
                raise ValueError(f"{BACKENDS[device]}.ALGORITHMS: {alg.name!r} for {alg.device} "
                                 f"listed twice or under another device")
            table[(device, alg.name)] = alg
        _REGISTRY.update(table)
        _ALIASES.update(((device, n), rule) for n, rule in module.ALIASES.items())
        _AUTO[device] = module.auto_rule


def register_algorithm(alg: Algorithm) -> Algorithm:
    """Add a kernel to its device's table, after the backend's own (names are unique per device)."""
    _load(alg.device)
    with _LOCK:
        key = (alg.device, alg.name)
        if key in _REGISTRY or key in _ALIASES:
            raise ValueError(f"algorithm {alg.name!r} is already registered for {alg.device}")
        _REGISTRY[key] = alg
    return alg


def register_alias(device: str, name: str, resolve: Callable[[ConvParams], str]) -> None:
    """Add a name that ``resolve(params)`` turns into a registered one on ``device``."""
    _load(device)
    with _LOCK:
        if (device, name) in _REGISTRY:
            raise ValueError(f"algorithm {name!r} is already registered for {device}")
        _ALIASES[(device, name)] = resolve


def algorithms(device: str = "cpu") -> tuple:
    """Names accepted by ``conv2d(..., algorithm=...)`` on ``device`` ("cpu" or "cuda")."""
    _load(device)
    names = [n for (d, n) in _REGISTRY if d == device]
    names += [n for (d, n) in _ALIASES if d == device]
    return (AUTO,) + tuple(sorted(names))


def registered(device: str = "cpu") -> tuple:
    """The kernels' own names on ``device``: :func:`algorithms` less ``auto`` and the aliases."""
    _load(device)
    return tuple(sorted(n for (d, n) in _REGISTRY if d == device))


def _unknown(name, device: str) -> str:
    return f"algorithm must be one of {', '.join(repr(a) for a in algorithms(device))}; got {name!r}"


def get(device: str, name: str) -> Algorithm:
    """The registered kernel ``name`` (a concrete name, not an alias)."""
    _load(device)
    try:
        return _REGISTRY[(device, name)]
    except KeyError:
        raise ValueError(_unknown(name, device)) from None


def supported(device: str, params: ConvParams) -> list:
    """Concrete algorithms on ``device`` that support ``params``."""
    _load(device)
    return [a for (d, _), a in _REGISTRY.items() if d == device and a.supports(params) is None]


def auto_choice(params: ConvParams, device: str = "cpu") -> str:
    """The ``auto`` rule.  See :mod:`fastconv.cpu` (or ``fastconv.cuda``) for the rule itself."""
    _load(device)
    return _AUTO[device](params)


def concrete(name, params: ConvParams, device: str = "cpu") -> str:
    """The registered algorithm that ``algorithm=name`` runs on ``device`` for ``params``.

    ``"auto"`` gives the backend's rule's choice (decided once per ``ConvParams``),
    an alias (``"winograd"``; ``"tuned"`` on the CPU) its rule's choice, and a
    registered name itself.  Whether that algorithm supports ``params`` is left
    to the caller (:func:`resolve` raises, the benchmark runners skip it).

    Raises
    ------
    TypeError
        ``name`` is not a string.
    ValueError
        ``name`` is not one of :func:`algorithms` (the message lists them).
    """
    if not isinstance(name, str):
        raise TypeError(f"algorithm must be a string, one of {', '.join(repr(a) for a in algorithms(device))}; "
                        f"got {name!r}")
    _load(device)
    if name == AUTO:
        # Both rules depend on the shapes only: decided once per ConvParams (see its memo).
        return params.remembered(("auto", device), lambda: _AUTO[device](params))
    alias = _ALIASES.get((device, name))
    if alias is not None:
        return alias(params)
    if (device, name) not in _REGISTRY:
        raise ValueError(_unknown(name, device))
    return name


def resolve(name, params: ConvParams, device: str = "cpu") -> Algorithm:
    """Turn a user's ``algorithm=`` value into a registered kernel that supports ``params``.

    For ``"auto"``, an algorithm with a ``run_auto`` comes back with that as its ``run``.
    """
    alg = get(device, concrete(name, params, device))
    if name != AUTO:  # the auto rules pick only algorithms that support the call
        reason = alg.supports(params)
        if reason is not None:
            raise UnsupportedError(f"algorithm={name!r} does not support this call: {reason}")
    elif alg.run_auto is not None:
        alg = _auto_variant(alg)
    return alg


_AUTO_VARIANTS: dict = {}  # (device, name) -> the registered Algorithm with run = run_auto


def _auto_variant(alg: Algorithm) -> Algorithm:
    key = (alg.device, alg.name)
    variant = _AUTO_VARIANTS.get(key)
    if variant is None or variant.run_auto is not alg.run_auto:
        variant = _AUTO_VARIANTS[key] = replace(alg, run=alg.run_auto)
    return variant


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
