"""fastconv.tuning: rule vs measured choice, the persistent cache, concurrency, corrupt files."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import fastconv
from fastconv import _dispatch, tuning
from fastconv._params import normalize

ROOT = Path(__file__).resolve().parents[1]
SHAPE_3x3 = dict(x_shape=(1, 16, 12, 12), w_shape=(16, 16, 3, 3))
SHAPE_5x5 = dict(x_shape=(2, 3, 11, 11), w_shape=(4, 3, 5, 5))


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(tuning.CACHE_ENV, str(tmp_path))
    tuning.clear_cache()
    yield tmp_path
    tuning.clear_cache()


def _params(x_shape, w_shape, dtype=np.float32, **kw):
    return normalize(x_shape, w_shape, None, dtype, **kw)


def _forbid_measuring(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("measured although a cached result exists")
    monkeypatch.setattr(tuning, "measure", boom)


def test_rule_choice_without_measuring(cache_dir):
    for shape, kw in ((SHAPE_3x3, dict(padding=1)), (SHAPE_5x5, {})):
        name, times = tuning.choose(**shape, **kw)
        assert times is None
        assert name == _dispatch.auto_choice(_params(**shape, **kw))
    assert not (cache_dir / tuning.CACHE_FILE).exists()


def test_measure_picks_the_fastest_supported_and_is_correct(cache_dir, rng):
    name, times = tuning.choose(**SHAPE_3x3, padding=1, measure=True)
    p = _params(**SHAPE_3x3, padding=1)
    assert set(times) == {a.name for a in _dispatch.supported("cpu", p)}
    assert name == min(times, key=times.get)
    assert all(t > 0 for t in times.values())
    # the tuned algorithm computes the same convolution as the reference
    x = rng.standard_normal(SHAPE_3x3["x_shape"]).astype(np.float32)
    w = rng.standard_normal(SHAPE_3x3["w_shape"]).astype(np.float32)
    y = fastconv.conv2d(x, w, padding=1, algorithm=name)
    np.testing.assert_allclose(y, fastconv.reference.conv2d(x, w, padding=1), rtol=1e-3, atol=1e-3)


def test_measure_skips_algorithms_that_do_not_support_the_call(cache_dir):
    name, times = tuning.choose(**SHAPE_5x5, stride=2, measure=True)
    assert not any(n.startswith("winograd") for n in times)
    assert name in ("direct", "im2col")


def test_cache_persists_across_processes_and_is_keyed(cache_dir, monkeypatch):
    first = tuning.choose(**SHAPE_3x3, padding=1, measure=True)
    doc = json.loads((cache_dir / tuning.CACHE_FILE).read_text())
    assert doc["format"] == tuning.FORMAT and len(doc["entries"]) == 1
    (key, entry), = doc["entries"].items()
    assert entry["algorithm"] == first[0]
    assert "float32" in key and fastconv.__version__ in key
    tuning.clear_cache()  # as a new process: only the file remains
    _forbid_measuring(monkeypatch)
    assert tuning.choose(**SHAPE_3x3, padding=1, measure=True) == first
    # another dtype or padding is another configuration: it must be measured
    with pytest.raises(AssertionError, match="measured"):
        tuning.choose(**SHAPE_3x3, padding=1, dtype=np.float64, measure=True)
    with pytest.raises(AssertionError, match="measured"):
        tuning.choose(**SHAPE_3x3, padding=0, measure=True)


# Runs in a fresh interpreter: tuning.measure is replaced by a counter that answers `times`.
_FRESH_PROCESS = r"""
import json, sys
import numpy as np
from fastconv import tuning

calls = []
def fake_measure(p, repeat=3):
    calls.append(p.key())
    return json.loads(sys.argv[2])
tuning.measure = fake_measure
x_shape, w_shape = (1, 16, 12, 12), (16, 16, 3, 3)
if sys.argv[1] == "choose":
    name, times = tuning.choose(x_shape, w_shape, padding=1, measure=True)
else:  # algorithm="tuned", resolved without running a kernel
    import fastconv
    name, times = fastconv.plan(np.ones(w_shape, np.float32), x_shape=x_shape, padding=1,
                                algorithm="tuned").algorithm, None
