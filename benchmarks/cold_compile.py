"""Time ``import fastconv`` and the cold Numba compilation of every CPU kernel.

Run it on a fresh clone (no ``__pycache__``, so no on-disk Numba cache) to
measure the cold compile, and a second time for the warm-cache cost::

    PYTHONPATH=src python benchmarks/cold_compile.py   # cold: compiles everything
    PYTHONPATH=src python benchmarks/cold_compile.py   # warm: loads from the cache

Every CPU algorithm runs on seven layer kinds (3x3 on a wide and on a small
map, 3x3 over 256 channels on one and on four 7x7 maps, 1x1, 5x5 over 3
channels, depthwise 3x3) in float32 and float64, which reaches every path:
blocked, pointwise and width direct kernels, im2col, and both Winograd
paths (the channel-vectorised one in its fused, split and stream
schedules).
"""

import time

t0 = time.perf_counter()
import numpy as np  # noqa: E402

import fastconv  # noqa: E402

t1 = time.perf_counter()
rng = np.random.default_rng(0)
CASES = [((1, 64, 56, 56), (64, 64, 3, 3), 1), ((1, 64, 14, 14), (64, 64, 3, 3), 1),
         ((1, 256, 7, 7), (256, 256, 3, 3), 1), ((4, 256, 7, 7), (256, 256, 3, 3), 1),
         ((1, 64, 28, 28), (128, 64, 1, 1), 0), ((1, 3, 32, 32), (8, 3, 5, 5), 0),
         ((1, 32, 20, 20), (32, 1, 3, 3), 1)]
for dt in (np.float32, np.float64):
    for xs, ws, pad in CASES:
        x = rng.standard_normal(xs).astype(dt)
        w = rng.standard_normal(ws).astype(dt)
        for alg in ("direct", "im2col", "winograd_f2x2_3x3", "winograd_f4x4_3x3"):
            if alg.startswith("winograd") and ws[2] != 3:
                continue
            fastconv.conv2d(x, w, padding=pad, groups=xs[1] // ws[1], algorithm=alg)
t2 = time.perf_counter()
print(f"import fastconv: {t1 - t0:.2f} s; every CPU algorithm x 2 dtypes x {len(CASES)} layer "
      f"kinds: {t2 - t1:.1f} s")
