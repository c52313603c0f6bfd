#!/usr/bin/env python3
"""Plot L2A attention speedup over SDPA causal against sparsity, from tools/bench_anchors.py --json.

  python3 tools/plot_l2a_speedup.py anchors.json --out l2a_speedup.png
  python3 tools/plot_l2a_speedup.py anchors.json --ours ours.json --ours-label "our runtime"

Panels: one row per model shape, columns forward and forward+backward. One line per
(implementation, T): colour = T, line style and marker = implementation. Speedup = SDPA causal time
/ implementation time at the same (shape, T), so above the dashed line at 1 is faster than dense
causal attention. Sparsity is the fraction of tokens NOT routed to global attention.

Implementations (--impls) are keys of the anchors' "l2a" rows: official_layer (Flex sliding window
+ the official L2A Triton kernel), flex_layer (Flex sliding window + Flex over the routed queries),
and the routed kernels alone, official_routed and flex_routed.

--ours adds our runtime's numbers: the JSON of `runtime profile --kernels-only --sparsity ... --json`
(its routed rows' l2a_fwd_ms and l2a_fwd_bwd_ms: window + routed, as measured in that profile), a JSON
list of {"T", "sparsity", "fwd_ms", "fwdbwd_ms"} entries (either time may be missing or null), or an
object {"label": ..., "shape": ..., "entries": [...]}.
Its speedups divide the anchors file's SDPA causal time at the same T and shape (--ours-shape,
default the object's "shape" or qwen2.5-0.5b), so both files should come from the same GPU.
--flop-bound adds, per T, the FLOP ratio causal / (window + routed) of the layer: the speedup a
layer would reach at SDPA's FLOP rate.
"""
import argparse
import json
import os
import sys

from plot_common import pyplot

plt = pyplot(__file__)
from matplotlib.lines import Line2D  # noqa: E402 (after the checked import above)
from matplotlib.ticker import ScalarFormatter  # noqa: E402

PASSES = (("fwd", "forward"), ("fwdbwd", "forward + backward"))
STYLES = {"official_layer": ("-", "o"), "flex_layer": ("--", "s"), "official_routed": ("-.", "v"),
          "flex_routed": ((0, (3, 1, 1, 1)), "D"), "ours": ("-", "*"), "flop_bound": (":", "")}
LABELS = {"official_layer": "official layer (SWA + official kernel)", "flex_layer": "flex layer (SWA + flex routed)",
          "official_routed": "official routed kernel", "flex_routed": "flex routed", "flop_bound": "FLOP bound"}


def load_rows(path):
    with open(path) as f:
        return json.load(f).get("l2a", [])


def load_ours(path, label, shape):
    """Our runtime's entries -> (label, shape, [{"T", "sparsity", "fwd_ms", "fwdbwd_ms"}])."""
    with open(path) as f:
        data = json.load(f)
    if isinstance(data, dict) and "kernels" in data:  # runtime profile --json
        entries = [{"T": k["seq"], "sparsity": k["sparsity"], "fwd_ms": k.get("l2a_fwd_ms"),
                    "fwdbwd_ms": k.get("l2a_fwd_bwd_ms")}
                   for k in data["kernels"] if k.get("mask") == "routed" and "sparsity" in k]
        if not entries:
            raise SystemExit(f"{path}: no routed kernel rows with a sparsity (run `runtime profile` with --sparsity)")
        label = label or f"ours: window + routed ({data.get('device_name', 'runtime profile')})"
        shape = shape or data.get("model")
    elif isinstance(data, dict):
        entries = data.get("entries", [])
        label = label or data.get("label")
        shape = shape or data.get("shape")
    else:
        entries = data
    return label or os.path.splitext(os.path.basename(path))[0], shape or "qwen2.5-0.5b", entries


def sdpa_times(rows):
    """{(shape, T, pass): SDPA causal ms} from the anchors' rows."""
    out = {}
    for r in rows:
        for key, _ in PASSES:
            ms = r.get("sdpa_causal", {}).get(key + "_ms")
            if ms:
                out[(r["shape"], r["T"], key)] = ms
    return out


def anchor_series(rows, shape, impl, key):
    """{T: [(sparsity, speedup)]} for one implementation and pass of the anchors file."""
    series = {}
    for r in rows:
        if r["shape"] != shape:
            continue
        base, ms = r.get("sdpa_causal", {}).get(key + "_ms"), r.get(impl, {}).get(key + "_ms")
        if base and ms:
            series.setdefault(r["T"], []).append((r["sparsity"], base / ms))
    return {T: sorted(pts) for T, pts in series.items()}


def flop_bound_series(rows, shape):
    """{T: [(sparsity, causal FLOPs / (window + routed FLOPs))]}: same for fwd and fwd+bwd."""
    series = {}
    for r in rows:
        fl = r.get("flops_fwd", {})
        if r["shape"] == shape and fl.get("sdpa_causal"):
            ratio = fl["sdpa_causal"] / (fl["flex_swa"] + fl["routed"])
            series.setdefault(r["T"], []).append((r["sparsity"], ratio))
    return {T: sorted(pts) for T, pts in series.items()}


