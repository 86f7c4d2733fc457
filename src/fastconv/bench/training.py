"""``python -m fastconv bench --training``: a training step and both gradients against torch autograd.

Method, per layer of the suite (float32, CPU, torch on as many threads as
Numba):

1. Seeded inputs (:meth:`Layer.arrays`) and a seeded standard-normal
   output gradient ``gy``; the torch tensors share their memory
   (``torch.from_numpy``) and are made once, outside the timed region.
2. Six candidates, three parts with fastconv and torch each:

   * ``step``: ``conv2d`` forward then ``backward(gy)`` through autograd,
     with ``x``, ``w`` and the bias as leaf tensors that require gradients
     (``fastconv.torch.conv2d`` against ``torch.nn.functional.conv2d``;
     the leaves' ``.grad`` is reset before every call on both sides);
   * ``grad_input``: :func:`fastconv.conv2d_grad_input` on NumPy arrays
     against ``torch.nn.grad.conv2d_input``;
   * ``grad_weight``: :func:`fastconv.conv2d_grad_weight` against
     ``torch.nn.grad.conv2d_weight``.

   Before every call but its first, of every candidate alike, one element
   of ``w`` and one of ``gy`` take a new value (:class:`_AsInTraining`), as an optimiser
   step and a new batch would give them: weights that never change would
   let fastconv's weight cache (:mod:`fastconv._weight_cache`) serve the
   derived convolutions' prepared kernels, which training never sees.
3. Timing as :func:`fastconv.bench.runner.bench_layer` does it: each
   candidate is called once on the reference values (Numba compilation,
   oneDNN initialisation, the accuracy check), then calibrated to
   ``number`` calls per round of at least ``min_round_s``; ``repeat``
   interleaved rounds follow, in which every
   candidate runs one untimed call (the previous candidate's worker threads
   go idle) and then ``number`` timed calls.  Medians per call.
4. Every result (fastconv's and torch's float32 ones alike) is compared with
   a float64 torch autograd reference: ``max |a - ref| / max |ref|``, the
   largest over a candidate's outputs (input, weight and bias gradients for
   the step).
5. Per part, the ratio is torch's median over fastconv's (> 1: fastconv is
   faster), both timed in this process.

The network step trains a ResNet-18 in torchvision's layout
(:func:`resnet18`) once with ``torch.nn.Conv2d`` and once with every
convolution converted by :func:`fastconv.torch.convert`, from the same
initial weights: one step is ``zero_grad``, forward, cross-entropy,
backward and an SGD update.  The two models alternate, each timed step after
one untimed step of the same model, for ``max(repeat, 3)`` rounds; before
timing, one forward and backward pass of float64 copies of both from
identical weights gives the agreement of the convolution weight gradients
(``max |g_fc - g_torch| / max |g_torch|`` and the normwise ratio, the largest
over the convolutions; in float64 because float32 models may part at a ReLU,
see :data:`NET_WARN`), and one float32 forward pass the two losses.

torch is imported inside the functions that need it, never by importing
this module.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .layers import Layer
from .runner import BLAS_PARK_S, _calibrate, _geomean

#: The three parts timed per layer, in table order.
PARTS = ("step", "grad_input", "grad_weight")
#: The two sides of each part; the ratio is ``torch`` median / ``fastconv`` median.
SIDES = ("fastconv", "torch")
#: Images per network step (small enough for a quick run on a few cores).
NET_BATCH = 8
#: Height and width of the network's input images (channels: 3).
NET_SIZE = 64
#: The network timing runs at least this many rounds, whatever ``repeat`` is.
NET_MIN_ROUNDS = 3
#: The network of :func:`bench_network`: ResNet-18's widths and blocks, 10 classes.
NET_DEFAULTS = dict(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), classes=10,
                    size=NET_SIZE, batch=NET_BATCH)
#: Float32 gradients of a single layer agree with the float64 reference far
#: more closely than this; a larger error is reported as a warning.
ERROR_WARN = 1e-2
#: The network's gradient agreement (computed in float64, where rounding is
#: ~1e-16 of the terms) is reported as a warning above this.  The float64 pass
#: is the check because two correct float32 models can part at a ReLU: a
#: pre-activation within float32 rounding of zero is positive in one model and
#: not in the other, which changes that element's gradient by the full incoming
#: gradient and, through batch norm's backward pass, every gradient of that
#: channel upstream by a fraction of it.
NET_WARN = 1e-8
SCHEMA_VERSION = 1


@dataclass
class Candidate:
    """Timings of one candidate (``part/side``) on one layer, seconds per call."""

    name: str
    times: list
    number: int
    errors: dict = field(default_factory=dict)  # output name -> max |a - ref| / max |ref|

    @property
    def median(self) -> float:
        return float(np.median(self.times)) if self.times else float("nan")

    @property
    def error(self) -> float:
        """The largest relative error over this candidate's outputs."""
        return max(self.errors.values()) if self.errors else float("nan")


