"""Time fastconv's gradients against ``torch.nn.grad`` on the suite's 18 layers.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/grad_vs_torch.py [--input]

``conv2d_grad_weight`` (default) or ``conv2d_grad_input`` (``--input``)
against ``torch.nn.grad.conv2d_weight`` / ``conv2d_input`` with the same
arrays, torch and Numba on the same threads, float32; interleaved rounds,
each timed call right after an untimed one of the same function (so neither
side is timed while the other's worker threads still spin); medians.
Prints the ratio torch time / fastconv time per layer and the geometric mean.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", action="store_true", help="time the input gradient")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)

    import numba
    import torch

    import fastconv
    from fastconv.bench.layers import load_layers
    from fastconv.grad import conv2d_grad_input, conv2d_grad_weight

    torch.set_num_threads(numba.get_num_threads())
    ratios = []
    for layer in load_layers():
        x, w, _ = layer.arrays()
        kw = layer.conv_kwargs
        gy = np.random.default_rng(1).standard_normal(
            fastconv.conv2d(x, w, **kw).shape).astype(np.float32)
        tx, tw, tg = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(gy)
        if args.input:
            calls = {"fastconv": lambda: conv2d_grad_input(gy, w, x.shape, **kw),
                     "torch": lambda: torch.nn.grad.conv2d_input(x.shape, tw, tg, **kw)}
        else:
            calls = {"fastconv": lambda: conv2d_grad_weight(x, gy, w.shape, **kw),
                     "torch": lambda: torch.nn.grad.conv2d_weight(tx, w.shape, tg, **kw)}
        times = {k: [] for k in calls}
        for _ in range(args.repeat):
            for name, f in calls.items():
                f()
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in times.items()}
        ratios.append(med["torch"] / med["fastconv"])
        print(f"{layer.name:18s} fastconv {med['fastconv'] * 1e3:8.3f} ms  torch "
              f"{med['torch'] * 1e3:8.3f} ms  {ratios[-1]:5.2f}x", flush=True)
    print(f"geometric mean {math.exp(np.mean(np.log(ratios))):.2f}x, min {min(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
