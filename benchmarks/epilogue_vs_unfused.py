"""Time the fused epilogue against the same convolution followed by numpy (and torch) operations.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/epilogue_vs_unfused.py \
        [--activation relu] [--batch 1] [--repeat 15] [--json PATH]

Per layer of the standard suite (batch 1 by default), float32, with a residual
of the output's shape:

``fused``
    ``fastconv.conv2d(x, w, b, activation=act, residual=r)``;
``numpy``
    ``y = fastconv.conv2d(x, w, b); y += r; act(y)`` in place (the fastest way
    to write it in numpy: no temporaries; gelu takes ``scipy.special.erf``);
``expr``
    ``act(fastconv.conv2d(x, w, b) + r)`` as usually written (temporaries);
``torch``
    ``act(F.conv2d(x, w, b) + r)`` with in-place ``add_`` and activation, under
    ``no_grad``, torch on the same threads.

Same algorithm for every fastconv variant (``auto``'s choice).  Interleaved
rounds of the fastconv variants, each timed call right after an untimed one
of the same variant, then torch's rounds (its OpenMP workers spin for a
while after a call and would slow whichever variant came next); medians.  Prints each variant's time over the fused call's (above 1: the
fused call is faster) and their geometric means.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

def _np_gelu(y):
    from scipy.special import erf  # numpy has no erf

    t = erf(y * np.float32(1 / math.sqrt(2)))
    t += 1
    t *= 0.5
    return np.multiply(y, t, out=y)


_NP_ACT = {
    "relu": lambda y: np.maximum(y, 0, out=y),
    "relu6": lambda y: np.clip(y, 0, 6, out=y),
    "silu": lambda y: np.divide(y, 1 + np.exp(-y), out=y),
    "gelu": _np_gelu,
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--activation", default="relu", choices=sorted(_NP_ACT))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--json", metavar="PATH", help="write the medians here")
    args = ap.parse_args(argv)

    import numba
    import torch
    import torch.nn.functional as F

    import fastconv
    from fastconv._dispatch import concrete
    from fastconv.bench.layers import load_layers

    torch.set_num_threads(numba.get_num_threads())
    act = args.activation
    np_act = _NP_ACT[act]
    t_act = {"relu": torch.relu_, "relu6": lambda y: y.clamp_(0, 6),
             "silu": lambda y: F.silu(y, inplace=True), "gelu": F.gelu}[act]
    rows, ratios = [], {"numpy": [], "expr": [], "torch": []}
    for layer in load_layers():
        layer = layer.with_batch(args.batch)
        x, w, b = layer.arrays()
        kw = layer.conv_kwargs
        alg = concrete("auto", layer.params(), "cpu")
        r = np.random.default_rng(1).standard_normal(
            fastconv.conv2d(x, w, b, algorithm=alg, **kw).shape).astype(np.float32)
        tx, tw, tb, tr = (torch.from_numpy(a) for a in (x, w, b, r))

        def unfused():
            y = fastconv.conv2d(x, w, b, algorithm=alg, **kw)
            y += r
            np_act(y)
            return y

        def expr():
            y = fastconv.conv2d(x, w, b, algorithm=alg, **kw) + r
            return np_act(y)

        def peer():
            with torch.no_grad():
                return t_act(F.conv2d(tx, tw, tb, **kw).add_(tr))

        calls = {"fused": lambda: fastconv.conv2d(x, w, b, algorithm=alg, activation=act,
                                                  residual=r, **kw),
                 "numpy": unfused, "expr": expr, "torch": peer}
        if not np.allclose(calls["fused"](), unfused(), rtol=1e-5, atol=1e-5):
            raise SystemExit(f"{layer.name}: the fused result differs from the unfused one")
        times = {k: [] for k in calls}
        # torch in a block of its own, after the interleaved fastconv variants: its OpenMP
        # workers spin for a while after each call and would slow the variant after it.
        for group in (("fused", "numpy", "expr"), ("torch",)):
            for _ in range(args.repeat):
                for name in group:
                    f = calls[name]
                    f()
                    t0 = time.perf_counter()
                    f()
                    times[name].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in times.items()}
        for k in ratios:
            ratios[k].append(med[k] / med["fused"])
        rows.append(dict(layer=layer.name, algorithm=alg, **{f"{k}_s": v for k, v in med.items()}))
        print(f"{layer.name:18s} {alg:18s} fused {med['fused'] * 1e3:8.3f} ms  "
              + "  ".join(f"{k} {med[k] / med['fused']:5.2f}x" for k in ratios), flush=True)
    gm = {k: math.exp(np.mean(np.log(v))) for k, v in ratios.items()}
    print("geometric mean " + "  ".join(f"{k} {v:.2f}x (min {min(ratios[k]):.2f}x)"
                                        for k, v in gm.items()))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(activation=act, batch=args.batch, threads=numba.get_num_threads(),
                           layers=rows, geomean=gm), fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