@dataclass
class TrainingLayerResult:
    layer: Layer
    candidates: dict  # "part/side" -> Candidate, in timing order
    auto: str = ""  # the forward algorithm fastconv's auto chose

    def median(self, part: str, side: str) -> float:
        return self.candidates[f"{part}/{side}"].median

    def ratio(self, part: str) -> float:
        """torch median / fastconv median of ``part`` (> 1: fastconv is faster)."""
        return self.median(part, "torch") / self.median(part, "fastconv")

    def error(self, side: str) -> float:
        """The largest relative error of ``side`` over the three parts."""
        return max(self.candidates[f"{p}/{side}"].error for p in PARTS)


@dataclass
class NetworkResult:
    """Timings (seconds per step) and gradient agreement of the network step."""

    config: dict
    times: dict  # side -> [seconds per step]
    grad_agreement: float  # max over conv weights of max|g_fc - g_torch| / max|g_torch|
    losses: dict  # side -> float32 loss from the initial weights
    params: int = 0
    convs: int = 0
    grad_agreement_norm: float = float("nan")  # the same with ||g_fc - g_torch|| / ||g_torch||

    def median(self, side: str) -> float:
        return float(np.median(self.times[side]))

    @property
    def ratio(self) -> float:
        return self.median("torch") / self.median("fastconv")


@dataclass
class TrainingResult:
    layers: list  # TrainingLayerResult
    network: NetworkResult | None
    machine: dict
    commit: dict
    options: dict

    def summary(self) -> dict:
        """Geometric-mean and minimum ratio per part, the largest errors, the network ratio."""
        out = {"layers": len(self.layers)}
        for part in PARTS:
            ratios = [r.ratio(part) for r in self.layers]
            ok = [v for v in ratios if math.isfinite(v) and v > 0]
            out[part] = {"geomean": _geomean(ok),
                         "min": min(ok) if ok else float("nan"),
                         "max": max(ok) if ok else float("nan"),
                         "min_layer": (self.layers[ratios.index(min(ok))].layer.name
                                       if ok else None)}
        for side in SIDES:
            errs = [r.error(side) for r in self.layers]
            out[f"max_error_{side}"] = max(errs) if errs else float("nan")
        if self.network is not None:
            n = self.network
            out["network"] = {"fastconv_s": n.median("fastconv"), "torch_s": n.median("torch"),
                              "ratio": n.ratio, "grad_agreement": n.grad_agreement,
                              "grad_agreement_norm": n.grad_agreement_norm}
        return out


# --------------------------------------------------------------------------
# Per layer
# --------------------------------------------------------------------------

