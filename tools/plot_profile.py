#!/usr/bin/env python3
"""Turns `runtime profile --json` output into PNG charts (time vs sequence length per backend).

  python3 tools/plot_profile.py profile.json [--anchors anchors.json] [--out-prefix profile]

Writes <prefix>_kernels.png (attention kernel forward ms per mask, with PyTorch SDPA and
FlexAttention from tools/bench_anchors.py when --anchors is given) and <prefix>_model.png
(whole-model prefill ms and decode tok/s per backend).
"""
import argparse
import json
import os

from plot_common import pyplot

plt = pyplot(__file__)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profile")
    ap.add_argument("--anchors", default="")
    ap.add_argument("--out-prefix", default="")
    args = ap.parse_args()
    prof = json.load(open(args.profile))
    prefix = args.out_prefix or os.path.splitext(args.profile)[0]
    model = os.path.basename(str(prof.get("model", "")))

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    series = {}
    for k in prof["kernels"]:
        name = "ours causal" if k["mask"] == "causal" else f"ours window {k['window']}"
        series.setdefault(name, []).append((k["seq"], k["fwd_ms"]))
    if args.anchors:
        anc = json.load(open(args.anchors))["attention"].get(model, {})
        for T, r in anc.items():
            series.setdefault("PyTorch SDPA causal", []).append((int(T), r["sdpa_causal"]["fwd_ms"]))
            if "fwd_ms" in r.get("flex_window", {}):
                series.setdefault("FlexAttention window", []).append((int(T), r["flex_window"]["fwd_ms"]))
    for name, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name,
                linestyle="--" if "PyTorch" in name or "Flex" in name else "-")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length")
    ax.set_ylabel("attention forward, ms (lower is better)")
    ax.set_title(f"Attention kernels: {model} on {prof.get('device_name', prof.get('device', ''))}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(prefix + "_kernels.png", dpi=120)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    by_backend = {}
    for r in prof["backends"]:
        by_backend.setdefault(r["backend"], []).append(r)
    for name, rows in sorted(by_backend.items()):
        rows.sort(key=lambda r: r["seq"])
        pre = [(r["seq"], r["prefill_ms"]) for r in rows if r.get("prefill_ms") is not None]
        dec = [(r["seq"], r["decode_tok_s"]) for r in rows if r.get("decode_tok_s") is not None]
        if pre:
            a1.plot(*zip(*pre), marker="o", label=name)
        if dec:
            a2.plot(*zip(*dec), marker="o", label=name)
    for a, ylabel in ((a1, "prefill (time to first token), ms"), (a2, "decode tokens/s at that context")):
        a.set_xscale("log", base=2)
        a.set_xlabel("sequence length")
        a.set_ylabel(ylabel)
        a.grid(True, which="both", alpha=0.3)
        a.legend()
    a1.set_yscale("log")
    fig.suptitle(f"Whole model: {model} on {prof.get('device_name', prof.get('device', ''))}")
    fig.tight_layout()
    fig.savefig(prefix + "_model.png", dpi=120)
    print("wrote", prefix + "_kernels.png", prefix + "_model.png")


if __name__ == "__main__":
    main()
