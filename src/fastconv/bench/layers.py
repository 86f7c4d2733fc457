"""The benchmark layers: the 18 standard layers of ``conv_layers.json`` and the quick subset.

A :class:`Layer` is one convolution configuration (fp32 NCHW by default)
with seeded inputs, so every runner (the CLI, ``benchmarks/``, the auto-rule
fit) times exactly the same arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from importlib import resources

import numpy as np

from .._params import ConvParams, normalize

#: Representative layers of ``--quick``: a 5x5 LeNet layer at small batch, the
#: strided 7x7 stem, a Winograd-friendly 3x3, a strided 3x3, a 1x1 GEMM and a
#: depthwise layer, one per regime the ``auto`` rule distinguishes.
QUICK_LAYERS = ("lenet5_c3", "resnet50_stem", "resnet50_3x3_64", "resnet50_3x3_s2",
                "resnet50_1x1_exp", "mobilenet_dw_s1")
#: Batch cap of ``--quick`` (LeNet's N=64 is cut to this).
QUICK_MAX_BATCH = 8


@dataclass(frozen=True)
class Layer:
    """One convolution configuration to benchmark (shape letters as in :mod:`fastconv`)."""

    name: str
    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: int = 1
    padding: int = 0
    dilation: int = 1
    groups: int = 1
    source: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def x_shape(self) -> tuple:
        return (self.N, self.C, self.H, self.W)

    @property
    def w_shape(self) -> tuple:
        return (self.K, self.C // self.groups, self.R, self.S)

    @property
    def conv_kwargs(self) -> dict:
        """Keyword arguments of :func:`fastconv.conv2d` (and ``torch.nn.functional.conv2d``)."""
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                    groups=self.groups)

    def params(self, dtype=np.float32) -> ConvParams:
        return normalize(self.x_shape, self.w_shape, (self.K,), dtype, **self.conv_kwargs)

    @property
    def flops(self) -> int:
        """2 * N*K*P*Q*(C/groups)*R*S, the count every GFLOP/s figure uses."""
        return self.params().flops

    def arrays(self, dtype=np.float32, seed: int = 0):
        """Seeded ``(x, w, bias)``: x ~ U(-1, 1), w scaled by 1/sqrt(fan-in) as in He init."""
        rng = np.random.default_rng(seed)
        fan_in = (self.C // self.groups) * self.R * self.S
        x = rng.uniform(-1.0, 1.0, self.x_shape).astype(dtype)
        w = (rng.standard_normal(self.w_shape) / np.sqrt(fan_in)).astype(dtype)
        b = rng.uniform(-0.1, 0.1, self.K).astype(dtype)
        return x, w, b

    def with_batch(self, N: int) -> "Layer":
        return replace(self, N=int(N))

    def describe(self) -> str:
        g = f" g={self.groups}" if self.groups != 1 else ""
        s = f" s{self.stride}" if self.stride != 1 else ""
        return (f"N={self.N} {self.C}x{self.H}x{self.W} -> K={self.K} "
                f"{self.R}x{self.S}{s}{g}")


def _from_dict(d: dict) -> Layer:
    known = {"name", "N", "C", "H", "W", "K", "R", "S", "stride", "padding", "dilation",
             "groups", "source"}
    extra = {k: v for k, v in d.items() if k not in known}
    # JSON lists (a per-axis padding) become tuples, as conv2d and torch take them
    return Layer(**{k: tuple(d[k]) if isinstance(d[k], list) else d[k] for k in known if k in d},
                 extra=extra)


#: The shipped layer sets: the standard suite, and large kernels (where ``fft`` pays).
SUITES = {"standard": "conv_layers.json", "large": "large_kernels.json"}


def load_layers(path=None, suite: str = "standard") -> list:
    """The layers of a shipped set (:data:`SUITES`; the standard suite by default), or ``path``."""
    if path is None:
        if suite not in SUITES:
            raise ValueError(f"suite must be one of {', '.join(map(repr, SUITES))}, got {suite!r}")
        text = resources.files(__package__).joinpath(SUITES[suite]).read_text()
    else:
        with open(path) as f:
            text = f.read()
    data = json.loads(text)
    return [_from_dict(d) for d in data["layers"]]


def select_layers(names=None, quick: bool = False, path=None, suite: str = "standard") -> list:
    """Layers of ``suite`` by name (``names``: iterable or comma-separated string), or the
    quick subset (of the standard suite).

    Raises ValueError listing the valid names for an unknown one.
    """
    if quick and suite != "standard":
        raise ValueError("--quick selects layers of the standard suite only")
    layers = load_layers(path, suite)
    by_name = {l.name: l for l in layers}
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    if names:
        unknown = [n for n in names if n not in by_name]
        if unknown:
            raise ValueError(f"unknown layer(s) {', '.join(map(repr, unknown))}; layers are "
                             f"{', '.join(by_name)}")
        chosen = [by_name[n] for n in names]
    elif quick:
        chosen = [by_name[n] for n in QUICK_LAYERS]
    else:
        chosen = layers
    if quick:
        chosen = [l.with_batch(min(l.N, QUICK_MAX_BATCH)) for l in chosen]
    return chosen
