"""Gradients of :func:`fastconv.conv2d` and the transposed convolution, built on the forward kernels.

Every function here reduces its work to one call of :func:`fastconv.conv2d`
on rearranged arrays, so ``algorithm=`` means the same thing as in the
forward call (it names the kernel that runs the *derived* convolution) and
every CPU or CUDA kernel serves the backward pass too.

One dimension is enough to see both identities.  The forward convolution is
``y[p] = sum_r xpad[p*s + r*d] * w[r]`` with ``xpad[i] = x[i - pad_top]``.

* ``grad_x[h] = sum_{p, r : p*s + r*d = h + pad_top} grad_y[p] * w[r]``.  Insert
  ``s - 1`` zeros between the rows of ``grad_y`` (its *stride dilation*),
  re-pad it, and correlate with the flipped kernel at dilation ``d`` and
  stride 1 (Dumoulin & Visin 2016, Sec. 4).  The forward output size
  ``P = (H + pads - reach) // s + 1`` floors away up to ``s - 1`` trailing
  rows of ``x``: they got no output, so their gradient is exactly zero, and
  the re-padding here is computed per side so those rows come out as zeros
  rather than being dropped or shifted.
* ``grad_w[k, c, r] = sum_{n, p} grad_y[n, k, p] * xpad[n, c, p*s + r*d]``:
  a convolution whose *batch* is the input channel ``c``, whose channels are
  the images ``n`` (the sum over the batch becomes the sum over channels),
  whose kernel is ``grad_y`` at dilation ``s``, with stride ``d``.  ``xpad``
  is cropped to the ``(R - 1)*d + (P - 1)*s + 1`` rows the forward call
  actually read.

The transposed convolution (PyTorch's ``conv_transpose2d``) is the
``grad_x`` map with its own output size.

Shapes the derived convolutions fit badly get kernels of their own on the
CPU with ``algorithm="auto"`` (each module states its summation order and
error bound, and the tests hold them):

* 1x1 layers: both gradients as GEMMs on the pixels the forward call read
  (:mod:`fastconv.cpu.grad_gemm`);
* small maps: the weight gradient as ``grad_y`` times the unfolded input
  taps, the input gradient as ``grad_y`` times the weights' taps plus a
  col2im, both through the Winograd path's register-tiled micro-kernel
  (:func:`fastconv.cpu.grad_gemm.tap_gemm_weight`,
  :func:`fastconv.cpu.grad_gemm.tap_gemm_input`); strided layers take the
  latter well beyond small maps, as it never multiplies inserted zeros;
* first layers (few taps ``C*R*S``, maps of 4096 pixels or more): the weight
  gradient through the same tap GEMM;
* depthwise layers: the weight gradient as a vectorised per-channel
  reduction (:mod:`fastconv.cpu.grad_depthwise`; also layers of at most 16
  pairs of input and output maps), the input gradient as the single
  zero-inserted call (the per-phase form saves products a depthwise layer
  has few of);
* few input channels and maps at most two vectors wide (LeNet-5's C3): the
  input gradient with one or two vectors per output row (:mod:`fastconv.cpu.grad_rows`);
* 3x3 stride-1 layers on larger maps: the weight gradient by Winograd's
  F(3x3, 2x2), 16 GEMMs over 2x2 tiles of ``grad_y`` in the transform
  domain (:mod:`fastconv.cpu.grad_winograd`).

References
----------
V. Dumoulin and F. Visin, "A guide to convolution arithmetic for deep
learning", arXiv:1603.07285 (2016), Sections 4.1-4.6 (transposed convolution
as a direct convolution of the zero-inserted, re-padded input).
"""

from __future__ import annotations


import numpy as np

from ._params import LAYOUTS, _is_int, _padding, _pair, as_float_array, connection_mask, normalize
from .errors import UnsupportedError

__all__ = ["conv2d_grad_input", "conv2d_grad_weight", "conv2d_grad_bias", "conv_transpose2d"]


# --------------------------------------------------------------------------
# Array operations the derivations need.  They run on NumPy arrays here; an
# adapter passes its own ``ops`` with the same seven operations to run them on
# its tensors (fastconv.torch does, for CUDA tensors), so no framework is
# imported by this module.
# --------------------------------------------------------------------------

