"""fastconv.bench.training: per-layer gradients and a network step against torch autograd.

Two tiny layers, one round and a tiny network: these tests check what the
training benchmark reports (errors, ratios, JSON, table, command line),
never how fast anything is.
"""

import json
import math
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from fastconv.bench import cli, training  # noqa: E402
from fastconv.bench.layers import Layer  # noqa: E402

TINY = [Layer("tiny_3x3", 2, 4, 10, 10, 6, 3, 3, padding=1),
        Layer("tiny_s2_g2", 2, 4, 11, 11, 8, 3, 3, stride=2, padding=1, groups=2)]
TINY_NET = dict(widths=(4, 8, 8, 8), blocks=(1, 1, 1, 1), size=16, batch=4)
# Float32 gradients of sums of at most 36 products, relative to max |ref|.
LAYER_TOL = 1e-5
# The network's agreement pass runs in float64.
NET_TOL = 1e-10


@pytest.fixture(scope="module")
def result():
    return training.run_training(TINY, repeat=1, threads=None, seed=0, net_config=TINY_NET,
                                 min_round_s=0.002)


def test_gradients_match_the_float64_reference(result):
    for r in result.layers:
        assert list(r.candidates) == [f"{p}/{s}" for p in training.PARTS for s in training.SIDES]
        for c in r.candidates.values():
            want = {"step": {"grad_x", "grad_w", "grad_b"}, "grad_input": {"grad_x"},
                    "grad_weight": {"grad_w"}}[c.name.split("/")[0]]
            assert set(c.errors) == want, c.name
            assert 0 <= c.error < LAYER_TOL, (r.layer.name, c.name, c.errors)


def test_ratios_and_medians_are_positive_and_finite(result):
    for r in result.layers:
        for c in r.candidates.values():
            assert len(c.times) == 1 and c.number >= 1 and c.median > 0
        for part in training.PARTS:
            assert math.isfinite(r.ratio(part)) and r.ratio(part) > 0
    s = result.summary()
    for part in training.PARTS:
        assert s[part]["min"] <= s[part]["geomean"] <= s[part]["max"]
        assert s[part]["min_layer"] in {l.name for l in TINY}


def test_network_step_agrees_with_torch(result):
    n = result.network
    assert n.grad_agreement < NET_TOL and n.grad_agreement_norm <= 2 * n.grad_agreement
    assert n.convs == 12  # stem, 4 blocks x 2 convolutions, 3 stride-2 shortcuts
    assert abs(n.losses["fastconv"] - n.losses["torch"]) < 1e-4
    for side in training.SIDES:
        assert len(n.times[side]) == training.NET_MIN_ROUNDS and n.median(side) > 0
    assert math.isfinite(n.ratio) and n.ratio > 0
    assert result.summary()["network"]["ratio"] == n.ratio


def test_resnet18_has_torchvision_layout():
    model = training.resnet18()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20  # stem, 16 in the blocks, 3 shortcuts
    assert sum(p.numel() for p in model.parameters()) == 11_181_642  # torchvision's, 10 classes
    assert (convs[0].kernel_size, convs[0].stride, convs[0].padding) == ((7, 7), (2, 2), (3, 3))
    out = training.resnet18(widths=(4, 8, 8, 8), blocks=(1, 1, 1, 1), classes=3)(
        torch.zeros(2, 3, 16, 16))
    assert out.shape == (2, 3)


def test_json_round_trips(result, tmp_path):
    path = tmp_path / "training.json"
    training.write_json(result, path)
    with open(path) as f:
        doc = json.load(f)
    assert {"machine_info", "commit_info", "benchmarks", "datetime", "version", "fastconv"} <= set(doc)
    assert doc["machine_info"]["fastconv"]["torch_threads"] == result.options["torch_threads"]
    fc = doc["fastconv"]
    assert fc["kind"] == "training" and fc["options"]["repeat"] == 1
    assert [l["name"] for l in fc["layers"]] == [l.name for l in TINY]
    for entry in fc["layers"]:
        assert set(entry["ratios"]) == set(training.PARTS) and len(entry["medians"]) == 6
        assert all(e < LAYER_TOL for e in entry["errors"].values())
    assert fc["network"]["grad_agreement"] < NET_TOL and "grad_agreement_norm" in fc["network"]
    assert set(fc["summary"]) >= {"step", "grad_input", "grad_weight", "network"}
    assert len(doc["benchmarks"]) == 6 * len(TINY) + 2
    assert all(b["stats"]["median"] > 0 and b["stats"]["iterations"] >= 1
               for b in doc["benchmarks"])


