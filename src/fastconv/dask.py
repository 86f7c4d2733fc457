"""Dask adapter: :func:`fastconv.conv2d` over chunked (possibly distributed) arrays.

Two ways to cut the work, both exact (the result equals the in-memory
:func:`fastconv.conv2d` bit for bit, since every output element is computed
by the same kernel from the same inputs):

* **batch chunks** (``map_blocks``): each block holds whole images (all
  channels, all rows and columns); the channel and spatial axes are
  rechunked to a single chunk automatically.
* **spatial tiles** (``overlap`` + ``map_blocks``): for images too large for
  one worker.  Padding is applied to the whole array first (``da.pad``), tile
  boundaries are moved to multiples of the stride, each tile is extended
  downwards/rightwards by the kernel's reach beyond one stride step
  (``(R - 1) * dilation + 1 - stride`` rows, an asymmetric halo), and a
  ``'valid'`` convolution of each extended tile yields exactly that tile's
  output rows, so nothing needs trimming afterwards.

``dask`` is imported only when :func:`conv2d` is first called.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from ._params import FLOAT_DTYPES, as_float_array, normalize

__all__ = ["conv2d"]


def _writeable(a):
    """``a``, copied if read-only.

    Numba compiles (and caches) a separate specialisation for read-only
    arrays; blocks deserialised by a distributed worker are often read-only,
    and copying one block is far cheaper than that compilation.
    """
    return a if a is None or a.flags.writeable else np.array(a)


def _conv_block(xb, w, b, rb=None, *, stride, padding, dilation, groups, layout, algorithm,
                numba_threads, activation=None):
    """One block: a plain in-memory fastconv call (module level so it pickles); ``rb`` is the
    residual's block of the same output pixels."""
    from . import _api

    args = (_writeable(xb), _writeable(w), _writeable(b))
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout,
              algorithm=algorithm, activation=activation, residual=rb)
    if numba_threads is None:
        return _api.conv2d(*args, **kw)
    import numba

    # set_num_threads is thread-local: it must run in the task's own thread,
    # and it cannot exceed the pool size fixed by NUMBA_NUM_THREADS.
    before = numba.get_num_threads()
    numba.set_num_threads(min(numba_threads, numba.config.NUMBA_NUM_THREADS))
    try:
        return _api.conv2d(*args, **kw)
    finally:
        numba.set_num_threads(before)