def _rel_error(a, ref) -> float:
    """``max |a - ref| / max |ref|`` (1 in the denominator when ``ref`` is all zero)."""
    a = np.asarray(a.detach().numpy() if hasattr(a, "detach") else a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    scale = float(np.max(np.abs(ref))) or 1.0
    return float(np.max(np.abs(a - ref))) / scale


def _references(x, w, b, gy, kw) -> dict:
    """The input, weight and bias gradients in float64 through torch autograd."""
    import torch
    import torch.nn.functional as F

    xd, wd, bd = (torch.from_numpy(a).double().requires_grad_(True) for a in (x, w, b))
    F.conv2d(xd, wd, bd, **kw).backward(torch.from_numpy(gy).double())
    return {"grad_x": xd.grad.numpy(), "grad_w": wd.grad.numpy(), "grad_b": bd.grad.numpy()}


class _AsInTraining:
    """Gives ``w.flat[0]`` and ``gy.flat[0]`` a value not seen in the last thousand calls
    (within 1e-3 of the original, in place: the torch tensors share the memory), so no
    call meets the weights or output gradient of the call before it; :meth:`restore`
    puts the original values back."""

    def __init__(self, w, gy):
        self.arrays = (w, gy)
        self.originals = (float(w.flat[0]), float(gy.flat[0]))
        self.count = 0

    def renew(self):
        self.count = self.count % 1000 + 1
        for a, v in zip(self.arrays, self.originals):
            a.flat[0] = v + 1e-6 * self.count

    def restore(self):
        for a, v in zip(self.arrays, self.originals):
            a.flat[0] = v

    def wrap(self, fn):
        """``fn`` called after :meth:`renew`."""
        def run():
            self.renew()
            return fn()
        return run


def _layer_calls(x, w, b, gy, kw) -> dict:
    """The six zero-argument candidates; each returns ``{output name: array or tensor}``."""
    import torch
    import torch.nn.functional as F

    import fastconv
    import fastconv.torch as fct

    tx, tw, tb = (torch.from_numpy(a).requires_grad_(True) for a in (x, w, b))
    tgy = torch.from_numpy(gy)
    tx_d, tw_d = tx.detach(), tw.detach()  # same memory, outside autograd

    def step(conv):
        def run():
            tx.grad = tw.grad = tb.grad = None
            conv(tx, tw, tb, **kw).backward(tgy)
            return {"grad_x": tx.grad, "grad_w": tw.grad, "grad_b": tb.grad}
        return run

    return {
        "step/fastconv": step(fct.conv2d),
        "step/torch": step(F.conv2d),
        "grad_input/fastconv":
            lambda: {"grad_x": fastconv.conv2d_grad_input(gy, w, x.shape, **kw)},
        "grad_input/torch":
            lambda: {"grad_x": torch.nn.grad.conv2d_input(x.shape, tw_d, tgy, **kw)},
        "grad_weight/fastconv":
            lambda: {"grad_w": fastconv.conv2d_grad_weight(x, gy, w.shape, **kw)},
        "grad_weight/torch":
            lambda: {"grad_w": torch.nn.grad.conv2d_weight(tx_d, w.shape, tgy, **kw)},
    }


def bench_training_layer(layer: Layer, *, repeat: int = 5, seed: int = 0,
                         min_round_s: float = 0.02, progress=None,
                         timer=time.perf_counter) -> TrainingLayerResult:
    """Time the six candidates on one float32 layer (see the module docstring).

    ``progress(step)`` is called after the warm-up and after each round.
    The caller sets the thread counts (:func:`run_training` does).
    """
    from .._dispatch import auto_choice

    p = layer.params(np.float32)
    x, w, b = layer.arrays(np.float32, seed)
    gy = np.random.default_rng(seed + 1).standard_normal(
        (p.N, p.K, p.P, p.Q)).astype(np.float32)
    kw = layer.conv_kwargs
    refs = _references(x, w, b, gy, kw)
    fresh = _AsInTraining(w, gy)
    calls = {}
    cands = {}
    for name, fn in _layer_calls(x, w, b, gy, kw).items():  # warm-up: compile, check, calibrate
        fresh.restore()
        out = fn()  # on the references' values
        errors = {k: _rel_error(v, refs[k]) for k, v in out.items()}
        calls[name] = fresh.wrap(fn)
        cands[name] = Candidate(name, [], _calibrate(calls[name], min_round_s), errors)
    if progress:
        progress(1)
    time.sleep(BLAS_PARK_S)  # fastconv's GEMM paths may have left OpenBLAS workers spinning
    for _ in range(repeat):
        for name, fn in calls.items():
            number = cands[name].number
            fn()  # settle: the previous candidate's thread pool may still be spinning
            t0 = timer()
            for _ in range(number):
                fn()
            cands[name].times.append((timer() - t0) / number)
        if progress:
            progress(1)
    return TrainingLayerResult(layer, cands, auto_choice(p, "cpu"))


# --------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _resnet_classes():
    """``(BasicBlock, ResNet)``: torch modules defined on first use, so torch loads lazily."""
    from torch import nn

    class BasicBlock(nn.Module):
        """Two 3x3 convolutions with batch norm and a residual connection (torchvision's)."""

        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.downsample = None
            if stride != 1 or c_in != c_out:
                self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                                nn.BatchNorm2d(c_out))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class ResNet(nn.Module):
        """Stem, four stages of basic blocks, global average pool, linear classifier."""

        def __init__(self, widths, blocks, classes):
            super().__init__()
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            c_in, stages = widths[0], []
            for i, (width, n) in enumerate(zip(widths, blocks)):
                stride = 1 if i == 0 else 2
                layers = []
                for j in range(n):
                    layers.append(BasicBlock(c_in, width, stride if j == 0 else 1))
                    c_in = width
                stages.append(nn.Sequential(*layers))
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(c_in, classes)
            for m in self.modules():  # torchvision's initialisation
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.ones_(m.weight)
                    nn.init.zeros_(m.bias)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(self.avgpool(x).flatten(1))

    return BasicBlock, ResNet


