"""Autotuning: time every algorithm on a configuration once and remember the fastest.

:func:`choose` is to ``conv2d`` what :func:`scipy.signal.choose_conv_method`
is to ``scipy.signal.convolve``: with ``measure=False`` it returns the
``auto`` rule's choice (no timing); with ``measure=True`` it times every
algorithm that supports the configuration and returns the fastest with the
times.  The winners are stored in a JSON file, so a configuration is
timed once per machine, not once per process:

* location: ``$FASTCONV_CACHE_DIR/tuning.json``, else
  ``$XDG_CACHE_HOME/fastconv/tuning.json``, else ``~/.cache/fastconv/tuning.json``;
* key: CPU model, Numba thread count, Numba and fastconv versions, dtype and
  :meth:`ConvParams.key` (shape, stride, padding, dilation, groups, layout):
  an upgrade or another machine never reuses a stale winner;
* concurrent writers (threads or processes) are safe: each write re-reads the
  file, merges its entry and replaces the file atomically (temporary file +
  ``os.replace``), so readers never see a partial file; two processes tuning
  at the same moment may each keep only their own entry (the other is then
  timed again later), never a corrupt file;
* a corrupt or unreadable file is ignored with a ``RuntimeWarning`` and
  rewritten on the next store; an unwritable directory keeps the results in
  memory for the process only.

``conv2d(..., algorithm="tuned")`` uses :func:`tuned_algorithm`.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

from ._params import ConvParams, normalize

CACHE_ENV = "FASTCONV_CACHE_DIR"
CACHE_FILE = "tuning.json"
FORMAT = 1
#: Candidates slower than this multiple of the fastest after one timed call
#: are not timed further: they cannot win, and direct loops on big layers
#: would make tuning take seconds.
PRUNE_FACTOR = 3.0

_LOCK = threading.RLock()
_MEMORY: dict = {}  # path -> {key: entry}
_WARNED: set = set()


def cache_path() -> Path:
    """Where the timed winners are stored (see the module docstring)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        xdg = os.environ.get("XDG_CACHE_HOME")
        root = os.path.join(xdg or os.path.join(os.path.expanduser("~"), ".cache"), "fastconv")
    return Path(root) / CACHE_FILE


def cache_key(p: ConvParams) -> str:
    """The string a timed winner is stored under (machine, versions, threads, params)."""
    import numba

    import fastconv
    from .bench.machine import cpu_model

    parts = [f"cpu={cpu_model()}", f"threads={numba.get_num_threads()}",
             f"numba={numba.__version__}", f"fastconv={fastconv.__version__}",
             f"dtype={p.dtype.name}", f"params={p.key()!r}"]
    return "|".join(parts)


def _read(path: Path) -> dict:
    try:
        with open(path) as f:
            doc = json.load(f)
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or \
                not isinstance(doc.get("entries"), dict):
            raise ValueError(f"not a fastconv tuning cache of format {FORMAT}")
        return doc["entries"]
    except (FileNotFoundError, NotADirectoryError):  # nothing stored yet
        return {}
    except (OSError, ValueError) as exc:  # JSONDecodeError is a ValueError
        if str(path) not in _WARNED:
            _WARNED.add(str(path))
            warnings.warn(f"ignoring the unreadable autotuning cache {path} ({exc}); it will be "
                          f"rewritten", RuntimeWarning, stacklevel=3)
        return {}


