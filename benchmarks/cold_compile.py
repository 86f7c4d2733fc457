"""Time ``import fastconv`` and the cold Numba compilation of every CPU kernel.

Run it on a fresh clone (no ``__pycache__``, so no on-disk Numba cache) to
measure the cold compile, and a second time for the warm-cache cost::

    PYTHONPATH=src python benchmarks/cold_compile.py   # cold: compiles everything
    PYTHONPATH=src python benchmarks/cold_compile.py   # warm: loads from the cache

With ``--first-calls`` it instead times, for each of eight single layers, the
first ``conv2d`` call (``algorithm="auto"``, float32) in a fresh process with
an empty Numba cache (``NUMBA_CACHE_DIR`` a new temporary directory): what a
new user waits for on the first call of one layer::

    PYTHONPATH=src python benchmarks/cold_compile.py --first-calls

Every CPU algorithm runs on seven layer kinds (3x3 on a wide and on a small
map, 3x3 over 256 channels on one and on four 7x7 maps, 1x1, 5x5 over 3
channels, depthwise 3x3) in float32 and float64, which reaches every path:
blocked, pointwise and width direct kernels, im2col, and both Winograd
paths (the channel-vectorised one in its fused, split and stream
schedules).
"""

import os
import subprocess
import sys
import tempfile
import time

#: (name, x shape, w shape, stride, padding) of --first-calls; groups = C // w.shape[1].
FIRST_CALLS = [("3x3 64ch 56x56", (1, 64, 56, 56), (64, 64, 3, 3), 1, 1),
               ("3x3 64ch 112x112", (1, 64, 112, 112), (64, 64, 3, 3), 1, 1),
               ("3x3 stride 2 64->128", (1, 64, 56, 56), (128, 64, 3, 3), 2, 1),
               ("3x3 512ch 7x7", (1, 512, 7, 7), (512, 512, 3, 3), 1, 1),
               ("1x1 64->128 28x28", (1, 64, 28, 28), (128, 64, 1, 1), 1, 0),
               ("depthwise 3x3 32ch 20x20", (1, 32, 20, 20), (32, 1, 3, 3), 1, 1),
               ("grouped 3x3 (32 groups)", (1, 64, 28, 28), (64, 2, 3, 3), 1, 1),
               ("RGB 3x3 3->64 224x224", (1, 3, 224, 224), (64, 3, 3, 3), 1, 1)]

_ONE_CALL = """
import sys, time
import numpy as np
import fastconv
xs, ws, st, pad = eval(sys.argv[1])
rng = np.random.default_rng(0)
x = rng.standard_normal(xs).astype(np.float32)
w = rng.standard_normal(ws).astype(np.float32)
t = time.perf_counter()
fastconv.conv2d(x, w, stride=st, padding=pad, groups=xs[1] // ws[1])
print(time.perf_counter() - t)
"""


def first_calls():
    """Print the cold first call of each FIRST_CALLS layer, each in a fresh process."""
    for name, xs, ws, st, pad in FIRST_CALLS:
        with tempfile.TemporaryDirectory() as cache:
            out = subprocess.run([sys.executable, "-c", _ONE_CALL, repr((xs, ws, st, pad))],
                                 env=dict(os.environ, NUMBA_CACHE_DIR=cache), check=True,
                                 capture_output=True, text=True).stdout
        print(f"{name:26s} first call, cold: {float(out):5.1f} s", flush=True)


if "--first-calls" in sys.argv[1:]:
    first_calls()
    sys.exit(0)

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
