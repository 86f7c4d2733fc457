"""The command line: info, check, usage."""

import subprocess
import sys

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
