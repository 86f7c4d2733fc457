"""The reference itself: a hand-computed case and independent formulations."""

import numpy as np
import pytest

from fastconv import reference


def test_hand_computed():
    # 2 input maps, one 3-D kernel: y = sum over maps of 2-D correlations, plus bias.
    x = np.array([[[[1, 2, 3], [4, 5, 6], [7, 8, 9]],
                   [[1, 0, 0], [0, 1, 0], [0, 0, 1]]]], dtype=np.float64)
    w = np.array([[[[1, 0], [0, -1]],
                   [[2, 1], [1, 2]]]], dtype=np.float64)
    y = reference.conv2d(x, w, np.array([10.0]))
    # map 0: [[1-5, 2-6], [4-8, 5-9]] = [[-4, -4], [-4, -4]]
    # map 1: [[1*2+0+0+1*2, 0+0+1+0], [0+1+0+0, 2+0+0+2]] = [[4, 1], [1, 4]]
    np.testing.assert_array_equal(y, [[[[10, 7], [7, 10]]]])


def test_stride_padding_dilation_by_hand():
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    w = np.ones((1, 1, 2, 2))
    y = reference.conv2d(x, w, stride=2, padding=((1, 0), (0, 0)), dilation=(1, 2))
    # padded rows: [0-row, 0..4, 5..9, ...]; taps at (h, q*2 + {0, 2})
    xp = np.vstack([np.zeros(5), x[0, 0]])
    expect = [[xp[h, q] + xp[h, q + 2] + xp[h + 1, q] + xp[h + 1, q + 2] for q in (0, 2)]
              for h in (0, 2, 4)]
    np.testing.assert_array_equal(y[0, 0], expect)


def _einsum_conv(x, w, b, stride, pads, dilation, groups):
    """An independent formulation: sliding windows and einsum (no scipy)."""
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), pads[0], pads[1]))
    dh, dw = dilation
    reach = ((R - 1) * dh + 1, (S - 1) * dw + 1)
    win = np.lib.stride_tricks.sliding_window_view(xp, reach, axis=(2, 3))[..., ::dh, ::dw]
    win = win[:, :, ::stride[0], ::stride[1]]
    Kg = K // groups
    out = []
    for g in range(groups):
        out.append(np.einsum("ncpqrs,kcrs->nkpq", win[:, g * Cg:(g + 1) * Cg], w[g * Kg:(g + 1) * Kg]))
    return np.concatenate(out, axis=1) + b[None, :, None, None]


@pytest.mark.parametrize("stride,pads,dilation,groups", [
    ((1, 1), ((0, 0), (0, 0)), (1, 1), 1),
    ((2, 1), ((1, 2), (0, 1)), (1, 1), 1),
    ((1, 3), ((2, 2), (1, 1)), (2, 1), 2),
    ((2, 2), ((0, 1), (1, 0)), (1, 2), 4),
])
def test_against_einsum(rng, stride, pads, dilation, groups):
    x = rng.standard_normal((2, 4, 9, 11))
    w = rng.standard_normal((8, 4 // groups, 3, 2))
    b = rng.standard_normal(8)
    y = reference.conv2d(x, w, b, stride=stride, padding=pads, dilation=dilation, groups=groups)
    np.testing.assert_allclose(y, _einsum_conv(x, w, b, stride, pads, dilation, groups),
                               rtol=1e-12, atol=1e-12)


def test_against_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = rng.standard_normal((2, 6, 10, 9))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    y = reference.conv2d(x, w, b, stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    t = F.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), stride=(2, 1),
                 padding=(1, 2), dilation=(1, 2), groups=2).numpy()
    np.testing.assert_allclose(y, t, rtol=1e-12, atol=1e-12)


def test_layouts_unbatched_and_dtype(rng):
    x = rng.standard_normal((3, 7, 8)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 3)).astype(np.float32)
    y = reference.conv2d(x, w, padding="same")
    assert y.shape == (2, 7, 8) and y.dtype == np.float32
    y_nhwc = reference.conv2d(x.transpose(1, 2, 0), w, padding="same", layout="NHWC")
    np.testing.assert_array_equal(y_nhwc, y.transpose(1, 2, 0))


def test_connections_skip_pairs(rng):
    x = rng.standard_normal((1, 3, 6, 6))
    w = rng.standard_normal((2, 3, 3, 3))
    w[0, 1] = np.nan  # unconnected: must be ignored, not multiplied by zero
    t = np.array([[True, False, True], [True, True, True]])
    y = reference.conv2d(x, w, connections=t)
    w2 = w.copy()
    w2[0, 1] = 0
    np.testing.assert_allclose(y, reference.conv2d(x, w2), rtol=1e-13)


def test_dilation_holes_do_not_touch_inf():
    # an inf that falls only between dilated taps must not reach the output
    x = np.zeros((1, 1, 5, 5))
    x[0, 0, 1, 1] = np.inf
    w = np.ones((1, 1, 2, 2))
    y = reference.conv2d(x, w, dilation=2)
    # output (p, q) reads rows p, p+2 and columns q, q+2: (1, 1) is read by p=1, q=1 only
    expect = np.zeros((3, 3))
    expect[1, 1] = np.inf
    np.testing.assert_array_equal(y[0, 0], expect)
