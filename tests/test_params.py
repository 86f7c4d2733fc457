"""ConvParams: shape arithmetic and every argument error, with the argument named."""

import numpy as np
import pytest

import fastconv
from fastconv._params import normalize

F32 = np.float32


def P(x_shape, w_shape, **kw):
    return normalize(x_shape, w_shape, None, np.dtype(F32), **kw)


def test_lenet_shapes():
    assert P((1, 1, 32, 32), (6, 1, 5, 5)).output_shape == (1, 6, 28, 28)
    assert P((1, 6, 14, 14), (16, 6, 5, 5)).output_shape == (1, 16, 10, 10)


def test_output_formula():
    p = P((2, 4, 17, 19), (8, 2, 3, 4), stride=(2, 3), padding=((1, 2), (0, 3)), dilation=(2, 1),
          groups=2)
    assert p.P == (17 + 1 + 2 - 2 * 2 - 1) // 2 + 1
    assert p.Q == (19 + 0 + 3 - 1 * 3 - 1) // 3 + 1
    assert (p.Cg, p.Kg) == (2, 4)


@pytest.mark.parametrize("H,R,stride,dil", [(7, 3, 2, 1), (8, 3, 2, 1), (10, 5, 3, 2), (5, 1, 4, 1),
                                            (9, 3, 1, 3)])
