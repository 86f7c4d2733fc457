"""Every setting fastconv reads, in one place: the environment, and the CPU thresholds.

Two kinds of values live here:

* module constants fixed at import: the Numba options every kernel is
  compiled with (``JIT``, ``PJIT``, ``CUDA_JIT``: a kernel's flags come from
  here, never hard-coded, so one variable switches e.g. ``fastmath`` for the
  whole package), the weight cache's bound and the threading layer;
* two settings objects read by Python code at call time, each a dataclass
  whose defaults come from the environment and whose ``reset()`` restores
  them: :data:`CPU` (:class:`CpuSettings`: the workspace bound, the
  thresholds of the CPU ``auto`` rule and of the CPU schedules) and
  :data:`CUDA` (:class:`CudaSettings`: block and tile sizes of the CUDA
  kernels; ``fastconv.cuda._runtime.SETTINGS`` is the same object).  Tests
  change a field and call ``reset()`` afterwards (the ``cpu_settings``
  fixture of ``tests/conftest.py``).

Values that Numba kernels compile in as constants (vector widths, register
blockings, tile groups) are not settings: they stay module constants next to
their kernels.

Variables
---------
FASTCONV_FASTMATH
    "1" lets LLVM reassociate floating-point sums (default "0").  Off by
    default: reassociation changes results with the number of threads and
    voids the error bounds the tests hold.
FASTCONV_CACHE
    "0" disables Numba's on-disk cache (default "1").
FASTCONV_WORKSPACE_MB
    Upper bound, in MiB, on the scratch memory of one im2col or Winograd call
    (default 256; ``CPU.workspace_bytes``).  Work is tiled over batch and
    output rows to respect it.
FASTCONV_WEIGHT_CACHE_MB
    Upper bound, in MiB, on the prepared weights (Winograd-transformed or
    packed) kept between calls whose weights did not change (default 256;
    ``0`` disables the cache).  See :mod:`fastconv._weight_cache`.
FASTCONV_CUDA_BLOCK
    Threads per block edge of the CUDA kernels (default 16); the simulator
    tests shrink it so that multi-block paths run.
FASTCONV_CUDA_REGTILE, FASTCONV_CUDA_BK
    Register tile edge (default 8) and K-slice depth (default 8) of the CUDA
    GEMM kernels (implicit GEMM, Winograd).
FASTCONV_CUDA_DIRECT_K, FASTCONV_CUDA_DIRECT_Q
    Output channels (default 8) and columns (default 2) per thread of the
    CUDA direct kernel.
FASTCONV_CUDA_SPLITK
    Split-K factor of the implicit GEMM (default 0: chosen per call).
FASTCONV_CUDA_WORKSPACE_MB
    Device workspace bound of one CUDA Winograd call (default 1024).
FASTCONV_CACHE_DIR
    Where ``algorithm="tuned"`` keeps its measurements (read by
    :mod:`fastconv.tuning` at call time; default ~/.cache/fastconv).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from dataclasses import dataclass


def _flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


def _int(name: str, default: int, minimum: int = 1) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        v = int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None
    if v < minimum:
        raise ValueError(f"environment variable {name} must be >= {minimum}, got {v}")
    return v


def _reset(settings) -> None:
    for f in dataclasses.fields(settings):
        setattr(settings, f.name, f.default)


_generation = 0


def generation() -> int:
    """A number that changes whenever a field of :data:`CPU` or :data:`CUDA` is set.

    Per-shape decisions memoised on a :class:`fastconv._params.ConvParams`
    (the ``auto`` choice, blocking plans) were derived from the settings of
    their time; ``ConvParams.remembered`` drops them when this number moves,
    so a changed threshold takes effect on the next call of every shape.
    """
    return _generation


def invalidate() -> None:
    """Move :func:`generation` without changing a setting (after a new calibration of
    the cost model's machine constants: memoised ``auto`` choices are recomputed)."""
    global _generation
    _generation += 1


class _Settings:
    """Base of the settings dataclasses: setting a field moves :func:`generation`."""

    def __setattr__(self, name, value):
        global _generation
        object.__setattr__(self, name, value)
        _generation += 1


FASTMATH = _flag("FASTCONV_FASTMATH", False)
CACHE = _flag("FASTCONV_CACHE", True)
#: Bound of the process-wide weight cache (its live value is
#: ``fastconv._weight_cache.CACHE.max_bytes``).
WEIGHT_CACHE_BYTES = _int("FASTCONV_WEIGHT_CACHE_MB", 256, minimum=0) * 2**20


@dataclass
class CpuSettings(_Settings):
    """The CPU's settings and thresholds: one table, read at call time.

    Every threshold of the CPU ``auto`` rule (:mod:`fastconv.cpu`) and every
    byte, tile and cost limit of the CPU schedules' planning code is a field
    here, with a line on what it trades off; ``docs/cpu_auto.md`` says how
    the rule's values were fitted.  Change a field to steer a path (tests do); :meth:`reset`
    restores the defaults (the environment's, for ``workspace_bytes``).
    Switches (``bool`` fields) select an alternative branch that production
    calls also take for other shapes, so both can be checked against each
    other on one shape.
    """

    # --- environment and memory ---------------------------------------------------------------
    #: Scratch bound of one call (FASTCONV_WORKSPACE_MB): larger batch and row slices vs memory.
    workspace_bytes: int = max(1, _int("FASTCONV_WORKSPACE_MB", 256)) * 2**20
    #: Largest work array kept per Python thread: no page faults on reuse vs memory held.
    scratch_keep_bytes: int = 64 * 2**20

    # --- auto rule (fastconv.cpu.auto_rule; clauses as in its module docstring) ---------------
    #: How ``auto`` chooses: "model" (fastconv.cpu.cost's predicted times), "rule" (the
    #: clauses below) or "" (the rule where the target is AVX-512, which it was fitted on
    #: and where it scores higher; the model on every other target).
    auto_method: str = ""
    #: Clause 2: fewest output channels per group to share Winograd's input transforms.
    winograd_min_kg: int = 16
    #: Clause 3: fewest kernel taps (R * S) for which fft is weighed against direct ...
    fft_min_taps: int = 25
    #: ... and the margin its predicted time must beat direct's by (the model's spread).
    fft_over_direct: float = 1.15
    #: Clause 2, dilated: shortest side of its phases' maps (narrower: not one F(4x4) tile).
    dilated_min_side: int = 4
    #: Clause 2a: shorter output side of a large map (many tiles per transformed kernel) ...
    large_map_side: int = 16
    #: ... where this many input channels per group repay the transforms ...
    large_map_cg: int = 32
    #: ... or, from this many channels, ...
    large_map_few_cg: int = 16
    #: ... this many output pixels over the batch (the map, not the reduction, repays them).
    large_map_pixels: int = 3072
    #: Clause 2b: fewest input channels per group on a small map (only deep layers repay) ...
    small_map_cg: int = 64
    #: ... with this shorter side ...
    small_map_side: int = 12
    #: ... or this many 4x4 tiles over the batch ...
    small_map_tiles: int = 16
    #: ... or this shorter side (deeper layers repay the transforms on fewer tiles) ...
    small_map_deep_side: int = 6
    #: ... from this many channels ...
    small_map_deep_cg: int = 128
    #: ... or this shorter side ...
    small_map_deeper_side: int = 3
    #: ... from this many channels ...
    small_map_deeper_cg: int = 256
    #: ... or, on those channels, narrower maps from this many images (one image of a
    #: 2x2 map: direct, unless its weights change every call, as in training).
    small_map_tiny_images: int = 2
    #: Clause 2b's model: reading U once, in tiles' products (F(2x2)'s fewer weights vs F(4x4)).
    u_read_tiles: float = 6.7
    #: ... F(4x4) streaming (no U read): per tile, its 36 products ...
    stream4_tile_cost: int = 36
    #: ... plus, per group of STREAM4_TILES tiles, transforming the kernels in registers again ...
    stream4_group_cost: int = 16
    #: ... plus this fixed cost (gathering the weights).
    stream4_fixed_cost: int = 48
    #: Clause 2b's stream arm: shortest side where F(4x4) may stream instead of direct ...
    stream4_side: int = 3
    #: ... from this many input channels per group ...
    stream4_cg: int = 128
    #: ... when direct's products are this many times its cost (the margin: costs left out).
    stream4_over_direct: float = 1.3
    #: From this many channels (the call's fixed costs weigh more), on one group of tiles, ...
    stream4_cg_64: int = 64
    #: ... with this many channel pairs (fewer leave too few products to repay the transform) ...
    stream4_pairs_64: int = 8192
    #: ... the margin is this (a second group of tiles would transform the kernels again).
    stream4_over_direct_64: float = 2.0
    #: Clause 2c: fewest input channels per group for the few-channel schedule (one: direct).
    few_channel_min_cg: int = 2
    #: Clause 2c: narrowest map (its vectors of 16 tiles more than half full) ...
    few_channel_q: int = 33
    #: ... with this many output channels per group sharing the transforms ...
    few_channel_kg: int = 40
    #: ... or, from this width (more tiles: fixed costs weigh less), ...
    few_channel_wide_q: int = 100
    #: ... this many.
    few_channel_wide_kg: int = 20
    #: algorithm="winograd": shorter side from which F(4x4)'s fewer products beat F(2x2).
    f4x4_min_side: int = 8

    # --- direct schedules (fastconv.cpu.direct: blocked, width, pointwise) ---------------------
    #: Most multiply-adds for the textbook loop (the SIMD paths' packing would cost more).
    simple_max_macs: int = 4096
    #: Clause 1 and direct's 1x1s: fewest channels per group for the pointwise kernel vs im2col.
    pointwise_min_cg: int = 16
    #: Blocked path's per-output overhead in multiply-adds (packing, unpacking) vs the width path.
    blocked_overhead: int = 24
    #: Width path's per-output overhead in multiply-adds (it stores straight into NCHW).
    width_overhead: int = 4
    #: Width path's rate on full lanes relative to the blocked path's (a load per few FMAs).
    width_speed: float = 0.75
    #: Channels path's per-output overhead in multiply-adds (packing, unpacking) vs the width path.
    channels_overhead: int = 12
    #: Blocked path: one micro-kernel call's overhead in pixel slots (wide blocks vs empty slots).
    blocked_call_overhead_px: int = 2
    #: Blocked path: packed weights of one channel chunk (longer reduction vs staying in L1).
    chunk_weight_bytes: int = 40 * 1024
    #: Blocked path: unpadded calls read NCHW in place (False: pack, as padded calls do).
    read_nchw_in_place: bool = True
    #: Blocked path: a strided unpadded 1x1 runs on a subsampled copy (False: read in place).
    subsample_strided_1x1: bool = True
    #: Width path: one item's packed input rows (more rows per item vs staying in L2).
    row_block_bytes: int = 256 * 1024
    #: Width path: strides 1 and 2 load from x directly (False: pack rows, as other strides do).
    width_direct_loads: bool = True
    #: Pointwise path: output-channel blocks per item (pixel vectors reused vs more items).
    pointwise_kblocks: int = 8

    # --- Winograd schedules (fastconv.cpu.winograd.tile_row, winograd.vec) ---------------------
    #: Channel-vectorised path: widest output row (full channel vectors vs the tile-row path).
    vec_max_q: int = 60
    #: Its fused mode's largest U (every item streams all of U; larger: split mode).
    vec_max_u_bytes: int = 12 * 2**20
    #: Split mode: largest V + M of one slice of tiles (U read once per slice vs cache).
    vec_split_slice_bytes: int = 8 * 2**20
    #: Split mode where U is this many times all tiles' V + M (streaming U per item dominates).
    vec_split_min_u_ratio: float = 4.0
    #: Split mode: output-channel blocks per product job (fewer, longer jobs vs balance).
    vec_split_kchunk: int = 4
    #: One-slice split calls transform kernels in the products (False: read a prepared U).
    vec_stream_kernels: bool = True
    #: Most tiles F(4x4) streams (its kernels are transformed again for every group of 4).
    vec_stream4_max_tiles: int = 8
    #: Most tiles F(4x4) streams when its weights are prepared for one call only (new
    #: weights every call, as in training and the gradients' derived convolutions): a kept
    #: U would be written and read once, so streaming pays on more tiles.
    vec_stream4_max_tiles_fresh: int = 48
    #: New kernels on every call (the input gradient's derived convolution): largest map
    #: side on which direct runs instead of an F(4x4) that keeps its transformed kernels
    #: for the call (fastconv.cpu.fresh_weights_rule).
    fresh_direct_max_side: int = 14
    #: Fused mode: target V + M of one item (U read fewer times vs V and M staying in cache).
    vec_item_bytes: int = 8 * 2**20
    #: Fused mode: fewest tiles per item (thinner products waste the micro-kernel).
    vec_min_item_tiles: int = 16
    #: Weight gradient: largest N*P*Q reduced by one GEMM over the unfolded taps
    #: (:func:`fastconv.cpu.grad_gemm.tap_gemm_weight`) instead of the derived convolution;
    #: beyond it the unfold (a strided write per tap and pixel) costs more than it saves.
    grad_gemm_max_pixels: int = 256
    #: Weight gradient as one vectorised reduction per pair of input and output maps
    #: (:mod:`fastconv.cpu.grad_depthwise`) for layers of at most this many pairs.
    grad_pairs_max: int = 16
    #: ... and for strided layers, whose derived convolution (a dilated ``grad_y`` kernel)
    #: runs at a lower rate.
    grad_gemm_max_pixels_strided: int = 640
    #: ... and at any N*P*Q for output maps of at least this many pixels with at most
    #: ``grad_gemm_large_map_taps`` taps (the first layer of a network): the derived
    #: convolution's kernel is then grad_y's whole map, repacked every call ...
    grad_gemm_large_map_pixels: int = 4096
    #: ... and few taps C*R*S (the unfold writes that many values per output pixel).
    grad_gemm_large_map_taps: int = 256
    #: Weight gradient of 3x3 stride-1 layers by Winograd F(3x3, 2x2)
    #: (:mod:`fastconv.cpu.grad_winograd`): fewest input and output channels (with fewer, the
    #: direct sum's register blocks are as fast).
    grad_winograd_min_channels: int = 48
    #: Weight gradient by the tap GEMM: bytes of unfolded input per chunk of output rows
    #: where the whole unfold is larger than two chunks (each chunk is unfolded and
    #: multiplied while it stays in the core's cache, its product added in chunk order).
    grad_gemm_chunk_bytes: int = 256 * 1024
    #: Input gradient: largest N*P*Q done as one GEMM and a col2im
    #: (:func:`fastconv.cpu.grad_gemm.tap_gemm_input`) at stride 1 ...
    grad_input_gemm_max_pixels: int = 64
    #: ... and when strided, where the derived convolution's zero-inserted input
    #: multiplies stride_h * stride_w times more products.
    grad_input_gemm_max_pixels_strided: int = 1024
    #: ... but not for a 3x3 stride-1 layer whose maps are at least this many pixels on
    #: each side ...
    grad_input_gemm_winograd_side: int = 7
    #: ... with at least this many input and output channels, where the derived
    #: convolution's F(4x4) streams its kernel transforms through 4-tile register blocks
    #: (AVX-512) and wastes few products on partial tiles.
    grad_input_gemm_winograd_channels: int = 128
    #: Input gradient with one or two vectors per output row (:mod:`fastconv.cpu.grad_rows`,
    #: maps at most two vectors wide, stride 1): most input channels (the derived convolution's
    #: output maps; more keep the forward kernels busy).
    grad_rows_max_channels: int = 16
    #: Tile-row path: target V + M of one block of tile rows (last-level cache).
    tile_row_block_bytes: int = 8 * 2**20
    #: Tile-row path, fused: most V + M of one item (a core's share of the cache).
    tile_row_item_bytes: int = 4 * 2**20
    #: Tile-row path, fused: largest U (every item reads all of it; larger: phase by phase).
    tile_row_fused_max_u_bytes: int = 16 * 2**20
    #: Tile-row path, fused: fewest tiles per item (the N of its GEMMs).
    tile_row_min_item_tiles: int = 16

    def reset(self) -> None:
        """Back to the defaults (``FASTCONV_WORKSPACE_MB`` for the workspace)."""
        _reset(self)


@dataclass
class CudaSettings(_Settings):
    """Block and tile sizes of the CUDA kernels (compile-time constants of each kernel
    specialisation, chosen when a kernel is built) and the device workspace bound.

    :meth:`fit` lowers ``regtile`` to a divisor of ``block`` and checks that
    ``bk`` fits both; :mod:`fastconv.cuda._runtime` calls it on import (so a
    bad ``FASTCONV_CUDA_*`` value fails there, not at ``import fastconv``).
    """

    #: Threads per block edge of every tiled kernel (FASTCONV_CUDA_BLOCK; 16: 256 threads).
    block: int = _int("FASTCONV_CUDA_BLOCK", 16)
    #: Register tile edge of the GEMM kernels (FASTCONV_CUDA_REGTILE); divides ``block``.
    regtile: int = _int("FASTCONV_CUDA_REGTILE", 8)
    #: Depth of the GEMM kernels' shared-memory K-slices (FASTCONV_CUDA_BK).
    bk: int = _int("FASTCONV_CUDA_BK", 8)
    #: Output channels each thread of the direct kernel accumulates (FASTCONV_CUDA_DIRECT_K).
    direct_k: int = _int("FASTCONV_CUDA_DIRECT_K", 8)
    #: Output columns each thread of the direct kernel accumulates (FASTCONV_CUDA_DIRECT_Q).
    direct_q: int = _int("FASTCONV_CUDA_DIRECT_Q", 2)
    #: Device workspace of one Winograd call (FASTCONV_CUDA_WORKSPACE_MB).
    workspace_bytes: int = _int("FASTCONV_CUDA_WORKSPACE_MB", 1024) * 2**20
    #: Split-K factor of the implicit GEMM (FASTCONV_CUDA_SPLITK; 0: chosen per call).
    splitk: int = _int("FASTCONV_CUDA_SPLITK", 0, minimum=0)

    def reset(self) -> None:
        """Back to the values of the FASTCONV_CUDA_* environment variables (then :meth:`fit`)."""
        _reset(self)
        self.fit()

    def fit(self) -> None:
        """Lower ``regtile`` to divide ``block``; ValueError where ``bk`` does not fit them."""
        TB, RT, BK = self.block, min(self.regtile, self.block), self.bk
        # The GEMM kernels' cooperative loads assume these divisibilities
        # (every thread loads the same number of elements of each tile).
        while TB % RT:
            RT -= 1
        self.regtile = RT
        nt = TB * TB
        if nt % BK or (BK * RT) % TB or nt % (TB * RT):
            raise ValueError(f"FASTCONV_CUDA_BK={BK} does not fit FASTCONV_CUDA_BLOCK={TB} and "
                             f"FASTCONV_CUDA_REGTILE={RT}: need (BLOCK^2) % BK == 0 and "
                             f"(BK * REGTILE) % BLOCK == 0")
        if nt > 1024:
            raise ValueError(f"FASTCONV_CUDA_BLOCK={TB} gives {nt} threads per block; "
                             f"CUDA allows 1024")


#: The CPU settings and thresholds (read at call time).
CPU = CpuSettings()
#: The CUDA settings (``fastconv.cuda._runtime.SETTINGS``).
CUDA = CudaSettings()

# Options for serial and parallel Numba kernels.  nogil lets Python threads
# run kernels concurrently; error_model="numpy" keeps divisions branch-free.
JIT = dict(cache=CACHE, fastmath=FASTMATH, nogil=True, error_model="numpy")
PJIT = dict(JIT, parallel=True)
# Options of every @cuda.jit kernel.
CUDA_JIT = dict(fastmath=FASTMATH)


def _pick_threading_layer() -> str:
    """Choose a Numba threading layer that tolerates concurrent entry.

    Numba's default fallback, ``workqueue``, aborts the process when two
    Python threads enter parallel kernels at once.  TBB and OpenMP do not.
    The user's own NUMBA_THREADING_LAYER always wins.
    """
    import numba

    if os.environ.get("NUMBA_THREADING_LAYER"):
        return numba.config.THREADING_LAYER
    for layer, module in (("tbb", "tbbpool"), ("omp", "omppool")):
        try:
            __import__(f"numba.np.ufunc.{module}")
        except Exception:  # the shared library is missing or broken
            continue
        numba.config.THREADING_LAYER = layer
        return layer
    numba.config.THREADING_LAYER = "workqueue"
    return "workqueue"


THREADING_LAYER = _pick_threading_layer()

# Held around every parallel kernel launch when only the unsafe workqueue
# layer is available: calls are then serialised instead of aborting.
_PARALLEL_LOCK = threading.RLock() if THREADING_LAYER == "workqueue" else None


class _NoLock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def parallel_section():
    """Context manager to wrap parallel kernel launches in."""
    return _PARALLEL_LOCK if _PARALLEL_LOCK is not None else _NoLock()