def resnet18(widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), classes=10, seed: int = 0):
    """A ResNet-18 in torchvision's layout (``torchvision.models.resnet18``), without torchvision.

    7x7 stride-2 stem convolution (3 -> ``widths[0]``, padding 3, no bias),
    batch norm, ReLU and a 3x3 stride-2 max pool (padding 1); four stages of
    ``blocks[i]`` basic blocks of width ``widths[i]``, the first block of
    stages 2-4 at stride 2 with a 1x1 stride-2 convolution and batch norm on
    the shortcut; adaptive average pool; a linear layer to ``classes``
    outputs.  Weights are initialised as torchvision does, from ``seed``
    (the global torch generator is left as it was).
    """
    if len(widths) != 4 or len(blocks) != 4:
        raise ValueError(f"widths and blocks need 4 entries (one per stage), got {widths!r} "
                         f"and {blocks!r}")
    import torch

    _, ResNet = _resnet_classes()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ResNet(tuple(widths), tuple(blocks), int(classes))


def _net_config(net_config) -> dict:
    cfg = dict(NET_DEFAULTS)
    unknown = set(net_config or ()) - set(cfg)
    if unknown:
        raise ValueError(f"unknown net_config key(s) {sorted(unknown)}; keys are "
                         f"{', '.join(cfg)}")
    cfg.update(net_config or {})
    cfg["widths"], cfg["blocks"] = tuple(cfg["widths"]), tuple(cfg["blocks"])
    return cfg


