"""The prepared-weight cache: reused only for bitwise-equal weights, bounded, thread-safe."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import fastconv
from fastconv import _weight_cache, reference
from fastconv._weight_cache import CACHE, WeightCache, same_contents

from conftest import TOLERANCE, rel_err

# (algorithm, x shape, w shape): weights of 36 KiB (float32), above MIN_BYTES, so they are cached.
CASES = [
    ("direct", (1, 32, 9, 8), (32, 32, 3, 3)),
    ("winograd_f4x4_3x3", (1, 32, 9, 8), (32, 32, 3, 3)),
    ("winograd_f2x2_3x3", (2, 32, 7, 6), (32, 32, 3, 3)),
]


@pytest.fixture(autouse=True)
def fresh_cache():
    CACHE.clear()
    yield
    CACHE.clear()


@pytest.mark.parametrize("n", [1_000, 12_000, 50_000, 200_000])  # every comparison path
def test_same_contents_is_bitwise(n):
    a = np.linspace(-1, 1, n, dtype=np.float32).reshape(50, n // 50)
    assert same_contents(a, a.copy())
    b = a.copy()
    b[49, -1] = np.nextafter(b[49, -1], np.float32(2))  # one ulp, in the last element
    assert not same_contents(a, b)
    assert not same_contents(a[:, ::-1], a)  # a reversed view: same bytes, other order
    z = np.zeros(n)
    nz = z.copy()
    nz[n // 3] = -0.0  # equal as numbers, different bits: a transform could tell them apart
    assert not same_contents(z, nz)
    nan = np.full(n, np.nan)
    assert same_contents(nan, nan.copy())  # same bits: NaN payloads match
    assert not same_contents(a, a.astype(np.float64))
    assert not same_contents(a, a.reshape(n // 50, 50))
    assert same_contents(np.empty((0, 3)), np.empty((0, 3)))


@pytest.mark.parametrize("alg,xs,ws", CASES)
def test_in_place_update_is_seen(rng, alg, xs, ws):
    """Writing into the weights between calls must change the result (no stale cache)."""
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    assert w.nbytes >= _weight_cache.MIN_BYTES
    tol = TOLERANCE[(alg, "float32")]
    for step in range(4):
        for _ in range(2):  # the second call of unchanged weights keeps an entry
            y = fastconv.conv2d(x, w, padding=1, algorithm=alg)
            assert rel_err(y, reference.conv2d(x, w, padding=1)) < tol, step
        assert len(CACHE) == 1  # same array: one entry, rebuilt
        if step % 2:
            w[step, step] *= -3.0  # a real change ...
        else:
            w[-1, -1, -1, -1] = np.nextafter(w[-1, -1, -1, -1], np.float32(9))  # ... or 1 ulp


def test_hits_only_for_unchanged_weights(rng):
    x = rng.standard_normal((1, 32, 9, 8)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    y0 = fastconv.conv2d(x, w, padding=1, algorithm="winograd_f4x4_3x3")
    assert (CACHE.hits, CACHE.misses, CACHE.transient, len(CACHE)) == (0, 1, 1, 0)  # first sighting
    y1 = fastconv.conv2d(x, w, padding=1, algorithm="winograd_f4x4_3x3")
    assert (CACHE.hits, CACHE.misses, CACHE.transient, len(CACHE)) == (0, 2, 1, 1)  # unchanged: kept
    y2 = fastconv.conv2d(x, w, padding=1, algorithm="winograd_f4x4_3x3")
    assert (CACHE.hits, CACHE.misses) == (1, 2)
    np.testing.assert_array_equal(y0, y1)
    np.testing.assert_array_equal(y0, y2)
    w2 = w.copy()  # equal values, another array: its own entry, after its own second call
    for _ in range(2):
        np.testing.assert_array_equal(fastconv.conv2d(x, w2, padding=1, algorithm="winograd_f4x4_3x3"), y0)
    assert CACHE.misses == 4 and len(CACHE) == 2


@pytest.mark.parametrize("alg", ["direct", "winograd_f4x4_3x3", "winograd_f2x2_3x3"])
def test_changing_weights_are_not_kept(rng, alg):
    """Weights that change before every call (training) are prepared for the call alone:
    no entry, no bytes held, a stale entry dropped, and every result exact."""
    x = rng.standard_normal((1, 32, 9, 8)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    for _ in range(2):
        fastconv.conv2d(x, w, padding=1, algorithm=alg)
    assert len(CACHE) == 1
    for step in range(4):
        w[step, 0, 1, 1] += np.float32(0.5)
        y = fastconv.conv2d(x, w, padding=1, algorithm=alg)
        assert rel_err(y, reference.conv2d(x, w, padding=1)) < TOLERANCE[(alg, "float32")]
        assert len(CACHE) == 0 and CACHE.nbytes == 0
    assert CACHE.transient == 5  # the first call, and each changed one


def test_checksum_is_a_function_of_the_bits(rng):
    for n in (100, 200_000):  # NumPy's hash and the parallel kernel
        a = rng.standard_normal(n).astype(np.float32)
        assert _weight_cache.checksum(a) == _weight_cache.checksum(a.copy())
        b = a.copy()
        b[n // 2] = np.nextafter(b[n // 2], np.float32(9))
        assert _weight_cache.checksum(a) != _weight_cache.checksum(b)
        c = a.copy()
        c[[0, 1]] = c[[1, 0]]  # the same words, swapped: position matters
        assert _weight_cache.checksum(a) != _weight_cache.checksum(c)


def test_results_equal_with_and_without_cache(rng, monkeypatch):
    x = rng.standard_normal((2, 32, 10, 11)).astype(np.float32)
    w = rng.standard_normal((48, 32, 3, 3)).astype(np.float32)
    b = rng.standard_normal(48).astype(np.float32)
    for alg in ("direct", "winograd_f4x4_3x3", "winograd_f2x2_3x3"):
        cached = [fastconv.conv2d(x, w, b, padding=1, algorithm=alg) for _ in range(3)]
        monkeypatch.setattr(CACHE, "max_bytes", 0)
        plain = fastconv.conv2d(x, w, b, padding=1, algorithm=alg)
        monkeypatch.undo()
        for y in cached:  # prepared for the call, then kept, then reused
            np.testing.assert_array_equal(y, plain)


def test_nonfinite_weights_still_fall_back(rng):
    x = rng.standard_normal((1, 32, 9, 8)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    for _ in range(2):
        fastconv.conv2d(x, w, padding=1, algorithm="winograd_f4x4_3x3")  # keep the finite weights
    assert len(CACHE) == 1
    w[3, 4, 1, 1] = np.inf
    y = fastconv.conv2d(x, w, padding=1, algorithm="winograd_f4x4_3x3")
    ref = fastconv.conv2d(x, w, padding=1, algorithm="direct")
    np.testing.assert_array_equal(np.isfinite(y), np.isfinite(ref))
    ok = np.isfinite(ref)
    assert rel_err(y[ok], ref[ok]) < 1e-5


def test_disabled_and_small_weights_are_not_kept(rng, monkeypatch):
    x = rng.standard_normal((1, 4, 9, 8)).astype(np.float32)
    small = rng.standard_normal((4, 4, 3, 3)).astype(np.float32)
    fastconv.conv2d(x, small, padding=1, algorithm="winograd_f4x4_3x3")
    assert len(CACHE) == 0
    monkeypatch.setattr(CACHE, "max_bytes", 0)
    x = rng.standard_normal((1, 32, 9, 8)).astype(np.float32)
    w = rng.standard_normal((32, 32, 3, 3)).astype(np.float32)
    fastconv.conv2d(x, w, padding=1, algorithm="direct")
    assert len(CACHE) == 0 and CACHE.nbytes == 0


def test_lru_bound_in_bytes():
    cache = WeightCache(max_bytes=3 * 40_000 * 8)
    built = []

    def build(snap):
        built.append(1)
        return snap * 2

    arrays = [np.full(40_000, float(i)) for i in range(5)]  # 320 kB each, entry = 640 kB
    for a in arrays:
        for _ in range(2):  # the second sighting keeps an entry
            np.testing.assert_array_equal(cache.get(a, "t", build), a * 2)
            assert cache.nbytes <= cache.max_bytes
    assert len(cache) == 1  # each entry (snapshot + value) takes 2/3 of the bound
    cache.get(arrays[-1], "t", build)
    assert len(built) == 10  # the last one was a hit
    huge = WeightCache(max_bytes=1000)
    for _ in range(2):
        np.testing.assert_array_equal(huge.get(arrays[0], "t", build), arrays[0] * 2)
    assert len(huge) == 0  # larger than the whole bound: built, not kept
    snap_seen = []
    for _ in range(2):
        cache.get(arrays[0], "other", lambda s: snap_seen.append(s) or 0)
    assert snap_seen[0] is arrays[0]  # first sighting: the caller's array, for this call only
    assert snap_seen[1] is not arrays[0] and not snap_seen[1].flags.writeable  # kept: a snapshot


def test_concurrent_calls_with_different_weights(rng):
    # 16x16 maps: F(4x4) reads kept transformed weights (on 8x8, 4 tiles, it would transform
    # them inside its products, the stream schedule, and keep nothing)
    xs = [rng.standard_normal((1, 32, 16, 16)).astype(np.float32) for _ in range(4)]
    ws = [rng.standard_normal((32, 32, 3, 3)).astype(np.float32) for _ in range(4)]
    expected = [reference.conv2d(x, w, padding=1) for x, w in zip(xs, ws)]
    errors = []

    def work(i):
        try:
            for _ in range(5):  # kept from the second call on
                for alg in ("direct", "winograd_f4x4_3x3"):
                    y = fastconv.conv2d(xs[i], ws[i], padding=1, algorithm=alg)
                    assert rel_err(y, expected[i]) < 1e-4
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(CACHE) == 8