class _NumpyOps:
    @staticmethod
    def zeros(shape, like):
        return np.zeros(shape, dtype=like.dtype)

    @staticmethod
    def permute(a, axes):
        return a.transpose(axes)

    @staticmethod
    def flip_hw(a):
        return a[:, :, ::-1, ::-1]

    @staticmethod
    def contiguous(a):
        return np.ascontiguousarray(a)

    @staticmethod
    def swap_middle(a, flip=False):
        """``b[g, j, i] = a[g, i, j]`` of a 5-D ``(G, I, J, H, W)`` array, C-contiguous,
        spatially flipped when ``flip``."""
        from .cpu.packing import swap_middle
        return swap_middle(a, flip)

    @staticmethod
    def zero_insert(g, shape, h0, sh, w0, sw):
        """An array of ``shape``: ``g[n, k, p, q]`` at ``[n, k, h0 + p*sh, w0 + q*sw]``, zeros
        elsewhere (empty ``g``: all zeros)."""
        from .cpu.packing import zero_insert
        return zero_insert(g, shape, h0, sh, w0, sw)

    @staticmethod
    def result(y, like):
        """:func:`fastconv.conv2d`'s result as the kind of array ``like`` is."""
        return y


def _conv2d(x, w, bias, *, stride, padding, dilation, groups, algorithm, what, ops):
    """The forward call that does the work, with errors naming the derived convolution."""
    from ._api import conv2d
    try:
        y = conv2d(x, w, bias, stride=stride, padding=padding, dilation=dilation,
                   groups=groups, algorithm=algorithm)
    except UnsupportedError as exc:
        raise UnsupportedError(f"{what} runs a derived convolution (kernel "
                               f"{tuple(w.shape[2:])}, stride {stride}, dilation {dilation}); "
                               f"{exc}") from None
    return ops.result(y, x)


# --------------------------------------------------------------------------
# The two derivations, on batched NCHW arrays with normalised integers.
# --------------------------------------------------------------------------