def bench_network(net_config=None, *, repeat: int = 5, seed: int = 0, progress=None,
                  timer=time.perf_counter) -> NetworkResult:
    """Time one SGD training step of :func:`resnet18` with fastconv's and torch's convolutions.

    ``net_config``: keys of :data:`NET_DEFAULTS` to override (``widths``,
    ``blocks``, ``classes``, ``size``, ``batch``).  ``progress(step)`` is
    called after the agreement pass and after each round.
    """
    import torch
    import torch.nn.functional as F

    import fastconv.torch as fct

    cfg = _net_config(net_config)
    base = resnet18(cfg["widths"], cfg["blocks"], cfg["classes"], seed=seed)
    models = {"fastconv": fct.convert(copy.deepcopy(base)), "torch": copy.deepcopy(base)}
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(
        rng.standard_normal((cfg["batch"], 3, cfg["size"], cfg["size"])).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, cfg["classes"], cfg["batch"]))
    for m in models.values():
        m.train()

    # Agreement: one forward and backward pass of float64 copies of both from identical
    # weights (float32 copies can part at a ReLU, see NET_WARN); the float32 losses too.
    losses, grads = {}, {}
    for side, m in models.items():
        with torch.no_grad():
            losses[side] = float(F.cross_entropy(m(images), labels))
        m64 = copy.deepcopy(m).double()
        F.cross_entropy(m64(images.double()), labels).backward()
        grads[side] = {n: mod.weight.grad.detach() for n, mod in m64.named_modules()
                       if isinstance(mod, torch.nn.Conv2d)}
    agreement = max(_rel_error(grads["fastconv"][n], grads["torch"][n].numpy())
                    for n in grads["torch"])
    normwise = max(float(torch.linalg.vector_norm(grads["fastconv"][n] - g)
                         / (torch.linalg.vector_norm(g) or 1.0))
                   for n, g in grads["torch"].items())
    if progress:
        progress(1)

    opts = {side: torch.optim.SGD(m.parameters(), lr=0.01) for side, m in models.items()}

    def step(side):
        m, opt = models[side], opts[side]
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(images), labels).backward()
        opt.step()

    times = {side: [] for side in models}
    for _ in range(max(repeat, NET_MIN_ROUNDS)):
        for side in models:
            step(side)  # untimed: warms up, and lets the other model's threads go idle
            t0 = timer()
            step(side)
            times[side].append(timer() - t0)
        if progress:
            progress(1)
    convs = len(grads["torch"])
    params = sum(p.numel() for p in base.parameters())
    return NetworkResult(cfg, times, agreement, losses, params, convs, normwise)


def steps(n_layers: int, repeat: int, network: bool = True) -> int:
    """Progress steps of :func:`run_training`: per layer 1 + ``repeat``, for the network 1 + rounds."""
    return n_layers * (1 + repeat) + ((1 + max(repeat, NET_MIN_ROUNDS)) if network else 0)


def run_training(layers, *, repeat: int = 5, threads=None, seed: int = 0, network: bool = True,
                 progress=None, net_config=None, min_round_s: float = 0.02) -> TrainingResult:
    """Time the per-layer gradients and (``network``) the network step; see the module docstring.

    ``threads`` sets Numba's, BLAS's (through threadpoolctl) and torch's
    thread counts for the run; None gives torch Numba's current count.  The
    previous Numba and torch thread counts are restored afterwards.
    ``progress(step, label)`` is called after each round (:func:`steps` in all).
    ``net_config`` overrides the network's shape (see :func:`bench_network`).
    """
    import numba
    import torch

    from .machine import commit_info, load_average, machine_info

    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    cfg = _net_config(net_config) if network else None
    load_before = load_average()
    old_numba, old_torch = numba.get_num_threads(), torch.get_num_threads()
    limit = contextlib.nullcontext()
    if threads is not None:
        import scipy.linalg.cython_blas  # noqa: F401  (load SciPy's BLAS, so it is limited too)
        from threadpoolctl import threadpool_limits

        numba.set_num_threads(int(threads))
        limit = threadpool_limits(int(threads))
    # torch gets the same thread count as the Numba kernels, so the ratio compares like with like.
    torch_threads = int(threads) if threads is not None else numba.get_num_threads()
    torch.set_num_threads(torch_threads)
    try:
        with limit:
            out = []
            for layer in layers:
                step = (lambda name: (lambda k: progress(k, name)))(layer.name) if progress else None
                out.append(bench_training_layer(layer, repeat=repeat, seed=seed,
                                                min_round_s=min_round_s, progress=step))
            net = None
            if network:
                step = (lambda k: progress(k, "network")) if progress else None
                net = bench_network(cfg, repeat=repeat, seed=seed, progress=step)
            machine = machine_info(threads, torch_threads)
            machine["fastconv"]["load_average_1min_before"] = load_before
    finally:
        numba.set_num_threads(old_numba)
        torch.set_num_threads(old_torch)
    options = dict(repeat=repeat, dtype="float32", threads=threads, torch_threads=torch_threads,
                   seed=seed, min_round_s=min_round_s, network=network,
                   network_rounds=max(repeat, NET_MIN_ROUNDS) if network else None,
                   net_config=cfg, clock="perf_counter")
    return TrainingResult(out, net, machine, commit_info(), options)


