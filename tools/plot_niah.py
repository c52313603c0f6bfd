#!/usr/bin/env python3
"""Needle-in-a-haystack heatmap (depth x context length) from a `runtime eval` results.json.

    python3 tools/plot_niah.py OUTPUT/<backend>/results.json OUTPUT/<backend>/niah.png

Each cell is the fraction of the cell's seeded samples whose greedy answer contained the needle's
number (1 = always retrieved).
"""
import json
import sys

from plot_common import pyplot, save

plt = pyplot(__file__)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        with open(sys.argv[1]) as f:
            rep = json.load(f)
        niah = rep["results"]["niah"]
        cells = niah["cells"]
    except (OSError, KeyError, ValueError) as e:
        sys.exit(f"error: {sys.argv[1]}: no niah results ({e})")
    lengths = sorted({c["length"] for c in cells})
    depths = sorted({c["depth"] for c in cells})
    grid = [[float("nan")] * len(lengths) for _ in depths]
    for c in cells:
        grid[depths.index(c["depth"])][lengths.index(c["length"])] = c["score"]
    fig, ax = plt.subplots(figsize=(1.1 * len(lengths) + 2.5, 0.6 * len(depths) + 1.8))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}%" for d in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    for i, row in enumerate(grid):
        for j, v in enumerate(row):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    backend = rep.get("config", {}).get("attention", "")
    ax.set_title(f"needle in a haystack: {backend} ({niah['niah,none']:.1%})")
    fig.colorbar(im, ax=ax, fraction=0.04)
    save(fig, sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
