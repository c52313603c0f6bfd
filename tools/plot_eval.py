#!/usr/bin/env python3
"""Bar chart of `runtime eval`'s summary: one panel per task, one bar per attention backend.

    python3 tools/plot_eval.py OUTPUT/summary.csv OUTPUT/summary.png

Each panel shows the task's headline metric (acc_norm for hellaswag and ARC, acc for piqa,
word perplexity for wikitext, token perplexity for ppl), with the value over each bar.
"""
import csv
import sys

from plot_common import pyplot, save

plt = pyplot(__file__)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    rows = []
    try:
        with open(sys.argv[1], newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        sys.exit(f"error: {sys.argv[1]}: {e.strerror}")
    if not rows or not {"backend", "task", "metric", "value"} <= set(rows[0]):
        sys.exit(f"error: {sys.argv[1]}: not a runtime eval summary.csv (columns backend, task, metric, value)")
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks) + 1, 3.6), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        sel = {r["backend"]: r for r in rows if r["task"] == task}
        vals = [float(sel[b]["value"]) if b in sel else 0.0 for b in backends]
        bars = ax.bar(range(len(backends)), vals, color=[f"C{i}" for i in range(len(backends))])
        ax.set_xticks(range(len(backends)), backends, rotation=30, ha="right")
        metric = next(iter(sel.values()))["metric"]
        ax.set_title(f"{task}\n{metric}")
        for b, v in zip(bars, vals):
            ax.annotate(f"{v:.4g}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom", fontsize=8)
    save(fig, sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