def test_same_padding_is_tf_rule(H, R, stride, dil):
    p = P((1, 1, H, H), (1, 1, R, R), stride=stride, dilation=dil, padding="same")
    assert p.P == -(-H // stride)
    total = max((p.P - 1) * stride + (R - 1) * dil + 1 - H, 0)
    assert p.padding[:2] == (total // 2, total - total // 2)


def test_full_and_valid():
    assert P((1, 1, 6, 6), (1, 1, 3, 2), padding="full", dilation=2).padding == (4, 4, 2, 2)
    assert P((1, 1, 6, 6), (1, 1, 3, 3), padding="VALID").padding == (0, 0, 0, 0)


def test_unbatched_and_nhwc():
    p = P((5, 6, 3), (4, 3, 3, 3), layout="NHWC")
    assert (p.N, p.C, p.H, p.W, p.batched) == (1, 3, 5, 6, False)
    assert p.output_shape == (3, 4, 4)


def call(**kw):
    x = kw.pop("x", np.zeros((1, 4, 8, 8), F32))
    w = kw.pop("w", np.zeros((6, 4, 3, 3), F32))
    return fastconv.conv2d(x, w, **kw)


BAD = [
    (dict(x=np.zeros((4, 8, 8, 1, 1), F32)), ValueError, "x must be 4-D"),
    (dict(x=np.zeros((8, 8), F32)), ValueError, "x must be 4-D"),
    (dict(w=np.zeros((6, 4, 3), F32)), ValueError, "w must be 4-D"),
    (dict(w=np.zeros((6, 3, 3, 3), F32)), ValueError, "channel mismatch"),
    (dict(groups=3), ValueError, "groups=3 must divide the input channels"),
    (dict(w=np.zeros((5, 2, 3, 3), F32), groups=2), ValueError, "groups=2 must divide the output"),
    (dict(groups=0), ValueError, "groups must be >= 1"),
    (dict(groups=1.5), TypeError, "groups must be an int"),
    (dict(stride=0), ValueError, "stride must be >= 1"),
    (dict(stride=(1, -1)), ValueError, "stride must be >= 1"),
    (dict(stride="2"), TypeError, "stride must be an int"),
    (dict(stride=(1, 2, 3)), TypeError, "stride must be an int or a pair"),
    (dict(dilation=0), ValueError, "dilation must be >= 1"),
    (dict(dilation=1.0), TypeError, "dilation must be an int"),
    (dict(padding=-1), ValueError, "padding must be non-negative"),
    (dict(padding=((0, -1), (0, 0))), ValueError, "padding must be non-negative"),
    (dict(padding="circular"), ValueError, "padding must be"),
    (dict(padding=1.5), TypeError, "padding must be"),
    (dict(padding=(1, 2, 3)), TypeError, "padding must be"),
    (dict(layout="NCWH"), ValueError, "layout must be one of 'NCHW', 'NHWC'"),
    (dict(layout=None), ValueError, "layout must be one of"),
    (dict(algorithm="no_such_algorithm"), ValueError, "algorithm must be one of 'auto', 'direct'"),
    (dict(algorithm=3), TypeError, "algorithm must be a string"),
    (dict(bias=np.zeros(5, F32)), ValueError, "bias must have shape (K,) = (6,)"),
    (dict(bias=np.zeros((6, 1), F32)), ValueError, "bias must have shape"),
    (dict(w=np.zeros((6, 4, 9, 9), F32)), ValueError, "kernel larger than the padded input"),
    (dict(w=np.zeros((6, 4, 3, 3), F32), dilation=4), ValueError, "kernel larger than the padded"),
    (dict(x=np.zeros((1, 0, 8, 8), F32), w=np.zeros((6, 0, 3, 3), F32)), ValueError,
     "x must have non-empty channel"),
    (dict(x=np.zeros((1, 4, 0, 8), F32)), ValueError, "x must have non-empty"),
    (dict(w=np.zeros((0, 4, 3, 3), F32)), ValueError, "w must have non-empty"),
    (dict(w=np.zeros((6, 4, 0, 3), F32)), ValueError, "w must have non-empty"),
    (dict(x=np.zeros((1, 4, 8, 8), np.int64)), TypeError, "x must have dtype float32 or float64"),
    (dict(x=np.zeros((1, 4, 8, 8), bool)), TypeError, "x must have dtype float32 or float64"),
    (dict(x=np.zeros((1, 4, 8, 8), np.complex64)), TypeError, "x must have dtype"),
    (dict(x=np.zeros((1, 4, 8, 8), np.longdouble)), TypeError, "x must have dtype"),
    (dict(x=np.zeros((1, 4, 8, 8), object)), TypeError, "x must have dtype"),
    (dict(w=np.zeros((6, 4, 3, 3), np.int32)), TypeError, "w must have dtype"),
    (dict(bias=np.zeros(6, np.int32)), TypeError, "bias must have dtype"),
    (dict(x=[[[1, 2], [3]]]), TypeError, "x must be"),
    (dict(out=np.zeros((1, 6, 6, 6), np.float64)), ValueError, "out must have dtype float32"),
    (dict(out=np.zeros((1, 6, 6, 5), F32)), ValueError, "out must have shape (1, 6, 6, 6)"),
    (dict(out=[0.0]), TypeError, "out must be a numpy.ndarray"),
    # a zero-stride view: 2**42 elements that were never allocated
    (dict(x=np.broadcast_to(np.zeros((1, 1, 1, 1), F32), (2**16, 4, 2**12, 2**12))),
     ValueError, "sizes too large"),
]


@pytest.mark.parametrize("kw,exc,msg", BAD, ids=[b[2][:30] + f"-{i}" for i, b in enumerate(BAD)])
def test_bad_input(kw, exc, msg):
    with pytest.raises(exc) as info:
        call(**kw)
    assert msg in str(info.value)


def test_readonly_out():
    out = np.zeros((1, 6, 6, 6), F32)
    out.flags.writeable = False
    with pytest.raises(ValueError, match="out must be writeable"):
        call(out=out)


def test_unsupported_algorithm_error_is_value_error():
    with pytest.raises(fastconv.UnsupportedError, match="3x3 kernel with stride 1") as info:
        call(w=np.zeros((6, 4, 5, 5), F32), algorithm="winograd")
    assert isinstance(info.value, ValueError)
    with pytest.raises(fastconv.UnsupportedError, match="stride 1"):
        call(stride=2, algorithm="winograd_f4x4_3x3")
    with pytest.raises(fastconv.UnsupportedError, match="stride 1"):
        call(stride=2, dilation=2, padding=2, algorithm="winograd_f2x2_3x3")


def test_connections_errors():
    with pytest.raises(TypeError, match="connections must be a bool array"):
        call(connections=np.ones((6, 4), int))
    with pytest.raises(ValueError, match=r"connections must have shape \(K, C\) = \(6, 4\)"):
        call(connections=np.ones((4, 6), bool))
    t = np.ones((6, 4), bool)
    t[2] = False
    with pytest.raises(ValueError, match=r"connections: every output map.*\[2\]"):
        call(connections=t)
    with pytest.raises(ValueError, match="can only read input maps"):
        call(w=np.zeros((6, 2, 3, 3), F32), groups=2, connections=np.ones((6, 4), bool))


def test_normalize_memo():
    """Identical plain arguments give the same ConvParams; look-alike values are still checked."""
    a = P((2, 4, 9, 9), (6, 4, 3, 3), stride=1, padding=(1, 1))
    assert P((2, 4, 9, 9), (6, 4, 3, 3), stride=1, padding=(1, 1)) is a
    a.memo["probe"] = 1
    assert "probe" not in P((2, 4, 9, 9), (6, 4, 3, 3), stride=2, padding=(1, 1)).memo
    import dataclasses
    assert dataclasses.replace(a, N=3).memo == {}  # a new shape starts with no decisions
    # True == 1 and hash(True) == hash(1), but bools are not sizes: never served from the memo.
    for kw in (dict(stride=True), dict(padding=(True, 1)), dict(groups=True), dict(dilation=(1, True))):
        with pytest.raises(TypeError):
            P((2, 4, 9, 9), (6, 4, 3, 3), **kw)
    # NumPy integers are valid (not memoised) and give an equal result.
    assert P((2, 4, 9, 9), (6, 4, 3, 3), stride=np.int64(1), padding=(np.int32(1), 1)) == a
