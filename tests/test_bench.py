"""fastconv.bench: layers, the numpy peer, the runner's results, JSON schema, table, plot, CLI.

Tiny layers only: these tests check what the benchmark reports, never how fast anything is.
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest

import fastconv
from fastconv.bench import cli, report
from fastconv.bench.layers import QUICK_LAYERS, QUICK_MAX_BATCH, Layer, load_layers, select_layers
from fastconv.bench.machine import blas_warnings, machine_info
from fastconv.bench.peers import numpy_im2col
from fastconv.bench.runner import concrete_algorithms, run_suite

TINY = [Layer("tiny_3x3", N=2, C=8, H=10, W=10, K=8, R=3, S=3, padding=1),
        Layer("tiny_dw_s2", N=1, C=4, H=9, W=9, K=4, R=3, S=3, stride=2, padding=1, groups=4)]
PEERS = ("numpy_im2col", "scipy_reference")


@pytest.fixture(scope="module")
def result():
    return run_suite(TINY, repeat=2, peers=PEERS, min_round_s=0.0005, phases=True)


def test_standard_layers_ship_with_the_package():
    layers = load_layers()
    assert len(layers) == 18
    assert len({l.name for l in layers}) == 18
    stem = {l.name: l for l in layers}["resnet50_stem"]
    p = stem.params()
    assert (p.P, p.Q) == (112, 112)
    assert stem.flops == 2 * 1 * 64 * 112 * 112 * 3 * 7 * 7


def test_quick_subset_and_selection():
    quick = select_layers(quick=True)
    assert [l.name for l in quick] == list(QUICK_LAYERS)
    assert all(l.N <= QUICK_MAX_BATCH for l in quick)
    assert [l.name for l in select_layers("vgg16_1_1, lenet5_c1")] == ["vgg16_1_1", "lenet5_c1"]
    with pytest.raises(ValueError, match="unknown layer.*'nope'.*lenet5_c1"):
        select_layers(["nope"])


def test_layer_arrays_are_seeded():
    a = TINY[0].arrays(seed=3)
    b = TINY[0].arrays(seed=3)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert a[0].dtype == np.float32 and a[1].shape == (8, 8, 3, 3)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(dilation=2, padding=2),
                                dict(groups=2, padding=(1, 0)), dict(stride=(1, 2), groups=4)])
def test_numpy_peer_matches_the_reference(rng, kw):
    x = rng.standard_normal((2, 4, 9, 11))
    w = rng.standard_normal((8, 4 // kw.get("groups", 1), 3, 3))
    b = rng.standard_normal(8)
    np.testing.assert_allclose(numpy_im2col(x, w, b, **kw),
                               fastconv.reference.conv2d(x, w, b, **kw), rtol=1e-12, atol=1e-12)


def test_runner_measures_every_supporting_algorithm(result):
    assert [r.layer.name for r in result.layers] == [l.name for l in TINY]
    for r in result.layers:
        p = r.layer.params()
        expected = {a for a in concrete_algorithms() if
                    fastconv._dispatch.get("cpu", a).supports(p) is None}
        assert {m.name for m in r.algorithms()} == expected
        assert set(r.unsupported) == set(concrete_algorithms()) - expected
        assert r.auto == fastconv._dispatch.auto_choice(p) and r.auto in r.measurements
        assert set(PEERS) <= set(r.measurements)
        for m in r.measurements.values():
            assert len(m.times) == 2 and m.number >= 1 and m.gflops > 0
            assert m.error < 1e-4, (m.name, m.error)  # checked against the float64 oracle
        assert r.best in expected and r.auto_vs_best >= 1.0
    assert any("Winograd" in reason for reason in result.layers[1].unsupported.values())


def test_json_is_pytest_benchmark_compatible(result, tmp_path):
    path = tmp_path / "bench.json"
    report.write_json(result, path)
    doc = json.loads(path.read_text())
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version"} <= set(doc)
    f = doc["machine_info"]["fastconv"]
    assert {"cpu_model", "logical_cpus", "numba_threading_layer", "numba_threads", "versions",
            "blas", "env"} <= set(f)
    assert {"numpy", "numba", "torch"} <= set(f["versions"])
    names = [b["name"] for b in doc["benchmarks"]]
    assert len(names) == len(set(names))
    assert "test_conv2d[layer=tiny_3x3-alg=im2col]" in names
    for b in doc["benchmarks"]:
        assert b["group"] == b["params"]["layer"]
        assert {"min", "max", "mean", "median", "stddev", "rounds"} <= set(b["stats"])
        assert b["stats"]["rounds"] == 2 and b["stats"]["min"] <= b["stats"]["median"]
        assert b["extra_info"]["gflops"] > 0
    for layer in TINY:
        entries = [b for b in doc["benchmarks"] if b["group"] == layer.name]
        chosen = [b["params"]["alg"] for b in entries if b["extra_info"]["chosen_by_auto"]]
        assert chosen == [fastconv._dispatch.auto_choice(layer.params())]
        assert sum(bool(b["extra_info"]["fastest"]) for b in entries) == 1
    summary = doc["fastconv"]["summary"]
    assert summary["layers"] == 2 and 0 <= summary["auto_hits"] <= 2


def test_table_lists_layers_algorithms_and_auto(result):
    text = report.format_table(result)
    head = text.splitlines()[0]
    for col in ("layer", "direct", "im2col", "numpy", "scipy", "auto", "fastest"):
        assert col in head
    for r in result.layers:
        row = next(line for line in text.splitlines() if line.startswith(r.layer.name))
        assert r.auto in row
    assert "auto picked the fastest algorithm on" in text


def test_plot_is_a_png(result, tmp_path):
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    assert report.write_plot(result, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_phases_are_recorded_and_tabulated(result):
    import importlib

    r = result.layers[0]  # tiny_3x3: im2col and both Winograd variants
    for name in ("im2col", "winograd_f2x2_3x3", "winograd_f4x4_3x3"):
        module = importlib.import_module("fastconv.cpu." + name.split("_")[0])
        if not hasattr(module, "profile_phases"):
            continue
        phases = r.measurements[name].phases
        assert phases and "gemm" in phases and all(t >= 0 for t in phases.values())
    assert not r.measurements["direct"].phases  # direct has no phases
    text = report.format_phases(result)
    assert "gemm=" in text and "tiny_3x3" in text


def test_progress_bar_counts_to_total():
    out = io.StringIO()
    bar = report.ProgressBar(3, stream=out, width=10)
    for _ in range(3):
        bar(1, "layer")
    assert out.getvalue().rstrip().endswith("3/3 layer")
    assert "[##########]" in out.getvalue()


def test_machine_info_and_coretype_warning(monkeypatch):
    info = machine_info()
    assert info["cpu"]["count"] and info["fastconv"]["cpu_model"]
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")  # read only; BLAS is already loaded
    assert any("OPENBLAS_CORETYPE=Haswell" in w for w in blas_warnings())
    monkeypatch.delenv("OPENBLAS_CORETYPE")
    assert blas_warnings() == []


def test_cli_end_to_end(tmp_path, capsys):
    js, png = tmp_path / "b.json", tmp_path / "b.png"
    rc = cli.main(["--layers", "lenet5_c3", "--batch", "1", "--repeat", "1", "--no-torch",
                   "--algorithms", "direct,im2col", "--no-progress", "--json", str(js),
                   "--plot", str(png), "--phases"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "lenet5_c3" in out and "GFLOP/s" in out
    doc = json.loads(js.read_text())
    algs = {b["params"]["alg"] for b in doc["benchmarks"]}
    assert {"direct", "im2col", "numpy_im2col"} <= algs and "torch" not in algs
    assert all(b["extra_info"]["shape"]["N"] == 1 for b in doc["benchmarks"])


def test_cli_list(capsys):
    assert cli.main(["--list"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 18


@pytest.mark.parametrize("argv, msg", [(["--layers", "nope"], "unknown layer"),
                                       (["--algorithms", "no_such_algorithm"], "unknown algorithm"),
                                       (["--repeat", "0"], "--repeat must be >= 1"),
                                       (["--threads", "0"], "--threads must be >= 1"),
                                       (["--cpu-time"], "--cpu-time needs --threads 1")])
def test_cli_bad_arguments(argv, msg, capsys):
    assert cli.main(argv) == 2
    assert msg in capsys.readouterr().err


def test_cli_cuda_without_cuda_support_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "fastconv.bench.cuda", None)  # makes the import fail
    assert cli.main(["--device", "cuda", "--layers", "lenet5_c3", "--no-progress"]) == 2
    assert "--device cuda needs" in capsys.readouterr().err


def test_markdown_table(result):
    md = report.format_markdown(result).splitlines()
    assert md[0].startswith("| layer | GFLOP |") and md[1].startswith("|---|---:|")
    assert sum(line.startswith("| `tiny") for line in md) == 2
    assert all(line.count("|") == md[0].count("|") for line in md[:4])


def test_cpu_clock_single_threaded():
    res = run_suite(TINY[:1], repeat=1, peers=(), threads=1, cpu_time=True, min_round_s=0.0005,
                    algorithms=["direct"])
    assert res.options["clock"] == "process_time" and res.options["threads"] == 1
    assert all(m.median > 0 for m in res.layers[0].measurements.values())
    with pytest.raises(ValueError, match="threads=1"):
        run_suite(TINY[:1], repeat=1, peers=(), cpu_time=True)


def test_fma_peak_is_recorded_and_bounds_a_kernel(result):
    """The measured peak is positive, reported, and no kernel beats it by more than noise."""
    peak = result.machine["fastconv"]["fma_peak_gflops"]
    assert np.isfinite(peak) and peak > 0
    text = report.format_table(result)
    assert f"FMA peak with these threads: {peak:.0f} GFLOP/s" in text
    assert "direct reached" in text

