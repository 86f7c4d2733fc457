"""fastconv._config: the settings tables, their reset, and settings taking effect on known shapes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import fastconv
from fastconv import _config, _dispatch, reference
from fastconv._params import normalize
from fastconv.cpu import direct

from conftest import TOLERANCE, random_problem, rel_err


def test_reset_restores_every_default(cpu_settings):
    defaults = {f.name: f.default for f in dataclasses.fields(cpu_settings)}
    for name, value in defaults.items():
        changed = (not value) if isinstance(value, bool) else (
            value + "x" if isinstance(value, str) else value * 3 + 1)
        setattr(cpu_settings, name, changed)
    assert all(getattr(cpu_settings, n) != v for n, v in defaults.items())
    cpu_settings.reset()
    assert {n: getattr(cpu_settings, n) for n in defaults} == defaults


def test_every_threshold_documented():
    """One line per entry saying what it trades off: each field has a ``#:`` comment."""
    import inspect

    src = inspect.getsource(_config.CpuSettings)
    lines = src.splitlines()
    for f in dataclasses.fields(_config.CpuSettings):
        i = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{f.name}:"))
        assert lines[i - 1].strip().startswith("#:"), f.name


def test_changed_setting_applies_to_a_shape_already_called(rng, cpu_settings):
    """Decisions memoised on a shape are re-derived after a setting changes."""
    x, w, b = random_problem(rng, (1, 64, 14, 14), (64, 64, 3, 3), np.float32)
    p = normalize(x.shape, w.shape, b.shape, np.dtype(np.float32), padding=1)
    fastconv.conv2d(x, w, b, padding=1, algorithm="direct")
    assert direct.choose_path(p) == "blocked"
    cpu_settings.simple_max_macs = 10**12
    assert direct.choose_path(p) == "simple"
    y = fastconv.conv2d(x, w, b, padding=1, algorithm="direct")
    assert rel_err(y, reference.conv2d(x, w, b, padding=1)) < TOLERANCE[("direct", "float32")]
    cpu_settings.reset()
    assert direct.choose_path(p) == "blocked"


def test_auto_follows_thresholds(cpu_settings):
    """The ``auto`` rule reads its thresholds at call time, also for a shape it has decided."""
    p = normalize((1, 64, 56, 56), (64, 64, 3, 3), None, np.dtype(np.float32), padding=1)
    assert _dispatch.concrete("auto", p).startswith("winograd")
    cpu_settings.winograd_min_kg = 10**6  # more output channels than the layer has
    assert not _dispatch.concrete("auto", p).startswith("winograd")
    cpu_settings.reset()
    assert _dispatch.concrete("auto", p).startswith("winograd")


def test_cuda_settings_fit_and_reset():
    s = _config.CudaSettings()
    s.block, s.regtile, s.bk = 16, 6, 8
    s.fit()
    assert s.regtile == 4  # lowered to a divisor of the block edge
    s.bk = 7
    with pytest.raises(ValueError, match="FASTCONV_CUDA_BK"):
        s.fit()
    s.block, s.regtile, s.bk = 64, 8, 8  # divisibility holds; 4096 threads do not
    with pytest.raises(ValueError, match="1024"):
        s.fit()
    s.reset()
    assert (s.block, s.regtile, s.bk) == (_config.CudaSettings.block, _config.CudaSettings.regtile,
                                          _config.CudaSettings.bk)
