"""The componentwise bounds of fastconv.accuracy are valid and not vacuous."""

import numpy as np
import pytest

import fastconv
from fastconv import accuracy, reference

from conftest import CONCRETE


@pytest.mark.parametrize("alg", CONCRETE)
def test_bound_holds_and_is_tight_enough(rng, alg):
    # Ill-conditioned data: large offsets that cancel, so rounding errors are visible.
    x = (rng.standard_normal((2, 32, 10, 10)) + 100).astype(np.float32)
    w = rng.standard_normal((8, 32, 3, 3)).astype(np.float32)
    w -= w.mean(axis=(1, 2, 3), keepdims=True)
    y = fastconv.conv2d(x, w, padding=1, algorithm=alg)
    ref = reference.conv2d(x.astype(np.float64), w.astype(np.float64), padding=1)
    bound = accuracy.error_bound(alg, x, w, padding=1)
    err = np.abs(y - ref)
    assert err.max() > 0  # float32 rounding must be visible here
    assert np.all(err <= bound)
    # not vacuous: a worst-case bound sits above the typical error by about n = Cg*R*S
    # (errors of random sign grow like sqrt(n)) times the transforms' growth
    assert bound.max() < 1e5 * err.max()


def test_unknown_algorithm():
    with pytest.raises(ValueError, match="concrete algorithm name"):
        accuracy.error_bound("auto", np.ones((1, 1, 3, 3)), np.ones((1, 1, 3, 3)))