# --------------------------------------------------------------------------
# Presenting the result
# --------------------------------------------------------------------------

def _ms(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    ms = seconds * 1e3
    return format(ms, ".1f" if ms >= 100 else ".2f" if ms >= 1 else ".3f")


def _x(ratio) -> str:
    return "-" if ratio is None or not math.isfinite(ratio) else f"{ratio:.2f}"


def _e(err) -> str:
    return "-" if err is None or not math.isfinite(err) else f"{err:.1e}"


def _header() -> list:
    head = ["layer", "shape"]
    for part in PARTS:
        head += [f"{part} fc ms", f"{part} torch ms", f"{part} ratio"]
    return head + ["fc err", "torch err"]


def _row(r: TrainingLayerResult) -> list:
    cells = [r.layer.name, r.layer.describe()]
    for part in PARTS:
        cells += [_ms(r.median(part, "fastconv")), _ms(r.median(part, "torch")), _x(r.ratio(part))]
    return cells + [_e(r.error("fastconv")), _e(r.error("torch"))]


def _net_name(cfg) -> str:
    if (cfg["widths"], cfg["blocks"]) == (NET_DEFAULTS["widths"], NET_DEFAULTS["blocks"]):
        return "ResNet-18"
    return f"ResNet (widths {list(cfg['widths'])}, blocks {list(cfg['blocks'])})"


def summary_lines(result: TrainingResult) -> list:
    """The lines under the table: method, ratios per part, the network step, machine, warnings."""
    s = result.summary()
    o = result.options
    out = [f"ms = median per call over {o.get('repeat')} interleaved rounds (float32); ratio = "
           f"torch ms / fastconv ms, > 1 means fastconv is faster. step = conv2d forward + "
           f"backward through autograd (input, weight and bias gradients); grad_input / "
           f"grad_weight = fastconv.conv2d_grad_* against torch.nn.grad.conv2d_*. err = max "
           f"|a - ref| / max |ref| against float64 torch autograd."]
    if result.layers:
        for part in PARTS:
            d = s[part]
            out.append(f"{part}: geometric mean {_x(d['geomean'])}x, min {_x(d['min'])}x "
                       f"({d['min_layer']}), max {_x(d['max'])}x over {s['layers']} layers.")
    n = result.network
    if n is not None:
        c = n.config
        out.append(f"network: {_net_name(c)} training step (batch {c['batch']}, 3x{c['size']}x"
                   f"{c['size']}, {c['classes']} classes, SGD lr 0.01, train mode, "
                   f"{len(n.times['torch'])} rounds): fastconv {_ms(n.median('fastconv'))} ms, "
                   f"torch {_ms(n.median('torch'))} ms, ratio {_x(n.ratio)}x; float64 conv "
                   f"weight gradients agree to {_e(n.grad_agreement)} (max |diff| / max |g|; normwise "
                   f"{_e(n.grad_agreement_norm)}), losses "
                   f"{n.losses['fastconv']:.6f} / {n.losses['torch']:.6f}.")
    f = result.machine.get("fastconv", {})
    if f:
        v = f.get("versions", {})
        out.append(f"machine: {f.get('cpu_model')}, {f.get('logical_cpus')} logical CPUs; Numba "
                   f"{v.get('numba')} ({f.get('numba_threads')} threads), torch {v.get('torch')} "
                   f"({f.get('torch_threads')} threads); load average "
                   f"{f.get('load_average_1min_before')} before, {f.get('load_average_1min')} after.")
        for w in f.get("warnings", []):
            out.append(f"WARNING: {w}")
    for r in result.layers:
        for c in r.candidates.values():
            if c.error > ERROR_WARN:
                out.append(f"WARNING: {c.name} on {r.layer.name} differs from the float64 "
                           f"reference by {c.error:.2e} (relative to max |ref|)")
    if n is not None and n.grad_agreement > NET_WARN:
        out.append(f"WARNING: the network's conv weight gradients differ by "
                   f"{n.grad_agreement:.2e} between fastconv and torch")
    return out


def format_table(result: TrainingResult) -> str:
    """One row per layer (three parts: fastconv ms, torch ms, ratio; errors), then the summary."""
    from .report import _render

    header = _header()
    rows = [_row(r) for r in result.layers]
    right = set(range(2, len(header)))
    return "\n".join([_render(rows, header, right), ""] + summary_lines(result))


def format_markdown(result: TrainingResult) -> str:
    """The table of :func:`format_table` as Markdown, plus the summary lines."""
    header = _header()
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|"]
    for r in result.layers:
        cells = _row(r)
        cells[0] = f"`{cells[0]}`"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + summary_lines(result))


