"""The record a backend lists for each of its algorithms.

Kept apart from :mod:`fastconv._dispatch` so that a backend can build its
``ALGORITHMS`` table without importing the dispatcher that loads it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional


@dataclass(frozen=True)
class Algorithm:
    """One kernel: ``supports(params)`` returns None or the reason it cannot run the call."""

    name: str
    device: str
    supports: Callable
    run: Callable
    summary: str = ""
    # Optional split for inference plans: prepare(w, params) -> packed weights
    # (e.g. Winograd-transformed), run_prepared(x, packed, bias, params, y).
    prepare: Optional[Callable] = None
    run_prepared: Optional[Callable] = None
    # Optional run(x, w, bias, params, y) for calls where ``auto`` chose the algorithm:
    # auto chooses once per shape, so an algorithm that pays only under conditions known at
    # call time (fft: weights whose transforms the weight cache keeps) may hand such a
    # call to another algorithm here.  An explicit ``algorithm=`` name always runs ``run``.
    run_auto: Optional[Callable] = None
    # Whether ``run`` (and ``run_prepared``, ``run_auto``) accept ``epi=``, a
    # :class:`fastconv._epilogue.Epilogue` with an NCHW residual, and apply it to ``y``
    # before returning (in their stores where they can).  Without it, the caller
    # applies the epilogue as a pass over the finished result.
    epilogue: bool = False
