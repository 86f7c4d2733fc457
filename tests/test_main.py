"""The command line: info, check, warmup, usage."""

import subprocess
import sys

import numpy as np
import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "fastconv", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.mark.subprocess
def test_info():
    r = run("info")
    assert r.returncode == 0, r.stderr
    for field in ("fastconv", "numba", "threading layer", "algorithms", "cuda"):
        assert field in r.stdout


@pytest.mark.subprocess
def test_check_passes():
    r = run("check", "--dtype", "float64")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all within bounds" in r.stdout
    assert "winograd_f4x4_3x3" in r.stdout and "FAIL" not in r.stdout


@pytest.mark.subprocess
def test_usage():
    r = run("frobnicate")
    assert r.returncode == 2 and "usage" in r.stdout


def test_readme_usage_example_runs():
    import os
    import re

    readme = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")
    with open(readme) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    assert blocks
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_warmup_tasks_cover_every_algorithm_and_kind():
    from fastconv import _warmup
    todo = _warmup.tasks()
    assert {t[4] for t in todo} == set(_warmup.ALGORITHMS)
    assert {t[3] for t in todo} == {"float32", "float64"}
    # Winograd only where it applies (3x3, stride 1)
    assert all(t[1][2:] == (3, 3) and t[2].get("stride", 1) == 1
               for t in todo if t[4].startswith("winograd"))
    # fft on large kernels, through each of its contraction kernels
    from fastconv._params import normalize
    from fastconv.cpu import fft
    kinds = set()
    for xs, ws, kw, _, alg in todo:
        if alg == "fft":
            assert ws[2] * ws[3] >= _warmup.FFT_MIN_TAPS
            p = normalize(xs, ws, None, np.dtype("float32"), **kw)
            kinds.add(fft.contraction_kind(p, fft.phase_kernel_size(p)[2]))
    assert kinds == {"one", "small", "panel"}
    assert len(_warmup.tasks(("float32",))) * 2 == len(todo)


@pytest.mark.subprocess
def test_warmup_in_worker_processes(capsys):
    """Two spawned workers run the tasks, then the serial pass checks them; a progress bar."""
    import io

    from fastconv import _warmup
    cases = (((1, 3, 6, 6), (4, 3, 3, 3), dict(padding=1)),)
    err = io.StringIO()
    r = _warmup.warmup(jobs=2, dtypes=("float32",), stream=err, cases=cases)
    assert r["tasks"] == 4 and r["jobs"] == 2 and r["parallel_s"] > 0 and r["serial_s"] > 0
    assert "4/4" in err.getvalue() and "warmup [" in err.getvalue()


def test_main_warmup_arguments(capsys):
    from fastconv.__main__ import main
    with pytest.raises(SystemExit):
        main(["warmup", "--jobs", "0"])
    with pytest.raises(SystemExit):
        main(["warmup", "--dtype", "float16"])
