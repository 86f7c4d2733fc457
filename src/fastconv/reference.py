"""The definition of a multi-channel 2-D convolution layer, written out with scipy.

This is the oracle every fastconv kernel is tested against, and the formula
the docs explain: output map ``k`` of image ``n`` is the sum over the input
maps ``c`` of its group of the 2-D cross-correlation of map ``c`` with the
kernel slice ``w[k, c]``, plus ``bias[k]``::

    y[n, k] = bias[k] + sum_c scipy.signal.correlate(x_padded[n, c], w_dilated[k, c], mode="valid")[::sh, ::sw]

Padding is explicit zero-padding of ``x``.  Dilation spreads the taps
``dilation`` apart; rather than correlating with a kernel whose holes are
zeros (``0 * inf`` would turn an inf that only sits in a hole into a NaN),
the input is split into its ``dh x dw`` phases ``x_padded[a::dh, b::dw]``,
each correlated with the compact kernel, which fills the stride-1 map at
rows ``a::dh`` and columns ``b::dw``.  Stride keeps every ``stride``-th output
of the stride-1 correlation.  Everything is computed in float64 with scipy's direct
method (never FFT: an FFT would smear one NaN over the whole map), so the
result is exact to float64 rounding.  It is slow by design: one scipy call
per (image, output map, input map).
"""

from __future__ import annotations

import numpy as np

from ._params import connection_mask, parse_arrays

__all__ = ["conv2d"]


def conv2d(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1,
           layout="NCHW", algorithm="auto", out=None, connections=None):
    """Reference 2-D convolution; same signature and result as :func:`fastconv.conv2d`.

    ``algorithm`` is accepted for signature compatibility and ignored.
    With ``connections``, unconnected (k, c) pairs are skipped: their scipy
    call is never made.  The sum is accumulated in float64 and the result is returned in the promoted
    dtype of the inputs (pass float64 inputs to keep every bit).
    """
    x, w, b, p = parse_arrays(x, w, bias, stride=stride, padding=padding, dilation=dilation,
                              groups=groups, layout=layout)

    mask = connection_mask(connections, p)
    xx = x if p.batched else x[None]
    if p.layout == "NHWC":
        xx = xx.transpose(0, 3, 1, 2)
    xx = xx.astype(np.float64)
    ww = w.astype(np.float64)
    pt, pb, pl, pr = p.padding
    xpad = np.pad(xx, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    dh, dw = p.dilation
    sh, sw = p.stride
    Hp, Wp = p.padded_hw
    H1, W1 = Hp - (p.R - 1) * dh, Wp - (p.S - 1) * dw  # stride-1 output size

    from scipy import signal  # imported on first use: it costs ~0.5 s, and import fastconv must be quick

    def correlate_dilated(plane, kernel):
        if dh == dw == 1:
            return signal.correlate(plane, kernel, mode="valid", method="direct")
        full = np.empty((H1, W1))
        for a in range(min(dh, H1)):
            for b_ in range(min(dw, W1)):
                full[a::dh, b_::dw] = signal.correlate(plane[a::dh, b_::dw], kernel, mode="valid",
                                                       method="direct")
        return full

    y = np.zeros((p.N, p.K, p.P, p.Q))
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf = NaN is part of the definition
        for n in range(p.N):
            for k in range(p.K):
                g = k // p.Kg
                acc = np.zeros((p.P, p.Q)) if b is None else np.full((p.P, p.Q), float(b[k]))
                for c in range(p.Cg):
                    if mask is not None and not mask[k, c]:
                        continue
                    full = correlate_dilated(xpad[n, g * p.Cg + c], ww[k, c])
                    acc = acc + full[::sh, ::sw][:p.P, :p.Q]
                y[n, k] = acc
    if p.layout == "NHWC":
        y = y.transpose(0, 2, 3, 1)
    if not p.batched:
        y = y[0]
    y = y.astype(p.dtype)
    if out is not None:
        from ._dispatch import check_out
        check_out(out, p)
        out[...] = y
        return out
    return np.ascontiguousarray(y)