def to_json_dict(result: TrainingResult) -> dict:
    """A pytest-benchmark-style document: one ``benchmarks`` entry per candidate, plus ``fastconv``.

    ``benchmarks`` holds each layer's six candidates (group = layer name)
    and the network's two sides (group ``network``); the ``fastconv``
    section holds the options, per-layer medians, ratios and errors, the
    network result and the summary.
    """
    from .report import _stats

    benches, layers = [], []
    for r in result.layers:
        shape = {k: getattr(r.layer, k) for k in ("N", "C", "H", "W", "K", "R", "S", "stride",
                                                   "padding", "dilation", "groups")}
        for c in r.candidates.values():
            part, side = c.name.split("/")
            param = f"layer={r.layer.name}-part={part}-side={side}"
            benches.append({
                "group": r.layer.name, "name": f"test_training[{param}]",
                "fullname": f"fastconv.bench.training::test_training[{param}]",
                "params": {"layer": r.layer.name, "part": part, "side": side}, "param": param,
                "extra_info": {"median": c.median, "max_rel_err": c.error, "errors": c.errors,
                               "ratio_torch_over_fastconv": r.ratio(part), "dtype": "float32",
                               "shape": shape},
                "stats": _stats(c.times, c.number),
            })
        layers.append({
            "name": r.layer.name, "describe": r.layer.describe(), "shape": shape,
            "forward_auto": r.auto,
            "medians": {c.name: c.median for c in r.candidates.values()},
            "ratios": {part: r.ratio(part) for part in PARTS},
            "errors": {c.name: c.error for c in r.candidates.values()},
            "output_errors": {c.name: c.errors for c in r.candidates.values()},
        })
    network = None
    if result.network is not None:
        n = result.network
        for side in SIDES:
            param = f"network-side={side}"
            benches.append({
                "group": "network", "name": f"test_training[{param}]",
                "fullname": f"fastconv.bench.training::test_training[{param}]",
                "params": {"layer": "network", "part": "network_step", "side": side},
                "param": param, "extra_info": {"median": n.median(side), "config": n.config},
                "stats": _stats(n.times[side], 1),
            })
        network = {"config": n.config, "name": _net_name(n.config),
                   "medians": {side: n.median(side) for side in SIDES}, "ratio": n.ratio,
                   "times": n.times, "grad_agreement": n.grad_agreement,
                   "grad_agreement_norm": n.grad_agreement_norm, "losses": n.losses,
                   "parameters": n.params, "convolutions": n.convs}
    from .report import benchmark_document

    return benchmark_document(result.machine, result.commit, benches, {
        "schema": SCHEMA_VERSION, "kind": "training", "device": "cpu",
        "options": result.options, "layers": layers, "network": network,
        "summary": result.summary()})


