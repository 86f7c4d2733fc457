"""examples/lenet5_torch.py: LeNet-5 trained with fastconv and with torch reaches the same accuracy."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")

pytestmark = pytest.mark.subprocess

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "lenet5_torch.py"


def test_lenet5_fastconv_matches_torch_accuracy():
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick"], capture_output=True, text=True,
                          timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    acc = {m.group(1): float(m.group(2))
           for m in re.finditer(r"(torch|fastconv): test accuracy\s+([\d.]+)%", proc.stdout)}
    assert set(acc) == {"torch", "fastconv"}, proc.stdout
    # Both actually learned (10 classes: chance is 10%) ...
    assert min(acc.values()) > 80.0, proc.stdout
    # ... and agree within the script's stated tolerance.
    assert abs(acc["torch"] - acc["fastconv"]) <= 1.5, proc.stdout
    # The epoch times of both are reported.
    m = re.search(r"epoch time: fastconv (\d+) ms, torch (\d+) ms \(torch / fastconv = ([\d.]+)x", proc.stdout)
    assert m and int(m.group(1)) > 0 and int(m.group(2)) > 0, proc.stdout