def test_table_markdown_and_plot(result, tmp_path):
    text = training.format_table(result)
    for layer in TINY:
        assert layer.name in text and layer.describe() in text
    assert "step: geometric mean" in text and "network: ResNet" in text
    md = training.format_markdown(result).splitlines()
    assert md[0].startswith("| layer | shape |") and sum(l.startswith("| `tiny") for l in md) == 2
    pytest.importorskip("matplotlib")
    png = tmp_path / "training.png"
    assert training.write_plot(result, png)
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, msg", [
    (["--device", "cuda"], "--device cuda"), (["--dtype", "float64"], "--dtype float64"),
    (["--batch", "2"], "--batch"), (["--no-torch"], "--no-torch"),
    (["--algorithms", "direct"], "--algorithms"), (["--phases"], "--phases"),
    (["--cpu-time", "--threads", "1"], "--cpu-time"),
    (["--repeat", "0"], "--repeat must be >= 1"), (["--threads", "0"], "--threads must be >= 1"),
    (["--layers", "nope"], "unknown layer")])
def test_cli_refuses(argv, msg, capsys):
    assert cli.main(["--training", "--no-progress"] + argv) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1


def test_cli_without_torch(monkeypatch, capsys):
    monkeypatch.setattr("fastconv.bench.peers.torch_available", lambda: False)
    assert cli.main(["--training", "--layers", "lenet5_c3"]) == 2
    assert "pip install 'fastconv[torch]'" in capsys.readouterr().err


def test_cli_writes_the_outputs(result, monkeypatch, tmp_path, capsys):
    calls = []

    def fake_run(layers, **kw):
        calls.append((layers, kw))
        return result

    monkeypatch.setattr(training, "run_training", fake_run)
    js, md = tmp_path / "t.json", tmp_path / "t.md"
    assert cli.main(["--training", "--layers", "lenet5_c3", "--no-network", "--no-progress",
                     "--json", str(js), "--markdown", str(md)]) == 0
    (layers, kw), = calls
    assert [l.name for l in layers] == ["lenet5_c3"]
    assert kw["repeat"] == 5 and kw["network"] is False and kw["progress"] is None
    assert "tiny_3x3" in capsys.readouterr().out
    assert json.loads(js.read_text())["fastconv"]["kind"] == "training"
    assert md.read_text().startswith("| layer |")


@pytest.mark.subprocess
def test_importing_the_module_does_not_import_torch():
    code = "import sys, fastconv.bench.training, fastconv.bench.cli; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_timed_call_meets_new_weights_and_output_gradient():
    """As in training, no timed call sees the w and gy of the call before it (so fastconv's
    weight cache cannot serve prepared kernels training never gets); restore() brings back
    the values the references were computed from."""
    import numpy as np

    w, gy = np.ones((3, 2, 3, 3), np.float32), np.ones((2, 3, 4, 4), np.float32)
    fresh = training._AsInTraining(w, gy)
    seen = []
    run = fresh.wrap(lambda: seen.append((w.copy(), gy.copy())))
    for _ in range(3):
        run()
    for (w1, g1), (w2, g2) in zip(seen, seen[1:]):
        assert not np.array_equal(w1, w2) and not np.array_equal(g1, g2)
    assert all(np.abs(a - 1).max() <= 1e-3 for pair in seen for a in pair)
    fresh.restore()
    assert (w == 1).all() and (gy == 1).all()
