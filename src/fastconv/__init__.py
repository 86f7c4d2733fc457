"""fastconv: readable, fast 2-D multi-channel convolution kernels.

>>> import numpy as np, fastconv
>>> y = fastconv.conv2d(np.ones((1, 3, 8, 8)), np.ones((4, 3, 3, 3)))
>>> y.shape
(1, 4, 6, 6)
"""

from . import _config  # noqa: F401  (chooses a thread-safe Numba threading layer first)
from . import reference
from ._api import conv2d
from ._dispatch import algorithms
from .errors import CudaUnavailableError, UnsupportedError
from ._explain import explain
from .grad import conv2d_grad_bias, conv2d_grad_input, conv2d_grad_weight, conv_transpose2d
from .lenet import lenet5_c3_parameter_count, lenet5_c3_table
from .plan import ConvPlan, plan
from ._weight_cache import clear as clear_weight_cache

__version__ = "0.1.0"

__all__ = ["conv2d", "algorithms", "explain", "reference", "UnsupportedError", "CudaUnavailableError",
           "conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias", "conv_transpose2d",
           "plan", "ConvPlan", "clear_weight_cache", "lenet5_c3_table", "lenet5_c3_parameter_count", "__version__"]
