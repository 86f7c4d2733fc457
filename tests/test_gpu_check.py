"""The pure-Python parts of ``benchmarks/gpu_check.py`` (no GPU, no simulator, no fastconv
import): per-candidate failure isolation of the timing, the summaries and the targets."""

from __future__ import annotations

import importlib.util
import math
import os

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def gc():
    path = os.path.join(os.path.dirname(HERE), "benchmarks", "gpu_check.py")
    spec = importlib.util.spec_from_file_location("gpu_check_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def fake_timer(seconds):
    """A per_call(fn, number) that calls fn ``number`` times and reports seconds[fn]."""
    def per_call(fn, number):
        for _ in range(number):
            fn()
        return seconds[fn]
    return per_call


def failing_after(n, exc=RuntimeError("launch failed")):
    count = [0]

    def fn():
        count[0] += 1
        if count[0] > n:
            raise exc
        return "y"
    return fn


def test_time_candidates_isolates_each_failure(gc):
    ok, cud = (lambda: "y"), (lambda: "y")
    broken = failing_after(0, RuntimeError("NVVM compilation failed"))  # fails at its first call
    late = failing_after(4)  # warm-up (2) + calibration (1) + one round (1 call) then fails
    calls = {"direct": ok, "im2col": broken, "winograd_f4x4_3x3": late, "cudnn": cud}
    timer = fake_timer({ok: 2e-3, broken: 1.0, late: 1e-3, cud: 1e-3})
    checked = []
    measured, errors = gc.time_candidates(calls, timer, repeat=3,
                                          check=lambda n, y: checked.append(n) or 0.0,
                                          min_round_s=1e-9)
    assert set(measured) == {"direct", "cudnn"}
    assert measured["direct"]["times"] == [2e-3] * 3 and measured["direct"]["number"] == 1
    assert errors["im2col"]["stage"] == "warm-up"
    assert "NVVM compilation failed" in errors["im2col"]["error"]
    assert "Traceback" in errors["im2col"]["traceback"]
    assert errors["winograd_f4x4_3x3"]["stage"] == "timing"
    assert checked == ["direct", "winograd_f4x4_3x3", "cudnn"]


def test_time_candidates_check_failure_and_calibration(gc):
    fn = lambda: "y"  # noqa: E731
    measured, errors = gc.time_candidates({"a": fn, "b": lambda: "z"}, fake_timer({fn: 1e-3}),
                                          repeat=2, check=lambda n, y: 1 / (y == "y"),
                                          min_round_s=0.02)
    assert measured["a"]["number"] == 20 and len(measured["a"]["times"]) == 2
    assert errors["b"]["stage"] == "check" and "ZeroDivisionError" in errors["b"]["error"]


def test_layer_rows_keep_the_others_when_auto_fails(gc):
    measured = {"direct": {"times": [3e-3, 2e-3, 2e-3], "number": 5, "max_rel_error": 1e-7},
                "cudnn": {"times": [1e-3], "number": 9, "max_rel_error": 0.0}}
    errors = {"im2col": {"error": "RuntimeError: x", "stage": "warm-up", "traceback": "tb"}}
    res = gc.layer_rows("L", 32, 2e9, measured, errors, auto="im2col")
    by = {r["algorithm"]: r for r in res["rows"]}
    assert set(by) == {"direct", "cudnn", "im2col"}
    assert by["direct"]["median_ms"] == pytest.approx(2.0)
    assert by["direct"]["ratio_vs_cudnn"] == pytest.approx(0.5)
    assert by["direct"]["tflops"] == pytest.approx(1.0)
    assert by["im2col"]["auto"] and by["im2col"]["error"] == "RuntimeError: x"
    assert res["best"] == "direct" and not res["auto_hit"] and res["failed"] == ["im2col"]
    res = gc.layer_rows("L", 32, 2e9, measured, {}, auto="direct")
    assert res["auto_hit"]
    assert gc.layer_rows("L", 1, 1, {}, errors, auto="im2col")["best"] is None


def _suite(n_layers, auto_wins, auto_ratio=0.5, failed_auto=0):
    """A time_suite-like result: per layer direct (auto's choice; the fastest on the first
    ``auto_wins`` layers, im2col on the others), im2col and cuDNN; auto's timing failed on the
    first ``failed_auto`` layers."""
    rows = []
    for i in range(n_layers):
        name = f"L{i}"
        direct_ms, im2col_ms = (1.0, 2.0) if i < auto_wins else (2.0, 1.0)
        cud_ms = direct_ms * auto_ratio
        if i < failed_auto:
            rows.append({"layer": name, "N": 1, "algorithm": "direct", "auto": True,
                         "error": "RuntimeError: boom", "stage": "timing", "traceback": ""})
        for alg, ms in (("direct", direct_ms), ("im2col", im2col_ms), ("cudnn", cud_ms)):
            if i < failed_auto and alg == "direct":
                continue
            rows.append({"layer": name, "N": 1, "algorithm": alg, "auto": alg == "direct",
                         "median_ms": ms, "tflops": 1.0 / ms, "ratio_vs_cudnn": cud_ms / ms})
    return {"batch": 1, "rows": rows, "skipped_for_time": ["L99"]}


def test_summarise_and_targets(gc):
    s32 = gc.summarise(_suite(18, auto_wins=15))
    assert s32["layers"] == 18 and s32["auto_hits"] == 15 and s32["auto_near_hits"] == 15
    assert s32["layers_skipped_for_time"] == 1 and s32["failures"] == []
    assert s32["best_per_layer"]["L17"]["algorithm"] == "im2col"
    s1 = gc.summarise(_suite(18, auto_wins=18, auto_ratio=0.4, failed_auto=2))
    assert s1["auto_geomean_ratio_vs_cudnn"] == pytest.approx(0.4)
    assert s1["auto_layers_vs_cudnn"] == 16 and len(s1["failures"]) == 2
    assert s1["auto_hits"] == 16  # the two layers whose auto failed count as misses
    assert s1["geomean_ratio_vs_cudnn_per_algorithm"]["direct"] == pytest.approx(0.4)

    overhead = [
        {"problem": "p", "kind": "torch", "algorithm": "auto", "host_us": 20.0, "wall_us": 30.0},
        {"problem": "p", "kind": "torch", "algorithm": "direct", "host_us": 24.0, "wall_us": 30.0},
        {"problem": "p", "kind": "torch", "algorithm": "cudnn", "host_us": 90.0, "wall_us": 99.0},
        {"problem": "p", "kind": "numba", "algorithm": "auto", "host_us": 80.0, "wall_us": 99.0},
    ]
    report = {"correctness": {"failures": 0, "checks": 10}, "overhead": overhead,
              "timing": {"batch32_summary": gc.summarise(_suite(18, auto_wins=18)),
                         "batch1_summary": s1}}
    t = gc.compute_targets(report)
    assert t["correctness_failures"]["met"] is True
    worst = t["worst_fastconv_host_overhead_us_torch"]
    assert worst["value"] == 24.0 and worst["met"] is True and "direct" in worst["note"]
    assert t["auto_geomean_vs_cudnn_batch1"]["met"] is True
    assert t["auto_hits_batch32"] == {"value": "18/18", "target": ">= 16/18", "met": True,
                                      "note": "18 of 18 layers timed"}

    overhead.append({"problem": "q", "kind": "torch", "algorithm": "im2col",
                     "error": "RuntimeError: x", "stage": "overhead", "traceback": ""})
    report["correctness"]["failures"] = 3
    report["timing"]["batch32_summary"] = gc.summarise(_suite(18, auto_wins=18,
                                                              failed_auto=3))
    report["timing"]["batch1_summary"] = gc.summarise(_suite(4, 2, auto_ratio=0.2))
    t = gc.compute_targets(report)
    assert t["correctness_failures"]["met"] is False
    assert t["worst_fastconv_host_overhead_us_torch"]["met"] is False  # a call failed
    assert t["auto_geomean_vs_cudnn_batch1"]["met"] is False
    assert t["auto_hits_batch32"]["met"] is False  # 3 misses > 2 allowed
    lines = gc.targets_lines(t)
    assert len(lines) == 4 and all("MISSED" in line for line in lines)

    # Partial runs: not enough to tell, nothing timed at all.
    report["timing"] = {"batch32_summary": gc.summarise(_suite(6, 6))}
    report["overhead"] = []
    t = gc.compute_targets(report)
    assert t["auto_hits_batch32"]["met"] is None
    assert t["auto_geomean_vs_cudnn_batch1"]["met"] is None
    assert t["worst_fastconv_host_overhead_us_torch"]["met"] is None
    assert gc.compute_targets({})["correctness_failures"]["met"] is None


def test_host_and_wall_and_table(gc):
    calls, syncs = [], []
    host, wall = gc.host_and_wall(lambda: calls.append(1), lambda: syncs.append(1), 7, warmup=3)
    assert len(calls) == 10 and len(syncs) == 2
    assert 0 <= host <= wall and math.isfinite(wall)
    rows = [{"problem": "p", "kind": "torch", "algorithm": "auto", "host_us": 20.0,
             "wall_us": 30.0, "meets_target": True},
            {"problem": "p", "kind": "torch", "algorithm": "im2col", "error": "E: x"},
            {"problem": "p", "kind": "torch", "algorithm": "cudnn", "host_us": 9.0,
             "wall_us": 19.0}]
    (line,) = gc.overhead_table(rows)
    assert "auto 20.0/30.0 ok" in line and "im2col FAILED" in line and "cudnn 9.0/19.0" in line
