"""The CUDA ``auto`` rule (``fastconv.cuda.auto``): its score on the stored H200 timings and
its choices on chosen shapes.  No GPU and no numba.cuda needed: the rule only reads shapes."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv._params import normalize
from fastconv.cuda import winograd
from fastconv.cuda.auto import ALGORITHMS, THRESHOLDS, auto_rule, macs, winograd_rule

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "benchmarks", "results", "gpu_h200_2026-12-04.json")


@pytest.fixture(scope="module")
def fit():
    path = os.path.join(ROOT, "benchmarks", "fit_cuda_auto.py")
    spec = importlib.util.spec_from_file_location("fit_cuda_auto_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def layers():
    from fastconv.bench.layers import load_layers

    return {layer.name: layer for layer in load_layers()}


def params(x_shape, w_shape, **kw):
    return normalize(x_shape, w_shape, None, np.float32, **kw)


# --- the stored timings ----------------------------------------------------------------------

def test_fastest_on_the_stored_batch32_timings(fit, layers):
    rows = fit.load_rows(DATA)
    result = fit.score(auto_rule, rows["batch32"], layers)
    assert result["n"] == 18 and result["unmeasured"] == 0
    assert result["hits"] >= 16, [(e["layer"], e["chosen"], e["fastest"])
                                  for e in result["layers"] if e["chosen"] != e["fastest"]]
    assert result["geomean"] < 1.05


def test_close_to_fastest_on_the_stored_batch1_timings(fit, layers):
    result = fit.score(auto_rule, fit.load_rows(DATA)["batch1"], layers)
    assert result["n"] == 6 and result["unmeasured"] == 0
    assert result["geomean"] < 1.1


def test_fit_script_reads_gpu_check_output(fit, layers, tmp_path):
    """gpu_check.json nests the rows under timing.<batch>.rows and may hold error rows."""
    with open(DATA) as f:
        stored = json.load(f)
    error_row = {"layer": "vgg16_1_1", "N": 32, "algorithm": "direct", "auto": False,
                 "stage": "timing", "error": "CudaAPIError: launch failed"}
    report = {"timing": {"batch32": {"rows": stored["batch32"] + [error_row]},
                         "batch1": {"rows": stored["batch1"]}}}
    path = tmp_path / "gpu_check.json"
    path.write_text(json.dumps(report))
    rows = fit.load_rows(str(path))
    assert len(rows["batch32"]) == len(stored["batch32"])
    assert fit.score(auto_rule, rows["batch32"], layers)["hits"] == \
        fit.score(auto_rule, stored["batch32"], layers)["hits"]
    assert fit.main([str(path)]) == 0


# --- choices on shapes -----------------------------------------------------------------------

@pytest.mark.parametrize("x_shape, w_shape, kw, expected", [
    # depthwise: one output channel per group, whatever the kernel size and the work
    ((32, 32, 112, 112), (32, 1, 3, 3), {"padding": 1, "groups": 32}, "direct"),
    ((32, 256, 56, 56), (256, 1, 5, 5), {"padding": 2, "groups": 256}, "direct"),
    # little work in all: launch cost decides
    ((1, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}, "direct"),
    # large VGG-like 3x3 layers: Winograd F(4x4)
    ((32, 64, 224, 224), (64, 64, 3, 3), {"padding": 1}, "winograd_f4x4_3x3"),
    ((32, 256, 56, 56), (256, 256, 3, 3), {"padding": 1}, "winograd_f4x4_3x3"),
    # 3x3 with too little work for Winograd's kernels, or too few input channels
    ((32, 64, 56, 56), (64, 64, 3, 3), {"padding": 1}, "im2col"),
    ((32, 3, 224, 224), (64, 3, 3, 3), {"padding": 1}, "im2col"),
    # 1x1, strided 3x3, 7x7 stem
    ((32, 64, 56, 56), (256, 64, 1, 1), {}, "im2col"),
    ((32, 128, 56, 56), (128, 128, 3, 3), {"padding": 1, "stride": 2}, "im2col"),
    ((32, 3, 224, 224), (64, 3, 7, 7), {"padding": 3, "stride": 2}, "im2col"),
])
def test_choices(x_shape, w_shape, kw, expected):
    assert auto_rule(params(x_shape, w_shape, **kw)) == expected


def test_f2x2_when_the_output_is_smaller_than_4x4():
    p = params((1024, 512, 3, 3), (512, 512, 3, 3), padding=1)  # 3x3 output, much work
    assert macs(p) >= THRESHOLDS["winograd_min_macs"]
    assert auto_rule(p) == winograd_rule(p) == "winograd_f2x2_3x3"
    p4 = params((1024, 512, 4, 4), (512, 512, 3, 3), padding=1)
    assert auto_rule(p4) == winograd_rule(p4) == "winograd_f4x4_3x3"


def test_winograd_only_where_supported():
    cases = [  # much work and many channels, but Winograd does not apply
        ((32, 256, 56, 56), (256, 256, 5, 5), {"padding": 2}),
        ((32, 256, 112, 112), (256, 256, 3, 3), {"padding": 1, "stride": 2}),
        ((32, 256, 56, 56), (256, 256, 3, 3), {"padding": 2, "dilation": 2}),
        ((1, 2048 * 64, 16, 16), (2048 * 64, 64, 3, 3), {"padding": 1, "groups": 2048}),
    ]
    for x_shape, w_shape, kw in cases:
        p = params(x_shape, w_shape, **kw)
        assert winograd.supports(p) is not None
        assert macs(p) >= THRESHOLDS["winograd_min_macs"]
        assert auto_rule(p) == "im2col"


def test_every_choice_is_a_registered_algorithm():
    registered = set(fastconv.algorithms("cuda")) - {"auto", "winograd"}
    assert set(ALGORITHMS) == registered
    seen = set()
    for N in (1, 8, 64, 1024):
        for C, K in ((1, 8), (3, 64), (16, 16), (64, 64), (256, 512), (512, 512)):
            for R, stride, groups in ((1, 1, 1), (3, 1, 1), (3, 2, 1), (5, 1, 1), (3, 1, C)):
                for H in (3, 7, 56):
                    if K % groups:
                        continue
                    p = params((N, C, H, H), (K, C // groups, R, R), padding=R // 2,
                               stride=stride, groups=groups)
                    choice = auto_rule(p)
                    assert choice in registered
                    if choice.startswith("winograd"):
                        assert winograd.supports(p) is None
                    seen.add(choice)
    assert seen == registered


def test_thresholds_can_be_replaced():
    p = params((32, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert auto_rule(p) == "im2col"
    assert auto_rule(p, dict(THRESHOLDS, winograd_min_macs=0)) == "winograd_f4x4_3x3"
    assert auto_rule(p, dict(THRESHOLDS, winograd_min_macs=0, winograd_f4_min_output=64)) == \
        "winograd_f2x2_3x3"


@pytest.mark.subprocess
def test_import_does_not_load_numba_cuda():
    code = ("import sys, fastconv.cuda.auto; "
            "sys.exit('numba.cuda imported' if 'numba.cuda' in sys.modules else 0)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (os.path.join(ROOT, "src"), os.environ.get("PYTHONPATH", "")) if p))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