def _input_grad_nchw(gy, w, out_hw, pads, stride, dilation, groups, bias, algorithm, what,
                     ops=_NumpyOps):
    """``grad_x`` (N, C, H, W) of the convolution ``(x -> gy)``, for ``out_hw = (H, W)``.

    ``gy`` is (N, K, P, Q), ``w`` is (K, C/groups, R, S).  ``P`` need not be
    the forward output size of ``H``: rows of ``gy`` beyond it are ignored and
    missing rows count as zero, which is what the transposed convolution needs
    when ``output_padding >= stride``.  ``ops`` holds the array operations
    (:class:`_NumpyOps` for NumPy arrays; an adapter passes its own).
    """
    if algorithm == "auto" and ops is _NumpyOps and gy.shape[0] > 0:
        from .cpu import grad_gemm

        if w.shape[2:] == (1, 1):
            # A 1x1 layer's input gradient is a GEMM per image (fastconv.cpu.grad_gemm).
            return grad_gemm.pointwise_input(gy, w, out_hw, pads, stride, groups, bias)
        if grad_gemm.tap_gemm_input_pays(gy.shape, w.shape, stride, groups, dilation):
            return grad_gemm.tap_gemm_input(gy, w, out_hw, pads, stride, dilation, bias)
    if algorithm == "auto" and tuple(stride) != (1, 1) and _polyphase_pays(gy, w, out_hw, dilation, groups):
        return _input_grad_polyphase(gy, w, out_hw, pads, stride, dilation, groups, bias, what,
                                     ops)
    N, K, P, Q = gy.shape
    Kw, Cg, R, S = w.shape
    H, W = out_hw
    (sh, sw), (dh, dw) = stride, dilation
    pt, _, pl, _ = pads
    G = groups
    Kg = K // G
    # grad_x[h] is a stride-1 correlation, at dilation d, of the flipped kernel
    # with gy's rows placed at h' = L + p*s in a buffer of H + (R-1)*d rows,
    # where L = (R-1)*d - pad_top.  L < 0 or a short buffer crops gy: those
    # rows of gy fell entirely into the forward padding.
    Hb, Wb = H + (R - 1) * dh, W + (S - 1) * dw
    Lh, Lw = (R - 1) * dh - pt, (S - 1) * dw - pl

    def span(L, s, n_in, n_buf):
        lo = max(0, -(L // s) if L < 0 else 0)  # first p with L + p*s >= 0
        hi = min(n_in - 1, (n_buf - 1 - L) // s)  # last p with L + p*s < n_buf
        return lo, hi

    ph0, ph1 = span(Lh, sh, P, Hb)
    pw0, pw1 = span(Lw, sw, Q, Wb)
    # (No rows or no columns of gy reach the buffer: an empty slice, an all-zero buffer.)
    rows = slice(ph0, ph1 + 1) if ph0 <= ph1 else slice(0, 0)
    cols = slice(pw0, pw1 + 1) if pw0 <= pw1 else slice(0, 0)
    buf = ops.zero_insert(gy[:, :, rows, cols], (N, K, Hb, Wb), Lh + ph0 * sh, sh,
                          Lw + pw0 * sw, sw)
    if algorithm == "auto" and ops is _NumpyOps:
        from .cpu import grad_rows

        if grad_rows.rows_pay(gy.shape, w.shape, out_hw, stride, G, buf.dtype):
            # Few input channels, rows of at most two vectors (fastconv.cpu.grad_rows).
            gx = grad_rows.input_rows(buf, w, out_hw, (dh, dw))
            if bias is not None:
                gx += bias.reshape(1, -1, 1, 1)
            return gx
        # The flipped kernels below are a new array on every call: auto's choice for
        # kernels that are transformed for this call alone.
        from .cpu import fresh_weights_rule

        algorithm = fresh_weights_rule(normalize(buf.shape, (G * Cg, Kg, R, S), None, buf.dtype,
                                                 dilation=(dh, dw), groups=G))
    # Per group, the flipped kernels with input and output channels swapped:
    # wt[g*Cg + c, k] = w[g*Kg + k, c, ::-1, ::-1].
    wt = ops.swap_middle(w.reshape(G, Kg, Cg, R, S), True).reshape(G * Cg, Kg, R, S)
    return _conv2d(buf, wt, bias, stride=1, padding=0, dilation=(dh, dw), groups=G,
                   algorithm=algorithm, what=what, ops=ops)


def _phases(n_out, pad_lo, k, s, d, n_in):
    """Per output phase ``(h + pad_lo) % s``: the kernel taps that reach it and its sub-problem.

    Output rows ``h = phi + s*m - pad_lo`` of one phase ``phi`` only receive
    taps ``r`` with ``r*d % s == phi``; they form a stride-1 correlation of
    ``grad_y`` at dilation ``d / gcd(s, d)`` with those taps, flipped.
    Returns, for every phase with taps and outputs: (taps, M outputs,
    dilation, first and one-past-last row of grad_y read, zero rows before
    and after them, first output row h).
    """
    from math import gcd
    dd = d // gcd(s, d)
    out = []
    for phi in range(s):
        taps = [r for r in range(k) if (r * d) % s == phi]
        m_lo = -((phi - pad_lo) // s)  # ceil((pad_lo - phi) / s)
        m_hi = (pad_lo + n_out - 1 - phi) // s
        M = m_hi - m_lo + 1
        if not taps or M <= 0:
            continue
        # Output m reads grad_y[m - e_j], e_j = (taps[j]*d - phi) / s, e_{j+1} - e_j = dd.
        e0 = (taps[0] * d - phi) // s
        start = m_lo - e0 - (len(taps) - 1) * dd
        length = M + (len(taps) - 1) * dd
        lo, hi = max(0, start), min(n_in, start + length)
        if lo >= hi:  # every row it would read lies outside grad_y
            continue
        out.append((taps, M, dd, lo, hi, lo - start, start + length - hi, phi + s * m_lo - pad_lo))
    return out


def _polyphase_pays(gy, w, out_hw, dilation, groups):
    """Whether the per-phase route beats the single zero-inserted convolution (CPU, "auto").

    The zero-inserted convolution is a stride-1 R x S one; when the CPU
    ``auto`` rule would run it with Winograd (3x3, dilation 1, >= 16
    channels per group) its cheaper multiplies outweigh the inserted zeros,
    and the phases, whose sub-kernels are smaller than 3x3, cannot use
    Winograd.  A depthwise layer's products are few against its memory
    traffic, which the phases do not reduce (``stride**2`` calls, each output
    written through a strided view): the single call wins there too.
    Otherwise the phases win by skipping the inserted zeros, up to all but
    ``1 / stride**2`` of the single call's products.  Other devices keep the
    single call.
    """
    if not isinstance(gy, np.ndarray):
        return False
    from ._dispatch import auto_choice
    N, K, _, _ = gy.shape
    _, Cg, R, S = w.shape
    if Cg == 1 and K == groups:
        return False
    H, W = out_hw
    try:
        p = normalize((N, K, H + (R - 1) * dilation[0], W + (S - 1) * dilation[1]),
                      (groups * Cg, K // groups, R, S), None, gy.dtype, dilation=dilation,
                      groups=groups)
    except ValueError:
        return True
    return not auto_choice(p, "cpu").startswith("winograd")


def _input_grad_polyphase(gy, w, out_hw, pads, stride, dilation, groups, bias, what,
                          ops=_NumpyOps):
    """``grad_x`` for stride > 1 as ``sh * sw`` stride-1 convolutions, one per output phase.

    The zero-inserted route spends ``(1 - 1/(sh*sw))`` of its multiply-adds
    on inserted zeros; splitting the output by phase (the sub-pixel /
    polyphase decomposition of the transposed convolution) keeps only the
    taps that meet real rows of ``grad_y``.  Same result, same summation
    terms; used for ``algorithm="auto"`` when :func:`_polyphase_pays` (a
    named algorithm keeps the single zero-inserted convolution, whose kernel
    is the forward ``R x S``).
    """
    N, K, P, Q = gy.shape
    _, Cg, R, S = w.shape
    H, W = out_hw
    G = groups
    Kg = K // G
    gx = ops.zeros((N, G * Cg, H, W), gy)
    for taps_h, Mh, ddh, lo_h, hi_h, top, bottom, h0 in _phases(H, pads[0], R, stride[0], dilation[0], P):
        for taps_w, Mw, ddw, lo_w, hi_w, left, right, w0 in _phases(W, pads[2], S, stride[1],
                                                                     dilation[1], Q):
            # Per group, the phase's taps (one gather of taps_h x taps_w), flipped, input
            # and output channels swapped.
            taps = w[:, :, [[r] for r in taps_h], [list(taps_w)]]
            sub = ops.swap_middle(taps.reshape(G, Kg, Cg, len(taps_h), len(taps_w)), True)
            sub = sub.reshape(G * Cg, Kg, len(taps_h), len(taps_w))
            part = _conv2d(ops.contiguous(gy[:, :, lo_h:hi_h, lo_w:hi_w]), sub, None, stride=1,
                           padding=((top, bottom), (left, right)), dilation=(ddh, ddw),
                           groups=G, algorithm="auto", what=what, ops=ops)
            gx[:, :, h0:h0 + (Mh - 1) * stride[0] + 1:stride[0],
               w0:w0 + (Mw - 1) * stride[1] + 1:stride[1]] = part
    if bias is not None:
        gx += bias.reshape(1, -1, 1, 1)
    return gx


def _weight_grad_nchw(x, gy, RS, pads, stride, dilation, groups, algorithm, what, ops=_NumpyOps):
    """``grad_w`` (K, C/groups, R, S) of the convolution ``(x -> gy)``; x (N,C,H,W), gy (N,K,P,Q)."""
    if algorithm == "auto" and ops is _NumpyOps and x.shape[0] > 0:
        # A 1x1 layer's derived convolution is degenerate: its gradient is a GEMM
        # (fastconv.cpu.grad_gemm).
        from .cpu import grad_depthwise, grad_gemm, grad_winograd

        if tuple(RS) == (1, 1):
            return grad_gemm.pointwise_weight(x, gy, pads, stride, groups)
        if grad_depthwise.pays(x.shape, gy.shape, RS, groups):
            return grad_depthwise.depthwise_weight(x, gy, RS, pads, stride, dilation, groups)
        if grad_winograd.winograd_weight_pays(x.shape, gy.shape, RS, stride, dilation, groups):
            gw = grad_winograd.winograd_weight(x, gy, pads)
            if gw is not None:  # None: inf or NaN met, which the direct route below propagates
                return gw
        if grad_gemm.tap_gemm_pays(x.shape, gy.shape, RS, groups, stride):
            return grad_gemm.tap_gemm_weight(x, gy, RS, pads, stride, dilation)
    N, C, H, W = x.shape
    _, K, P, Q = gy.shape
    R, S = RS
    (sh, sw), (dh, dw) = stride, dilation
    pt, _, pl, _ = pads
    G = groups
    Cg, Kg = C // G, K // G
    if N == 0:
        return ops.zeros((K, Cg, R, S), x)
    # Only the first (R-1)*d + (P-1)*s + 1 padded rows were read by the
    # forward call; the rest (floor of P) must not enter the correlation.
    need_h, need_w = (R - 1) * dh + (P - 1) * sh + 1, (S - 1) * dw + (Q - 1) * sw + 1
    rows, cols = max(0, min(H, need_h - pt)), max(0, min(W, need_w - pl))
    if rows == 0 or cols == 0:  # the forward call read padding only
        return ops.zeros((K, Cg, R, S), x)
    top, left = min(pt, need_h), min(pl, need_w)
    bottom, right = need_h - top - rows, need_w - left - cols
    # Batch = input channel of the group, channels = (group, image):
    # xt[c, g*N + n] = x[n, g*Cg + c]; kernels gt[k, n] = gy[n, k].
    if G == 1:
        xt = ops.swap_middle(x[None, :, :, :rows, :cols])[0]
    else:
        xt = ops.permute(x[:, :, :rows, :cols].reshape(N, G, Cg, rows, cols), (2, 1, 0, 3, 4))
        xt = ops.contiguous(xt).reshape(Cg, G * N, rows, cols)
    gt = ops.swap_middle(gy[None])[0]
    if algorithm == "auto" and ops is _NumpyOps and P * Q >= R * S:
        # The derived convolution has a large (P x Q) kernel and a tiny
        # (R x S) output, a shape the forward "auto" rule is not made for: it
        # would pick im2col, whose unfold then copies (N*P*Q, R*S) in R*S-long
        # pieces.  The direct loop nest needs no unfold.
        algorithm = "direct"
    out = _conv2d(xt, gt, None, stride=(dh, dw), padding=((top, bottom), (left, right)),
                  dilation=(sh, sw), groups=G, algorithm=algorithm, what=what, ops=ops)
    # out is (Cg, K, R, S); grad_w[k, c] = out[c, k].
    return ops.swap_middle(out[None])[0]


# --------------------------------------------------------------------------
# Validation shared by the public functions.
# --------------------------------------------------------------------------

def _shape_arg(value, name):
    if not isinstance(value, (tuple, list)) or not all(_is_int(d) for d in value):
        raise TypeError(f"{name} must be a tuple of ints, got {value!r}")
    return tuple(int(d) for d in value)


def _to_nchw(a, layout, batched):
    a = a if batched else a[None]
    return a.transpose(0, 3, 1, 2) if layout == "NHWC" else a


def _from_nchw(a, layout, batched):
    if layout == "NHWC":
        a = a.transpose(0, 2, 3, 1)
    if not batched:
        a = a[0]
    return np.ascontiguousarray(a)


def _check_grad_y(grad_y, p):
    if tuple(grad_y.shape) != p.output_shape:
        raise ValueError(f"grad_y must have the shape of the forward output, {p.output_shape} "
                         f"(layout {p.layout!r}), got {tuple(grad_y.shape)}")


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------

def conv2d_grad_input(grad_y, w, x_shape, *, stride=1, padding=0, dilation=1, groups=1,
                      layout="NCHW", algorithm="auto"):
    """Gradient of :func:`fastconv.conv2d` with respect to its input ``x``.

    Parameters
    ----------
    grad_y : array_like, shape (N, K, P, Q) or (N, P, Q, K)
        Gradient of the loss with respect to the forward output (3-D for an
        unbatched forward call).  Its shape must be exactly the forward output
        shape of ``x_shape``.
    w : array_like, shape (K, C/groups, R, S)
        The forward call's kernels.
    x_shape : tuple of int
        Shape of the forward input ``x``, in ``layout``.
    stride, padding, dilation, groups, layout
        As in :func:`fastconv.conv2d` (every padding form, ``"same"`` and
        ``"full"`` included).
    algorithm : str
        Kernel for the derived convolution (see Notes): ``"auto"`` or one of
        :func:`fastconv.algorithms`.  Winograd applies when the forward kernel
        is 3x3 with dilation 1 (any stride); a named algorithm that cannot run
        the derived convolution raises :class:`fastconv.UnsupportedError`.

    Returns
    -------
    grad_x : numpy.ndarray of shape ``x_shape``
        dtype ``np.result_type(grad_y, w)``.

    Raises
    ------
    TypeError
        Non-float ``grad_y`` or ``w``, or a malformed ``x_shape``.
    ValueError
        Inconsistent arguments; ``grad_y`` of the wrong shape.

    Notes
    -----
    ``grad_x`` is the correlation, at the forward dilation and stride 1, of
    ``grad_y`` with ``stride - 1`` zeros inserted between its rows and
    columns, re-padded by ``(R - 1) * dilation - pad`` per side, with the
    spatially flipped kernels whose input and output channels are swapped per
    group (Dumoulin & Visin 2016, Sec. 4).  When the forward output size
    floored away trailing rows or columns of ``x`` they receive exactly zero.
    That single convolution spends most of its work on inserted zeros when
    ``stride > 1``; with ``algorithm="auto"`` on the CPU the output is then
    split by phase ``(h + pad) % stride`` into ``stride_h * stride_w``
    stride-1 convolutions with the sub-kernels that reach each phase (the
    polyphase or sub-pixel form of the transposed convolution), unless the
    zero-inserted one would run as Winograd, whose cheaper multiplies
    outweigh the inserted zeros.  Both forms add the same products.

    Examples
    --------
    >>> import numpy as np, fastconv
    >>> from fastconv.grad import conv2d_grad_input
    >>> w = np.ones((1, 1, 3, 3))
    >>> conv2d_grad_input(np.ones((1, 1, 2, 2)), w, (1, 1, 4, 4))[0, 0]
    array([[1., 2., 2., 1.],
           [2., 4., 4., 2.],
           [2., 4., 4., 2.],
           [1., 2., 2., 1.]])
    """
    gy = as_float_array(grad_y, "grad_y")
    w = as_float_array(w, "w")
    x_shape = _shape_arg(x_shape, "x_shape")
    dtype = np.result_type(gy.dtype, w.dtype)
    p = normalize(x_shape, w.shape, None, dtype, stride=stride, padding=padding,
                  dilation=dilation, groups=groups, layout=layout)
    _check_grad_y(gy, p)
    g = _to_nchw(gy, p.layout, p.batched).astype(dtype, copy=False)
    gx = _input_grad_nchw(g, np.asarray(w, dtype=dtype), (p.H, p.W), p.padding, p.stride,
                          p.dilation, p.groups, None, algorithm, "conv2d_grad_input")
    return _from_nchw(gx, p.layout, p.batched)


def conv2d_grad_weight(x, grad_y, w_shape, *, stride=1, padding=0, dilation=1, groups=1,
                       layout="NCHW", algorithm="auto", connections=None):
    """Gradient of :func:`fastconv.conv2d` with respect to its kernels ``w``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W) or (N, H, W, C)
        The forward call's input (3-D for an unbatched call).
    grad_y : array_like
        Gradient of the loss with respect to the forward output; exactly the
        forward output's shape.
    w_shape : tuple of int
        ``(K, C/groups, R, S)``.
    stride, padding, dilation, groups, layout
        As in :func:`fastconv.conv2d`.
    algorithm : str
        Kernel for the derived convolution (see Notes).  Its kernel is
        ``grad_y``'s P x Q map, at dilation ``stride`` and stride
        ``dilation``, so Winograd applies only when ``P == Q == 3`` with unit
        stride and dilation; a named algorithm that cannot run it raises
        :class:`fastconv.UnsupportedError`.
    connections : array_like of bool, shape (K, C), optional
        Connection table as in ``conv2d(connections=...)``: the gradient of
        ``w[k, c]`` is zero where entry ``(k, g*C/groups + c)`` is False
        (``g = k // (K/groups)``), since those weights are treated as zero by
        the forward call.  Entries outside each output map's group are ignored.

    Returns
    -------
    grad_w : numpy.ndarray, shape (K, C/groups, R, S)
        dtype ``np.result_type(x, grad_y)``.

    Notes
    -----
    ``grad_w[k, c, r, s] = sum_{n, p, q} grad_y[n, k, p, q] * xpad[n, c, p*sh + r*dh, q*sw + s*dw]``
    is itself a convolution: its batch is the input channel ``c``, its
    channels are the images ``n`` (per group), its kernels are the maps of
    ``grad_y`` at dilation ``stride``, and its stride is the forward
    ``dilation``.  Only the ``(R - 1)*d + (P - 1)*s + 1`` padded rows the
    forward call read take part.  With ``algorithm="auto"`` on NumPy arrays a
    1x1 kernel's gradient is computed as a GEMM instead
    (:func:`fastconv.cpu.grad_gemm.pointwise_weight`; the derived convolution
    would be a P x Q kernel with a 1 x 1 output).
    """
    x = as_float_array(x, "x")
    gy = as_float_array(grad_y, "grad_y")
    w_shape = _shape_arg(w_shape, "w_shape")
    dtype = np.result_type(x.dtype, gy.dtype)
    p = normalize(x.shape, w_shape, None, dtype, stride=stride, padding=padding,
                  dilation=dilation, groups=groups, layout=layout)
    _check_grad_y(gy, p)
    # Same validation and (K, C/groups) mask as conv2d(connections=...).
    mask = connection_mask(connections, p)
    xx = _to_nchw(x, p.layout, p.batched).astype(dtype, copy=False)
    g = _to_nchw(gy, p.layout, p.batched).astype(dtype, copy=False)
    gw = _weight_grad_nchw(xx, g, (p.R, p.S), p.padding, p.stride, p.dilation, p.groups,
                           algorithm, "conv2d_grad_weight")
    if mask is not None:
        gw *= mask[:, :, None, None].astype(dtype)
    return gw


def conv2d_grad_bias(grad_y, *, layout="NCHW"):
    """Gradient of :func:`fastconv.conv2d` with respect to its bias: ``grad_y`` summed over N, P, Q.

    Parameters
    ----------
    grad_y : array_like, shape (N, K, P, Q), (N, P, Q, K) or 3-D unbatched
    layout : {"NCHW", "NHWC"}

    Returns
    -------
    grad_bias : numpy.ndarray, shape (K,)
        Same dtype as ``grad_y``; float32 input is summed in float64 first.
    """
    gy = as_float_array(grad_y, "grad_y")
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(repr(l) for l in LAYOUTS)}, got {layout!r}")
    if gy.ndim not in (3, 4):
        raise ValueError(f"grad_y must be 4-D (or 3-D unbatched), got shape {gy.shape}")
    axis_k = (1 if gy.ndim == 4 else 0) if layout == "NCHW" else gy.ndim - 1
    axes = tuple(a for a in range(gy.ndim) if a != axis_k)
    return gy.sum(axis=axes, dtype=np.float64).astype(gy.dtype)


def _transpose_params(x_shape, w_shape, bias_shape, *, stride, padding, output_padding,
                      dilation, groups, layout):
    """Validate a transposed-convolution call; returns the equivalent forward ConvParams."""
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(repr(l) for l in LAYOUTS)}, got {layout!r}")
    if len(x_shape) not in (3, 4):
        raise ValueError(f"x must be 4-D ({'N, C_in, H, W' if layout == 'NCHW' else 'N, H, W, C_in'}) "
                         f"or 3-D unbatched; got shape {x_shape}")
    batched = len(x_shape) == 4
    xs = x_shape if batched else (1,) + x_shape
    N, Cin, H, W = xs if layout == "NCHW" else (xs[0], xs[3], xs[1], xs[2])
    if len(w_shape) != 4:
        raise ValueError(f"w must be 4-D (C_in, K/groups, R, S); got shape {w_shape}")
    Cw, Kg, R, S = w_shape
    if not _is_int(groups):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if Cw != Cin:
        raise ValueError(f"channel mismatch: x has C_in={Cin} channels but w.shape[0] = {Cw}; "
                         f"w must be (C_in, K/groups, R, S)")
    if Cin % groups:
        raise ValueError(f"groups={groups} must divide the input channels C_in={Cin}")
    if min(H, W, Cin) <= 0 or min(w_shape) <= 0:
        raise ValueError(f"x and w must be non-empty; got x {x_shape}, w {w_shape}")
    K = Kg * groups
    if bias_shape is not None and tuple(bias_shape) != (K,):
        raise ValueError(f"bias must have shape (K,) = ({K},) with K = w.shape[1] * groups, "
                         f"got {tuple(bias_shape)}")
    s = _pair(stride, "stride", 1)
    d = _pair(dilation, "dilation", 1)
    op = _pair(output_padding, "output_padding", 0)
    for i, name in enumerate("hw"):
        if op[i] >= max(s[i], d[i]):
            raise ValueError(f"output_padding must be smaller than max(stride, dilation) in each "
                             f"dimension; got output_padding={op}, stride={s}, dilation={d}")
    reach = ((R - 1) * d[0] + 1, (S - 1) * d[1] + 1)
    if isinstance(padding, str):
        mode = padding.lower()
        if op != (0, 0):
            raise ValueError(f"output_padding must be 0 with padding={padding!r} "
                             f"(the output size is fixed by the mode)")
        if mode == "same":
            # The adjoint of conv2d(padding="same") on an input of H*stride rows
            # (TF/Keras Conv2DTranspose): the output is H*stride.
            Ho, Wo = H * s[0], W * s[1]
            pads = _padding("same", R, S, Ho, Wo, s, d)
        else:
            pads = _padding(mode, R, S, H, W, s, d)  # "valid", "full"; else ValueError
            Ho = (H - 1) * s[0] + reach[0] - pads[0] - pads[1]
            Wo = (W - 1) * s[1] + reach[1] - pads[2] - pads[3]
    else:
        pads = _padding(padding, R, S, H, W, s, d)
        Ho = (H - 1) * s[0] + reach[0] - pads[0] - pads[1] + op[0]
        Wo = (W - 1) * s[1] + reach[1] - pads[2] - pads[3] + op[1]
    if Ho <= 0 or Wo <= 0:
        raise ValueError(f"padding {pads} (top, bottom, left, right) is too large: the output "
                         f"would be {Ho}x{Wo}")
    out_shape = (N, K, Ho, Wo) if layout == "NCHW" else (N, Ho, Wo, K)
    return out_shape if batched else out_shape[1:], pads, s, d, batched


def conv_transpose2d(x, w, bias=None, *, stride=1, padding=0, output_padding=0, dilation=1,
                     groups=1, layout="NCHW", algorithm="auto"):
    """Transposed 2-D convolution, as ``torch.nn.functional.conv_transpose2d``.

    The adjoint of :func:`fastconv.conv2d`: it maps a (N, C_in, H, W) input to
    the (N, K, Ho, Wo) result whose forward convolution with ``w`` would have
    the input's shape, scattering each input pixel through the kernel.

    Parameters
    ----------
    x : array_like, shape (N, C_in, H, W) or (N, H, W, C_in); 3-D unbatched
    w : array_like, shape (C_in, K/groups, R, S)
        PyTorch's layout for transposed convolution weights (the forward
        conv2d weights of the adjoint convolution ``K -> C_in``).
    bias : array_like, shape (K,), optional
    stride, dilation : int or (int, int)
    padding : int, (ph, pw), ((top, bottom), (left, right)), or str
        Rows and columns removed from each side of the full result, as in
        PyTorch; the pair-of-pairs form removes them asymmetrically.
        ``"valid"`` is 0.  ``"same"`` gives ``Ho = H * stride`` (the adjoint
        of ``conv2d(padding="same")``, as Keras's Conv2DTranspose); ``"full"``
        is the adjoint of ``conv2d(padding="full")``.
    output_padding : int or (int, int)
        Extra rows/columns added at the bottom/right of the output shape; each
        ``< max(stride, dilation)``, and 0 with a string padding.
    groups : int
    layout : {"NCHW", "NHWC"}
    algorithm : str
        Kernel for the derived stride-1 convolution (see
        :func:`conv2d_grad_input`).

    Returns
    -------
    y : numpy.ndarray, shape (N, K, Ho, Wo) or (N, Ho, Wo, K)
        ``Ho = (H - 1)*stride - pad_top - pad_bottom + dilation*(R - 1) + output_padding + 1``;
        dtype ``np.result_type(x, w, bias)``.

    Notes
    -----
    Computed as a stride-1 convolution of the zero-inserted, re-padded input
    with the flipped kernels (Dumoulin & Visin 2016, Sec. 4.5-4.6).

    Examples
    --------
    >>> import numpy as np
    >>> from fastconv.grad import conv_transpose2d
    >>> conv_transpose2d(np.ones((1, 1, 2, 2)), np.ones((1, 1, 2, 2)), stride=2).shape
    (1, 1, 4, 4)
    """
    x = as_float_array(x, "x")
    w = as_float_array(w, "w")
    b = None if bias is None else as_float_array(bias, "bias")
    dtype = np.result_type(*(a.dtype for a in (x, w, b) if a is not None))
    out_shape, pads, s, d, batched = _transpose_params(
        x.shape, w.shape, None if b is None else b.shape, stride=stride, padding=padding,
        output_padding=output_padding, dilation=dilation, groups=groups, layout=layout)
    xx = _to_nchw(x, layout, batched).astype(dtype, copy=False)
    Ho, Wo = (out_shape[-2:] if layout == "NCHW" else out_shape[-3:-1])
    y = _input_grad_nchw(xx, np.asarray(w, dtype=dtype), (Ho, Wo), pads, s, d, int(groups),
                         None if b is None else b.astype(dtype, copy=False), algorithm,
                         "conv_transpose2d")
    return _from_nchw(y, layout, batched)