def write_json(result: TrainingResult, path) -> None:
    """:func:`to_json_dict` to ``path`` (NaN as null), written atomically."""
    from .report import write_document

    write_document(to_json_dict(result), path)


def write_plot(result: TrainingResult, path) -> bool:
    """Grouped bars of the three ratios per layer, a line at 1.0, the network as an extra bar.

    Returns False (and writes nothing) when matplotlib is missing.
    """
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except ImportError:
        return False
    names = [r.layer.name for r in result.layers]
    n = result.network
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * (len(names) + 1) + 3), 4.5))
    xs = np.arange(len(names))
    width = 0.8 / len(PARTS)
    for i, part in enumerate(PARTS):
        vals = [r.ratio(part) for r in result.layers]
        ax.bar(xs + (i - (len(PARTS) - 1) / 2) * width, vals, width, label=part)
    labels = list(names)
    title = "fastconv vs torch autograd, float32"
    if n is not None:
        ax.bar([len(names)], [n.ratio], width * 1.5, color="tab:gray",
               label=f"{_net_name(n.config)} step")
        labels.append("network")
        title += f"; {_net_name(n.config)} step {n.ratio:.2f}x"
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    # Ratios read as 0.5 and 2, not 5 x 10^-1; of the minor ticks only 2, 3 and 5 (x 10^k).
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(ticker.FuncFormatter(
        lambda v, _: f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5)
        else ""))
    ax.set_ylabel("torch time / fastconv time")
    ax.set_xticks(np.arange(len(labels)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    f = result.machine.get("fastconv", {})
    ax.set_title(f"{title}\n{f.get('cpu_model', '')}, {f.get('numba_threads', '')} threads",
                 fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

#: Options of the forward benchmark that ``--training`` does not take, and why.
_REFUSED = (
    (lambda a: a.device != "cpu", "--device cuda (the training benchmark runs on the CPU only)"),
    (lambda a: a.no_torch, "--no-torch (it compares against torch autograd)"),
    (lambda a: a.algorithms is not None, "--algorithms (fastconv runs with algorithm='auto')"),
    (lambda a: a.phases, "--phases"),
    (lambda a: a.cpu_time, "--cpu-time"),
    (lambda a: a.dtype != "float32", "--dtype float64 (float32 only)"),
    (lambda a: a.batch is not None, "--batch (the layers keep their batch size)"),
)


def main(args) -> int:
    """``python -m fastconv bench --training`` with parsed ``args``; returns the exit status."""
    from . import report
    from .layers import select_layers
    from .machine import blas_warnings, load_warning
    from .peers import torch_available

    def error(msg):
        print(f"fastconv bench: error: {msg}", file=sys.stderr)
        return 2

    for refused, text in _REFUSED:
        if refused(args):
            return error(f"--training does not take {text}")
    if not torch_available():
        return error("--training needs torch (pip install 'fastconv[torch]')")
    try:
        layers = select_layers(args.layers, quick=args.quick)
        if args.repeat is not None and args.repeat < 1:
            raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
    except ValueError as exc:
        return error(exc)
    repeat = args.repeat or (3 if args.quick else 5)
    network = not args.no_network

    for w in blas_warnings() + [w for w in (load_warning(),) if w]:
        print(f"fastconv bench: WARNING: {w}", file=sys.stderr)
    progress = None
    if not args.no_progress:
        progress = report.ProgressBar(steps(len(layers), repeat, network))
    result, status = report.run_reported(run_training, layers, repeat=repeat, threads=args.threads,
                                         seed=args.seed, network=network, progress=progress)
    if status:
        return status

    print(format_table(result))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(format_markdown(result) + "\n")
        print(f"wrote {args.markdown}")
    if args.plot:
        if write_plot(result, args.plot):
            print(f"wrote {args.plot}")
        else:
            print("fastconv bench: matplotlib is not installed; no plot written "
                  "(pip install 'fastconv[bench]')", file=sys.stderr)
    return 0
