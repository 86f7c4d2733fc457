"""Presenting a :class:`~fastconv.bench.runner.SuiteResult`: text tables, JSON, a PNG plot.

The JSON follows pytest-benchmark's file format (``machine_info``,
``commit_info``, ``benchmarks: [{name, group, params, stats, extra_info}]``,
``datetime``, ``version``) so ``pytest-benchmark compare`` and tools built on
it read it; fastconv-specific results (auto's choice, ratios, the summary)
live in each entry's ``extra_info`` and in a top-level ``fastconv`` section.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import sys

import numpy as np

from .runner import NEAR_HIT, SuiteResult

SCHEMA_VERSION = 1


def short(name: str) -> str:
    """Column header for an algorithm: ``winograd_f4x4_3x3`` -> ``wino4x4``."""
    if name.startswith("winograd_f"):
        return "wino" + name[len("winograd_f"):].replace("_3x3", "")
    return {"numpy_im2col": "numpy", "scipy_reference": "scipy"}.get(name, name)


def _fmt(v, spec=None, missing="-") -> str:
    """Numbers for the table; GFLOP/s keep 3 significant digits below 100 (slow layers, such as depthwise ones)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return missing
    if spec is None:
        spec = ".0f" if v >= 100 else (".1f" if v >= 10 else ".2f" if v >= 1 else ".3f")
    return format(v, spec)


def _columns(result: SuiteResult) -> tuple:
    algs, peers = [], []
    for r in result.layers:
        for m in r.measurements.values():
            target = algs if m.kind == "fastconv" else peers
            if m.name not in target:
                target.append(m.name)
    return sorted(algs), [p for p in ("torch", "numpy_im2col", "scipy_reference") if p in peers]


def _render(rows, header, right) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    def line(cells):
        return "  ".join(str(c).rjust(wd) if i in right else str(c).ljust(wd)
                         for i, (c, wd) in enumerate(zip(cells, widths))).rstrip()
    sep = "  ".join("-" * wd for wd in widths)
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def format_table(result: SuiteResult) -> str:
    """One row per layer: GFLOP/s of every algorithm and peer, auto's choice and ratios."""
    algs, peers = _columns(result)
    header = (["layer", "GFLOP"] + [short(a) for a in algs] + [short(p) for p in peers]
              + ["auto", "auto GF/s", "auto/torch", "fastest", "auto hit"])
    rows = []
    for r in result.layers:
        ms = r.measurements
        cells = [r.layer.name, _fmt(r.layer.params().flops / 1e9, ".3f")]
        cells += [_fmt(ms[a].gflops) if a in ms else "n/a" for a in algs + peers]
        ratio = r.ratio_vs_torch(r.auto)
        if r.auto_hit:
            hit = "yes"
        elif r.auto_near_hit:
            hit = f"~ ({r.auto_vs_best:.2f}x)"
        else:
            hit = f"no ({r.auto_vs_best:.2f}x)"
        cells += [r.auto, _fmt(ms[r.auto].gflops), _fmt(ratio, ".2f"), r.best, hit]
        rows.append(cells)
    right = set(range(1, 2 + len(algs) + len(peers))) | {len(header) - 4, len(header) - 3}
    lines = [_render(rows, header, right), ""]
    lines += summary_lines(result)
    return "\n".join(lines)


