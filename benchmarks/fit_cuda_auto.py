"""Score the CUDA ``auto`` rule on measured GPU timings, and refit its thresholds.

Usage (no GPU needed: it reads stored timings)::

    python benchmarks/fit_cuda_auto.py                # benchmarks/results/gpu_h200_2026-12-04.json
    python benchmarks/fit_cuda_auto.py gpu_check.json --grid
    python benchmarks/fit_cuda_auto.py DATA.json --rule mypkg.rules:candidate

The data is either a stored summary (top-level ``batch32`` and ``batch1``
lists of rows) or the ``gpu_check.json`` written by
``benchmarks/gpu_check.py`` (``timing.batch32.rows`` / ``timing.batch1.rows``).
Rows carry ``layer`` (a name from ``fastconv/bench/conv_layers.json``), the
batch ``N``, ``algorithm`` and ``median_ms``; rows with an ``error`` are
ignored, and cuDNN's rows are left out of "fastest".

For each batch the rule chooses an algorithm from each layer's
``ConvParams``; the score is how often that is the fastest fastconv
algorithm measured on the layer ("hits") and the geometric mean of the time
of the choice over the fastest time (1.0 = always the fastest).

``--grid`` sweeps the thresholds of :data:`fastconv.cuda.auto.THRESHOLDS`
over :data:`GRID` and prints the best score, how many settings reach it,
and for each threshold which of its grid values reach it with the others
at the shipped setting (the margin on either side of the shipped value).
Settings are ranked by batch-32 hits, then the batch-32 geometric mean,
then batch-1 hits and geometric mean.
"""

from __future__ import annotations

import argparse
import importlib
import itertools
import json
import math
import os

from fastconv.bench.layers import load_layers

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "results", "gpu_h200_2026-12-04.json")
BATCHES = ("batch32", "batch1")
EXCLUDED = {"cudnn"}  # timed for reference, not a fastconv algorithm

#: Values of each threshold that ``--grid`` tries (round numbers around the shipped ones).
GRID = {
    "direct_max_depth": [4, 8, 12, 16, 20, 24, 32],
    "direct_max_macs": [0, 10**7, 3 * 10**7, 10**8, 250_000_000, 5 * 10**8, 10**9, 2 * 10**9,
                        4 * 10**9],
    "winograd_min_channels": [16, 32, 64, 128, 256],
    "winograd_min_macs": [10**9, 2 * 10**9, 4 * 10**9, 10**10, 2 * 10**10, 4 * 10**10,
                          10**11],
    "winograd_f4_min_output": [2, 4, 8],
}


def load_rows(path: str) -> dict:
    """``{"batch32": rows, "batch1": rows}`` from a stored summary or a gpu_check.json."""
    with open(path) as f:
        data = json.load(f)
    timing = data.get("timing", data)
    out = {}
    for batch in BATCHES:
        rows = timing.get(batch)
        if isinstance(rows, dict):
            rows = rows.get("rows")
        out[batch] = [r for r in rows or () if "error" not in r and r.get("algorithm")
                      and r.get("median_ms") is not None]
    return out


def layer_times(rows, layers: dict) -> list:
    """``[(layer name, ConvParams, {algorithm: ms}, recorded auto)]``, in the rows' order.

    Rows of layers missing from ``layers`` are skipped with a note on stdout.
    """
    by_key = {}
    for r in rows:
        if r["layer"] not in layers:
            print(f"note: skipping {r['layer']} ({r['algorithm']}): not in conv_layers.json")
            continue
        entry = by_key.setdefault((r["layer"], r["N"]), {"times": {}, "auto": None})
        entry["times"][r["algorithm"]] = r["median_ms"]
        if r.get("auto"):
            entry["auto"] = r["algorithm"]
    return [(name, layers[name].with_batch(N).params(), e["times"], e["auto"])
            for (name, N), e in by_key.items()]


def score(rule, rows, layers) -> dict:
    """Score ``rule`` (``ConvParams -> algorithm name``) on the timing rows of one batch.

    ``rows``: rows as described in the module docstring; ``layers``: ``{name:
    Layer}``.  Returns ``{"n", "hits", "geomean", "unmeasured", "layers"}``;
    ``layers`` holds one dict per layer (``layer``, ``params``, ``chosen``,
    ``fastest``, ``ratio`` = chosen/fastest time, ``times``).  A choice that
    was not measured on a layer counts as a miss and is left out of the
    geometric mean (``unmeasured`` counts them).
    """
    table = layer_times(rows, layers)
    return score_choices(table, [rule(p) for _, p, _, _ in table])


def score_choices(table, choices) -> dict:
    """:func:`score` for a :func:`layer_times` table and one chosen name per layer."""
    per_layer, logs, hits, unmeasured = [], [], 0, 0
    for (name, p, times, _), chosen in zip(table, choices):
        ours = {a: t for a, t in times.items() if a not in EXCLUDED}
        fastest = min(ours, key=ours.get)
        ratio = ours[chosen] / ours[fastest] if chosen in ours else None
        hits += chosen == fastest
        if ratio is None:
            unmeasured += 1
        else:
            logs.append(math.log(ratio))
        per_layer.append({"layer": name, "params": p, "chosen": chosen, "fastest": fastest,
                          "ratio": ratio, "times": times})
    geomean = math.exp(sum(logs) / len(logs)) if logs else float("nan")
    return {"n": len(table), "hits": hits, "geomean": geomean, "unmeasured": unmeasured,
            "layers": per_layer}


