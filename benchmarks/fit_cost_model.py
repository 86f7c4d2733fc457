"""Fit the ``COEF`` column of :mod:`fastconv.cpu.cost` on measured timings, and score it.

Run under the target whose column is fitted (the blockings, and so the
terms, depend on it), with timings taken by ``fit_auto_rule.py`` under the
same target::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/fit_auto_rule.py \
        --only random_fit --json fit.json          # and --only random_heldout, --only suite
    python benchmarks/fit_cost_model.py --fit fit.json:random_fit,suite.json:suite \
        --score heldout.json:random_heldout

Each timed (shape, algorithm) pair is one equation ``sum_j COEF_j *
term_j = t``, divided by ``t`` so that every pair weighs by its relative
error; the non-negative least-squares solution is the column.  The machine
constants are calibrated in this process (:func:`fastconv.cpu.cost.calibrate`,
not stored) unless ``--machine`` names a JSON file of them, so run this on
the machine that took the timings.  The score of a set is how often the
model's cheapest algorithm is the measured fastest (and within 10% of it),
next to the same figures for the fitted rule (:func:`fastconv.cpu.fitted_rule`;
a shape whose rule choice was not timed counts as a miss at the slowest time).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
from scipy.optimize import nnls

from fastconv.bench.layers import Layer
from fastconv.cpu import cost, fitted_rule


def load(specs):
    """Rows of ``FILE:SET[,FILE:SET]``."""
    rows = []
    for spec in specs.split(","):
        path, _, name = spec.rpartition(":")
        with open(path) as f:
            data = json.load(f)
        rows += [dict(r, set=name) for r in data[name]]
    return rows


def equations(rows, machine, stat):
    names = sorted(cost.coefficients(machine.isa))
    A, keys = [], []
    for r in rows:
        p = Layer(r["name"], **r["shape"]).params()
        for alg, t in r[stat].items():
            if alg == "torch":
                continue
            terms = cost.terms(p, alg, machine)
            A.append([terms.get(n, 0.0) / t for n in names])
            keys.append((r["name"], alg))
    return names, np.array(A), keys


def score(rows, machine, coef, stat, label, near=1.10):
    hits = near_hits = rule_hits = rule_near = 0
    losses, rule_losses = [], []
    print(f"\n{label}\n{'layer':40s} {'fastest':18s} {'model':18s} {'loss':>5s} "
          f"{'auto':18s} {'loss':>5s}  predicted/measured per algorithm")
    for r in rows:
        p = Layer(r["name"], **r["shape"]).params()
        t = {a: v for a, v in r[stat].items() if a != "torch"}
        pred = {a: v for a, v in cost.predictions(p, machine, coef).items() if a in t}
        best = min(t, key=t.get)
        pick = min(pred, key=pred.get)
        rule = fitted_rule(p)
        loss, rloss = t[pick] / t[best], t.get(rule, max(t.values())) / t[best]
        hits += pick == best
        near_hits += loss <= near
        rule_hits += rule == best
        rule_near += rloss <= near
        losses.append(loss)
        rule_losses.append(rloss)
        ratio = " ".join(f"{a[:8]}={pred[a] / t[a]:.2f}" for a in sorted(pred))
        print(f"{r['name'][:40]:40s} {best:18s} {pick:18s} {loss:5.2f} {rule:18s} {rloss:5.2f}  {ratio}")
    n = len(rows)

    def gm(v):
        return math.exp(np.mean(np.log(v)))

    print(f"{label}: model fastest {hits}/{n}, within {near}x {near_hits}/{n}, geomean "
          f"{gm(losses):.3f}, worst {max(losses):.2f}x | auto rule fastest {rule_hits}/{n}, "
          f"within {near}x {rule_near}/{n}, geomean {gm(rule_losses):.3f}, "
          f"worst {max(rule_losses):.2f}x")
    return {"n": n, "hits": hits, "near": near_hits, "geomean": gm(losses),
            "worst": max(losses), "rule_hits": rule_hits, "rule_near": rule_near,
            "rule_geomean": gm(rule_losses), "rule_worst": max(rule_losses)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fit", help="FILE:SET[,FILE:SET...] to fit on")
    ap.add_argument("--score", default="", help="FILE:SET[,...] to score on (not fitted)")
    ap.add_argument("--machine", help="JSON file of Machine constants (default: calibrate)")
    ap.add_argument("--stat", choices=("mins", "medians"), default="mins")
    ap.add_argument("--json", help="write the fitted column and the scores here")
    args = ap.parse_args(argv)
    if args.machine:
        with open(args.machine) as f:
            machine = cost.Machine(**json.load(f))
    else:
        machine = cost.calibrate(store=False)
    print(f"machine: {machine}")
    coef = dict(cost.coefficients(machine.isa))
    out = {"machine": machine.__dict__}
    if args.fit:
        rows = load(args.fit)
        names, A, _ = equations(rows, machine, args.stat)
        used = A.any(axis=0)
        sol, res = nnls(A[:, used], np.ones(len(A)))
        for n, v in zip([n for n, u in zip(names, used) if u], sol):
            coef[n] = float(v)
        print("fitted COEF column:\n" + "\n".join(f"    {n!r}: {coef[n]:.3g}," for n in names))
        print(f"rms relative error {res / math.sqrt(len(A)):.3f} over {len(A)} timings")
        out["coef"] = coef
        out["fit"] = score(rows, machine, coef, args.stat, f"fitted on ({len(rows)} shapes)")
    if args.score:
        rows = load(args.score)
        out["score"] = score(rows, machine, coef, args.stat, f"held out ({len(rows)} shapes)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
