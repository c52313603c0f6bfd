#!/usr/bin/env python3
"""Training throughput and peak memory of `runtime train`, side by side with HF transformers.

  python3 tools/bench_train.py --model qwen2.5-0.5b --seq 4096,8192,16384 [--json train_bench.json]
      [--cases full_causal:full,swa:full,l2a_dense:router_only,...] [--hf] [--steps 5]
      [--l2a-set router=fixed_rate --l2a-set sparsity=0.8]

For each case (backend:regime[:layout]) and sequence length, runs
  runtime train --model M --init random --device cuda --attention B --set regime=R --set seq_len=T
      --set batch_size=1 --data <random ids .bin> --steps N
and reads OUT/metrics.jsonl: median tokens/s over the steps after the first (warm-up), the peak
device memory of the CUDA pool, and whether it ran out of memory. --hf adds
tools/bench_train_hf.py (HF transformers full fine-tuning) at the same shapes in the same call.
Window 2048 for swa and L2A's local half (L2A: every token routed global at init, p = 0.5).

  python3 tools/bench_train.py --model qwen2.5-1.5b --fit-gib 24 --cases l2a_fused:router_only,l2a_fused:attention
      [--recompute] [--fit-max 131072]

--fit-gib G: for each case, the longest context (a multiple of 1024) whose training step peaks at or
below G GiB of device memory (e.g. 24 for an RTX 4090): doubling from 2048 until a step fails or
goes over, then bisecting to within 1024 tokens or 1/16 of the answer, whichever is coarser (a
probe at 64K+ runs for tens of seconds; 1/16 saves two of them per case). Each probe runs --steps steps (2 is enough for the peak). The runs get
RT_CUDA_MEMORY_LIMIT=G GiB, so a larger GPU plans as the smaller one would (cuDNN's backward
workspace, which can grow with T^2, is held to a quarter of G) and an allocation past G fails.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CASES = ("full_causal:full,swa:full,l2a_dense:router_only,l2a_dense:attention,l2a_dense:full,"
                 "l2a_dense:router_only:parallel")


def run_case(runtime, model, backend, regime, layout, T, steps, data, window, recompute, extra=(), memory_limit=""):
    out = tempfile.mkdtemp(prefix="bench_train_")
    cmd = [runtime, "train", "--model", model, "--init", "random", "--device", "cuda", "--attention", backend,
           "--data", data, "--steps", str(steps), "--out", out, "--quiet",
           "--set", f"train.regime={regime}", "--set", f"train.seq_len={T}", "--set", "train.batch_size=1",
           "--set", "train.lr=1e-5", "--set", "train.collapse_action=warn",
           "--set", f"train.recompute={'true' if recompute else 'false'}"]
    if backend != "full_causal":
        cmd += ["--set", f"attention.window={window}"]
    if T > 32768:  # past the Qwen2.5 configs' max_position_embeddings: the paper's 128K extension
        cmd += ["--max-position", str(T)]
    if layout:
        cmd += ["--set", f"attention.layout={layout}"]
    if backend.startswith("l2a"):
        for kv in extra:
            cmd += ["--set", f"attention.{kv}"]
    try:
        env = dict(os.environ, RT_CUDA_MEMORY_LIMIT=memory_limit) if memory_limit else None
        p = subprocess.run(cmd, capture_output=True, text=True, env=env)
        return parse_case(p, out, backend, regime, layout, T, recompute)
    finally:  # checkpoints of a 0.5B full run are ~8 GB: never keep them
        shutil.rmtree(out, ignore_errors=True)


def parse_case(p, out, backend, regime, layout, T, recompute):
    row = {"framework": "runtime", "backend": backend, "regime": regime, "layout": layout or "", "seq": T,
           "recompute": recompute}
    if p.returncode != 0:
        err = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
        row["error"] = err
        row["oom"] = "out of gpu memory" in p.stderr.lower() or "out of memory" in p.stderr.lower()
        return row
    recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if l.strip()]
    tps = [r["tokens_per_s"] for r in recs[1:]] or [recs[0]["tokens_per_s"]]
    row["tokens_per_s"] = statistics.median(tps)
    row["step_ms"] = T / row["tokens_per_s"] * 1e3
    # The mean step: with L2A's leak (a dense layer drawn per layer and step) the steps differ, and
    # the mean is what a run costs; the median stays the headline for steady steps.
    row["step_ms_mean"] = statistics.mean(T / t * 1e3 for t in tps)
    row["peak_mem_bytes"] = max(r.get("peak_mem_bytes", 0) for r in recs)
    row["loss_last"] = recs[-1]["loss"]
    return row


def fits(row, budget_bytes):
    return "error" not in row and row.get("peak_mem_bytes", 0) <= budget_bytes


def longest_fit(probe, budget_bytes, lo, hi_cap, step=1024, rel=16):
    """The longest T (a multiple of step, at most hi_cap) with fits(probe(T)), searched by doubling
    from lo (the last doubling probes hi_cap itself) and then bisecting until the gap to the first T
    that does not fit is at most max(step, T / rel); below lo only when lo does not fit (0: not even
    one step). Returns (T, rows probed)."""
    rows, best, T = [], 0, min(lo, hi_cap)
    while True:  # doubling
        r = probe(T)
        rows.append(r)
        if not fits(r, budget_bytes):
            break
        best = T
        if T >= hi_cap:
            return best, rows
        T = min(T * 2, hi_cap)
    bad = T
    while bad - best > max(step, best // rel // step * step):  # bisect (best fits or is 0, bad does not)
        mid = ((best + bad) // 2) // step * step
        if mid <= best:
            break
        r = probe(mid)
        rows.append(r)
        if fits(r, budget_bytes):
            best = mid
        else:
            bad = mid
    return best, rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runtime", default=os.path.join(ROOT, "build", "bin", "runtime"))
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--seq", default="4096,8192,16384")
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--recompute", action="store_true", help="gradient checkpointing in every case")
    ap.add_argument("--hf", action="store_true",
                    help="add HF transformers' training step (tools/bench_train_hf.py) at the same lengths")
    ap.add_argument("--hf-regime", choices=("full", "attention"),
                    help="the parameters HF trains (default: the first case's regime, full for router_only)")
    ap.add_argument("--hf-checkpointing", action="store_true", help="HF with gradient checkpointing")
    ap.add_argument("--l2a-set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra L2A plugin option for the l2a_* cases (repeatable), e.g. router=fixed_rate "
                         "and sparsity=0.8 to train at a controlled sparsity")
    ap.add_argument("--fit-gib", type=float, help="find each case's longest context within this many GiB")
    ap.add_argument("--fit-max", type=int, default=131072, help="--fit-gib: longest context tried")
    ap.add_argument("--fit-min", type=int, default=2048,
                    help="--fit-gib: the first context tried (doubling from it; a known fit saves the probes below)")
    ap.add_argument("--json")
    a = ap.parse_args()
    import numpy as np

    seqs = [int(s) for s in a.seq.split(",")]
    longest = max(seqs + ([a.fit_max] if a.fit_gib else []))
    data = os.path.join(tempfile.mkdtemp(), "random.bin")
    np.random.default_rng(0).integers(0, 151936, size=longest * (a.steps + 2), dtype=np.uint32).tofile(data)
    if a.fit_gib:
        return fit_main(a, data)
    rows = []
    for case in a.cases.split(","):
        parts = case.split(":")
        backend, regime = parts[0], parts[1]
        layout = parts[2] if len(parts) > 2 else ""
        for T in seqs:
            row = run_case(a.runtime, a.model, backend, regime, layout, T, a.steps, data, a.window, a.recompute,
                           a.l2a_set)
            if backend.startswith("l2a") and a.l2a_set:
                row["l2a_set"] = a.l2a_set
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.hf:
        hf_json = os.path.join(tempfile.mkdtemp(), "hf.json")
        first_regime = a.cases.split(",")[0].split(":")[1]
        hf_regime = a.hf_regime or (first_regime if first_regime in ("full", "attention") else "full")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "bench_train_hf.py"), "--model", a.model,
                        "--seq", a.seq, "--regime", hf_regime, "--json", hf_json] +
                       (["--checkpointing"] if a.hf_checkpointing else []), check=False)
        if os.path.exists(hf_json):
            rows += json.load(open(hf_json))["rows"]
    hf = {r["seq"]: r for r in rows if r.get("framework") == "hf_transformers" and isinstance(r.get("step_ms"), float)}
    print(f"\n{'case':38s} {'seq':>6s} {'tok/s':>9s} {'ms/step':>8s} {'mean ms':>8s} {'peak GiB':>8s} {'vs HF':>6s}")
    for r in rows:
        name = f"hf_transformers:{r.get('regime', 'full')}" if r.get("framework") == "hf_transformers" else \
            f"{r['backend']}:{r['regime']}{':' + r['layout'] if r['layout'] else ''}"
        if "tokens_per_s" not in r:
            print(f"{name:38s} {r['seq']:6d}  {r.get('error', r.get('step_ms'))}")
            continue
        ratio = r["tokens_per_s"] / hf[r["seq"]]["tokens_per_s"] if r["seq"] in hf else float("nan")
        print(f"{name:38s} {r['seq']:6d} {r['tokens_per_s']:9.0f} {r['step_ms']:8.1f} {r.get('step_ms_mean', r['step_ms']):8.1f} "
              f"{r.get('peak_mem_bytes', 0) / 2**30:8.2f} {ratio:6.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)
    return 0


def fit_main(a, data) -> int:
    budget = int(a.fit_gib * 2**30)
    results, probes = [], []
    for case in a.cases.split(","):
        parts = case.split(":")
        backend, regime = parts[0], parts[1]
        layout = parts[2] if len(parts) > 2 else ""

        def probe(T):
            r = run_case(a.runtime, a.model, backend, regime, layout, T, a.steps, data, a.window, a.recompute,
                         a.l2a_set, memory_limit=f"{budget}")
            print(json.dumps(r), flush=True)
            return r

        best, rows = longest_fit(probe, budget, a.fit_min, a.fit_max)
        probes += rows
        peak = max((r.get("peak_mem_bytes", 0) for r in rows if r["seq"] == best and "error" not in r), default=0)
        results.append({"model": a.model, "case": case, "recompute": a.recompute, "budget_gib": a.fit_gib,
                        "longest_seq": best, "peak_mem_bytes": peak})
    print(f"\nlongest context within {a.fit_gib:g} GiB, {a.model}{' (recompute)' if a.recompute else ''}")
    for r in results:
        print(f"  {r['case']:36s} {r['longest_seq']:7d}  (peak {r['peak_mem_bytes'] / 2**30:.2f} GiB)")
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump({"fit": results, "rows": probes}, f, indent=1)
        os.replace(a.json + ".tmp", a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