def _write(path: Path, key: str, entry: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _read(path)  # merge with what other processes stored meanwhile
        entries[key] = entry
        fd, tmp = tempfile.mkstemp(prefix=".tuning-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"format": FORMAT, "entries": entries}, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as exc:
        if ("write", str(path)) not in _WARNED:
            _WARNED.add(("write", str(path)))
            warnings.warn(f"cannot write the autotuning cache {path} ({exc}); measured choices "
                          f"are kept for this process only (set {CACHE_ENV} to a writable "
                          f"directory)", RuntimeWarning, stacklevel=3)


def _lookup(path: Path, key: str):
    with _LOCK:
        mem = _MEMORY.setdefault(str(path), {})
        if key not in mem:
            entry = _read(path).get(key)
            if entry is not None:
                mem[key] = entry
        return mem.get(key)


def _valid(entry, p: ConvParams) -> bool:
    from ._dispatch import get

    if not isinstance(entry, dict) or not isinstance(entry.get("algorithm"), str):
        return False
    try:
        alg = get("cpu", entry["algorithm"])  # loads the CPU algorithms on a process's first call
    except ValueError:  # not (or no longer) a registered kernel name
        return False
    return alg.supports(p) is None


def clear_cache(disk: bool = False) -> None:
    """Forget the timed choices in memory; with ``disk=True`` also delete the cache file."""
    with _LOCK:
        _MEMORY.clear()
        if disk:
            try:
                cache_path().unlink()
            except FileNotFoundError:
                pass


def measure(p: ConvParams, *, repeat: int = 3, seed: int = 0) -> dict:
    """Median seconds per call of every CPU algorithm that supports ``p``.

    Each algorithm runs twice untimed (Numba compilation; the weight cache
    keeps prepared weights from their second call on), once timed; those
    slower than ``PRUNE_FACTOR`` times the fastest stop there, the rest run
    ``repeat`` interleaved rounds and report their median.  Inputs are
    seeded N(0, 1) arrays of ``p``'s shape and dtype, without bias.
    """
    from . import _dispatch
    from ._api import execute

    if not (isinstance(repeat, int) and repeat >= 1):
        raise ValueError(f"repeat must be an int >= 1, got {repeat!r}")
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p.N, p.C, p.H, p.W)).astype(p.dtype)
    w = rng.standard_normal((p.K, p.Cg, p.R, p.S)).astype(p.dtype)
    w /= math.sqrt(p.Cg * p.R * p.S)
    p_nchw = normalize(x.shape, w.shape, None, p.dtype, stride=p.stride, padding=(
        (p.padding[0], p.padding[1]), (p.padding[2], p.padding[3])), dilation=p.dilation,
        groups=p.groups)
    y = np.empty((p.N, p.K, p.P, p.Q), dtype=p.dtype)
    algs = sorted(_dispatch.supported("cpu", p_nchw), key=lambda a: a.name)

    def call(alg):
        t0 = time.perf_counter()
        execute(alg, x, w, None, p_nchw, y)
        return time.perf_counter() - t0

    first = {}
    for alg in algs:
        call(alg)  # compile / warm caches
        call(alg)  # the weight cache keeps prepared weights from their second call on
        first[alg.name] = call(alg)
    best = min(first.values())
    times = {n: [t] for n, t in first.items()}
    live = [a for a in algs if first[a.name] <= PRUNE_FACTOR * best]
    for _ in range(repeat - 1):
        for alg in live:
            times[alg.name].append(call(alg))
    return {n: float(np.median(t)) for n, t in times.items()}


def tune(p: ConvParams, *, refresh: bool = False, repeat: int = 3):
    """The fastest CPU algorithm for ``p`` by timing, and the times, from the cache when present.

    Returns ``(name, times)``; ``times`` maps algorithm names to seconds.
    ``refresh=True`` measures again and overwrites the stored winner.
    """
    path, key = cache_path(), cache_key(p)
    if not refresh:
        entry = _lookup(path, key)
        if _valid(entry, p):
            return entry["algorithm"], dict(entry.get("times", {}))
    times = measure(p, repeat=repeat)
    name = min(times, key=times.get)
    entry = {"algorithm": name, "times": times,
             "measured": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    with _LOCK:
        _MEMORY.setdefault(str(path), {})[key] = entry
        _write(path, key, entry)
    return name, dict(times)


def tuned_algorithm(p: ConvParams) -> str:
    """The algorithm ``conv2d(..., algorithm="tuned")`` runs: timed once, then cached."""
    return tune(p)[0]


def choose(x_shape, w_shape, *, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
           dtype=np.float32, measure=False, refresh=False, repeat=3):
    """The fastest CPU algorithm for a configuration, by rule or by measurement.

    Parameters
    ----------
    x_shape, w_shape : tuple of int
        Shapes as passed to :func:`fastconv.conv2d` (``x`` in ``layout``;
        ``w`` is ``(K, C/groups, R, S)``).
    stride, padding, dilation, groups, layout
        As in :func:`fastconv.conv2d`.
    dtype : {numpy.float32, numpy.float64}
    measure : bool
        False: the ``auto`` rule's choice, without timing.  True: time every
        algorithm that supports the configuration (after warm-up calls) and
        return the fastest; the winner is cached on disk (see
        :func:`cache_path`) and later calls return it without timing.
    refresh : bool
        With ``measure=True``, ignore a cached result and measure again.
    repeat : int
        Timed rounds per algorithm when measuring (median reported).

    Returns
    -------
    name : str
        A registered CPU algorithm that supports the configuration.
    times : dict or None
        ``{algorithm: seconds per call}`` when ``measure=True`` (the stored
        times for a cached result), else None.

    Notes
    -----
    Modelled on :func:`scipy.signal.choose_conv_method` (``measure=True``)
    and cuDNN's ``cudnnFindConvolutionForwardAlgorithm``.  Timings on a busy
    machine are noisy; ``refresh=True`` re-measures.

    Examples
    --------
    >>> from fastconv.tuning import choose
    >>> choose((1, 64, 56, 56), (64, 64, 3, 3), padding=1)[0] in ("winograd_f4x4_3x3",
    ...     "winograd_f2x2_3x3", "im2col", "direct")
    True
    """
    from ._dispatch import AUTO, concrete
    from ._params import FLOAT_DTYPES

    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype!r}")
    if not isinstance(measure, (bool, np.bool_)):
        raise TypeError(f"measure must be True or False, got {measure!r}")
    p = normalize(x_shape, w_shape, None, dt, stride=stride, padding=padding,
                  dilation=dilation, groups=groups, layout=layout)
    if not measure:
        return concrete(AUTO, p, "cpu"), None
    return tune(p, refresh=refresh, repeat=repeat)