def print_score(label: str, result: dict, recorded: dict | None = None) -> None:
    print(f"\n{label}")
    print(f"{'layer':20s} {'N':>3s} {'Cg':>4s} {'Kg':>4s} {'RxS':>4s} {'s':>1s} {'g':>3s} "
          f"{'PxQ':>7s} {'GMAC':>7s}  {'chosen':18s} {'fastest':18s} {'ratio':>5s}  times (ms)")
    for e in result["layers"]:
        p = e["params"]
        ratio = "  -  " if e["ratio"] is None else f"{e['ratio']:5.3f}"
        times = " ".join(f"{a}={t:.3f}" for a, t in sorted(e["times"].items(), key=lambda i: i[1]))
        print(f"{e['layer']:20s} {p.N:3d} {p.Cg:4d} {p.Kg:4d} {p.R}x{p.S:<2d} {p.stride[0]:1d} "
              f"{p.groups:3d} {f'{p.P}x{p.Q}':>7s} {p.flops / 2e9:7.3f}  {e['chosen']:18s} "
              f"{e['fastest']:18s} {ratio}  {times}")
    extra = f" ({result['unmeasured']} choices not measured)" if result["unmeasured"] else ""
    print(f"{label}: fastest on {result['hits']}/{result['n']}, geometric mean chosen/fastest "
          f"{result['geomean']:.3f}{extra}")
    if recorded:
        print(f"  (the rule recorded in the data: {recorded['hits']}/{recorded['n']}, "
              f"geometric mean {recorded['geomean']:.3f})")


def _objective(results: dict) -> tuple:
    """Sort key, larger is better: batch-32 hits, then geomeans and batch-1 hits."""
    key = []
    for batch in BATCHES:
        r = results.get(batch)
        key += [r["hits"], -r["geomean"]] if r and r["n"] else [0, 0.0]
    return tuple(key)


def _fmt(value) -> str:
    """12 -> "12", 250000000 -> "2.5e8"."""
    if value < 10**5:
        return str(value)
    mantissa, exponent = f"{value:.2g}".split("e")
    return f"{mantissa}e{int(exponent)}"


def grid_search(tables: dict, grid: dict = GRID) -> None:
    """Sweep ``grid`` (see the module docstring) and print the best settings and the margins."""
    from fastconv.cuda.auto import THRESHOLDS, auto_rule

    def evaluate(t):
        return {b: score_choices(tab, [auto_rule(p, t) for _, p, _, _ in tab])
                for b, tab in tables.items()}

    def line(res):
        return ", ".join(f"{b} {r['hits']}/{r['n']} (geomean {r['geomean']:.3f})"
                         for b, r in res.items())

    shipped = evaluate(THRESHOLDS)
    scored = []
    for values in itertools.product(*grid.values()):
        t = dict(THRESHOLDS, **dict(zip(grid, values)))
        res = evaluate(t)
        scored.append((_objective(res), t, res))
    best = max(key for key, _, _ in scored)
    winners = [(t, res) for key, t, res in scored if key == best]
    print(f"\ngrid: {len(scored)} settings")
    print("shipped: " + ", ".join(f"{k}={_fmt(v)}" for k, v in THRESHOLDS.items()))
    print(f"  {line(shipped)}")
    print(f"best: {line(winners[0][1])}, reached by {len(winners)} settings, whose values are")
    for name in grid:
        print(f"  {name}: {', '.join(_fmt(v) for v in sorted({t[name] for t, _ in winners}))}")
    print("one threshold at a time, the others as shipped (value:hits " + "/".join(tables)
          + "; '=' marks the shipped score, geometric means included):")
    for name, values in grid.items():
        parts = []
        for v in values:
            res = evaluate(dict(THRESHOLDS, **{name: v}))
            mark = "=" if _objective(res) == _objective(shipped) else " "
            hits = "/".join(str(r["hits"]) for r in res.values())
            parts.append(f"{_fmt(v)}:{hits}{mark}" + ("(shipped)" if v == THRESHOLDS[name] else ""))
        print(f"  {name:22s} " + " ".join(parts))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", nargs="?", default=DEFAULT_DATA,
                    help="stored timings or gpu_check.json (default: %(default)s)")
    ap.add_argument("--rule", default="fastconv.cuda.auto:auto_rule",
                    help="the rule to score, module:function (default: %(default)s)")
    ap.add_argument("--grid", action="store_true",
                    help="sweep the thresholds of fastconv.cuda.auto.THRESHOLDS over GRID")
    args = ap.parse_args(argv)
    module, _, func = args.rule.partition(":")
    rule = getattr(importlib.import_module(module), func)
    layers = {layer.name: layer for layer in load_layers()}
    rows = load_rows(args.data)
    tables = {b: layer_times(r, layers) for b, r in rows.items() if r}
    if not tables:
        raise SystemExit(f"{args.data}: no timing rows under {' or '.join(BATCHES)}")
    print(f"data: {args.data}\nrule: {args.rule}")
    for batch, table in tables.items():
        recorded = None
        if all(t[3] for t in table):  # every layer says what auto chose when it was measured
            recorded = score_choices(table, [t[3] for t in table])
        print_score(batch, score_choices(table, [rule(p) for _, p, _, _ in table]), recorded)
    if args.grid:
        grid_search(tables)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
