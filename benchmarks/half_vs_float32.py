"""Time 16-bit convolutions (float16, bfloat16) against fastconv's own float32 call.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/half_vs_float32.py [--repeat 11]

Per 3x3 layer of the standard suite: ``fastconv.conv2d`` on float32 arrays and on
the same values stored as bfloat16 (``ml_dtypes``) and float16, interleaved rounds,
each timed call right after an untimed one of the same variant (weights unchanged
between calls, as in inference); medians.  Prints the float32 time over each
16-bit time (above 1: the 16-bit call is faster).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=11)
    args = ap.parse_args(argv)

    import ml_dtypes

    import fastconv
    from fastconv.bench.layers import load_layers

    for layer in load_layers():
        if "3x3" not in layer.name:
            continue
        x, w, b = layer.arrays()
        kw = layer.conv_kwargs
        variants = {"float32": (x, w, b)}
        for dt in (ml_dtypes.bfloat16, np.float16):
            variants[np.dtype(dt).name] = tuple(a.astype(dt) for a in (x, w, b))
        times = {k: [] for k in variants}
        for _ in range(args.repeat):
            for name, (xx, ww, bb) in variants.items():
                fastconv.conv2d(xx, ww, bb, **kw)
                t0 = time.perf_counter()
                fastconv.conv2d(xx, ww, bb, **kw)
                times[name].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in times.items()}
        print(f"{layer.name:18s} float32 {med['float32'] * 1e3:7.3f} ms  "
              + "  ".join(f"{k} {med['float32'] / med[k]:.2f}x" for k in ("bfloat16", "float16")),
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
