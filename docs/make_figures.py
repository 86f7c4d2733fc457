"""Draw the figures of the fastconv docs by running fastconv itself.

Usage::

    python docs/make_figures.py [OUTPUT_DIR]      # default: docs/_static

Every number drawn comes from :func:`fastconv.conv2d` or from
``scipy.signal.correlate`` (the definition :mod:`fastconv.reference` is
written with), and the script fails if the two disagree, so a figure can
never show a result the library does not compute.  The PNGs are committed;
``tests/test_docs.py`` runs this script into a temporary folder.
"""

from __future__ import annotations

import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from scipy import signal  # noqa: E402

import fastconv  # noqa: E402
from fastconv.lenet import lenet5_c3_table  # noqa: E402

DPI = 72


def digit_seven(size: int) -> np.ndarray:
    """A hand-drawn-looking "7" on a size x size canvas (float64 in [0, 1])."""
    img = np.zeros((size, size))
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    # top bar from (0.2, 0.2) to (0.8, 0.2), then a stroke down to (0.4, 0.85)
    def stroke(x0, y0, x1, y1, width):
        t = np.clip(((xx - x0) * (x1 - x0) + (yy - y0) * (y1 - y0))
                    / ((x1 - x0) ** 2 + (y1 - y0) ** 2), 0, 1)
        d = np.hypot(xx - (x0 + t * (x1 - x0)), yy - (y0 + t * (y1 - y0)))
        return np.clip(1.5 - d / width, 0, 1)
    img = np.maximum(img, stroke(0.2, 0.2, 0.8, 0.2, 0.06))
    img = np.maximum(img, stroke(0.8, 0.2, 0.4, 0.85, 0.06))
    return img


