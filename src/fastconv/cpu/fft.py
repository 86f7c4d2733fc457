"""FFT convolution: transforms of input tiles and kernels, a contraction per frequency.

What it computes
----------------
The same cross-correlation as every algorithm, on every configuration
(stride, dilation, padding, groups, depthwise, float32 and float64).  It
pays where kernels are large: ``direct`` spends ``R * S`` multiply-adds per
output and input channel, this algorithm a few times ``log2`` of the FFT
length per pixel for the transforms and one complex multiply-add per
frequency and pair of channels for the contraction.

How
---
1. **Stride and dilation become a stride-1 call.**  The kernel is dilated
   (zeros between its taps).  A stride ``(sh, sw)`` is split into its
   ``sh * sw`` phases: phase ``(i, j)`` of the padded input keeps rows
   ``i, i + sh, ...`` and columns ``j, j + sw, ...``, and meets the taps of
   the kernel at the same offsets.  The phases are stacked as channels, so
   the call becomes a stride-1 correlation over ``Cs = Cg * sh * sw``
   channels per group with kernels of ``Rs x Ss = ceil(Re / sh) x
   ceil(Se / sw)`` taps (``Re``, ``Se``: the dilated kernel's extent) --
   the same multiply-adds as the strided call, none wasted on outputs the
   stride drops.
2. **Overlap-save tiles.**  Output tiles of ``Th x Tw`` pixels read input
   tiles of ``Fh x Fw = (Th + Rs - 1) x (Tw + Ss - 1)`` pixels, the FFT
   lengths (SciPy's fast lengths, :func:`scipy.fft.next_fast_len`).  For
   a tile ``x_t`` and a kernel ``w`` zero-padded to the tile,
   ``irfft2(rfft2(x_t) * conj(rfft2(w)))`` is the circular correlation,
   which equals the linear one on the first ``Th x Tw`` outputs.  The tile
   size is the one with the lowest modelled time
   (:func:`fastconv.cpu.cost.fft_tile_terms`: the transforms, the
   contraction and the reading of the kernels' spectra, which are
   ``Fh * (Fw // 2 + 1) / (Rs * Ss)`` times the size of the kernels).
   One whole map is one tile where that is cheapest (a depthwise 31x31
   kernel on a 56x56 map).
3. **Contraction per frequency** (:func:`_contract`): for each group and
   frequency, the tiles' ``Cs`` input spectra times the ``Cs x Kg``
   kernel spectra, a complex matrix product, in Numba's thread pool (jobs
   are groups x blocks of frequencies; each output is one sum over the
   input channels in channel order, so results do not depend on the
   thread count).  One input channel per group (depthwise) is an
   elementwise product (:func:`_contract_one`).
4. The inverse transforms, the valid part of each tile written into ``y``,
   bias added last.

The transforms are SciPy's (``scipy.fft``, pocketfft), run with
``workers`` = Numba's thread count.  The kernels' spectra are prepared
weights: kept by the weight cache (:mod:`fastconv._weight_cache`) for
unchanged weights, like Winograd's transformed kernels.

Memory
------
Tiles are transformed in chunks of whole images, or of tile rows of one
image, whose spectra (input and output, complex) stay within
``FASTCONV_WORKSPACE_MB``; the zero-padded input (about the size of the
input) and the kernels' spectra come on top.  The tile-size choice also
keeps the kernels' spectra within that bound where any tile size can.

Error bound
-----------
For output ``y[n, k, p, q]``, with ``u`` the unit roundoff, ``L = log2(Fh
* Fw)`` and ``Cs`` the channels of one group after step 1,

    |y_fft - y| <= (24 L + 2 Cs + 8) u  sum_c ||x[n, c]||_2 ||w[k, c]||_1

to first order, where ``x[n, c]`` is the zero-padded input map of channel
``c`` and ``w[k, c]`` the kernel (:func:`fastconv.accuracy.error_bound`
computes it).  Derivation: a transform of length ``M`` has a componentwise
error of at most ``L eta ||v||_1`` and a normwise one of ``L eta ||F v||_2``
with ``eta <= 8u`` (Higham, *Accuracy and Stability of Numerical
Algorithms*, 24.1; ``||F v||_2 = sqrt(M) ||v||_2``); the input's and the
kernel's transform errors, each multiplied by the other spectrum
(``|rfft2(w)| <= ||w||_1``), the complex products (``sqrt(2) gamma_2``),
the sums over ``Cs`` channels (``sqrt(2) gamma_{Cs + 2}``) and the inverse
transform (``1 / sqrt(M)`` times the norm of the sum) each add at most
``8 L u`` or ``2 (Cs + 4) u`` times ``sum_c ||x_c||_2 ||w_c||_1`` to the
2-norm of a tile's error, which bounds each of its elements.  The bound is
normwise, not componentwise like ``direct``'s: a small output next to
large ones carries the large ones' absolute error.

Non-finite values: a NaN or inf spreads over the whole tile of a
transform.  Where the result is not finite (a NaN/inf input or weight, or
an overflow) the call is recomputed by ``direct``, which propagates them
exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import scipy.fft

from .. import _config, _weight_cache
from .._config import PJIT, parallel_section
from .._epilogue import NONE
from . import direct, epilogue
from ._gemm import panel_gemm
from .simd import VECTOR_BYTES, lanes

#: Frequencies per job of the contraction: the ``Cs x Kg`` spectra of one frequency
#: are read from memory once per job and stay in cache for every tile of the chunk.
FREQ_BLOCK = 8


def supports(p):
    return None  # every configuration


@dataclass(frozen=True)
class Plan:
    """The stride-1 problem of step 1 and the tiling of one call (see the module docstring).

    ``Rs x Ss``: taps of a phase kernel; ``Cs``: channels per group after
    the phases are stacked; ``Fh x Fw``: FFT lengths; ``Th x Tw``: output
    tile; ``nth x ntw``: tiles per map; ``Hs x Ws``: rows and columns of
    the phase maps the tiles read; ``images``: images per chunk (0 when one
    image's tiles exceed the workspace), else ``rows``: tile rows per chunk
    of one image.
    """

    Rs: int
    Ss: int
    Cs: int
    Fh: int
    Fw: int
    Th: int
    Tw: int
    nth: int
    ntw: int
    images: int
    rows: int

    @property
    def Hs(self) -> int:
        return self.nth * self.Th + self.Rs - 1

    @property
    def Ws(self) -> int:
        return self.ntw * self.Tw + self.Ss - 1

    @property
    def freqs(self) -> int:
        """Frequencies of one tile's real transform: ``Fh * (Fw // 2 + 1)``."""
        return self.Fh * (self.Fw // 2 + 1)


def phase_kernel_size(p) -> tuple:
    """``(Rs, Ss, Cs)`` of step 1: the phase kernels' taps and the channels per group."""
    sh, sw = p.stride
    Re, Se = (p.R - 1) * p.dilation[0] + 1, (p.S - 1) * p.dilation[1] + 1
    return -(-Re // sh), -(-Se // sw), p.Cg * sh * sw


def lengths(taps: int, out: int) -> list:
    """Candidate FFT lengths for ``taps``-tap kernels over ``out`` outputs along one axis.

    Fast lengths for output tiles of 1, 2, 4, ... pixels, up to the one
    that covers all ``out`` outputs in one tile.
    """
    whole = scipy.fft.next_fast_len(out + taps - 1, real=True)
    found, t = [], 1
    while True:
        n = min(scipy.fft.next_fast_len(t + taps - 1, real=True), whole)
        if n not in found:
            found.append(n)
        if n == whole:
            return found
        t *= 2


def chunk_bytes(p, Rs, Ss, Cs, Fh, Fw) -> int:
    """Work-array bytes of one tile: its input and output spectra and output tile."""
    item = p.dtype.itemsize
    freqs = Fh * (Fw // 2 + 1)
    return (p.groups * Cs + p.K) * freqs * 2 * item + p.K * Fh * Fw * item


def plan(p) -> Plan:
    """The tiling of ``p`` (the lowest modelled time; decided once per ``ConvParams``)."""
    return p.remembered("fft_plan", lambda: _make_plan(p))


def _make_plan(p) -> Plan:
    from . import cost

    Rs, Ss, Cs = phase_kernel_size(p)
    ws = _config.CPU.workspace_bytes
    best = None
    for Fh in lengths(Rs, p.P):
        for Fw in lengths(Ss, p.Q):
            spectra = p.K * Cs * Fh * (Fw // 2 + 1) * 2 * p.dtype.itemsize
            t = cost.fft_tile_seconds(p, Fh, Fw)
            key = (spectra > ws, t)  # kernel spectra within the workspace where any fit
            if best is None or key < best[0]:
                best = (key, Fh, Fw)
    _, Fh, Fw = best
    Th, Tw = Fh - Rs + 1, Fw - Ss + 1
    nth, ntw = -(-p.P // Th), -(-p.Q // Tw)
    per_tile = chunk_bytes(p, Rs, Ss, Cs, Fh, Fw)
    per_image = per_tile * nth * ntw
    images = int(min(max(p.N, 1), ws // per_image)) if per_image <= ws else 0
    rows = int(max(1, min(nth, ws // (per_tile * ntw)))) if images == 0 else nth
    return Plan(Rs, Ss, Cs, Fh, Fw, Th, Tw, nth, ntw, images, rows)


def contraction_kind(p, Cs: int) -> str:
    """Which contraction kernel runs for ``Cs`` channels per group: ``"one"`` (one input
    channel per group), ``"small"`` (fewer output channels per group than a vector's
    lanes) or ``"panel"``."""
    if Cs == 1:
        return "one"
    return "small" if p.Kg < lanes(p.dtype) else "panel"


class Spectra:
    """The kernels' spectra, conjugated, in the layout of the call's contraction.

    ``"one"``: ``wr``, ``wi`` the real and imaginary parts, ``[G, Kg,
    freqs]``; ``"small"``: the same, ``[freqs, G, Cs, Kg]``; ``"panel"``:
    ``U``, flat ``[freqs, G, 2 Cs, Kh]`` with ``Kh`` = ``Kg`` rounded up to
    whole vectors: for each frequency the complex ``Cs x Kg`` matrix ``W``
    as ``[Wr; Wi]``, each coefficient stored once (:func:`_contract` puts
    the signs on the input's side).
    """

    __slots__ = ("w", "wr", "wi", "U", "Kh")

    def __init__(self, w, p, pl: Plan):
        self.w = w  # for the direct kernel's recomputation of non-finite results
        sh, sw = p.stride
        dh, dw = p.dilation
        K, Cg, G = p.K, p.Cg, p.groups
        Kg = K // G
        we = np.zeros((K, Cg, pl.Rs * sh, pl.Ss * sw), w.dtype)
        we[:, :, :(p.R - 1) * dh + 1:dh, :(p.S - 1) * dw + 1:dw] = w
        # phase (i, j) of the kernel: taps i, i + sh, ... and j, j + sw, ...; channels
        # ordered (input channel, i, j) as the input's phases (_phase_input)
        ws = (we.reshape(K, Cg, pl.Rs, sh, pl.Ss, sw).transpose(0, 1, 3, 5, 2, 4)
              .reshape(G, Kg, pl.Cs, pl.Rs, pl.Ss))
        # rfft2(ws, s=(Fh, Fw)) over the taps, laid out [Fh, Fw // 2 + 1, G, Cs, Kg]: the
        # transforms run along the leading axes (SciPy takes strided lines), so the
        # frequency-major layouts below are copies of contiguous (Cs, Kg) blocks, and the
        # first pass transforms the Rs kernel rows only (the rest are zeros).
        threads = _threads()
        spec = scipy.fft.rfft(ws.transpose(3, 4, 0, 2, 1), n=pl.Fw, axis=1, workers=threads)
        spec = scipy.fft.fft(spec, n=pl.Fh, axis=0, workers=threads, overwrite_x=True)
        spec = spec.reshape(pl.freqs, G, pl.Cs, Kg)
        kind = contraction_kind(p, pl.Cs)
        self.wr = self.wi = self.U = None
        self.Kh = 0
        if kind == "one":
            self.wr = np.ascontiguousarray(spec.real[:, :, 0].transpose(1, 2, 0))
            self.wi = np.ascontiguousarray(-spec.imag[:, :, 0].transpose(1, 2, 0))
        elif kind == "small":
            self.wr = np.ascontiguousarray(spec.real)
            self.wi = -spec.imag
        else:
            L = lanes(w.dtype)
            Kh = self.Kh = -(-Kg // L) * L
            U = np.zeros((pl.freqs, G, 2, pl.Cs, Kh), w.dtype)
            U[:, :, 0, :, :Kg] = spec.real
            np.negative(spec.imag, out=U[:, :, 1, :, :Kg])
            self.U = U.reshape(-1)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.wr, self.wi, self.U) if a is not None)


def prepare(w, p) -> Spectra:
    """The kernels' spectra for calls like ``p`` (:func:`fastconv.plan`)."""
    return Spectra(np.ascontiguousarray(w, dtype=p.dtype), p, plan(p))


def _threads() -> int:
    return max(1, numba.get_num_threads())


@numba.njit(**PJIT)
def _contract(X, U, Y, G, Cs, Kg, Kh):
    # X: [nb, G * Cs, T, 2 * F] input spectra, real and imaginary parts interleaved;
    # U: flat [F, G, 2 * Cs, Kh], each frequency's conjugated kernel spectra W (Cs x Kg)
    # as [Wr; Wi] (Spectra); Y: [nb, G * Kg, T, 2 * F] out.  Tile m of the frequency
    # gives two rows, [Xr | -Xi] and [Xi | Xr], whose products with [Wr; Wi] are the
    # real and imaginary parts of X W: one panel_gemm per (group, frequency).  The sums
    # run over the 2 * Cs terms in order, so results do not depend on the thread count.
    # One job per (group, block of FREQ_BLOCK frequencies).
    nb, T, F = X.shape[0], X.shape[2], X.shape[3] // 2
    M = nb * T
    L = VECTOR_BYTES // X.itemsize
    C2 = 2 * Cs
    nfb = (F + FREQ_BLOCK - 1) // FREQ_BLOCK
    for job in numba.prange(G * nfb):
        g = job // nfb
        f0 = (job % nfb) * FREQ_BLOCK
        f1 = min(F, f0 + FREQ_BLOCK)
        V = np.empty(2 * M * C2, dtype=X.dtype)
        P = np.empty(2 * M * Kh, dtype=X.dtype)
        for f in range(f0, f1):
            for n in range(nb):
                for c in range(Cs):
                    src = X[n, g * Cs + c]
                    for t in range(T):
                        re = src[t, 2 * f]
                        im = src[t, 2 * f + 1]
                        row = 2 * (n * T + t) * C2
                        V[row + c] = re
                        V[row + Cs + c] = -im
                        V[row + C2 + c] = im
                        V[row + C2 + Cs + c] = re
            panel_gemm(V, 0, U, (f * G + g) * C2 * Kh, P, 0, 2 * M, C2, 0, Kh // L, Kh, L, Kh, L)
            for n in range(nb):
                for k in range(Kg):
                    dst = Y[n, g * Kg + k]
                    for t in range(T):
                        dst[t, 2 * f] = P[2 * (n * T + t) * Kh + k]
                        dst[t, 2 * f + 1] = P[(2 * (n * T + t) + 1) * Kh + k]


@numba.njit(**PJIT)
def _contract_small(X, wr, wi, Y, G, Cs, Kg):
    # As _contract, for fewer output channels per group than a vector's lanes (a panel
    # would be mostly padding): wr, wi: [F, G, Cs, Kg] the kernel spectra's parts.
    # Y[n, g*Kg + k, t, f] = sum_c X[n, g*Cs + c, t, f] * W[g, f, c, k] (complex), the
    # sum in channel order.
    nb, T, F = X.shape[0], X.shape[2], X.shape[3] // 2
    nfb = (F + FREQ_BLOCK - 1) // FREQ_BLOCK
    for job in numba.prange(G * nfb):
        g = job // nfb
        f0 = (job % nfb) * FREQ_BLOCK
        f1 = min(F, f0 + FREQ_BLOCK)
        ar = np.empty(Kg, dtype=wr.dtype)
        ai = np.empty(Kg, dtype=wr.dtype)
        for f in range(f0, f1):
            for n in range(nb):
                for t in range(T):
                    for k in range(Kg):
                        ar[k] = 0
                        ai[k] = 0
                    for c in range(Cs):
                        row = X[n, g * Cs + c, t]
                        a = row[2 * f]
                        b = row[2 * f + 1]
                        vr = wr[f, g, c]
                        vi = wi[f, g, c]
                        for k in range(Kg):
                            ar[k] += a * vr[k] - b * vi[k]
                            ai[k] += a * vi[k] + b * vr[k]
                    for k in range(Kg):
                        out = Y[n, g * Kg + k, t]
                        out[2 * f] = ar[k]
                        out[2 * f + 1] = ai[k]


@numba.njit(**PJIT)
def _contract_one(X, wr, wi, Y, G, Kg):
    # One input channel per group: Y[n, g*Kg + k, t, f] = X[n, g, t, f] * W[g, k, f], with
    # X, Y as in _contract and wr, wi: [G, Kg, F].  One job per (image, group).
    nb, T, F = X.shape[0], X.shape[2], X.shape[3] // 2
    for job in numba.prange(nb * G):
        n = job // G
        g = job % G
        for k in range(Kg):
            vr = wr[g, k]
            vi = wi[g, k]
            for t in range(T):
                src = X[n, g, t]
                dst = Y[n, g * Kg + k, t]
                for f in range(F):
                    a = src[2 * f]
                    b = src[2 * f + 1]
                    dst[2 * f] = a * vr[f] - b * vi[f]
                    dst[2 * f + 1] = a * vi[f] + b * vr[f]


def _phase_input(x, p, pl: Plan):
    """The zero-padded input as ``[N, G * Cs, Hs, Ws]`` phase maps (step 1)."""
    N, C, H, W = x.shape
    sh, sw = p.stride
    pt, pl_ = p.padding[0], p.padding[2]
    Hx, Wx = pl.Hs * sh, pl.Ws * sw
    xp = np.zeros((N, C, Hx, Wx), x.dtype)
    r1, c1 = max(0, min(H, Hx - pt)), max(0, min(W, Wx - pl_))
    xp[:, :, pt:pt + r1, pl_:pl_ + c1] = x[:, :, :r1, :c1]
    if sh == 1 and sw == 1:
        return xp
    return (xp.reshape(N, C, pl.Hs, sh, pl.Ws, sw).transpose(0, 1, 3, 5, 2, 4)
            .reshape(N, C * sh * sw, pl.Hs, pl.Ws))


def _chunk(xs, spectra, p, pl: Plan, y, n0, n1, a0, a1, threads):
    """Tiles of images ``n0:n1``, tile rows ``a0:a1``: transforms, contraction, inverse, store."""
    nb, rows = n1 - n0, a1 - a0
    s = xs.strides
    tiles = np.lib.stride_tricks.as_strided(
        xs[n0:n1, :, a0 * pl.Th:], shape=(nb, xs.shape[1], rows, pl.ntw, pl.Fh, pl.Fw),
        strides=(s[0], s[1], pl.Th * s[2], pl.Tw * s[3], s[2], s[3]), writeable=False)
    X = np.ascontiguousarray(scipy.fft.rfft2(tiles, axes=(-2, -1), workers=threads))
    T, F = rows * pl.ntw, pl.freqs
    Xr = X.view(p.dtype).reshape(nb, xs.shape[1], T, 2 * F)
    Yr = np.empty((nb, p.K, T, 2 * F), p.dtype)
    Kg = p.K // p.groups
    kind = contraction_kind(p, pl.Cs)
    with parallel_section():
        if kind == "one":
            _contract_one(Xr, spectra.wr, spectra.wi, Yr, p.groups, Kg)
        elif kind == "small":
            _contract_small(Xr, spectra.wr, spectra.wi, Yr, p.groups, pl.Cs, Kg)
        else:
            _contract(Xr, spectra.U, Yr, p.groups, pl.Cs, Kg, spectra.Kh)
    Yc = Yr.view(X.dtype).reshape(nb, p.K, rows, pl.ntw, pl.Fh, pl.Fw // 2 + 1)
    out = scipy.fft.irfft2(Yc, s=(pl.Fh, pl.Fw), axes=(-2, -1), workers=threads, overwrite_x=True)
    out = out[..., :pl.Th, :pl.Tw].transpose(0, 1, 2, 4, 3, 5).reshape(
        nb, p.K, rows * pl.Th, pl.ntw * pl.Tw)
    r0 = a0 * pl.Th
    r1 = min(p.P, a1 * pl.Th)
    y[n0:n1, :, r0:r1] = out[:, :, :r1 - r0, :p.Q]


def _spectra(w, p, pl: Plan, auto: bool):
    """The kernels' spectra from the weight cache (built on a miss); with ``auto``, None
    for a one-call build that does not pay (see :func:`run_auto`)."""

    def build(snap):
        if auto and _weight_cache.building_for_one_call():
            from . import fft_pays

            if not fft_pays(p, fresh=True):
                return None
        return Spectra(snap, p, pl)

    return _weight_cache.CACHE.get(
        w, ("fft", pl.Fh, pl.Fw, p.stride, p.dilation, p.groups), build)


def run(x, w, bias, p, y, epi=NONE):
    if y.size:
        run_prepared(x, _spectra(w, p, plan(p), auto=False), bias, p, y, epi)


def run_auto(x, w, bias, p, y, epi=NONE):
    """:func:`run` where ``auto`` chose fft: ``direct`` instead for weights whose spectra
    would serve this call alone (new to it: a training step, a first call) unless the
    cost model predicts fft faster with their transforms
    (:func:`fastconv.cpu.fft_pays` with ``fresh``).  The transforms of every kernel,
    at SciPy's FFT speed, can cost several times the convolution by ``direct``."""
    if y.size == 0:
        return
    spectra = _spectra(w, p, plan(p), auto=True)
    if spectra is None:
        direct.run(x, w, bias, p, y, epi=epi)
    else:
        run_prepared(x, spectra, bias, p, y, epi)


def run_prepared(x, spectra: Spectra, bias, p, y, epi=NONE):
    """The convolution with the kernels' spectra from :func:`prepare` (or the weight cache).

    ``epi`` (NCHW residual) is applied last, in one pass with nothing else to fuse into
    (the tiles' results leave the inverse transforms as a strided copy).
    """
    if y.size == 0:
        return
    pl = plan(p)
    threads = _threads()
    xs = _phase_input(x, p, pl)
    if pl.images:
        for n0 in range(0, p.N, pl.images):
            _chunk(xs, spectra, p, pl, y, n0, min(p.N, n0 + pl.images), 0, pl.nth, threads)
    else:
        for n in range(p.N):
            for a0 in range(0, pl.nth, pl.rows):
                _chunk(xs, spectra, p, pl, y, n, n + 1, a0, min(pl.nth, a0 + pl.rows), threads)
    if not math.isfinite(float(y.sum(dtype=np.float64))):
        # NaN/inf inputs or an overflow: exact propagation
        direct.run(x, spectra.w, bias, p, y, epi=epi)
        return
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    epilogue.apply(y, epi)
