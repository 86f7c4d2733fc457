"""fastconv.cpu.fft: stride phases, dilation, groups, tilings, chunks, the weight cache, the bound."""

from __future__ import annotations

import numpy as np
import pytest

import fastconv
from fastconv import accuracy, reference
from fastconv._params import normalize
from fastconv.cpu import fft

from conftest import TOLERANCE, random_problem, rel_err

CASES = [
    # (x shape, w shape, kwargs)
    ((2, 4, 20, 23), (6, 4, 5, 5), {"padding": 2}),
    ((1, 3, 17, 19), (5, 3, 7, 7), {"stride": 2, "padding": 3}),              # stem-like
    ((2, 6, 16, 16), (6, 2, 3, 3), {"groups": 3, "dilation": 2, "padding": (1, 2)}),
    ((1, 8, 30, 30), (8, 1, 11, 11), {"groups": 8, "padding": 5}),            # depthwise
    ((1, 4, 30, 29), (12, 1, 11, 11), {"groups": 4, "padding": 5, "stride": (2, 3)}),
    ((3, 5, 9, 40), (7, 5, 3, 9), {"padding": (0, 4), "dilation": (2, 1)}),
    ((1, 3, 45, 45), (4, 3, 11, 11), {"stride": 4, "padding": 2}),            # AlexNet conv1-like
    ((2, 6, 8, 7), (4, 6, 1, 1), {"stride": 2}),                              # 1x1
    ((1, 2, 5, 5), (2, 2, 5, 5), {"padding": ((7, 0), (0, 6)), "stride": 3}),  # taps all outside
    ((1, 2, 70, 9), (3, 2, 31, 3), {"padding": (15, 1)}),                     # tall kernel, many tiles
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("xs,ws,kw", CASES)
def test_matches_reference_within_bound(rng, dtype, xs, ws, kw):
    x, w, b = random_problem(rng, xs, ws, dtype)
    for bias in (b, None):
        y = fastconv.conv2d(x, w, bias, algorithm="fft", **kw)
        ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64),
                               None if bias is None else bias.astype(np.float64), **kw)
        assert y.shape == ref.shape and y.dtype == dtype
        assert rel_err(y, ref) < TOLERANCE[("fft", np.dtype(dtype).name)]
        assert np.all(np.abs(y - ref) <= accuracy.error_bound("fft", x, w, bias, **kw))


def test_plan_tiles_cover_the_output():
    for xs, ws, kw in CASES:
        p = normalize(xs, ws, None, np.dtype(np.float32), **kw)
        pl = fft.plan(p)
        Rs, Ss, Cs = fft.phase_kernel_size(p)
        assert (pl.Rs, pl.Ss, pl.Cs) == (Rs, Ss, Cs)
        assert pl.Th == pl.Fh - Rs + 1 >= 1 and pl.Tw == pl.Fw - Ss + 1 >= 1
        assert pl.nth * pl.Th >= p.P > (pl.nth - 1) * pl.Th
        assert pl.ntw * pl.Tw >= p.Q > (pl.ntw - 1) * pl.Tw
        assert pl.Fh in fft.lengths(Rs, p.P) and pl.Fw in fft.lengths(Ss, p.Q)


def test_lengths_are_fast_and_end_with_the_whole_map():
    got = fft.lengths(11, 56)
    assert got == sorted(got) and got[-1] == 72  # next fast length of 56 + 10
    assert got[0] == 12  # one output per tile: 11 + 0, rounded up to a fast length
    assert fft.lengths(1, 1) == [1]


@pytest.mark.parametrize("limit", [1, 12_000, 60_000])
def test_workspace_chunks(rng, cpu_settings, monkeypatch, limit):
    """Small workspaces split the tiles into chunks of images, then of tile rows of one image."""
    xs, ws, kw = (3, 4, 40, 33), (5, 4, 9, 9), {"padding": 4}
    x, w, b = random_problem(rng, xs, ws, np.float32)
    cpu_settings.workspace_bytes = limit
    if limit == 1:  # 8 outputs per tile side: several tile rows, one per chunk
        monkeypatch.setattr(fft, "lengths", lambda taps, out: [taps + 7])
    p = normalize(xs, ws, (5,), np.dtype(np.float32), **kw)
    pl = fft.plan(p)
    per_tile = fft.chunk_bytes(p, pl.Rs, pl.Ss, pl.Cs, pl.Fh, pl.Fw)
    if pl.images:
        assert pl.images * pl.nth * pl.ntw * per_tile <= limit
    else:
        assert pl.rows == 1 or pl.rows * pl.ntw * per_tile <= limit
    if limit == 1:
        assert pl.images == 0 and pl.rows == 1 and pl.nth == 5
    y = fastconv.conv2d(x, w, b, algorithm="fft", **kw)
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kw)
    assert np.all(np.abs(y - ref) <= accuracy.error_bound("fft", x, w, b, **kw))


