"""``fastconv.explain``: what ``auto`` would run for a call, and why.

For a CPU call it lists every algorithm with whether it supports the call,
the kernel it would run (``direct``'s path, Winograd's schedule), the cost
model's predicted time and its terms (:mod:`fastconv.cpu.cost`) and, with
``measure=True``, the timed median (:func:`fastconv.tuning.measure`: a
few calls of each candidate, so only ask where seconds do not matter).  The
``reason`` says which method chose (the model, or the fitted rule on the
targets where it is used: :func:`fastconv.cpu.auto_method`) and, when the
two disagree, what the other would pick.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ._params import parse_arrays
from ._placement import is_device_array


@dataclass(frozen=True)
class Candidate:
    """One algorithm for one call.

    ``unsupported`` is the reason it cannot run the call (None if it can);
    ``kernel`` the path or schedule it would take; ``predicted_s`` the cost
    model's seconds (None where unsupported), ``terms`` their parts before
    the ``COEF`` weights; ``measured_s`` the median of the timed calls, when
    asked for.
    """

    name: str
    unsupported: str | None
    kernel: str = ""
    predicted_s: float | None = None
    measured_s: float | None = None
    terms: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Explanation:
    """``choice`` is what ``conv2d(..., algorithm="auto")`` runs; ``method`` is
    ``"model"`` or ``"rule"``; ``machine`` the cost model's constants."""

    choice: str
    method: str
    reason: str
    candidates: tuple
    machine: object

    def __str__(self) -> str:
        lines = [self.reason, "",
                 f"{'algorithm':<20}{'kernel':<18}{'predicted ms':>13}{'measured ms':>13}"]
        for c in self.candidates:
            if c.unsupported is not None:
                lines.append(f"{c.name:<20}unsupported: {c.unsupported}")
                continue
            meas = "" if c.measured_s is None else f"{c.measured_s * 1e3:.3f}"
            mark = "  <- auto" if c.name == self.choice else ""
            lines.append(f"{c.name:<20}{c.kernel:<18}{c.predicted_s * 1e3:>13.3f}{meas:>13}{mark}")
        m = self.machine
        lines.append(f"\nmachine ({m.source}): {m.isa}, {m.fma_rate / 1e9:.1f} G multiply-adds/s "
                     f"per thread, {m.bandwidth / 1e9:.1f} GB/s, call {m.call_s * 1e6:.1f} us")
        return "\n".join(lines)


def explain(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
            measure: bool = False, repeat: int = 3) -> Explanation:
    """Why ``conv2d(x, w, bias, ...)`` with ``algorithm="auto"`` runs what it runs.

    Takes the arguments of :func:`fastconv.conv2d` (NumPy arrays; nothing is
    computed on them unless ``measure``, which times every supported
    algorithm on random arrays of the same shapes, ``repeat`` rounds).
    Raises ``TypeError`` for CUDA arrays (the GPU's rule is
    :mod:`fastconv.cuda.auto`, documented in ``docs/cuda_auto.md``).
    """
    from . import _dispatch, cpu
    from .cpu import cost

    for name, a in (("x", x), ("w", w), ("bias", bias)):
        if a is not None and is_device_array(a):
            raise TypeError(f"explain covers the CPU algorithms; {name} is a CUDA array "
                            f"(the GPU's rule: fastconv.cuda.auto)")
    if not (isinstance(repeat, int) and not isinstance(repeat, bool) and repeat >= 1):
        raise ValueError(f"repeat must be an int >= 1, got {repeat!r}")
    _, _, _, p = parse_arrays(x, w, bias, stride=stride, padding=padding, dilation=dilation,
                              groups=groups, layout=layout)
    machine = cost.current_machine()
    method = cpu.auto_method()
    choice = _dispatch.concrete("auto", p, "cpu")
    measured = {}
    if measure:
        from . import tuning

        measured = tuning.measure(p, repeat=repeat)
    candidates = []
    for name in cost.CANDIDATES:
        why = _dispatch.get("cpu", name).supports(p)
        if why is not None:
            candidates.append(Candidate(name, str(why)))
            continue
        terms = cost.terms(p, name, machine)
        kernel = terms.pop("path", "") + terms.pop("schedule", "")  # at most one is set
        candidates.append(Candidate(name, None, kernel, cost.predict(p, name, machine),
                                    measured.get(name), terms))
    model = cost.choose(p, machine)
    if method == "model":
        reason = f"auto runs {choice}: the lowest predicted time of the cost model"
    else:
        reason = (f"auto runs {choice}: the fitted rule (fastconv.cpu.fitted_rule), which "
                  f"auto uses on this target")
        if model != choice:
            reason += f"; the cost model would run {model}"
    if measured:
        best = min(measured, key=measured.get)
        reason += (f"; measured fastest: {best}" if best != choice
                   else "; it was also the fastest measured")
    return Explanation(choice, method, reason + ".", tuple(candidates), machine)
