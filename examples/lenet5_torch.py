"""Train LeNet-5 with fastconv as PyTorch's convolution backend, and check it against torch's own.

LeNet-5 (LeCun, Bottou, Bengio & Haffner 1998, "Gradient-based learning
applied to document recognition", Fig. 2), on scikit-learn's bundled
handwritten digits (1,797 images of 8 x 8, upsampled to the paper's 32 x 32
input):

    C1  6 @ 5x5 conv       32x32 -> 6 @ 28x28
    S2  2x2 average pool         -> 6 @ 14x14
    C3  16 @ 5x5 conv            -> 16 @ 10x10, with the paper's Table 1
                                    connections (each C3 map reads 3, 4 or 6
                                    of the S2 maps; fastconv.lenet5_c3_table)
    S4  2x2 average pool         -> 16 @ 5x5
    C5  120 @ 5x5 conv           -> 120 @ 1x1
    F6  84 units, output 10 units

Activations are the paper's scaled tanh ``1.7159 tanh(2x/3)``; the output
layer is a plain linear layer with cross-entropy loss (instead of the
paper's Euclidean RBF units), trained with Adam.

The same model, from the same initial weights and seeing the same
mini-batches, is trained twice: once with ``torch.nn.Conv2d`` and once after
``fastconv.torch.convert(model)``, which makes every convolution (forward
and backward) run on fastconv's kernels.  The two runs differ only by
floating-point rounding, so their test accuracies must agree within
``--tolerance`` percentage points (default 1.5, i.e. about 5 of the 360 test
images); the script exits with an error if they do not.

Run:  python examples/lenet5_torch.py [--epochs 8] [--quick] [--algorithm auto] [--threads 1]
"""

import argparse
import copy
import sys
import time

import numba
import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits

import fastconv.torch as fct
from fastconv.lenet import lenet5_c3_table


class ScaledTanh(torch.nn.Module):
    """LeCun's ``f(a) = A tanh(S a)`` with A = 1.7159, S = 2/3 (paper, Appendix A)."""

    def forward(self, a):
        return 1.7159 * torch.tanh(a * (2.0 / 3.0))


class MaskedConv2d(torch.nn.Module):
    """A conv layer whose weights of unconnected (output, input) map pairs are held at zero.

    ``weight * mask`` in the forward pass makes those weights' gradients zero
    too, exactly as ``fastconv.conv2d(connections=table)`` treats them.  The
    convolution itself is the inner ``nn.Conv2d`` (so ``convert`` finds it).
    """

    def __init__(self, table, kernel_size):
        super().__init__()
        K, C = table.shape
        self.conv = torch.nn.Conv2d(C, K, kernel_size)
        self.register_buffer("mask", torch.as_tensor(table, dtype=torch.float32)[:, :, None, None])

    def forward(self, x):
        return self.conv._conv_forward(x, self.conv.weight * self.mask, self.conv.bias)


class LeNet5(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 6, 5)
        self.c3 = MaskedConv2d(lenet5_c3_table(), 5)
        self.c5 = torch.nn.Conv2d(16, 120, 5)
        self.f6 = torch.nn.Linear(120, 84)
        self.out = torch.nn.Linear(84, 10)
        self.act = ScaledTanh()

    def forward(self, x):
        x = F.avg_pool2d(self.act(self.c1(x)), 2)  # C1, S2
        x = F.avg_pool2d(self.act(self.c3(x)), 2)  # C3, S4
        x = self.act(self.c5(x)).flatten(1)  # C5
        return self.out(self.act(self.f6(x)))


def load_digits_32x32(seed):
    """scikit-learn's digits as (N, 1, 32, 32) float32 in roughly [-0.1, 1.175], split 80/20."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.as_tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    # 8x8 -> 24x24 digit centred in a 32x32 field, as the paper centres
    # 20x20 MNIST digits in 32x32; background -0.1, foreground 1.175.
    x = F.interpolate(x, size=(24, 24), mode="bilinear", align_corners=False)
    x = F.pad(x, (4, 4, 4, 4)) * 1.275 - 0.1
    y = torch.as_tensor(digits.target, dtype=torch.long)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed,
                                           stratify=digits.target)
    return x[idx_train], y[idx_train], x[idx_test], y[idx_test]


def train(model, x, y, epochs, batch_size, seed, lr=2e-3):
    """Train in place; returns the seconds each epoch took."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    order = torch.Generator().manual_seed(seed)
    seconds = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(y), generator=order)
        for i in range(0, len(y), batch_size):
            b = perm[i:i + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
        seconds.append(time.perf_counter() - t0)
    return seconds


@torch.no_grad()
def accuracy(model, x, y):
    return 100.0 * (model(x).argmax(1) == y).float().mean().item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--algorithm", default="auto", help="fastconv algorithm (default auto)")
    ap.add_argument("--tolerance", type=float, default=1.5,
                    help="allowed |accuracy difference| in percentage points (default 1.5)")
    ap.add_argument("--quick", action="store_true", help="3 epochs (for the test suite)")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for both torch and fastconv (default 1: LeNet's layers are "
                         "microseconds of work, too small to repay thread synchronisation)")
    args = ap.parse_args(argv)
    epochs = 3 if args.quick else args.epochs
    torch.set_num_threads(args.threads)
    # fastconv's im2col uses NumPy's BLAS; hold it to the same thread count
    threadpool_limits(args.threads)
    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))

    torch.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = load_digits_32x32(args.seed)
    reference = LeNet5()
    fast = fct.convert(copy.deepcopy(reference), algorithm=args.algorithm)
    n_fast = sum(isinstance(m, fct.Conv2d) for m in fast.modules())
    assert n_fast == 3, f"expected C1, C3 and C5 on fastconv, got {n_fast}"

    results, epoch = {}, {}
    for name, model in (("torch", reference), ("fastconv", fast)):
        seconds = train(model, x_train, y_train, epochs, args.batch_size, args.seed)
        # The first epoch also pays one-off costs (Numba loading or compiling kernels,
        # oneDNN's primitive creation); the epoch time is the median of the others.
        epoch[name] = float(np.median(seconds[1:] if len(seconds) > 1 else seconds))
        results[name] = (accuracy(model, x_test, y_test), sum(seconds))
        print(f"{name:>8}: test accuracy {results[name][0]:6.2f}% "
              f"({len(y_test)} images, {epochs} epochs, {results[name][1]:.1f} s; epoch "
              f"{epoch[name] * 1e3:.0f} ms, first epoch {seconds[0]:.2f} s)")
    print(f"epoch time: fastconv {epoch['fastconv'] * 1e3:.0f} ms, torch {epoch['torch'] * 1e3:.0f} "
          f"ms (torch / fastconv = {epoch['torch'] / epoch['fastconv']:.2f}x; "
          f"{len(y_train)} training images, batch {args.batch_size}, {args.threads} thread(s))")
    diff = abs(results["torch"][0] - results["fastconv"][0])
    print(f"difference {diff:.2f} percentage points (tolerance {args.tolerance})")
    if diff > args.tolerance:
        print("FAIL: fastconv and torch disagree by more than the tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
