"""Tests of the packed layouts of src/fastconv/cpu/packing.py.

Blocked weights and input (NCHW -> channel blocks), the horizontal stride phases, and the
blocked output's unpacking to NCHW.
"""

from __future__ import annotations

import numpy as np
import pytest

from fastconv.cpu import packing
from fastconv.cpu.packing import pack_input_blocked, pack_input_phases, pack_weights_blocked
from fastconv.cpu.simd import lanes

pytestmark = pytest.mark.jit


def test_blocked_weight_layout():
    """Packed weights follow [G, KB/NKB, CB, R, S, Vc, NKB, V], zero past Kg and Cg."""
    G, Kg, Cg, R, S, Vc, NKB = 2, 20, 5, 2, 3, 3, 2
    V = lanes(np.float32)
    w = np.arange(G * Kg * Cg * R * S, dtype=np.float32).reshape(G * Kg, Cg, R, S) + 1
    wb, KBp = pack_weights_blocked(w, G, Vc, NKB, V)
    CB = -(-Cg // Vc)
    assert KBp == -(-(-(-Kg // V)) // NKB) * NKB  # blocks of V channels, padded to NKB
    wb = wb.reshape(G, KBp // NKB, CB, R, S, Vc, NKB, V)
    for g, kg, cb, r, s, v, i, lane in np.ndindex(wb.shape):
        k, c = (kg * NKB + i) * V + lane, cb * Vc + v
        expect = w[g * Kg + k, c, r, s] if (k < Kg and c < Cg) else 0
        assert wb[g, kg, cb, r, s, v, i, lane] == expect


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("N,G,Kg,P,Q", [(2, 1, 16, 10, 10), (1, 2, 40, 9, 7), (3, 1, 8, 4, 3),
                                         (1, 1, 48, 13, 11)])
@pytest.mark.parametrize("pixel_major", [True, False])
def test_unpack_blocked_output(N, G, Kg, P, Q, dtype, pixel_major, rng):
    """[N, G, KBp, P*Q, V] -> NCHW: register-transposed V x V blocks and the ragged edges,
    whichever way the tasks are shared out."""
    V = lanes(dtype)
    KB = -(-Kg // V)
    KBp = KB + 1  # a padding block the unpack must skip
    yb = rng.standard_normal((N, G, KBp, P * Q, V)).astype(dtype)
    y = np.full((N, G * Kg, P, Q), np.nan, dtype)
    packing.unpack_blocked_output(yb.reshape(-1), y.reshape(-1), N, G * Kg, P, Q, G, KBp, V,
                                  pixel_major)
    expect = yb.transpose(0, 1, 2, 4, 3).reshape(N, G, KBp * V, P, Q)[:, :, :Kg]
    np.testing.assert_array_equal(y, expect.reshape(N, G * Kg, P, Q))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("contiguous", [True, False])
def test_input_blocked_layout(rng, dtype, contiguous):
    """NCHW -> [N, G, CB, Hp, Wp, Vc], zero padded: whole vectors of channels go through
    register transposes, the ragged end of a row and of the channels element by element."""
    N, C, H, W, G = 2, 2 * 37, 5, 40, 2
    Vc = lanes(dtype)
    x = rng.standard_normal((N, C, H, W + 3)).astype(dtype)
    x = np.ascontiguousarray(x[..., :W]) if contiguous else x[..., :W]
    pt, pb, pl, pr = 1, 2, 3, 0
    xb, CB, Hp, Wp = pack_input_blocked(x, G, Vc, (pt, pb, pl, pr))
    # the other order of the tasks (channel blocks outer) writes the same array
    xb2 = pack_input_blocked(x, G, Vc, (pt, pb, pl, pr), rows_outer=False)[0]
    np.testing.assert_array_equal(xb2, xb)
    Cg = C // G
    assert (CB, Hp, Wp) == (-(-Cg // Vc), H + pt + pb, W + pl + pr)
    xp = np.zeros((N, G, CB * Vc, Hp, Wp), dtype)
    xp[:, :, :Cg, pt:pt + H, pl:pl + W] = x.reshape(N, G, Cg, H, W)
    expect = xp.reshape(N, G, CB, Vc, Hp, Wp).transpose(0, 1, 2, 4, 5, 3)
    np.testing.assert_array_equal(xb.reshape(expect.shape), expect)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("Vc", [2, 3, 4, 5])
@pytest.mark.parametrize("W", [7, 16, 17, 40])
def test_input_blocked_few_channels(rng, dtype, Vc, W):
    """2-4 channels per block go through register interleaves (rows of whole vectors, the
    last one overlapping), other counts and rows shorter than a vector element by element:
    the same layout either way."""
    N, H, G = 2, 3, 2
    x = rng.standard_normal((N, G * Vc, H, W)).astype(dtype)
    pt, pb, pl, pr = 1, 0, 2, 1
    xb, CB, Hp, Wp = pack_input_blocked(x, G, Vc, (pt, pb, pl, pr))
    assert (CB, Hp, Wp) == (1, H + pt + pb, W + pl + pr)
    xp = np.zeros((N, G, Vc, Hp, Wp), dtype)
    xp[:, :, :, pt:pt + H, pl:pl + W] = x.reshape(N, G, Vc, H, W)
    np.testing.assert_array_equal(xb.reshape(N, G, Hp, Wp, Vc), xp.transpose(0, 1, 3, 4, 2))


def test_input_phases_layout(rng):
    x = rng.standard_normal((1, 2, 3, 7)).astype(np.float32)
    padding, sw = (1, 0, 2, 1), 3
    xq, Hp, Wq = pack_input_phases(x, padding, sw, min_cols=6)
    xpad = np.pad(x, ((0, 0), (0, 0), (1, 0), (2, 1)))
    xq = xq.reshape(1, 2, Hp, sw, Wq)
    for f in range(sw):
        cols = xpad[..., f::sw]
        np.testing.assert_array_equal(xq[:, :, :, f, :cols.shape[-1]], cols)
        assert not xq[:, :, :, f, cols.shape[-1]:].any()


@pytest.mark.parametrize("shape", [(1, 3, 40, 3, 3), (2, 17, 5, 2, 4), (3, 1, 6, 5, 5), (1, 4, 1, 2, 2)])
@pytest.mark.parametrize("flip", [False, True])
def test_swap_middle_matches_numpy(shape, flip):
    from fastconv.cpu.packing import swap_middle

    a = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    a0 = a.copy()
    want = a.transpose(0, 2, 1, 3, 4)
    if flip:
        want = want[..., ::-1, ::-1]
    got = swap_middle(a, flip)
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(a, a0)


@pytest.mark.parametrize("g_shape, shape, h0, sh, w0, sw", [
    ((2, 3, 4, 5), (2, 3, 11, 12), 1, 2, 0, 2),
    ((1, 2, 3, 3), (1, 2, 9, 10), 2, 3, 1, 4),
    ((1, 2, 0, 3), (1, 2, 5, 5), 0, 1, 0, 1),     # no rows reach the buffer: all zeros
    ((2, 1, 5, 4), (2, 1, 5, 4), 0, 1, 0, 1),     # stride 1, no padding: a copy
])
def test_zero_insert_matches_numpy(g_shape, shape, h0, sh, w0, sw):
    from fastconv.cpu.packing import zero_insert

    g = np.random.default_rng(4).standard_normal(g_shape)
    want = np.zeros(shape)
    P, Q = g_shape[2:]
    want[:, :, h0:h0 + (P - 1) * sh + 1:sh, w0:w0 + (Q - 1) * sw + 1:sw] = g
    zero_insert(np.full(g_shape, np.nan), shape, h0, sh, w0, sw)  # a used scratch buffer ...
    np.testing.assert_array_equal(zero_insert(g, shape, h0, sh, w0, sw), want)  # ... is rewritten