def ours_series(entries, sdpa, shape, key):
    series = {}
    for e in entries:
        base, ms = sdpa.get((shape, e.get("T"), key)), e.get(key + "_ms")
        if base and ms:
            series.setdefault(e["T"], []).append((e["sparsity"], base / ms))
    return {T: sorted(pts) for T, pts in series.items()}


def t_label(T):
    return f"{T // 1024}K" if T % 1024 == 0 else str(T)


def draw(ax, series, style_key, color_of, linewidth=1.4):
    ls, marker = STYLES[style_key]
    for T, pts in sorted(series.items()):
        xs, ys = zip(*pts)
        ax.plot(xs, ys, linestyle=ls, marker=marker, color=color_of(T), linewidth=linewidth,
                markersize=5 if marker != "*" else 9)


def legend_handles(Ts, color_of, impls):
    hs = [Line2D([], [], color=color_of(T), linewidth=3, label=f"T = {t_label(T)}") for T in Ts]
    for impl, label in impls:
        ls, marker = STYLES[impl]
        hs.append(Line2D([], [], color="0.3", linestyle=ls, marker=marker, label=label))
    return hs


def plot(rows, impls, out, ours=None, shapes=None, logy=False, flop_bound=False):
    shapes = shapes or sorted({r["shape"] for r in rows}, key=lambda s: [r["shape"] for r in rows].index(s))
    if not shapes:
        raise SystemExit("no l2a rows to plot")
    Ts = sorted({r["T"] for r in rows if r["shape"] in shapes} |
                ({e["T"] for e in ours[2]} if ours else set()))
    cmap = plt.get_cmap("viridis")
    color_of = lambda T: cmap(0.85 * Ts.index(T) / max(1, len(Ts) - 1))
    sdpa = sdpa_times(rows)
    fig, axes = plt.subplots(len(shapes), 2, figsize=(12, 4.2 * len(shapes)), squeeze=False)
    for i, shape in enumerate(shapes):
        for j, (key, title) in enumerate(PASSES):
            ax = axes[i][j]
            for impl in impls:
                draw(ax, anchor_series(rows, shape, impl, key), impl, color_of)
            if flop_bound:
                draw(ax, flop_bound_series(rows, shape), "flop_bound", color_of, linewidth=1.0)
            if ours and ours[1] == shape:
                draw(ax, ours_series(ours[2], sdpa, shape, key), "ours", color_of, linewidth=2.4)
            ax.axhline(1.0, color="0.5", linestyle="--", linewidth=0.8)
            ax.set_title(f"{shape}: {title}")
            ax.set_xlabel("sparsity (fraction of tokens not routed)")
            ax.set_ylabel("speedup over SDPA causal (x)")
            if logy:
                ax.set_yscale("log", base=2)
                ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.grid(True, alpha=0.3)
    legend_impls = [(k, LABELS[k]) for k in impls] + ([("flop_bound", LABELS["flop_bound"])] if flop_bound else [])
    legend_impls += [("ours", ours[0])] if ours else []
    fig.tight_layout()
    # Below the panels; bbox_inches="tight" grows the canvas to hold it.
    fig.legend(handles=legend_handles(Ts, color_of, legend_impls), loc="upper center",
               bbox_to_anchor=(0.5, 0.0), ncol=3, frameon=False)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("anchors", help="JSON written by tools/bench_anchors.py --json")
    ap.add_argument("--out", default="", help="PNG to write (default: <anchors>_l2a_speedup.png)")
    ap.add_argument("--impls", default="official_layer,flex_layer",
                    help="comma-separated l2a row keys to plot (also: official_routed, flex_routed)")
    ap.add_argument("--shape", default="", help="comma-separated shapes to plot (default: all in the file)")
    ap.add_argument("--ours", default="", help="our runtime's JSON (see above)")
    ap.add_argument("--ours-label", default="", help="legend label for --ours (default: its 'label' or file name)")
    ap.add_argument("--ours-shape", default="", help="shape whose SDPA time --ours is divided by")
    ap.add_argument("--logy", action="store_true", help="log2 speedup axis")
    ap.add_argument("--flop-bound", action="store_true", help="add the FLOP-ratio bound per T (dotted)")
    args = ap.parse_args()
    impls = [s.strip() for s in args.impls.split(",") if s.strip()]
    unknown = [i for i in impls if i not in LABELS or i == "flop_bound"]
    if unknown:
        ap.error(f"unknown --impls {unknown}; choose from official_layer, flex_layer, official_routed, flex_routed")
    rows = load_rows(args.anchors)
    ours = load_ours(args.ours, args.ours_label, args.ours_shape) if args.ours else None
    shapes = [s.strip() for s in args.shape.split(",") if s.strip()] or None
    out = args.out or os.path.splitext(args.anchors)[0] + "_l2a_speedup.png"
    plot(rows, impls, out, ours=ours, shapes=shapes, logy=args.logy, flop_bound=args.flop_bound)
    print("wrote", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