def show(ax, a, title, cmap="gray", sym=False, fontsize=9):
    if sym:
        lim = float(np.abs(a).max()) or 1.0
        ax.imshow(a, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    else:
        ax.imshow(a, cmap=cmap, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=fontsize)


def check_equal(a, b, what):
    err = float(np.max(np.abs(a - b)))
    if err > 1e-12 * max(1.0, float(np.abs(b).max())):
        raise AssertionError(f"{what}: fastconv and the written-out definition differ by {err:g}")
    return err


def save(fig, out, name):
    path = os.path.join(out, name)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", pil_kwargs={"optimize": True})
    plt.close(fig)
    print(f"wrote {path} ({os.path.getsize(path) / 1024:.0f} KiB)")


def first_layer():
    """Layer 1 of the docs' example: one 16 x 16 image, four 3 x 3 kernels -> four 14 x 14 maps."""
    image = digit_seven(16)
    w1 = np.array([
        [[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]],       # vertical edges (Sobel x)
        [[-1, -2, -1], [0, 0, 0], [1, 2, 1]],       # horizontal edges (Sobel y)
        [[0, 1, 2], [-1, 0, 1], [-2, -1, 0]],       # one diagonal
        [[1, 1, 1], [1, 1, 1], [1, 1, 1]],          # blur
    ], dtype=np.float64)[:, None] / np.array([4, 4, 4, 9.0])[:, None, None, None]
    b1 = np.array([0.0, 0.0, 0.0, -0.5])
    maps = fastconv.conv2d(image[None], w1, b1)     # (C=1, 16, 16) -> (K=4, 14, 14)
    return image, w1, b1, maps


def second_layer_weights():
    rng = np.random.default_rng(5)
    return rng.standard_normal((6, 4, 3, 3)) / 3, rng.standard_normal(6) / 4


def fig_first_layer(out):
    image, w1, b1, maps = first_layer()
    fig, axes = plt.subplots(2, 5, figsize=(8.6, 4.6), layout="constrained")
    show(axes[0, 0], image, "image x[0]\n16 x 16")
    axes[1, 0].axis("off")
    axes[1, 0].text(0.5, 0.5, "C = 1 input map\nK = 4 kernels\n(4, 1, 3, 3)\n\n16 - 3 + 1 = 14",
                    ha="center", va="center", fontsize=9, transform=axes[1, 0].transAxes)
    for k in range(4):
        show(axes[0, k + 1], w1[k, 0], f"kernel w[{k}, 0]\n3 x 3", sym=True)
        show(axes[1, k + 1], maps[k], f"feature map y[{k}]\n14 x 14", sym=True)
    fig.suptitle("Layer 1: one image, four kernels, four feature maps\n"
                 "y[k] = correlate(x[0], w[k, 0]) + b[k]", fontsize=11)
    save(fig, out, "layer1_four_maps.png")


def partial_sum_figure(x, w, b, k, out, name, title, in_label="x", out_label="y", conv_kw=None):
    """Input maps, kernel slices, per-map partial correlations and their sum, for output map k.

    The sum is checked against ``fastconv.conv2d`` (with ``conv_kw``) before
    anything is drawn.
    """
    conv_kw = conv_kw or {}
    C = x.shape[0]
    chans = [c for c in range(C) if conv_kw.get("connections") is None or conv_kw["connections"][k, c]]
    partial = {c: signal.correlate(x[c], w[k, c], mode="valid", method="direct") for c in chans}
    total = sum(partial.values()) + b[k]
    y = fastconv.conv2d(x, w, b, **conv_kw)
    err = check_equal(y[k], total, name)
    n = len(chans)
    fig, axes = plt.subplots(3, n + 1, figsize=(1.9 * (n + 1) + 0.4, 6.4), layout="constrained")
    R, S = w.shape[2:]
    P, Q = total.shape
    for j, c in enumerate(chans):
        show(axes[0, j], x[c], f"input map {in_label}[{c}]\n{x.shape[1]} x {x.shape[2]}", sym=True)
        show(axes[1, j], w[k, c], f"kernel slice w[{k}, {c}]\n{R} x {S}", sym=True)
        show(axes[2, j], partial[c], f"correlate({in_label}[{c}], w[{k}, {c}])\n{P} x {Q}", sym=True)
    axes[0, n].axis("off")
    axes[0, n].text(0.5, 0.5, f"kernel w[{k}] is 3-D:\n{n} slices of {R} x {S}\n"
                    f"(w.shape = {w.shape})", ha="center", va="center", fontsize=9,
                    transform=axes[0, n].transAxes)
    axes[1, n].axis("off")
    axes[1, n].text(0.5, 0.5, f"sum the {n} partial maps\n+ bias b[{k}] = {b[k]:.2f}\n\u2193",
                    ha="center", va="center", fontsize=9, transform=axes[1, n].transAxes)
    show(axes[2, n], y[k], f"{out_label}[{k}] = fastconv.conv2d\n(max diff to sum {err:.0e})", sym=True)
    for j, ax in enumerate(axes[2, :n]):
        sign = "+" if j < n - 1 else "+b ="
        ax.text(1.03, 0.5, sign, transform=ax.transAxes, fontsize=13, ha="left", va="center")
    fig.suptitle(title, fontsize=11)
    save(fig, out, name)


def fig_second_layer(out):
    _, _, _, maps = first_layer()
    w2, b2 = second_layer_weights()
    partial_sum_figure(maps, w2, b2, 0, out, "layer2_one_output_map.png",
                       "Layer 2: output map 0 of 6 = sum over the 4 input maps of a 2-D "
                       "correlation, plus a bias")


def fig_second_layer_all(out):
    _, _, _, maps = first_layer()
    w2, b2 = second_layer_weights()
    y = fastconv.conv2d(maps, w2, b2)                # (4, 14, 14) -> (6, 12, 12)
    fig, axes = plt.subplots(7, 6, figsize=(7.0, 9.6), layout="constrained",
                             gridspec_kw={"width_ratios": [1, 1, 1, 1, 0.4, 1.3]})
    for c in range(4):
        show(axes[0, c], maps[c], f"input map x[{c}]", sym=True)
    axes[0, 4].axis("off")
    axes[0, 5].axis("off")
    axes[0, 5].text(0.5, 0.5, "C = 4 maps in,\nK = 6 maps out", ha="center", va="center",
                    fontsize=9, transform=axes[0, 5].transAxes)
    for k in range(6):
        row = axes[k + 1]
        for c in range(4):
            show(row[c], w2[k, c], f"w[{k}, {c}]", sym=True, fontsize=8)
        row[0].set_ylabel(f"kernel {k}", fontsize=9)
        row[4].axis("off")
        row[4].text(0.5, 0.5, "\u2192", fontsize=16, ha="center", va="center",
                    transform=row[4].transAxes)
        show(row[5], y[k], f"output map y[{k}]", sym=True, fontsize=8)
    fig.suptitle("Layer 2: w.shape = (K=6, C=4, 3, 3).  Kernel k (one row: 4 slices, one per\n"
                 "input map) reads all 4 input maps and makes output map k (12 x 12)", fontsize=10)
    save(fig, out, "layer2_six_kernels.png")


def fig_shared_kernel(out):
    """One 2-D kernel reused for every input map cannot tell the maps apart; a 3-D kernel can."""
    _, _, _, maps = first_layer()
    w2, _ = second_layer_weights()
    v = w2[0, 0]
    shared = np.broadcast_to(v, (1, 4, 3, 3))
    order = [2, 0, 3, 1]
    rows = [("x", maps), ("x'", maps[order])]
    ys = [(fastconv.conv2d(xx, shared)[0], fastconv.conv2d(xx, w2[:1])[0]) for _, xx in rows]
    check_equal(ys[0][0], ys[1][0], "shared kernel after permuting the maps")
    check_equal(ys[0][0], signal.correlate(maps.sum(axis=0), v, mode="valid", method="direct"),
                "shared kernel vs correlating the summed maps")
    if np.allclose(ys[0][1], ys[1][1]):
        raise AssertionError("the 3-D kernel should see the permutation")
    lim_s = float(np.abs(ys[0][0]).max())
    lim_k = float(np.abs(ys[0][1]).max())
    fig, axes = plt.subplots(2, 6, figsize=(10.0, 4.0), layout="constrained")
    for i, (label, xx) in enumerate(rows):
        for c in range(4):
            src = c if i == 0 else order[c]
            show(axes[i, c], xx[c], f"{label}[{c}]" + ("" if i == 0 else f" = x[{src}]"), sym=True)
        axes[i, 4].imshow(ys[i][0], cmap="RdBu_r", vmin=-lim_s, vmax=lim_s, interpolation="nearest")
        axes[i, 5].imshow(ys[i][1], cmap="RdBu_r", vmin=-lim_k, vmax=lim_k, interpolation="nearest")
        for ax in axes[i, 4:]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 4].set_title("one 2-D kernel\nfor every map", fontsize=9)
    axes[0, 5].set_title("3-D kernel w[0]\n(a slice per map)", fontsize=9)
    axes[1, 4].set_title("identical", fontsize=9, color="tab:red")
    axes[1, 5].set_title("different", fontsize=9, color="tab:green")
    axes[0, 0].set_ylabel("maps", fontsize=9)
    axes[1, 0].set_ylabel("shuffled: x' = x[[2, 0, 3, 1]]", fontsize=8)
    fig.suptitle("Shuffling the input maps: a shared 2-D kernel only sees their sum, "
                 "a 3-D kernel tells them apart", fontsize=10)
    save(fig, out, "shared_vs_3d_kernel.png")


