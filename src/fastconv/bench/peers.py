"""Peers the benchmark measures fastconv against, in the same process.

* ``torch``: ``torch.nn.functional.conv2d`` on CPU (oneDNN), when torch is
  installed; imported lazily, never by ``import fastconv``.
* ``numpy_im2col``: im2col with ``sliding_window_view`` plus one BLAS matmul
  per group, in plain numpy: what a user would write without fastconv.
* ``scipy_reference``: :func:`fastconv.reference.conv2d` (float64
  ``scipy.signal.correlate``), timed only on small layers.
"""

from __future__ import annotations

import numpy as np

#: Layers above this many flops skip the (slow, float64) scipy reference.
REFERENCE_MAX_FLOPS = 60_000_000


def numpy_im2col(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1):
    """Plain-numpy im2col + GEMM convolution (NCHW, cross-correlation).

    ``padding`` is an int or ``(ph, pw)``; the result has x's dtype.  The
    unfold is one strided view copied into a ``(N, G, Cg*R*S, P*Q)`` matrix,
    then ``w_g @ cols`` per group through ``np.matmul`` (BLAS).
    """
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    dh, dw = (dilation, dilation) if np.isscalar(dilation) else dilation
    ph, pw = (padding, padding) if np.isscalar(padding) else padding
    N, C, H, W = x.shape
    K, Cg, R, S = w.shape
    G = groups
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if (ph or pw) else x
    span_h, span_w = (R - 1) * dh + 1, (S - 1) * dw + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (span_h, span_w), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (N, C, P, Q, R, S)
    P, Q = win.shape[2], win.shape[3]
    cols = win.reshape(N, G, Cg, P, Q, R, S).transpose(0, 1, 2, 5, 6, 3, 4)
    cols = np.ascontiguousarray(cols).reshape(N, G, Cg * R * S, P * Q)
    y = np.matmul(w.reshape(1, G, K // G, Cg * R * S), cols).reshape(N, K, P, Q)
    if bias is not None:
        y += bias.reshape(1, K, 1, 1)
    return y


def torch_available() -> bool:
    """Whether torch is installed (found, not imported: importing torch takes seconds)."""
    import importlib.util
    import sys

    if "torch" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("torch") is not None
    except (ImportError, ValueError):
        return False


def torch_conv(x, w, bias, layer, threads=None):
    """A zero-argument callable that runs ``torch.nn.functional.conv2d`` on CPU tensors.

    The tensors are created once (``torch.from_numpy`` shares memory) so only
    the convolution is timed.
    """
    import torch
    import torch.nn.functional as F

    if threads is not None:
        torch.set_num_threads(int(threads))
    tx, tw, tb = (torch.from_numpy(np.ascontiguousarray(a)) for a in (x, w, bias))
    kw = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
              groups=layer.groups)

    def run():
        with torch.no_grad():
            return F.conv2d(tx, tw, tb, **kw)

    return run


def torch_version():
    try:
        import torch
    except Exception:
        return None
    return torch.__version__