def test_weight_spectra_cached_and_renewed(rng):
    x, w, b = random_problem(rng, (1, 8, 24, 24), (8, 8, 9, 9), np.float32)
    kw = {"padding": 4}
    first = [fastconv.conv2d(x, w, b, algorithm="fft", **kw) for _ in range(3)]  # built, kept, hit
    for y in first[1:]:
        np.testing.assert_array_equal(y, first[0])
    w[2, 3, 4, 5] += 1.0  # in place: the kept spectra must not be used
    y = fastconv.conv2d(x, w, b, algorithm="fft", **kw)
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64), **kw)
    assert np.all(np.abs(y - ref) <= accuracy.error_bound("fft", x, w, b, **kw))
    assert np.abs(y - first[0])[:, 2].max() > 1e-3


def test_overflow_falls_back_to_direct():
    # finite values whose spectra overflow float32: the result must be the direct sum
    x = np.full((1, 1, 12, 12), 3e37, np.float32)
    x[0, 0, ::2] = -3e37
    w = np.full((1, 1, 5, 5), 0.01, np.float32)
    y = fastconv.conv2d(x, w, algorithm="fft")
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64))
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, ref, rtol=1e-5)


def test_bound_is_not_vacuous(rng):
    """The bound is normwise: far above the typical error, yet small next to the outputs."""
    x, w, _ = random_problem(rng, (1, 16, 32, 32), (16, 16, 11, 11), np.float32)
    y = fastconv.conv2d(x, w, padding=5, algorithm="fft")
    bound = accuracy.error_bound("fft", x, w, padding=5)
    assert bound.max() < 1e-2 * np.abs(y).max()


def test_auto_hands_one_call_weights_to_direct(rng, cpu_settings, monkeypatch):
    """Where auto chose fft, weights whose spectra would serve one call run direct instead
    (unless fft pays even with their transforms); kept weights and explicit fft run fft."""
    import fastconv.cpu as cpu
    from fastconv.cpu import direct

    cpu_settings.auto_method = "rule"
    monkeypatch.setattr(cpu, "fft_pays", lambda p, fresh=False: not fresh)
    calls = []
    real_direct = direct.run
    monkeypatch.setattr(direct, "run", lambda *a, **k: (calls.append(1), real_direct(*a, **k)))
    x, w, b = random_problem(rng, (1, 6, 23, 21), (7, 6, 9, 9), np.float32)
    kw = {"padding": 4}
    p = normalize(x.shape, w.shape, b.shape, np.dtype(np.float32), **kw)
    assert fastconv._dispatch.concrete("auto", p, "cpu") == "fft"
    want_direct = fastconv.conv2d(x, w, b, algorithm="direct", **kw)
    want_fft = fastconv.conv2d(x, w, b, algorithm="fft", **kw)
    assert not np.array_equal(want_direct, want_fft)  # the two are told apart by rounding
    for step in range(3):  # new weights on every call, as in training
        w[0, 0, 0, 0] += 1.0
        calls.clear()
        y = fastconv.conv2d(x, w, b, **kw)
        assert calls and np.array_equal(y, fastconv.conv2d(x, w, b, algorithm="direct", **kw))
        calls.clear()
        fastconv.conv2d(x, w, b, algorithm="fft", **kw)  # explicit: fft, whatever the weights
        assert not calls
    for _ in range(2):  # the same weights again: kept spectra, fft
        y = fastconv.conv2d(x, w, b, **kw)
    calls.clear()
    y = fastconv.conv2d(x, w, b, **kw)
    assert not calls
    np.testing.assert_array_equal(y, fastconv.conv2d(x, w, b, algorithm="fft", **kw))


def test_fresh_weights_rule_weighs_the_kernel_transforms(cpu_settings, monkeypatch):
    """The gradients' derived kernels are new on every call: fft only where it pays with them."""
    import fastconv.cpu as cpu

    cpu_settings.auto_method = "rule"
    p = normalize((1, 6, 31, 29), (7, 6, 9, 9), None, np.dtype(np.float32))
    monkeypatch.setattr(cpu, "fft_pays", lambda p, fresh=False: not fresh)
    assert fastconv._dispatch.concrete("auto", p, "cpu") == "fft"
    assert cpu.fresh_weights_rule(p) == "direct"
    cpu_settings.fft_over_direct = 1.16  # a new generation of settings: decisions again
    monkeypatch.setattr(cpu, "fft_pays", lambda p, fresh=False: True)
    assert cpu.fresh_weights_rule(p) == "fft"
