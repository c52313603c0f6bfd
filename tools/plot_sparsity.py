#!/usr/bin/env python3
"""Heatmap of L2A routing sparsity: layers x position buckets, from `runtime sparsity --json`.

    python3 tools/plot_sparsity.py sparsity.json sparsity.png

Each cell is the fraction of tokens in that layer and position bucket that skipped global
attention (d = 0); the right-hand bar shows each layer's overall sparsity.
"""
import json
import sys

from plot_common import pyplot, save

plt = pyplot(__file__)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        rep = json.load(f)
    heat = rep["heatmap"]
    layers = [row["sparsity"] for row in rep["layers"]]
    seq, buckets = rep["seq_len"], rep["position_buckets"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 0.3 * len(heat) + 2.5), width_ratios=[5, 1], sharey=True)
    im = ax.imshow(heat, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, origin="lower",
                   extent=(0, seq, -0.5, len(heat) - 0.5))
    ax.set_xlabel(f"position ({buckets} buckets of {seq // buckets} tokens)")
    ax.set_ylabel("layer")
    step = max(1, len(heat) // 16)
    ax.set_yticks(range(0, len(heat), step))
    ax.set_title(f"{rep['model']} ({rep['attention']}): sparsity {rep['sparsity']:.1%}")
    if rep.get("forced_local_positions", 0):
        ax.axvline(rep["forced_local_positions"], color="white", linestyle="--", linewidth=1)
    fig.colorbar(im, ax=ax, label="fraction routed local (d = 0)")
    bx.barh(range(len(layers)), layers, color="tab:blue")
    bx.set_xlim(0, 1)
    bx.set_xlabel("layer sparsity")
    save(fig, sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
