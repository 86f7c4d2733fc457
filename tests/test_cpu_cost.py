"""The CPU cost model (fastconv.cpu.cost), `calibrate`, `auto_method` and `fastconv.explain`."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import _config, _dispatch
from fastconv.bench.layers import Layer
from fastconv.bench.random_layers import random_layers, split
from fastconv.cpu import auto_method, cost
from fastconv.cpu.target import detect

RESULTS = Path(__file__).resolve().parent.parent / "benchmarks" / "results"


def _params(N=1, C=16, H=12, W=12, K=16, R=3, S=3, **kw):
    return Layer("t", N, C, H, W, K, R, S, **kw).params()


def test_random_layers_are_seeded_and_split_in_halves():
    a, b = random_layers(), random_layers()
    assert a == b and len(a) == 64
    fit, held = split(a)
    assert len(fit) == len(held) == 32 and not set(l.name for l in fit) & set(l.name for l in held)
    kinds = {(l.R, l.groups == l.C and l.groups > 1, l.stride, l.dilation) for l in a}
    assert {1, 3, 5, 7} <= {k[0] for k in kinds} and any(k[1] for k in kinds)
    assert any(k[2] == 2 for k in kinds) and any(k[3] == 2 for k in kinds)
    assert {l.N for l in a} >= {1, 32}


@pytest.mark.parametrize("layer", random_layers()[:24], ids=lambda l: l.name)
def test_predictions_are_positive_and_name_supported_algorithms(layer):
    p = layer.params()
    pred = cost.predictions(p)
    assert "direct" in pred and "im2col" in pred
    for name, t in pred.items():
        assert _dispatch.get("cpu", name).supports(p) is None
        assert math.isfinite(t) and t > 0
    assert cost.choose(p) in pred


def test_predicted_time_grows_with_the_work():
    for alg in ("direct", "im2col", "winograd_f4x4_3x3"):
        small = cost.predict(_params(N=1, C=64, K=64, H=28, W=28, padding=1), alg)
        large = cost.predict(_params(N=8, C=64, K=64, H=28, W=28, padding=1), alg)
        assert large > 2 * small, alg


def test_terms_say_which_kernel_runs():
    t = cost.terms(_params(C=64, K=64, H=56, W=56, padding=1), "direct")
    assert t["path"] in ("blocked", "width", "pointwise", "simple")
    t = cost.terms(_params(C=256, K=256, H=7, W=7, padding=1), "winograd_f4x4_3x3")
    assert t["schedule"].startswith(("vec/", "tile_row/"))
    with pytest.raises(ValueError, match="algorithm"):
        cost.terms(_params(), "no_such_algorithm")


@pytest.mark.skipif(detect().isa != "avx512", reason="the stored timings are of AVX-512 kernels")
def test_the_fitted_column_scores_on_its_held_out_timings():
    """The model picks an algorithm within 10% of the measured fastest on at least 90% of the
    held-out half of the random shapes (timings and machine constants stored with the fit)."""
    with open(RESULTS / "cost_model_avx512.json") as f:
        machine = cost.Machine(**json.load(f)["machine"])
    with open(RESULTS / "random_avx512_heldout.json") as f:
        rows = json.load(f)["random_heldout"]
    near = 0
    for r in rows:
        p = Layer(r["name"], **r["shape"]).params()
        t = {a: v for a, v in r["mins"].items() if a != "torch"}
        pred = {a: v for a, v in cost.predictions(p, machine).items() if a in t}
        pick = min(pred, key=pred.get)
        near += t[pick] <= 1.10 * min(t.values())
    assert near >= 0.9 * len(rows)


def test_auto_method_switch(cpu_settings):
    p = _params(C=64, K=64, H=56, W=56, padding=1)
    cpu_settings.auto_method = "model"
    assert auto_method() == "model"
    assert _dispatch.concrete("auto", p, "cpu") == cost.choose(p)
    cpu_settings.auto_method = "rule"
    from fastconv.cpu import fitted_rule
    assert _dispatch.concrete("auto", p, "cpu") == fitted_rule(p)
    cpu_settings.auto_method = ""
    assert auto_method() == ("rule" if detect().isa == "avx512" else "model")
    cpu_settings.auto_method = "fastest"
    with pytest.raises(ValueError, match="auto_method"):
        auto_method()


@pytest.mark.parametrize("layer", random_layers()[1:64:8], ids=lambda l: l.name)
def test_auto_by_the_model_computes_the_convolution(cpu_settings, layer):
    cpu_settings.auto_method = "model"
    # fewer channels (the float64 reference runs one scipy correlation per channel pair)
    small = Layer(layer.name, min(layer.N, 2), min(layer.C, 64) // layer.groups * layer.groups
                  or layer.groups, layer.H, layer.W,
                  min(layer.K, 48) // layer.groups * layer.groups or layer.groups, layer.R, layer.S,
                  stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                  groups=layer.groups)
    x, w, b = small.arrays(np.float64)
    y = fastconv.conv2d(x, w, b, **small.conv_kwargs)
    ref = fastconv.reference.conv2d(x, w, b, **small.conv_kwargs)
    np.testing.assert_allclose(y, ref, rtol=1e-9, atol=1e-9)


def test_calibrate_stores_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    gen = _config.generation()
    try:
        m = cost.calibrate(store=True)
        assert _config.generation() != gen  # memoised auto choices are recomputed
        assert m.source == "calibrated" and m.isa == detect().isa
        assert m.fma_rate > 1e8 and m.bandwidth > 1e8 and 0 < m.call_s < 0.01
        assert 0 < m.pass_s < 0.01 and m.cache_bytes > 0
        from fastconv import tuning
        tuning._MEMORY.clear()
        assert cost.load_calibration() == m
        assert "calibration|" in (tmp_path / "tuning.json").read_text()
    finally:
        cost._MACHINE = None
        from fastconv import tuning
        tuning._MEMORY.clear()


def test_uncalibrated_machine_uses_the_isa_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cost, "_MACHINE", None)
    m = cost.current_machine()
    assert m.source == "default" and m.fma_rate == cost.DEFAULTS[detect().isa]["fma_rate"]
    assert cost.coefficients("neon") is cost.COEF["avx2"]
    assert cost.coefficients("avx512") is cost.COEF["avx512"]


def test_main_calibrate(tmp_path, monkeypatch, capsys):
    from fastconv.__main__ import main
    monkeypatch.setenv("FASTCONV_CACHE_DIR", str(tmp_path))
    try:
        assert main(["calibrate"]) == 0
        assert "multiply-adds/s per thread" in capsys.readouterr().out
        assert main(["calibrate", "--bogus"]) == 2
    finally:
        cost._MACHINE = None


def test_explain_lists_candidates_and_agrees_with_auto():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 32, 16, 16)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    x0, w0 = x.copy(), w.copy()
    e = fastconv.explain(x, w, padding=1)
    p = fastconv._params.normalize(x.shape, w.shape, None, np.float32, padding=1)
    assert e.choice == _dispatch.concrete("auto", p, "cpu")
    assert e.method == auto_method()
    assert [c.name for c in e.candidates] == list(cost.CANDIDATES)
    assert all(c.unsupported is None and c.predicted_s > 0 and c.measured_s is None
               for c in e.candidates)
    assert "<- auto" in str(e) and e.choice in e.reason
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(w, w0)


def test_explain_measures_and_reports_unsupported():
    x = np.ones((1, 8, 20, 20), np.float32)
    w = np.ones((8, 8, 5, 5), np.float32)
    e = fastconv.explain(x, w, stride=2, measure=True, repeat=1)
    by = {c.name: c for c in e.candidates}
    assert by["winograd_f4x4_3x3"].unsupported and by["winograd_f4x4_3x3"].predicted_s is None
    assert by["direct"].measured_s > 0 and by["im2col"].measured_s > 0
    assert "measured" in e.reason


def test_explain_rejects_bad_arguments():
    x = np.ones((1, 2, 5, 5), np.float32)
    with pytest.raises(ValueError, match="repeat"):
        fastconv.explain(x, np.ones((2, 2, 3, 3), np.float32), repeat=0)
    with pytest.raises(ValueError):
        fastconv.explain(x, np.ones((2, 3, 3, 3), np.float32))
    with pytest.raises(TypeError):
        fastconv.explain(x.astype(np.int32), np.ones((2, 2, 3, 3), np.int32))
