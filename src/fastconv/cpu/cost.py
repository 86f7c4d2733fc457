"""A cost model of the CPU algorithms: predicted seconds per call, from the shape and the machine.

For every algorithm and the schedule it would run, :func:`terms` splits a
call into the work it does, each part converted to seconds on this machine
by its :class:`Machine` constants:

``fma``
    multiply-adds, counted with the zero lanes of partly filled vectors,
    divided by the FMA rate of the threads the work can keep busy;
``bytes``
    memory passes that do not stay in cache (packing, unfolding, transformed
    tiles), divided by the streaming bandwidth;
``fixed``
    the call itself and each parallel loop it starts.

The prediction is ``sum(COEF[name] * seconds)`` over the terms: a
``COEF`` entry says how many times slower than the machine's peak that kind
of work runs (1 / efficiency; about 1.1-1.5 for the register-blocked
micro-kernels, more for transforms, which do few multiply-adds per load).
So the formulas are the algorithms' own operation counts, the machine
constants come from :func:`calibrate`, and the ``COEF`` table holds what
neither can know: how close each kind of loop gets to the peak.

``COEF`` has one column per instruction set (the register budget changes the
blockings, so the efficiencies differ): the values are fitted by
``benchmarks/fit_cost_model.py`` on the timings of every algorithm on the
fitting half of :mod:`fastconv.bench.random_layers` and the benchmark suite,
and scored on the other half, which no fit sees; ``docs/cpu_auto.md`` gives the scores.
Targets without a column of their own use the one with the closest vector
width.

Assumptions: the weights repeat between calls (inference, or a plan), so
prepared weights come from the weight cache where they fit it; a call whose
transformed weights do not fit pays their transform every time.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numba
import numpy as np

from .. import _config
from .._config import CPU, PJIT
from . import target as _target
from ._gemm import PANEL_ROWS
from .simd import lanes

#: Inverse efficiencies by instruction set (see the module docstring): each entry
#: multiplies the seconds of one term.  Fitted by benchmarks/fit_cost_model.py, except
#: ``direct_simple`` and ``wino_weight_transform`` (no fitting shape took those terms),
#: ``direct_channels`` (a path added after the fit; set to ``direct_blocked``'s value),
#: ``call`` (every algorithm pays it, so timings cannot tell it apart; 1: the calibrated cost)
#: and the ``fft_*`` entries: fitted by non-negative least squares on relative errors to 64
#: timings of :mod:`fastconv.cpu.fft` per instruction set (14 layers of 5x5 to 31x31
#: kernels, each tiling the plan could choose; ``docs/benchmarks.md``).
COEF = {
    "avx512": {
        # direct
        "direct_blocked": 1.11, "direct_blocked_1x1": 1.18, "direct_width": 1.47,
        "direct_pointwise": 1.35, "direct_channels": 1.11, "direct_simple": 2.0,
        "direct_bytes": 1.03,
        # im2col: BLAS GEMM, its penalties for short dimensions, and the unfold
        "gemm": 1.44, "gemm_small_k": 2.55, "gemm_small_n": 0.0, "gemm_small_m": 0.949,
        "gemm_calls": 0.0952, "unfold_bytes": 0.492,
        # Winograd: products, transforms, transformed-data traffic
        "wino_products": 1.21, "wino_tile_row_products": 0.961, "wino_few_products": 0.0,
        "wino_small_c": 0.0, "wino_small_k": 1.92, "wino_grouped": 2.31,
        "wino_stream_kernels": 9.71, "wino_transform_2": 1.38, "wino_transform_4": 7.4,
        "wino_few_transform": 4.48, "wino_u_bytes": 0.0514, "wino_vm_bytes": 4.9,
        "wino_weight_transform": 4.0,
        # FFT: SciPy's transforms, the per-frequency contraction, spectra traffic
        "fft_transforms": 23.4, "fft_calls": 0.58, "fft_products": 1.69, "fft_bytes": 0.93,
        # every algorithm
        "call": 1.0, "passes": 13.3,
    },
    "avx2": {
        # direct
        "direct_blocked": 1.09, "direct_blocked_1x1": 1.16, "direct_width": 2.83,
        "direct_pointwise": 1.48, "direct_channels": 1.09, "direct_simple": 2.0,
        "direct_bytes": 1.48,
        # im2col: BLAS GEMM, its penalties for short dimensions, and the unfold
        "gemm": 1.66, "gemm_small_k": 1.83, "gemm_small_n": 0.0, "gemm_small_m": 3.89,
        "gemm_calls": 0.105, "unfold_bytes": 1.11,
        # Winograd: products, transforms, transformed-data traffic
        "wino_products": 1.34, "wino_tile_row_products": 0.961, "wino_few_products": 0.0,
        "wino_small_c": 0.0, "wino_small_k": 3.79, "wino_grouped": 3.42,
        "wino_stream_kernels": 2.67, "wino_transform_2": 6.89, "wino_transform_4": 17.8,
        "wino_few_transform": 7.12, "wino_u_bytes": 1.22, "wino_vm_bytes": 4.41,
        "wino_weight_transform": 4.0,
        # FFT: SciPy's transforms, the per-frequency contraction, spectra traffic
        "fft_transforms": 20.8, "fft_calls": 0.47, "fft_products": 3.33, "fft_bytes": 3.41,
        # every algorithm
        "call": 1.0, "passes": 15.9,
    },
}


@dataclass(frozen=True)
class Machine:
    """What one call's terms are divided by (:func:`calibrate` measures them).

    ``fma_rate``: float32 multiply-adds per second of one thread at the FMA
    peak (vectors of the target's width); ``bandwidth``: bytes per second
    all threads stream from memory; ``call_s``: seconds of one ``conv2d``
    call that does no arithmetic; ``pass_s``: seconds to start and join one
    parallel loop; ``cache_bytes``: the last-level cache (what data stays in
    between passes); ``source``: ``"calibrated"`` or ``"default"``.
    """

    fma_rate: float
    bandwidth: float
    call_s: float
    pass_s: float
    isa: str
    cache_bytes: int = 8 * 2**20
    source: str = "default"


#: Machine constants assumed before calibration, by instruction set: for each ISA
#: with a ``COEF`` column, the calibration of the machine the column was fitted on
#: (so that an uncalibrated machine chooses as scored in ``docs/cpu_auto.md``);
#: for the others, lanes x FMA pipes x clock of a typical part (NEON: four 128-bit
#: pipes at 2.6 GHz; SSE: two at 3 GHz) and the AVX2 machine's memory and overheads.
#: Keys: fma_rate (per thread), bandwidth, call_s, pass_s.
DEFAULTS = {
    "avx512": dict(fma_rate=58.7e9, bandwidth=67.6e9, call_s=14.6e-6, pass_s=2.75e-6),
    "avx2": dict(fma_rate=58.5e9, bandwidth=55.0e9, call_s=14.4e-6, pass_s=2.62e-6),
    "neon": dict(fma_rate=4 * 4 * 2.6e9, bandwidth=55.0e9, call_s=14.4e-6, pass_s=2.62e-6),
    "sse": dict(fma_rate=4 * 2 * 3.0e9, bandwidth=55.0e9, call_s=14.4e-6, pass_s=2.62e-6),
}


def default_machine(tgt=None) -> Machine:
    """The :data:`DEFAULTS` of this target's instruction set (SSE's for an unknown one),
    used until :func:`calibrate` has run, with the cache size the OS reports."""
    tgt = tgt or _target.detect()
    return Machine(**DEFAULTS.get(tgt.isa, DEFAULTS["sse"]), isa=tgt.isa,
                   cache_bytes=_cache_size())


def _cache_size() -> int:
    """The largest CPU cache the OS reports (Linux sysfs), else 8 MiB."""
    import glob

    best = 0
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip().upper()
            scale = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
            best = max(best, int(text.rstrip("KMG")) * scale)
        except (OSError, ValueError):
            continue
    return best or 8 * 2**20


def coefficients(isa: str) -> dict:
    """The ``COEF`` column for ``isa`` (the nearest vector width's where it has none)."""
    if isa in COEF:
        return COEF[isa]
    return COEF["avx512" if isa == "avx512" else "avx2"]


def _balanced(items: int, threads: int) -> float:
    """Threads a parallel loop of ``items`` equal items keeps busy, on average."""
    if items <= 0:
        return 1.0
    return items / -(-items // threads)


def _direct_terms(p, m: Machine, threads: int, rate: float, out: dict) -> None:
    from . import direct
    from .direct import blocked as _blocked

    V = lanes(p.dtype)
    e = p.dtype.itemsize
    n = p.Cg * p.R * p.S
    macs = p.N * p.K * p.P * p.Q * n
    path = direct.choose_path(p)
    out["path"] = path
    io = (p.N * p.C * p.H * p.W + p.N * p.K * p.P * p.Q) * e
    if path == "simple":
        out["direct_simple"] = macs * V / rate
        out["passes"] = 0
        return
    if path == "blocked":
        plan = _blocked.blocked_plan(p)
        items = p.N * p.groups * (plan.KBp // plan.NKB) * plan.ntiles
        padded = p.N * p.groups * plan.KBp * V * p.P * p.Q * n
        # 1x1 kernels run the same micro-kernel with a one-tap inner loop over a
        # long channel block: their own efficiency
        key = "direct_blocked_1x1" if p.R * p.S == 1 else "direct_blocked"
        out[key] = padded / (rate * _balanced(items, threads))
        in_place = _blocked._reads_in_place(p)
        Hp, Wp = p.padded_hw
        packed = 0 if in_place else p.N * p.C * Hp * Wp * e * 2
        # every pixel tile of every image reads its output channels' packed weights:
        # from memory where they do not stay in the last-level cache
        weights = p.K * n * e
        if 2 * weights > m.cache_bytes:
            weights *= p.N * plan.ntiles
        out["direct_bytes"] = (io + packed + weights + p.N * p.K * p.P * p.Q * e) / m.bandwidth
        out["passes"] = 1 if in_place else 2
    elif path == "channels":
        # lanes hold V groups (input channels); each of the Kg multipliers reuses them
        Gp = -(-p.groups // V) * V
        items = p.N * (Gp // V)
        out["direct_channels"] = p.N * p.Kg * Gp * p.P * p.Q * n / (rate * _balanced(items, threads))
        out["direct_bytes"] = io / m.bandwidth
        out["passes"] = 1
    elif path == "pointwise":
        PQp = -(-(p.P * p.Q) // V) * V
        items = p.N * p.groups * -(-p.Kg // 4)
        out["direct_pointwise"] = (p.N * p.K * PQp * p.Cg) / (rate * _balanced(items, threads))
        out["direct_bytes"] = io / m.bandwidth
        out["passes"] = 1
    else:  # width
        Qp = -(-p.Q // V) * V
        items = p.N * p.groups * p.P
        out["direct_width"] = p.N * p.K * p.P * Qp * n / (rate * _balanced(items, threads))
        out["direct_bytes"] = io / m.bandwidth
        out["passes"] = 1


def _im2col_terms(p, m: Machine, threads: int, rate: float, out: dict) -> None:
    from . import im2col

    V = lanes(p.dtype)
    e = p.dtype.itemsize
    n = p.Cg * p.R * p.S
    PQ = p.P * p.Q
    gemm = p.N * p.K * PQ * n / (rate * threads)
    out["gemm"] = gemm
    # BLAS reaches its rate on large matrices; each short dimension (output
    # channels, reduction, pixels) costs a share of it, in vectors.
    out["gemm_small_k"] = gemm * V / max(p.Kg, 1)
    out["gemm_small_n"] = gemm * V / max(n, 1)
    out["gemm_small_m"] = gemm * V / max(PQ, 1)
    out["gemm_calls"] = p.N * p.groups * m.pass_s
    io = (p.N * p.C * p.H * p.W + 2 * p.N * p.K * PQ) * e
    if im2col._is_pointwise(p):
        out["unfold_bytes"] = io / m.bandwidth
        out["passes"] = 1
    else:
        out["unfold_bytes"] = (io + 2 * p.N * p.groups * n * PQ * e) / m.bandwidth
        out["passes"] = 2


#: Seconds of one 2-D transform beyond its flops (SciPy's per-transform setup).
FFT_CALL_S = 1e-6


def fft_tile_terms(p, Fh: int, Fw: int, machine: Machine | None = None,
                   threads: int | None = None) -> dict:
    """The terms of :mod:`fastconv.cpu.fft` on ``p`` with FFT lengths ``Fh x Fw``.

    ``fft_transforms``: the input tiles' and output tiles' real transforms,
    ``2.5 M log2 M`` flops each for ``M = Fh * Fw`` points, counted as half
    as many multiply-adds (SciPy's transforms run far below the FMA peak:
    the ``COEF`` entry); ``fft_products``: four real multiply-adds per
    complex one, one per tile, frequency, input channel of a group and
    output channel; ``fft_calls``: a fixed cost per 2-D transform (about a
    microsecond: small tiles are many short transforms); ``fft_bytes``: the
    kernels' spectra, read once per chunk of tiles, the tiles' spectra
    written and read, the padded input and the output; ``passes``: parallel
    loops (a count, as in :func:`terms`).  The kernels' own transforms are
    left out (prepared weights, see the module docstring;
    :func:`fft_weight_seconds`).
    """
    from . import fft

    m = machine or current_machine()
    threads = numba.get_num_threads() if threads is None else int(threads)
    rate = m.fma_rate * (4 / p.dtype.itemsize)
    e = p.dtype.itemsize
    Rs, Ss, Cs = fft.phase_kernel_size(p)
    Th, Tw = Fh - Rs + 1, Fw - Ss + 1
    per_image = -(-p.P // Th) * -(-p.Q // Tw)
    tiles = p.N * per_image
    freqs = Fh * (Fw // 2 + 1)
    transforms, calls = _transform_seconds(tiles * (p.groups * Cs + p.K), Fh * Fw, rate,
                                           threads)
    # the panel contraction pads each group's output channels to whole vectors and runs
    # two rows per tile (real and imaginary) through a register tile of PANEL_ROWS rows
    L = lanes(p.dtype)
    panel = fft.contraction_kind(p, Cs) == "panel"
    Kc = p.groups * -(-p.Kg // L) * L if panel else p.K
    rows = 2 * tiles if panel else PANEL_ROWS
    products = tiles * freqs * Cs * Kc * (-(-rows // PANEL_ROWS) * PANEL_ROWS / rows)
    per_tile = fft.chunk_bytes(p, Rs, Ss, Cs, Fh, Fw)
    chunks = max(1, -(-tiles * per_tile // max(CPU.workspace_bytes, 1)))
    spectra = Kc * Cs * freqs * 2 * e
    io = (p.N * p.groups * Cs * (p.P + Rs - 1) * (p.Q + Ss - 1) + p.N * p.K * p.P * p.Q) * e
    return {"fft_transforms": transforms, "fft_calls": calls,
            "fft_products": 4 * products / (rate * threads),
            "fft_bytes": (chunks * spectra + 2 * tiles * per_tile + io) / m.bandwidth,
            "passes": 3 * chunks}


def _transform_seconds(count: int, points: int, rate: float, threads: int) -> tuple:
    """``(fft_transforms, fft_calls)`` seconds of ``count`` real 2-D transforms of ``points``
    points: ``2.5 M log2 M`` flops each, counted as half as many multiply-adds."""
    flops = count * 2.5 * points * math.log2(max(points, 2))
    return flops / 2 / (rate * threads), count * FFT_CALL_S / threads


def fft_weight_seconds(p, machine: Machine | None = None) -> float:
    """Predicted seconds of :mod:`fastconv.cpu.fft`'s kernel spectra for ``p`` (a transform
    of every kernel, zero-padded to the tile, as the input's: the ``fft_transforms`` and
    ``fft_calls`` terms): what a call pays when the weight cache does not keep them."""
    from . import fft

    m = machine or current_machine()
    c = coefficients(m.isa)
    pl = fft.plan(p)
    transforms, calls = _transform_seconds(p.K * pl.Cs, pl.Fh * pl.Fw,
                                           m.fma_rate * (4 / p.dtype.itemsize),
                                           numba.get_num_threads())
    return c.get("fft_transforms", 1.0) * transforms + c.get("fft_calls", 1.0) * calls


def fft_tile_seconds(p, Fh: int, Fw: int, machine: Machine | None = None) -> float:
    """:func:`fft_tile_terms` weighted by ``COEF``: the predicted seconds of that tiling."""
    m = machine or current_machine()
    c = coefficients(m.isa)
    t = fft_tile_terms(p, Fh, Fw, m)
    t["passes"] *= m.pass_s
    return sum(c.get(k, 1.0) * v for k, v in t.items())


def _fft_terms(p, m: Machine, threads: int, out: dict) -> None:
    from . import fft

    pl = fft.plan(p)
    out.update(fft_tile_terms(p, pl.Fh, pl.Fw, m, threads))
    out["schedule"] = (f"{pl.Fh}x{pl.Fw} FFTs ({pl.nth}x{pl.ntw} tiles), "
                       f"{fft.contraction_kind(p, pl.Cs)}")


def _winograd_terms(p, mm: int, m: Machine, threads: int, rate: float, out: dict) -> None:
    from .._weight_cache import CACHE
    from .winograd import few, phase_params, tile_row, vec as _vec

    V = lanes(p.dtype)
    e = p.dtype.itemsize
    phase_bytes = 0
    if p.dilation != (1, 1):
        # the phases: one pass gathers the input, one scatters the output (see
        # fastconv.cpu.winograd), then the undilated call on them
        phase_bytes = 2 * (p.N * p.C * p.H * p.W + p.N * p.K * p.P * p.Q) * e
        p = phase_params(p)
    A2 = (mm + 2) ** 2
    th, tw = -(-p.P // mm), -(-p.Q // mm)
    tiles = p.N * th * tw
    plan = _vec.plan(p, mm)
    io = (p.N * p.C * p.H * p.W + p.N * p.K * p.P * p.Q) * e
    key = f"wino_transform_{mm}"
    if plan is not None:
        Cp, Kp = -(-p.C // V) * V, -(-p.K // V) * V
        u_bytes = A2 * Cp * Kp * e
        out["schedule"] = f"vec/{plan.mode}"
        if plan.mode == "stream":
            jobs = -(-p.K // V)
            out["wino_products"] = tiles * A2 * Cp * Kp / (rate * _balanced(jobs, threads))
            TB = _vec.STREAM4_TILES if mm == 4 else tiles
            groups = -(-tiles // TB)
            # the kernels' transform, redone per group of tiles, in multiply-add units
            out["wino_stream_kernels"] = groups * Cp * Kp * A2 / (rate * _balanced(jobs, threads))
            out["wino_u_bytes"] = p.K * p.C * 9 * e / m.bandwidth
            out["passes"] = 3
        else:
            items = -(-tiles // plan.tiles)
            # fused: items of tiles run in parallel; split: each slice's products are
            # shared out by blocks of output channels
            par = items if plan.mode == "fused" else items * -(-(Kp // V) // CPU.vec_split_kchunk)
            out["wino_products"] = tiles * A2 * Cp * Kp / (rate * _balanced(par, threads))
            # fused: every item streams all of U; split: U is read once per slice of tiles
            out["wino_u_bytes"] = items * u_bytes / m.bandwidth
            out["passes"] = 1 if plan.mode == "fused" else 3 * items
        out[key] = tiles * A2 * (Cp + Kp) / (rate * threads)
        vm = 0 if plan.mode == "fused" else tiles * A2 * (Cp + Kp) * e * 2
    else:
        u_bytes = A2 * p.K * p.Cg * e
        if mm == 4 and p.Cg <= few.MAX_CG:
            out["schedule"] = "tile_row/few"
            tiles_v = p.N * th * -(-tw // V) * V
            out["wino_few_products"] = tiles_v * A2 * p.Cg * p.K / (rate * threads)
            out["wino_few_transform"] = tiles_v * A2 * (p.C + p.K) / (rate * threads)
            out["passes"] = 1
        else:
            rows = tile_row._fused_rows(p, mm, tw, p.N * th)
            out["schedule"] = "tile_row/" + ("fused" if rows else "phases")
            out["wino_tile_row_products"] = tiles * A2 * p.Cg * p.K / (rate * threads)
            out[key] = tiles * A2 * (p.C + p.K) / (rate * threads)
            items = -(-(p.N * th) // rows) if rows else 1
            out["wino_u_bytes"] = items * u_bytes / m.bandwidth
            out["passes"] = items if rows else 3
        # the fused schedules keep each item's transformed tiles in cache
        vm = 0 if out["schedule"] != "tile_row/phases" else tiles * A2 * (p.C + p.K) * e * 2
    out["wino_vm_bytes"] = (io + vm + phase_bytes) / m.bandwidth
    # The products' GEMMs lose speed on short channel dimensions, as BLAS does.
    prod = sum(out.get(k, 0.0) for k in ("wino_products", "wino_tile_row_products",
                                          "wino_few_products"))
    out["wino_small_c"] = prod * V / p.Cg
    out["wino_small_k"] = prod * V / p.Kg
    # grouped calls (the tile-row path) run one group's GEMMs at a time
    out["wino_grouped"] = prod if p.groups > 1 else 0.0
    if plan is None or plan.mode != "stream":
        if u_bytes > CACHE.max_bytes:  # not kept: transformed on every call
            out["wino_weight_transform"] = p.K * p.Cg * A2 / (rate * threads)


def terms(p, algorithm: str, machine: Machine | None = None, threads: int | None = None) -> dict:
    """The seconds of each kind of work ``algorithm`` does on ``p`` (before ``COEF``).

    Keys are ``COEF`` names (``passes`` holds the number of parallel loops,
    ``call`` one call's fixed cost) plus ``path``/``schedule``: which kernel
    runs.  ``algorithm`` must support ``p``.
    """
    m = machine or current_machine()
    threads = numba.get_num_threads() if threads is None else int(threads)
    rate = m.fma_rate * (4 / p.dtype.itemsize)  # float64: half the lanes
    out: dict = {"call": m.call_s}
    if algorithm == "direct":
        _direct_terms(p, m, threads, rate, out)
    elif algorithm == "im2col":
        _im2col_terms(p, m, threads, rate, out)
    elif algorithm in ("winograd_f2x2_3x3", "winograd_f4x4_3x3"):
        _winograd_terms(p, 2 if algorithm == "winograd_f2x2_3x3" else 4, m, threads, rate, out)
    elif algorithm == "fft":
        _fft_terms(p, m, threads, out)
    else:
        raise ValueError(f"no cost model for algorithm {algorithm!r}")
    out["passes"] = out.get("passes", 0) * m.pass_s
    return out


def predict(p, algorithm: str, machine: Machine | None = None, threads: int | None = None,
            coef: dict | None = None) -> float:
    """Predicted seconds of one call of ``algorithm`` on ``p``."""
    m = machine or current_machine()
    c = coef or coefficients(m.isa)
    return sum(c[k] * v for k, v in terms(p, algorithm, m, threads).items() if k in c)


# --- calibration ---------------------------------------------------------------------------------

_MACHINE = None


def current_machine() -> Machine:
    """The constants the model uses in this process: the calibrated ones stored for this
    machine (see :func:`calibrate`), else :func:`default_machine`."""
    global _MACHINE
    if _MACHINE is None:
        stored = load_calibration()
        _MACHINE = stored if stored is not None else default_machine()
    return _MACHINE


def _cache_key() -> str:
    import fastconv
    from ..bench.machine import cpu_model

    tgt = _target.detect()
    return "|".join(["calibration", f"cpu={cpu_model()}", f"target={tgt.cpu}:{tgt.isa}",
                     f"threads={numba.get_num_threads()}", f"numba={numba.__version__}",
                     f"fastconv={fastconv.__version__}"])


def load_calibration():
    """The :class:`Machine` stored by :func:`calibrate` for this machine, target and
    thread count, or None."""
    from .. import tuning

    entry = tuning._lookup(tuning.cache_path(), _cache_key())
    if not isinstance(entry, dict):
        return None
    try:
        return Machine(**{k: entry[k] for k in ("fma_rate", "bandwidth", "call_s", "pass_s",
                                                "isa", "cache_bytes")}, source="calibrated")
    except (KeyError, TypeError):
        return None


@numba.njit(**PJIT)
def _empty_loop(a):
    for i in numba.prange(a.shape[0]):
        a[i] += 1.0


@numba.njit(**PJIT)
def _copy(src, dst):
    for i in numba.prange(src.shape[0]):
        dst[i] = src[i]


def _best(fn, repeat: int) -> float:
    best = math.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def calibrate(store: bool = True) -> Machine:
    """Measure this machine's constants (about a second once the kernels are compiled)
    and, with ``store``, keep them in the hardware-keyed cache of :mod:`fastconv.tuning`.

    * ``fma_rate``: :func:`fastconv.bench.peak.fma_peak` on one thread;
    * ``bandwidth``: a parallel copy of 64 MiB (read + write bytes);
    * ``pass_s``: an empty parallel loop over one element per thread;
    * ``call_s``: ``conv2d`` on a 1x1x4x4 map (the shape checks, dispatch and
      result allocation every call pays).
    """
    global _MACHINE
    import fastconv

    from ..bench.peak import fma_peak

    # fma_peak's unit is 1e9 floating-point operations per second, two per multiply-add
    rate = fma_peak(threads=1, seconds=0.2) * 1e9 / 2
    src = np.ones(8 * 2**20, np.float64)
    dst = np.empty_like(src)
    _copy(src, dst)
    bandwidth = 2 * src.nbytes / _best(lambda: _copy(src, dst), 5)
    a = np.zeros(numba.get_num_threads())
    _empty_loop(a)
    pass_s = _best(lambda: _empty_loop(a), 50)
    x = np.ones((1, 1, 4, 4), np.float32)
    w = np.ones((1, 1, 1, 1), np.float32)
    fastconv.conv2d(x, w, algorithm="direct")
    call_s = _best(lambda: fastconv.conv2d(x, w, algorithm="direct"), 50)
    m = Machine(fma_rate=rate, bandwidth=bandwidth, call_s=call_s, pass_s=pass_s,
                isa=_target.detect().isa, cache_bytes=_cache_size(), source="calibrated")
    if store:
        from .. import tuning

        entry = asdict(m)
        del entry["source"]
        path, key = tuning.cache_path(), _cache_key()
        with tuning._LOCK:
            tuning._MEMORY.setdefault(str(path), {})[key] = entry
            tuning._write(path, key, entry)
    _MACHINE = m
    _config.invalidate()
    return m


# --- choosing ------------------------------------------------------------------------------------

#: The algorithms the model compares (every CPU algorithm of ``fastconv.cpu.ALGORITHMS``).
CANDIDATES = ("direct", "im2col", "winograd_f2x2_3x3", "winograd_f4x4_3x3", "fft")


def predictions(p, machine: Machine | None = None, coef: dict | None = None) -> dict:
    """Predicted seconds of every candidate that supports ``p`` (name -> seconds).

    Winograd on a dilated call whose phases are narrower than
    ``CPU.dilated_min_side`` (not one F(4x4) tile: most of each tile would be
    padding, which the terms above count only in part) is not a candidate, as
    in the fitted rule.
    """
    from .. import _dispatch
    from .winograd import phase_params

    m = machine or current_machine()
    out = {}
    for name in CANDIDATES:
        if _dispatch.get("cpu", name).supports(p) is not None:
            continue
        if name.startswith("winograd") and p.dilation != (1, 1):
            pp = phase_params(p)
            if min(pp.P, pp.Q) < CPU.dilated_min_side:
                continue
        out[name] = predict(p, name, m, coef=coef)
    return out


def choose(p, machine: Machine | None = None) -> str:
    """The candidate with the lowest predicted time (``direct`` on a tie); ``fft``'s is
    weighed by ``CPU.fft_over_direct`` first, the margin of the fitted rule's clause 3 (its
    predictions spread more than the others')."""
    pred = predictions(p, machine)
    if "fft" in pred:
        pred["fft"] *= CPU.fft_over_direct
    return min(pred, key=lambda n: (pred[n], CANDIDATES.index(n)))
