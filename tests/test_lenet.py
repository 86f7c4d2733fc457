"""LeNet-5's C3 table and ``conv2d(connections=...)`` against independent references."""

import numpy as np
import pytest
from scipy import signal

import fastconv
from fastconv import reference
from fastconv.lenet import LENET5_C3_INPUTS, lenet5_c3_parameter_count, lenet5_c3_table

# Table 1 of LeCun et al. (1998), typed from the paper as printed: one row per
# S2 input map (0..5), one column per C3 output map (0..15).
PAPER_TABLE_1 = """
X . . . X X X . . X X X X . X X
X X . . . X X X . . X X X X . X
X X X . . . X X X . . X . X X X
. X X X . . X X X X . . X . X X
. . X X X . . X X X X . X X . X
. . . X X X . . X X X X . X X X
"""

# The same connections as the paper's prose lists them per output map.
PAPER_INPUTS = {
    0: {0, 1, 2}, 1: {1, 2, 3}, 2: {2, 3, 4}, 3: {3, 4, 5}, 4: {4, 5, 0}, 5: {5, 0, 1},
    6: {0, 1, 2, 3}, 7: {1, 2, 3, 4}, 8: {2, 3, 4, 5}, 9: {3, 4, 5, 0}, 10: {4, 5, 0, 1},
    11: {5, 0, 1, 2}, 12: {0, 1, 3, 4}, 13: {1, 2, 4, 5}, 14: {0, 2, 3, 5},
    15: {0, 1, 2, 3, 4, 5},
}

ALGORITHMS = [a for a in fastconv.algorithms("cpu") if a != "winograd"]


def paper_table():
    rows = [line.split() for line in PAPER_TABLE_1.strip().splitlines()]
    return np.array([[v == "X" for v in row] for row in rows]).T  # -> (16 outputs, 6 inputs)


def masked_reference(x, w, bias, table, **kw):
    """Zero the unconnected kernel slices and run the float64 reference without a table."""
    return reference.conv2d(x, w * table[:, :, None, None], bias, **kw)


def correlate_loop(x, w, bias, table):
    """Unbatched, stride 1, no padding: sum scipy.signal.correlate over the connected maps only."""
    K, C = table.shape
    out = []
    for k in range(K):
        acc = float(bias[k])
        for c in range(C):
            if table[k, c]:
                acc = acc + signal.correlate(x[c].astype(np.float64), w[k, c].astype(np.float64),
                                             mode="valid", method="direct")
        out.append(acc)
    return np.stack(out)


def test_table_is_the_paper_table_1():
    table = lenet5_c3_table()
    assert table.dtype == np.bool_ and table.shape == (16, 6)
    np.testing.assert_array_equal(table, paper_table())
    for k, inputs in PAPER_INPUTS.items():
        assert set(np.flatnonzero(table[k]).tolist()) == inputs, k
        assert set(LENET5_C3_INPUTS[k]) == inputs


def test_table_counts():
    table = lenet5_c3_table()
    assert int(table.sum()) == 60
    np.testing.assert_array_equal(table.sum(axis=1), [3] * 6 + [4] * 9 + [6])
    # every S2 map feeds exactly 10 C3 maps (each column of the paper's table has 10 X)
    np.testing.assert_array_equal(table.sum(axis=0), [10] * 6)


def test_table_is_a_fresh_array():
    a = lenet5_c3_table()
    a[:] = False
    assert lenet5_c3_table().sum() == 60


def test_parameter_count_is_computed_from_the_table():
    assert lenet5_c3_parameter_count() == 60 * 25 + 16 == 1516
    assert lenet5_c3_parameter_count(np.ones((16, 6), bool)) == 16 * 6 * 25 + 16
    assert lenet5_c3_parameter_count(lenet5_c3_table(), bias=False) == 1500
    t = np.zeros((3, 2), bool)
    t[:, 0] = True
    assert lenet5_c3_parameter_count(t, kernel_size=(3, 2)) == 3 * 6 + 3
    with pytest.raises(TypeError, match="table"):
        lenet5_c3_parameter_count(np.ones((16, 6), int))
    with pytest.raises(ValueError, match="kernel_size"):
        lenet5_c3_parameter_count(kernel_size=(0, 5))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_c3_layer_shape_and_values(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 14, 14)).astype(dtype)       # S2: 6 maps of 14 x 14
    w = rng.standard_normal((16, 6, 5, 5)).astype(dtype)
    b = rng.standard_normal(16).astype(dtype)
    table = lenet5_c3_table()
    y = fastconv.conv2d(x, w, b, connections=table)
    assert y.shape == (2, 16, 10, 10) and y.dtype == dtype       # 14 - 5 + 1 = 10
    tol = dict(rtol=1e-5, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, masked_reference(x, w, b, table), **tol)
    np.testing.assert_allclose(y, reference.conv2d(x, w, b, connections=table), **tol)
    for n in range(2):
        np.testing.assert_allclose(y[n], correlate_loop(x[n], w, b, table), **tol)
    # the table matters: a full C3 gives a different answer
    assert not np.allclose(y, fastconv.conv2d(x, w, b), **tol)


