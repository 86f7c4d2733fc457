"""Where an argument lives: the one test shared by the CPU front end and the CUDA backend."""

from __future__ import annotations

import numpy as np

_DLPACK_CUDA = (2, 3, 13)  # kDLCUDA, kDLCUDAHost, kDLCUDAManaged


def is_device_array(obj) -> bool:
    """Does ``obj`` say it lives on a GPU (numba, CAI, or a DLPack CUDA device)?

    The one test of where an argument lives, used by :func:`fastconv.conv2d`
    to route a call and by the CUDA entry points to check placement.  torch
    tensors are asked ``is_cuda`` (their ``__cuda_array_interface__`` raises
    for tensors that require grad).
    """
    if obj is None or type(obj) is np.ndarray:
        return False
    if getattr(obj, "__cuda_ndarray__", False):  # numba arrays, including the simulator's
        return True
    if type(obj).__module__.split(".")[0] == "torch" and hasattr(obj, "is_cuda"):
        return bool(obj.is_cuda)
    try:
        if hasattr(obj, "__cuda_array_interface__"):
            return True
    except Exception:
        return True
    dev = getattr(obj, "__dlpack_device__", None)
    if dev is not None:
        try:
            return int(dev()[0]) in _DLPACK_CUDA
        except Exception:
            return False
    return False
