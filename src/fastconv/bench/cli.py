"""``python -m fastconv bench``: benchmark fastconv against PyTorch on standard layers.

Examples::

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m fastconv bench
    python -m fastconv bench --quick --json bench.json --plot bench.png
    python -m fastconv bench --layers resnet50_3x3_64,vgg16_3_2 --algorithms im2col,winograd --phases
    python -m fastconv bench --suite large     # 7x7 to 31x31 kernels, dense and depthwise
    python -m fastconv bench --training --quick --json training.json

``--training`` runs :mod:`fastconv.bench.training` instead of the forward benchmark.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

DEVICES = ("cpu", "cuda")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m fastconv bench",
        description="Time every fastconv algorithm, PyTorch's conv2d and a numpy im2col baseline "
                    "on standard CNN layers (interleaved rounds, medians, same process), print a "
                    "table of GFLOP/s and the ratio to PyTorch, and say which algorithm 'auto' "
                    "chose and whether it was the fastest.",
        epilog="Unset OPENBLAS_CORETYPE for meaningful numbers: "
               "env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m fastconv bench")
    ap.add_argument("--quick", action="store_true",
                    help="6 representative layers at batch <= 8 and 3 rounds (about a minute)")
    ap.add_argument("--layers", metavar="NAME,...",
                    help="comma-separated layer names from the suite (see --list)")
    ap.add_argument("--list", action="store_true", help="list the suite's layers and exit")
    ap.add_argument("--suite", choices=("standard", "large"), default="standard",
                    help="the layer set: the standard 18 layers, or large kernels (7x7 to 31x31, "
                         "dense and depthwise, where the fft algorithm pays)")
    ap.add_argument("--algorithms", metavar="NAME,...",
                    help="comma-separated fastconv algorithms (default: every registered one; "
                         "the one auto chooses is always timed)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed rounds per layer (default 7, 3 with --quick)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for Numba, BLAS and torch (default: Numba's default)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process CPU clock (needs --threads 1): on a machine busy "
                         "with other work, measures the cost of each call, not the wait for a core")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    ap.add_argument("--batch", type=int, default=None, help="override every layer's batch size N")
    ap.add_argument("--json", metavar="PATH", help="write pytest-benchmark-compatible JSON here")
    ap.add_argument("--plot", metavar="PATH", help="write a PNG plot here (needs matplotlib)")
    ap.add_argument("--markdown", metavar="PATH", help="write the table as Markdown here")
    ap.add_argument("--phases", action="store_true",
                    help="also time the phases of im2col and Winograd (transforms, GEMM)")
    ap.add_argument("--no-torch", action="store_true", help="do not run PyTorch even if installed")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    ap.add_argument("--device", choices=DEVICES, default="cpu",
                    help="cpu (default) or cuda (needs fastconv's CUDA support and a GPU)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    ap.add_argument("--training", action="store_true",
                    help="time forward + both gradients per layer and a ResNet-18 training step "
                         "against torch autograd (float32, CPU; --repeat defaults to 5)")
    ap.add_argument("--no-network", action="store_true",
                    help="with --training: skip the ResNet-18 training step")
    return ap


def _split(text):
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


def _cuda_runner():
    """``fastconv.bench.cuda.run_suite``; RuntimeError saying what is missing when it cannot load.

    The CUDA runner takes the layers and the same keyword options as
    :func:`fastconv.bench.runner.run_suite` and returns a ``SuiteResult``.
    """
    try:
        from fastconv.bench.cuda import run_suite as cuda_run_suite
    except ImportError as exc:
        raise RuntimeError(
            "--device cuda needs fastconv's CUDA benchmark (fastconv.bench.cuda), numba-cuda "
            f"(pip install 'fastconv[cuda]') and an NVIDIA GPU; it could not be loaded: {exc}"
        ) from None
    return cuda_run_suite


def main(argv=None) -> int:
    """Entry point of ``python -m fastconv bench``; returns the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    from . import report
    from .layers import load_layers, select_layers
    from .peers import torch_available
    from .runner import PEERS, check_algorithms, run_suite, steps_per_layer

    if args.list:
        for layer in load_layers(suite=args.suite):
            print(f"{layer.name:20s} {layer.describe():45s} {layer.flops / 1e9:7.3f} GFLOP")
        return 0
    if args.training:
        from .training import main as training_main
        return training_main(args)
    try:
        runner = _cuda_runner() if args.device == "cuda" else run_suite
    except RuntimeError as exc:
        print(f"fastconv bench: error: {exc}", file=sys.stderr)
        return 2
    try:
        layers = select_layers(_split(args.layers), quick=args.quick, suite=args.suite)
        algorithms = _split(args.algorithms)
        if algorithms is not None and args.device == "cpu":
            check_algorithms(algorithms)
        if args.repeat is not None and args.repeat < 1:
            raise ValueError(f"--repeat must be >= 1, got {args.repeat}")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        if args.cpu_time and args.threads != 1:
            raise ValueError("--cpu-time needs --threads 1 (worker threads busy-wait, which a "
                             "CPU clock would count)")
        if args.batch is not None:
            if args.batch < 1:
                raise ValueError(f"--batch must be >= 1, got {args.batch}")
            layers = [l.with_batch(args.batch) for l in layers]
    except ValueError as exc:
        print(f"fastconv bench: error: {exc}", file=sys.stderr)
        return 2
    repeat = args.repeat or (3 if args.quick else 7)
    peers = tuple(p for p in PEERS if not (p == "torch" and args.no_torch))
    if "torch" in peers and not torch_available():
        print("fastconv bench: torch is not installed; reporting without the PyTorch peer "
              "(pip install 'fastconv[torch]')", file=sys.stderr)
        peers = tuple(p for p in peers if p != "torch")

    from .machine import blas_warnings, load_warning
    for w in blas_warnings() + [w for w in (load_warning(),) if w]:
        print(f"fastconv bench: WARNING: {w}", file=sys.stderr)

    progress = None
    if not args.no_progress:
        progress = report.ProgressBar(len(layers) * steps_per_layer(repeat, args.phases))
    kwargs = dict(algorithms=algorithms, repeat=repeat, dtype=np.dtype(args.dtype), peers=peers,
                  threads=args.threads, phases=args.phases, seed=args.seed, progress=progress)
    if args.cpu_time:
        kwargs["cpu_time"] = True
    result, status = report.run_reported(runner, layers, **kwargs)
    if status:
        return status

    print(report.format_table(result))
    if args.phases:
        print()
        print(report.format_phases(result))
    if args.json:
        report.write_json(result, args.json)
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.format_markdown(result) + "\n")
        print(f"wrote {args.markdown}")
    if args.plot:
        if report.write_plot(result, args.plot):
            print(f"wrote {args.plot}")
        else:
            print("fastconv bench: matplotlib is not installed; no plot written "
                  "(pip install 'fastconv[bench]')", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