def _tile_chunks(inner_bounds, length: int, stride: int, reach: int) -> tuple:
    """Chunk sizes along one padded spatial axis, aligned for an exact tiled conv.

    ``inner_bounds`` are the wanted tile boundaries (padded coordinates).
    Each is moved down to a multiple of ``stride`` so that every tile's first
    output row starts at its first input row; a boundary is dropped when the
    tile before it would be shorter than the halo (``reach - stride``) or one
    stride, or when the last tile would be shorter than the kernel's reach
    (it would have no complete output row).
    """
    halo = max(reach - stride, 0)
    min_tile = max(halo, stride, 1)
    min_last = max(reach, halo)
    kept = [0]
    for bound in sorted(set(inner_bounds)):
        b = (int(bound) // stride) * stride
        if b - kept[-1] >= min_tile and length - b >= min_last:
            kept.append(b)
    kept.append(length)
    return tuple(int(e - s) for s, e in zip(kept[:-1], kept[1:]))


def _out_chunks(chunks: tuple, out_len: int, stride: int) -> tuple:
    """Output rows of each aligned tile: one per stride step, the last tile takes the rest."""
    sizes = [c // stride for c in chunks[:-1]]
    sizes.append(out_len - sum(sizes))
    return tuple(sizes)


def _tiling_bounds(spatial_tiling, x, axes, strides, padded):
    """Wanted inner tile boundaries along the two spatial axes (padded coordinates).

    ``True``/``None`` follow ``x``'s own chunks: an input boundary at row
    ``b`` becomes an output boundary at row ``b // stride`` (so with stride 1
    and "same" padding the result is chunked exactly like ``x``); an int or
    a pair asks for output tiles of that many rows/columns.  An output
    boundary at row ``o`` is the padded input boundary ``o * stride``.
    """
    if spatial_tiling is True or spatial_tiling is None:
        return [[int(e) for e in np.cumsum(x.chunks[a])[:-1]] for a in axes]
    if isinstance(spatial_tiling, numbers.Integral) and not isinstance(spatial_tiling, bool):
        sizes = (int(spatial_tiling),) * 2
    elif (isinstance(spatial_tiling, (tuple, list)) and len(spatial_tiling) == 2
          and all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in spatial_tiling)):
        sizes = tuple(int(v) for v in spatial_tiling)
    else:
        raise TypeError(f"spatial_tiling must be None, True, False, an int or a pair of ints "
                        f"(output tile height, width); got {spatial_tiling!r}")
    if min(sizes) < 1:
        raise ValueError(f"spatial_tiling tile sizes must be >= 1, got {spatial_tiling!r}")
    return [list(range(t * s, n, t * s)) for t, s, n in zip(sizes, strides, padded)]


def conv2d(x, w, bias=None, *, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
           algorithm="auto", spatial_tiling=None, numba_threads=None, activation=None,
           residual=None):
    """2-D convolution (cross-correlation) of a Dask array, block by block with fastconv.

    Builds a lazy graph; nothing runs until ``.compute()`` (on the threaded
    scheduler or a ``distributed`` cluster).  The result equals
    :func:`fastconv.conv2d` on the whole array exactly.

    Parameters
    ----------
    x : dask.array.Array, shape (N, C, H, W) or (N, H, W, C)
        3-D ``(C, H, W)`` / ``(H, W, C)`` is one unbatched image.  float32 or
        float64.  A NumPy array is wrapped with ``da.asarray`` (one chunk).
        Chunks along N are kept (they may be unknown, ``nan``, unless the
        image is tiled spatially);
        the channel axis is always rechunked to a single chunk, since every
        output map reads every input map of its group.
    w : array_like, shape (K, C/groups, R, S)
        In-memory weights (a Dask array is computed first).  They enter the
        graph once, as one ``dask.delayed`` object that every block task
        depends on, so a distributed scheduler ships them to each worker
        once rather than once per task.
    bias : array_like, shape (K,), optional
    stride, padding, dilation, groups, layout, algorithm, activation
        As in :func:`fastconv.conv2d`.
    residual : array_like or dask.array.Array, optional
        Added before the activation, as in :func:`fastconv.conv2d` (the
        result's shape); rechunked like the result, so each block task gets
        the residual of its own output pixels and fuses the epilogue.
    spatial_tiling : None, bool, int or (int, int)
        How the H and W axes are cut.

        * ``None`` (default): tile if ``x`` already has several chunks along
          H or W, otherwise process whole images.
        * ``False``: whole images per block; H and W are rechunked to one
          chunk each (each block then needs a full image in memory).
        * ``True``: tile along ``x``'s own H/W chunks (output boundaries at
          the input boundaries divided by the stride: with stride 1 and
          ``"same"`` padding the result is chunked like ``x``).
        * ``t`` or ``(th, tw)``: output tiles of ``th`` x ``tw`` pixels
          (the result is chunked so along P and Q; input tiles are
          ``th * stride`` rows plus the halo).

        Tile boundaries taken from ``x``'s chunks are moved down to multiples
        of the stride, and a tile shorter than the kernel's halo (or a last
        tile shorter than the kernel's reach) is merged into its neighbour,
        so the tiles may differ slightly from the requested ones.
    numba_threads : int, optional
        Numba threads each block's kernel may use (``numba.set_num_threads``
        inside the task, restored afterwards; capped at the worker's
        ``NUMBA_NUM_THREADS``).  Set it to ``cores // concurrent tasks`` so
        that Dask's threads times Numba's threads do not exceed the cores:
        e.g. ``1`` with the default threaded scheduler (one task per core),
        or ``cores // n_workers`` for single-threaded workers.  ``None``
        (default) leaves Numba's setting alone.  Results do not depend on it.

    Returns
    -------
    y : dask.array.Array, shape (N, K, P, Q) or (N, P, Q, K)
        dtype ``np.result_type(x, w, bias)``; chunked like ``x`` along N and
        (when tiled) along P and Q.

    Raises
    ------
    TypeError, ValueError
        When the graph is built, for every argument :func:`fastconv.conv2d`
        rejects, and for unknown chunk sizes along C, H or W, or along N
        with spatial tiling (call ``x.compute_chunk_sizes()`` first).

    Notes
    -----
    Spatial tiling: with padded input height ``Hp``, kernel reach
    ``r = (R - 1) * dilation + 1`` and stride ``s``, output row ``p`` reads
    padded rows ``[p s, p s + r)``.  A tile of padded rows ``[a, a')`` with
    ``a`` and ``a'`` multiples of ``s`` owns output rows ``[a/s, a'/s)``
    and reads rows ``[a, a' + r - s)``: it needs a halo of ``max(r - s, 0)``
    rows from the tile below only (the overlap is asymmetric), and a
    ``'valid'`` convolution of the extended tile gives exactly its rows.
    The last tile owns the remaining ``P - a/s`` rows.  This is the
    overlap-save method (Oppenheim & Schafer, *Discrete-Time Signal
    Processing*, 3rd ed., section 8.7.3) in two dimensions, with strides.
    Zero padding is materialised once for the whole array by ``da.pad``.

    Each block calls the multi-threaded Numba kernels; see
    ``docs/frameworks_dask.md`` for sharing cores between Numba threads and
    Dask workers.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> import fastconv, fastconv.dask as fd
    >>> x = da.ones((4, 2, 32, 32), chunks=(2, 2, 16, 16))
    >>> w = np.ones((3, 2, 3, 3))
    >>> y = fd.conv2d(x, w, padding=1)
    >>> y.chunks
    ((2, 2), (3,), (16, 16), (16, 16))
    >>> bool((y.compute() == fastconv.conv2d(x.compute(), w, padding=1)).all())
    True
    """
    import dask
    import dask.array as da

    if not isinstance(x, da.Array):
        x = da.asarray(as_float_array(x, "x"))
    if np.dtype(x.dtype) not in FLOAT_DTYPES:
        raise TypeError(f"x must have dtype float32 or float64, got {x.dtype}; cast explicitly, "
                        f"e.g. x.astype(np.float32)")
    if isinstance(w, da.Array):
        w = w.compute()
    if isinstance(bias, da.Array):
        bias = bias.compute()
    w = as_float_array(w, "w")
    b = None if bias is None else as_float_array(bias, "bias")
    dtype = np.result_type(*(a.dtype for a in (x, w, b) if a is not None))

    if x.ndim == 3:
        r = None if residual is None else (residual[None] if isinstance(residual, da.Array)
                                            else np.asarray(residual)[None])
        y = conv2d(x[None], w, bias, stride=stride, padding=padding, dilation=dilation,
                   groups=groups, layout=layout, algorithm=algorithm, spatial_tiling=spatial_tiling,
                   numba_threads=numba_threads, activation=activation, residual=r)
        return y[0]
    if x.ndim != 4:
        # normalize gives the same message as the in-memory call
        normalize(x.shape, w.shape, None if b is None else b.shape, dtype, stride=stride,
                  padding=padding, dilation=dilation, groups=groups, layout=layout)

    shape = list(x.shape)
    if any(isinstance(d, float) and math.isnan(d) for d in shape[1:]):
        raise ValueError(f"x has unknown chunk sizes along its channel or spatial axes (shape "
                         f"{tuple(shape)}); call x.compute_chunk_sizes() first")
    unknown_n = isinstance(shape[0], float) and math.isnan(shape[0])
    # Validate one image: the batch size enters no rule (its chunks pass
    # through), and normalize's memory check must not refuse a lazy batch
    # larger than this machine's RAM (with spatial tiling, not even one image
    # need fit).  Each block is checked again, against
    # the worker's memory, by the in-memory conv2d that computes it.
    shape[0] = 1
    p = normalize(shape, w.shape, None if b is None else b.shape, dtype, stride=stride,
                  padding=padding, dilation=dilation, groups=groups, layout=layout,
                  check_memory=not spatial_tiling)
    from ._dispatch import resolve
    resolve(algorithm, p, "cpu")  # a named algorithm that cannot run fails now, not in a worker
    from ._epilogue import check_activation

    activation = check_activation(activation)
    if residual is not None:
        if not isinstance(residual, da.Array):
            residual = da.asarray(as_float_array(residual, "residual"))
        if np.dtype(residual.dtype) not in FLOAT_DTYPES:
            raise TypeError(f"residual must have dtype float32 or float64, got {residual.dtype}")
        want = list(p.output_shape)
        want[0] = x.shape[0]
        if tuple(residual.shape) != tuple(want):
            raise ValueError(f"residual must have the result's shape {tuple(want)}, got "
                             f"{tuple(residual.shape)}")

    if numba_threads is not None:
        if not isinstance(numba_threads, numbers.Integral) or isinstance(numba_threads, bool):
            raise TypeError(f"numba_threads must be None or an int, got {numba_threads!r}")
        if numba_threads < 1:
            raise ValueError(f"numba_threads must be >= 1, got {numba_threads}")
        numba_threads = int(numba_threads)
    if spatial_tiling is not None and not isinstance(spatial_tiling, (bool, numbers.Integral,
                                                                      tuple, list)):
        raise TypeError(f"spatial_tiling must be None, True, False, an int or a pair of ints; "
                        f"got {spatial_tiling!r}")
    c_axis, h_axis, w_axis = (1, 2, 3) if layout == "NCHW" else (3, 1, 2)
    if spatial_tiling is None:
        tile = len(x.chunks[h_axis]) > 1 or len(x.chunks[w_axis]) > 1
    else:
        tile = spatial_tiling is not False

    # Weights and bias enter the graph once; every block task depends on these keys.
    wd = dask.delayed(np.ascontiguousarray(w), pure=True)
    bd = None if b is None else dask.delayed(np.ascontiguousarray(b), pure=True)
    meta = np.empty((0, 0, 0, 0), dtype=dtype)
    common = dict(stride=p.stride, dilation=p.dilation, groups=p.groups, layout=layout,
                  algorithm=algorithm, numba_threads=numba_threads, activation=activation)

    def blocks(xs, chunks):
        """The arrays map_blocks pairs block by block: the input tiles and, rechunked to the
        result's chunks (the same block grid), the residual.  map_blocks matches blocks by
        index (it does not align chunks), so both chunkings stay."""
        if residual is None:
            return (xs, wd, bd)
        return (xs, wd, bd, residual.rechunk(chunks))

    def out_chunks(pq_chunks):
        k = (p.K,)
        if layout == "NCHW":
            return (x.chunks[0], k) + tuple(pq_chunks)
        return (x.chunks[0],) + tuple(pq_chunks) + (k,)

    if not tile:
        xs = x.rechunk({c_axis: -1, h_axis: -1, w_axis: -1})
        pt, pb, pl, pr = p.padding
        chunks = out_chunks(((p.P,), (p.Q,)))
        return da.map_blocks(_conv_block, *blocks(xs, chunks), padding=((pt, pb), (pl, pr)),
                             chunks=chunks, dtype=dtype, meta=meta, **common)

    pt, pb, pl, pr = p.padding
    bounds = _tiling_bounds(spatial_tiling, x, (h_axis, w_axis), p.stride, p.padded_hw)
    if unknown_n:
        raise ValueError("spatial tiling needs known batch chunk sizes (dask's pad and overlap "
                         "slice every block); call x.compute_chunk_sizes() first, or pass "
                         "spatial_tiling=False to process whole images")
    if any(p.padding):
        pad_width = [(0, 0)] * 4
        pad_width[h_axis], pad_width[w_axis] = (pt, pb), (pl, pr)
        xp = da.pad(x, pad_width, mode="constant", constant_values=0)
    else:
        xp = x
    Hp, Wp = p.padded_hw
    reach = ((p.R - 1) * p.dilation[0] + 1, (p.S - 1) * p.dilation[1] + 1)
    hc = _tile_chunks(bounds[0], Hp, p.stride[0], reach[0])
    wc = _tile_chunks(bounds[1], Wp, p.stride[1], reach[1])
    target = list(xp.chunks)
    target[c_axis], target[h_axis], target[w_axis] = (p.C,), hc, wc
    xp = xp.rechunk(tuple(target))
    depth = {0: 0, c_axis: 0,
             h_axis: (0, max(reach[0] - p.stride[0], 0)),
             w_axis: (0, max(reach[1] - p.stride[1], 0))}
    xo = da.overlap.overlap(xp, depth=depth, boundary="none", allow_rechunk=False)
    pq = (_out_chunks(hc, p.P, p.stride[0]), _out_chunks(wc, p.Q, p.stride[1]))
    chunks = out_chunks(pq)
    return da.map_blocks(_conv_block, *blocks(xo, chunks), padding=0, chunks=chunks, dtype=dtype,
                         meta=meta, **common)