def fig_lenet_table(out):
    table = lenet5_c3_table()                        # (16 outputs, 6 inputs)
    fig, ax = plt.subplots(figsize=(8.0, 3.4))
    ax.imshow(table.T, cmap="Greys", vmin=0, vmax=1.6, interpolation="nearest", aspect="equal")
    for c in range(6):
        for k in range(16):
            if table[k, c]:
                ax.text(k, c, "X", ha="center", va="center", fontsize=10, color="white",
                        fontweight="bold")
    ax.set_xticks(range(16))
    ax.set_yticks(range(6))
    ax.set_xticks(np.arange(-0.5, 16), minor=True)
    ax.set_yticks(np.arange(-0.5, 6), minor=True)
    ax.grid(which="minor", color="0.6", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    ax.set_xlabel("C3 output map k (16)")
    ax.set_ylabel("S2 input map c (6)")
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    for x in (5.5, 11.5, 14.5):
        ax.axvline(x, color="tab:red", linewidth=1.5)
    ax.set_title("LeNet-5 C3 connections: lenet5_c3_table().T  (LeCun et al. 1998, Table 1)\n"
                 "3 contiguous | 4 contiguous | 4 non-contiguous | all 6;  "
                 f"{int(table.sum())} connections",
                 fontsize=9, y=-0.3)
    save(fig, out, "lenet5_c3_table.png")


def lenet_s2_maps():
    """A 32 x 32 input through C1 (6 kernels 5 x 5) and S2 (2 x 2 average) -> 6 maps of 14 x 14."""
    rng = np.random.default_rng(1998)
    image = digit_seven(32)
    w1 = rng.standard_normal((6, 1, 5, 5)) / 5
    c1 = np.tanh(fastconv.conv2d(image[None], w1))             # 32 - 5 + 1 = 28
    s2 = c1.reshape(6, 14, 2, 14, 2).mean(axis=(2, 4))        # 28 / 2 = 14
    return s2


def fig_lenet_map0(out):
    s2 = lenet_s2_maps()
    rng = np.random.default_rng(3)
    w3 = rng.standard_normal((16, 6, 5, 5)) / 5
    b3 = rng.standard_normal(16) / 4
    partial_sum_figure(s2, w3, b3, 0, out, "lenet5_c3_map0.png",
                       "LeNet-5 C3, output map 0: it reads S2 maps 0, 1, 2 only (Table 1);\n"
                       "each 14 x 14 map correlated with a 5 x 5 slice gives 10 x 10",
                       in_label="s2", out_label="c3",
                       conv_kw={"connections": lenet5_c3_table()})


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    out = argv[0] if argv else os.path.join(os.path.dirname(os.path.abspath(__file__)), "_static")
    os.makedirs(out, exist_ok=True)
    plt.rcParams.update({"font.size": 9})
    fig_first_layer(out)
    fig_second_layer(out)
    fig_second_layer_all(out)
    fig_shared_kernel(out)
    fig_lenet_table(out)
    fig_lenet_map0(out)


if __name__ == "__main__":
    main()