def test_c3_output_map_0_reads_maps_0_1_2_only():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 14, 14))
    w = rng.standard_normal((16, 6, 5, 5))
    y = fastconv.conv2d(x, w, connections=lenet5_c3_table())
    expected = sum(signal.correlate(x[c], w[0, c], mode="valid") for c in (0, 1, 2))
    np.testing.assert_allclose(y[0], expected, rtol=1e-12, atol=1e-12)
    # changing an input map that output 0 does not read leaves output 0 unchanged
    x2 = x.copy()
    x2[3:] = rng.standard_normal((3, 14, 14))
    y2 = fastconv.conv2d(x2, w, connections=lenet5_c3_table())
    np.testing.assert_array_equal(y2[0], y[0])
    assert not np.allclose(y2[15], y[15])


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_honours_the_table(algorithm):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 6, 14, 14))
    w = rng.standard_normal((16, 6, 3, 3))
    table = lenet5_c3_table()
    try:
        y = fastconv.conv2d(x, w, connections=table, algorithm=algorithm, padding=1)
    except fastconv.UnsupportedError:
        pytest.skip(f"{algorithm} does not run this configuration")
    np.testing.assert_allclose(y, masked_reference(x, w, None, table, padding=1),
                               rtol=1e-10, atol=1e-10)


def random_table(rng, K, C, density):
    t = rng.random((K, C)) < density
    t[np.arange(K), rng.integers(0, C, K)] = True              # every output reads something
    return t


@pytest.mark.parametrize("seed", range(6))
def test_random_tables_match_masked_weights(seed):
    rng = np.random.default_rng(100 + seed)
    K, C = int(rng.integers(1, 9)), int(rng.integers(1, 7))
    R, S = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    kw = dict(stride=int(rng.integers(1, 3)), padding=int(rng.integers(0, 2)),
              dilation=int(rng.integers(1, 3)))
    table = random_table(rng, K, C, rng.uniform(0.2, 0.9))
    x = rng.standard_normal((2, C, 9, 8))
    w = rng.standard_normal((K, C, R, S))
    b = rng.standard_normal(K)
    y = fastconv.conv2d(x, w, b, connections=table, **kw)
    np.testing.assert_allclose(y, masked_reference(x, w, b, table, **kw), rtol=1e-11, atol=1e-11)
    y_nhwc = fastconv.conv2d(x.transpose(0, 2, 3, 1), w, b, connections=table, layout="NHWC", **kw)
    np.testing.assert_allclose(y_nhwc.transpose(0, 3, 1, 2), y, rtol=1e-12, atol=1e-12)


def test_table_with_groups_masks_w_within_the_group():
    rng = np.random.default_rng(7)
    groups, Cg, Kg = 2, 3, 4
    C, K = groups * Cg, groups * Kg
    x = rng.standard_normal((1, C, 7, 7))
    w = rng.standard_normal((K, Cg, 3, 3))
    table = np.zeros((K, C), bool)
    for k in range(K):
        g = k // Kg
        table[k, g * Cg + rng.choice(Cg, size=int(rng.integers(1, Cg + 1)), replace=False)] = True
    y = fastconv.conv2d(x, w, groups=groups, connections=table)
    # the grouped call equals a dense call whose unconnected/out-of-group slices are zero
    w_dense = np.zeros((K, C, 3, 3))
    for k in range(K):
        g = k // Kg
        w_dense[k, g * Cg:(g + 1) * Cg] = w[k]
    np.testing.assert_allclose(y, masked_reference(x, w_dense, None, table), rtol=1e-11, atol=1e-11)


def test_unconnected_weights_are_never_read():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 6, 14, 14))
    w = rng.standard_normal((16, 6, 5, 5))
    table = lenet5_c3_table()
    w_nan = w.copy()
    w_nan[~table] = np.nan
    w_before = w_nan.copy()
    y = fastconv.conv2d(x, w_nan, connections=table)
    assert np.isfinite(y).all()
    np.testing.assert_allclose(y, masked_reference(x, w, None, table), rtol=1e-11, atol=1e-11)
    np.testing.assert_array_equal(w_nan, w_before)                 # inputs are not modified


def test_connections_validation_names_the_argument():
    x = np.zeros((1, 6, 14, 14), np.float32)
    w = np.zeros((16, 6, 5, 5), np.float32)
    table = lenet5_c3_table()
    with pytest.raises(TypeError, match="connections"):
        fastconv.conv2d(x, w, connections=table.astype(int))
    with pytest.raises(ValueError, match="connections"):
        fastconv.conv2d(x, w, connections=table.T)
    empty = table.copy()
    empty[4] = False
    with pytest.raises(ValueError, match="connections"):
        fastconv.conv2d(x, w, connections=empty)


@pytest.mark.parametrize("algorithm", ["auto", "winograd_f4x4_3x3", "im2col"])
def test_table_on_a_wide_layer_with_out_and_unbatched(algorithm):
    # C = K = 16 with 3x3 kernels: auto picks Winograd, whose transformed
    # weights must also see the zeroed slices.
    rng = np.random.default_rng(11)
    table = random_table(rng, 16, 16, 0.3)
    x = rng.standard_normal((16, 10, 10)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    out = np.full((16, 10, 10), np.nan, np.float32)
    y = fastconv.conv2d(x, w, padding="same", algorithm=algorithm, out=out, connections=table)
    assert y is out
    np.testing.assert_allclose(y, masked_reference(x, w, None, table, padding="same"),
                               rtol=1e-4, atol=1e-4)