print(json.dumps({"name": name, "times": times, "measured": len(calls)}))
"""


def _fresh_process(cache_dir, how, times):
    env = dict(os.environ, **{tuning.CACHE_ENV: str(cache_dir)})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, how, json.dumps(times)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.subprocess
@pytest.mark.parametrize("how", ["choose", "tuned"])
def test_a_fresh_process_uses_the_stored_winner(cache_dir, how):
    """The first lookup of a process loads the CPU algorithms before validating the entry.

    It used to read the registry before anything had filled it, so every stored
    winner looked stale to ``choose(..., measure=True)`` in a new process: it
    measured again and overwrote the entry.
    """
    stored = {"direct": 1e-3, "im2col": 2e-3}
    first = _fresh_process(cache_dir, "choose", stored)
    assert first == {"name": "direct", "times": stored, "measured": 1}
    again = _fresh_process(cache_dir, how, {"im2col": 1e-4})
    assert again == {"name": "direct", "times": stored if how == "choose" else None,
                     "measured": 0}


def test_refresh_measures_again(cache_dir, monkeypatch):
    tuning.choose(**SHAPE_5x5, measure=True)
    monkeypatch.setattr(tuning, "measure", lambda p, repeat=3: {"direct": 2.0, "im2col": 1.0})
    assert tuning.choose(**SHAPE_5x5, measure=True, refresh=True) == \
        ("im2col", {"direct": 2.0, "im2col": 1.0})
    tuning.clear_cache()
    assert tuning.choose(**SHAPE_5x5, measure=True)[0] == "im2col"


def test_stale_entry_for_an_unsupported_algorithm_is_remeasured(cache_dir, monkeypatch):
    p = _params(**SHAPE_5x5)
    tuning._write(tuning.cache_path(), tuning.cache_key(p),
                  {"algorithm": "winograd_f4x4_3x3", "times": {}})
    name, times = tuning.choose(**SHAPE_5x5, measure=True)
    assert name in ("direct", "im2col") and name in times


def test_corrupt_cache_file_warns_and_is_rewritten(cache_dir):
    path = cache_dir / tuning.CACHE_FILE
    path.write_text('{"format": 1, "entries": {')  # truncated
    with pytest.warns(RuntimeWarning, match="unreadable autotuning cache"):
        name, _ = tuning.choose(**SHAPE_5x5, measure=True)
    doc = json.loads(path.read_text())
    assert [e["algorithm"] for e in doc["entries"].values()] == [name]


def test_unwritable_cache_warns_and_still_answers(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv(tuning.CACHE_ENV, str(blocker))
    tuning.clear_cache()
    with pytest.warns(RuntimeWarning, match="cannot write the autotuning cache"):
        name, times = tuning.choose(**SHAPE_5x5, measure=True)
    assert name == min(times, key=times.get)
    tuning.clear_cache()


def test_concurrent_threads_keep_every_entry(cache_dir, monkeypatch):
    monkeypatch.setattr(tuning, "measure", lambda p, repeat=3: {"direct": 1.0, "im2col": 2.0})
    shapes = [((1, 3, 8 + i, 8), (2, 3, 3, 3)) for i in range(8)]
    threads = [threading.Thread(target=tuning.choose, args=s, kwargs=dict(measure=True))
               for s in shapes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    doc = json.loads((cache_dir / tuning.CACHE_FILE).read_text())
    assert len(doc["entries"]) == len(shapes)


def _write_many(path, i):
    for j in range(20):
        tuning._write(path, f"proc{i}-{j}", {"algorithm": "direct", "times": {"direct": 1.0}})


@pytest.mark.subprocess
def test_concurrent_processes_never_corrupt_the_file(cache_dir):
    path = tuning.cache_path()
    ctx = mp.get_context("spawn")  # fork after JAX/OpenMP threads started could deadlock
    procs = [ctx.Process(target=_write_many, args=(path, i)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    doc = json.loads(path.read_text())  # complete JSON, whatever the interleaving
    assert doc["format"] == tuning.FORMAT and len(doc["entries"]) >= 20
    assert not [f for f in cache_dir.iterdir() if f.name.startswith(".tuning-")]


def test_cache_path_defaults_to_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(tuning.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert tuning.cache_path() == tmp_path / "fastconv" / "tuning.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert tuning.cache_path() == tmp_path / ".cache" / "fastconv" / "tuning.json"


@pytest.mark.parametrize("kw, exc", [(dict(dtype=np.int32), TypeError),
                                     (dict(measure="yes"), TypeError),
                                     (dict(groups=5), ValueError),
                                     (dict(repeat=0, measure=True), ValueError)])
def test_bad_arguments(cache_dir, kw, exc):
    with pytest.raises(exc):
        tuning.choose(**SHAPE_3x3, **kw)


_GRID = [(R, s, d, g, C, K, H) for R in (1, 3, 5, 7)
         for s, d, g in ((1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 4), (1, 1, 16), (2, 1, 16))
         for C, K, H in ((16, 16, 9), (1, 8, 12), (64, 32, 6), (32, 64, 20))
         if not (C % g or K % g or (R - 1) * d + 1 > H + 2)]


@pytest.mark.parametrize("R, stride, dilation, groups, C, K, H", _GRID)
def test_rule_choice_always_supports_the_call(R, stride, dilation, groups, C, K, H):
    for N in (1, 3):
        p = _params((N, C, H, H), (K, C // groups, R, R), stride=stride, dilation=dilation,
                    groups=groups, padding=1)
        name, _ = tuning.choose((N, C, H, H), (K, C // groups, R, R), stride=stride,
                                dilation=dilation, groups=groups, padding=1)
        assert _dispatch.get("cpu", name).supports(p) is None, name


def test_conv2d_tuned_uses_and_fills_the_cache(cache_dir, rng):
    x = rng.standard_normal((1, 8, 10, 10)).astype(np.float32)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    y = fastconv.conv2d(x, w, padding=1, algorithm="tuned")
    np.testing.assert_allclose(y, fastconv.reference.conv2d(x, w, padding=1), rtol=1e-4, atol=1e-4)
    doc = json.loads((cache_dir / tuning.CACHE_FILE).read_text())
    (entry,) = doc["entries"].values()
    assert entry["algorithm"] == tuning.choose((1, 8, 10, 10), (8, 8, 3, 3), padding=1,
                                               measure=True)[0]