def format_markdown(result: SuiteResult) -> str:
    """The table of :func:`format_table` as a Markdown table plus the summary lines."""
    algs, peers = _columns(result)
    header = (["layer", "GFLOP"] + [short(a) for a in algs] + [short(p) for p in peers]
              + ["auto", "auto/torch", "fastest", "auto/fastest time"])
    numeric = set(range(1, 2 + len(algs) + len(peers))) | {len(header) - 3, len(header) - 1}
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---:" if i in numeric else "---" for i in range(len(header))) + "|"]
    for r in result.layers:
        ms = r.measurements
        cells = [f"`{r.layer.name}`", _fmt(r.layer.params().flops / 1e9, ".3f")]
        cells += [_fmt(ms[a].gflops) if a in ms else "n/a" for a in algs + peers]
        cells += [f"`{r.auto}`", _fmt(r.ratio_vs_torch(r.auto), ".2f"), f"`{r.best}`",
                  f"{r.auto_vs_best:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + summary_lines(result))


def summary_lines(result: SuiteResult) -> list:
    s = result.summary()
    f = result.machine.get("fastconv", {})
    out = [f"GFLOP/s = 2*N*K*P*Q*(C/groups)*R*S / median time ({result.options.get('repeat')} "
           f"interleaved rounds, {result.options.get('dtype')}); 'auto/torch' > 1 means faster "
           f"than torch.nn.functional.conv2d in the same process.",
           f"auto picked the fastest algorithm on {s['auto_hits']}/{s['layers']} layers "
           f"({s['auto_near_hits']}/{s['layers']} within {NEAR_HIT:.2f}x of the fastest); "
           f"geometric mean auto/fastest time {s['auto_vs_best_geomean']:.3f}."]
    if "auto_vs_torch_geomean" in s:
        out.append(f"auto vs torch: geometric mean {s['auto_vs_torch_geomean']:.2f}x, "
                   f"min {s['auto_vs_torch_min']:.2f}x, max {s['auto_vs_torch_max']:.2f}x "
                   f"(fastest algorithm per layer: geometric mean {s['best_vs_torch_geomean']:.2f}x).")
    if f:
        blas = f.get("blas") or [{}]
        blas_txt = ", ".join(f"{b.get('internal_api')} {b.get('version')} "
                             f"({b.get('architecture')} kernel, {_n(b.get('num_threads'), 'thread')})"
                             for b in blas)
        v = f.get("versions", {})
        clock = result.options.get("clock", "perf_counter")
        out.append(f"machine: {f.get('cpu_model')}, {f.get('logical_cpus')} logical CPUs; Numba "
                   f"{v.get('numba')} {f.get('numba_threading_layer')} layer, "
                   f"{_n(f.get('numba_threads'), 'thread')}; torch {v.get('torch')} "
                   f"({_n(f.get('torch_threads'), 'thread')}); numpy {v.get('numpy')}; "
                   f"BLAS {blas_txt}; clock {clock}; load average {f.get('load_average_1min_before')} "
                   f"before, {f.get('load_average_1min')} after.")
        peak = f.get("fma_peak_gflops")
        if peak:
            direct = [(r.measurements["direct"].gflops, r.layer.name) for r in result.layers
                      if "direct" in r.measurements]
            text = (f"measured {result.options.get('dtype')} FMA peak with these threads: "
                    f"{peak:.0f} GFLOP/s")
            if direct:
                best, lname = max(direct)
                text += (f"; direct reached {100 * best / peak:.0f}% of it ({lname}), "
                         f"median over the layers {100 * float(np.median([d for d, _ in direct])) / peak:.0f}%")
            out.append(text + ".")
        for w in f.get("warnings", []):
            out.append(f"WARNING: {w}")
    errors = [(r.layer.name, m.name, m.error) for r in result.layers for m in r.measurements.values()
              if m.error > _tolerance(r.dtype)]
    for lname, name, err in errors:
        out.append(f"WARNING: {name} on {lname} differs from the float64 oracle by {err:.2e} "
                   f"(relative to max |y|)")
    return out


def _n(count, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _tolerance(dtype: str) -> float:
    # Generous: F(4x4,3x3) Winograd on deep layers loses ~3 decimal digits in fp32.
    return 1e-2 if dtype == "float32" else 1e-8


def format_phases(result: SuiteResult) -> str:
    """Per-phase times (ms) of the algorithms whose kernels expose ``profile_phases``."""
    rows = []
    for r in result.layers:
        for m in r.algorithms():
            if m.phases:
                total = sum(m.phases.values())
                parts = "  ".join(f"{k}={v * 1e3:.3f}" for k, v in m.phases.items())
                rows.append([r.layer.name, m.name, f"{m.median * 1e3:.3f}", f"{total * 1e3:.3f}", parts])
    if not rows:
        return ("no per-phase times: fastconv.cpu.im2col / fastconv.cpu.winograd do not expose "
                "profile_phases() in this version")
    return _render(rows, ["layer", "algorithm", "call ms", "sum ms", "phases (ms)"], {2, 3})


def _stats(times, number) -> dict:
    try:
        from pytest_benchmark.stats import Stats
        st = Stats()
        for t in times:
            st.update(t)
        d = st.as_dict()
    except Exception:  # pytest-benchmark missing or changed: the core fields ourselves
        a = np.asarray(times, dtype=float)
        d = {"min": float(a.min()), "max": float(a.max()), "mean": float(a.mean()),
             "stddev": float(a.std(ddof=1)) if a.size > 1 else 0.0, "rounds": int(a.size),
             "median": float(np.median(a)), "total": float(a.sum()),
             "ops": 1.0 / float(a.mean())}
    d["iterations"] = number
    return d


def to_json_dict(result: SuiteResult) -> dict:
    """The pytest-benchmark-compatible document (see the module docstring)."""
    benches = []
    for r in result.layers:
        for m in r.measurements.values():
            param = f"layer={r.layer.name}-alg={m.name}"
            extra = {
                "gflops": m.gflops, "flops": m.flops, "kind": m.kind,
                "ratio_vs_torch": r.ratio_vs_torch(m.name),
                "auto_choice": r.auto, "chosen_by_auto": m.name == r.auto,
                "fastest": m.name == r.best if m.kind == "fastconv" else None,
                "max_rel_err": m.error, "dtype": r.dtype, "device": result.device,
                "shape": {k: getattr(r.layer, k) for k in ("N", "C", "H", "W", "K", "R", "S",
                                                           "stride", "padding", "dilation", "groups")},
            }
            if m.phases:
                extra["phases"] = m.phases
            benches.append({
                "group": r.layer.name,
                "name": f"test_conv2d[{param}]",
                "fullname": f"fastconv.bench::test_conv2d[{param}]",
                "params": {"layer": r.layer.name, "alg": m.name},
                "param": param,
                "extra_info": extra,
                "options": {"disable_gc": False, "timer": "perf_counter",
                            "min_rounds": result.options.get("repeat"), "max_time": None,
                            "min_time": result.options.get("min_round_s"), "warmup": True},
                "stats": _stats(m.times, m.number),
            })
    return benchmark_document(result.machine, result.commit, benches, {
        "schema": SCHEMA_VERSION,
        "device": result.device,
        "options": result.options,
        "summary": result.summary(),
        "layers": [{"name": r.layer.name, "auto": r.auto, "fastest": r.best,
                    "auto_vs_fastest": r.auto_vs_best,
                    "auto_vs_torch": r.ratio_vs_torch(r.auto),
                    "unsupported": r.unsupported} for r in result.layers],
    })


def benchmark_document(machine: dict, commit: dict, benches: list, fastconv: dict) -> dict:
    """pytest-benchmark's JSON document around ``benches``, with fastconv's own section."""
    try:
        from pytest_benchmark import __version__ as pb_version
    except Exception:
        pb_version = None
    return {
        "machine_info": machine,
        "commit_info": commit,
        "benchmarks": benches,
        "datetime": _dt.datetime.now(_dt.timezone.utc).isoformat(),
        "version": pb_version,
        "fastconv": fastconv,
    }


def _clean(obj):
    """NaN/inf are not JSON: write them as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.generic):
        return _clean(obj.item())
    return obj


def write_json(result: SuiteResult, path) -> None:
    write_document(to_json_dict(result), path)


def write_document(doc: dict, path) -> None:
    """``doc`` as JSON at ``path`` (NaN and inf as null), written atomically: a temporary
    file, then a rename, so a reader never sees half a file."""
    doc = _clean(doc)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, default=str)
        f.write("\n")
    os.replace(tmp, path)


def write_plot(result: SuiteResult, path) -> bool:
    """Bar chart of GFLOP/s per layer and auto/torch ratio; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    algs, peers = _columns(result)
    names = algs + peers
    layers = [r.layer.name for r in result.layers]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.75 * len(layers) + 3), 8),
                                   gridspec_kw={"height_ratios": [3, 1.4]}, sharex=True)
    xs = np.arange(len(layers))
    width = 0.8 / max(1, len(names))
    for i, name in enumerate(names):
        vals = [r.measurements[name].gflops if name in r.measurements else np.nan
                for r in result.layers]
        hatch = "//" if name in peers else None
        ax1.bar(xs + (i - (len(names) - 1) / 2) * width, vals, width, label=short(name), hatch=hatch)
    ax1.set_ylabel("GFLOP/s")
    ax1.set_yscale("log")
    cpu = result.machine.get("fastconv", {}).get("cpu_model", "")
    thr = result.machine.get("fastconv", {}).get("numba_threads", "")
    clock = "CPU time" if result.options.get("clock") == "process_time" else "wall clock"
    ax1.set_title(f"fastconv conv2d ({result.options.get('dtype')}, {result.device}) - {cpu}, "
                  f"{_n(thr, 'thread')}, {clock}", fontsize=10)
    ax1.legend(ncol=min(len(names), 4), fontsize=8)
    ax1.grid(axis="y", alpha=0.3, which="both")
    ratios = [r.ratio_vs_torch(r.auto) or np.nan for r in result.layers]
    ax2.bar(xs, ratios, 0.6, color=["tab:green" if v >= 1 else "tab:red" for v in ratios])
    ax2.axhline(1.0, color="k", lw=0.8)
    ax2.set_ylabel("auto / torch speed")
    ax2.set_xticks(xs)
    ax2.set_xticklabels(layers, rotation=45, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def run_reported(run, *args, **kwargs):
    """``(run(*args, **kwargs), 0)``, or ``(None, status)`` after saying on stderr why the run
    stopped: 2 for an error (``RuntimeError``/``ValueError``), 130 when interrupted."""
    try:
        return run(*args, **kwargs), 0
    except (RuntimeError, ValueError) as exc:
        print(f"\nfastconv bench: error: {exc}", file=sys.stderr)
        return None, 2
    except KeyboardInterrupt:
        print("\nfastconv bench: interrupted", file=sys.stderr)
        return None, 130


class ProgressBar:
    """A plain-text progress bar on stderr (redrawn in place on a terminal, else one line per layer)."""

    def __init__(self, total: int, stream=None, width: int = 30):
        self.total, self.done, self.width = max(1, total), 0, width
        self.stream = stream if stream is not None else sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self._last_label = None

    def __call__(self, steps: int = 1, label: str = "") -> None:
        self.done = min(self.total, self.done + steps)
        frac = self.done / self.total
        fill = int(round(frac * self.width))
        text = f"[{'#' * fill}{'.' * (self.width - fill)}] {self.done}/{self.total} {label}"
        if self.tty:
            self.stream.write("\r" + text.ljust(self.width + 40))
            if self.done == self.total:
                self.stream.write("\n")
        elif label != self._last_label or self.done == self.total:
            self.stream.write(text + "\n")
        self._last_label = label
        self.stream.flush()
