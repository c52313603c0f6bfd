#!/usr/bin/env python3
"""The L2A paper's pruning claim in one table: KV cache, decode speed and quality of a model with
its sparsest global sublayers pruned, against the unpruned model.

  python3 tools/prune_study.py --model runs/router/model --data ../shared/data/wikitext-2/test.txt \\
      --fractions 0.25,0.5 --seq 1024 --out runs/prune_study [--device cuda] [--attention l2a_fused]
      [--layers "0,5;0,5,7"] [--eval-data hellaswag=hs.jsonl ...] [--profile-seq 4096] [--set k=v ...]

Steps (every number comes from the runtime's own commands, whose JSON this script reads):
  1. `runtime sparsity` on --data: each layer's routing sparsity (fraction of tokens not routed).
  2. For each fraction f, prune the ceil(f * layers) sparsest layers (`runtime prune --layers`);
     or prune the explicit --layers sets. Pruned models go to OUT/models/<variant>.
  3. For the unpruned model and each variant: `runtime profile` (decode tok/s and KV cache at
     --profile-seq), `runtime eval` (token perplexity of --data at --seq, plus any --eval-data task),
     and the KV bytes at 4K/32K/128K from prune_report.json.
  4. OUT/prune_study.{md,csv,json}: one row per variant, deltas against the unpruned model.
"""
import argparse
import csv
import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(cmd, what):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
        sys.exit(f"prune_study: {what} failed: {tail}\n  command: {' '.join(cmd)}")
    return p


def common_flags(a, model, base):
    flags = ["--model", model, "--device", a.device]
    if base and a.init:
        flags += ["--init", a.init]
    if a.attention:
        flags += ["--attention", a.attention]
    for kv in a.set:
        flags += ["--set", kv]
    return flags


def sparsest_layers(layers, fraction):
    n = math.ceil(fraction * len(layers) - 1e-9)
    order = sorted(layers, key=lambda l: (-l["sparsity"], l["layer"]))
    return sorted(l["layer"] for l in order[:n])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="an L2A model directory (or a base model with --attention l2a_*)")
    ap.add_argument("--data", required=True, help="text for the sparsity measurement and the perplexity")
    ap.add_argument("--out", required=True)
    ap.add_argument("--fractions", default="0.25,0.5", help="fractions of the layers to prune (sparsest first)")
    ap.add_argument("--layers", default="", help="explicit layer sets instead, ';' between variants: 0,5;0,5,7")
    ap.add_argument("--seq", type=int, default=1024, help="tokens per sequence (sparsity and perplexity)")
    ap.add_argument("--eval-data", action="append", default=[], metavar="TASK=FILE",
                    help="extra runtime eval task (repeatable), e.g. hellaswag=hs.jsonl")
    ap.add_argument("--profile-seq", type=int, default=4096, help="context of the decode measurement")
    ap.add_argument("--decode-tokens", type=int, default=32)
    ap.add_argument("--kv-seq", default="4K,32K,128K")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--attention", default="", help="backend (default: the model's; l2a_fused for cuda speed)")
    ap.add_argument("--init", default="", help="runtime --init for the unpruned model (random: a preset)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="plugin option for every run")
    ap.add_argument("--tokenizer", default="", help="tokenizer for text data (default: the model directory's)")
    ap.add_argument("--runtime", default=os.path.join(ROOT, "build", "bin", "runtime"))
    a = ap.parse_args()
    os.makedirs(os.path.join(a.out, "models"), exist_ok=True)
    tok = ["--tokenizer", a.tokenizer] if a.tokenizer else []

    # 1. Sparsity per layer.
    sp_json = os.path.join(a.out, "sparsity.json")
    run([a.runtime, "sparsity", *common_flags(a, a.model, True), "--data", a.data, "--seq", str(a.seq), *tok,
         "--json", sp_json], "runtime sparsity")
    sp = json.load(open(sp_json))
    layers = sp["layers"]

    # 2. Variants.
    if a.layers:
        sets = [[int(x) for x in s.split(",") if x.strip()] for s in a.layers.split(";") if s.strip()]
        variants = [(f"layers_{'_'.join(map(str, s))}", s) for s in sets]
    else:
        variants = []
        for f in [float(x) for x in a.fractions.split(",") if x]:
            s = sparsest_layers(layers, f)
            if s:
                variants.append((f"prune_{round(100 * f)}pct", s))
    rows = [{"variant": "unpruned", "pruned_layers": [], "model": a.model, "base": True}]
    for name, s in variants:
        d = os.path.join(a.out, "models", name)
        run([a.runtime, "prune", *common_flags(a, a.model, True), "--layers", ",".join(map(str, s)),
             "--kv-seq", a.kv_seq, "--out", d], f"runtime prune ({name})")
        rep = json.load(open(os.path.join(d, "prune_report.json")))
        rows.append({"variant": name, "pruned_layers": s, "model": d, "base": False, "kv_report": rep})

    # 3. Measure each.
    tasks = ["ppl"] + [kv.split("=", 1)[0] for kv in a.eval_data]
    for r in rows:
        m, base = r["model"], r["base"]
        pj = os.path.join(a.out, f"profile_{r['variant']}.json")
        run([a.runtime, "profile", *common_flags(a, m, base), "--seq", str(a.profile_seq), "--decode-tokens",
             str(a.decode_tokens), "--repeats", "2", "--json", pj], f"runtime profile ({r['variant']})")
        b = json.load(open(pj))["backends"][0]
        r.update(backend=b["backend"], decode_tok_s=b.get("decode_tok_s"), kv_cache_bytes=b.get("kv_cache_bytes"),
                 routed_share=b.get("decode_routed_share"))
        ed = os.path.join(a.out, "eval", r["variant"])
        data = ["--data", f"ppl={a.data}"] + sum((["--data", kv] for kv in a.eval_data), [])
        run([a.runtime, "eval", *common_flags(a, m, base), "--tasks", ",".join(tasks), *data, "--seq", str(a.seq),
             *tok, "--output", ed], f"runtime eval ({r['variant']})")
        res = json.load(open(os.path.join(ed, r["backend"], "results.json")))["results"]
        r["metrics"] = {t: res[t] for t in tasks if t in res}
    base_kv = next((x["kv_report"] for x in rows if "kv_report" in x), None)

    # 4. Table.
    def metric(r, t):
        m = r["metrics"].get(t, {})
        key = "token_perplexity,none" if t == "ppl" else next((k for k in ("acc_norm,none", "acc,none",
                                                                          "word_perplexity,none") if k in m), None)
        return (m.get(key), key) if key else (None, None)

    kv_lens = [x["seq"] for x in base_kv["kv_cache"]] if base_kv else []
    head = ["variant", "pruned layers", f"KV MiB @{a.profile_seq}", "KV saved", "decode tok/s", "decode vs unpruned"]
    head += [f"KV saved @{n}" for n in kv_lens]
    head += [f"{t} ({metric(rows[0], t)[1] or '-'})" for t in tasks] + [f"{t} delta" for t in tasks]
    table = []
    u = rows[0]
    for r in rows:
        kv = r["kv_cache_bytes"] or 0
        line = [r["variant"], ",".join(map(str, r["pruned_layers"])) or "-", f"{kv / 2**20:.2f}",
                f"{100 * (1 - kv / u['kv_cache_bytes']):.1f}%" if u["kv_cache_bytes"] else "-",
                f"{r['decode_tok_s']:.1f}" if r["decode_tok_s"] else "-",
                f"{r['decode_tok_s'] / u['decode_tok_s']:.2f}x" if r["decode_tok_s"] and u["decode_tok_s"] else "-"]
        rep = r.get("kv_report")
        line += [f"{100 * x['saved_fraction']:.1f}%" if rep else "0.0%" for x in (rep["kv_cache"] if rep else [{}] * len(kv_lens))]
        vals = [metric(r, t)[0] for t in tasks]
        line += [f"{v:.4f}" if v is not None else "-" for v in vals]
        line += [f"{v - metric(u, t)[0]:+.4f}" if v is not None and metric(u, t)[0] is not None else "-"
                 for v, t in zip(vals, tasks)]
        table.append(line)
    with open(os.path.join(a.out, "prune_study.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        w.writerows(table)
    md = [f"Pruning study: {a.model} ({rows[0].get('backend')}, {a.device}); sparsity measured on {a.data} "
          f"at {a.seq} tokens (overall {sp['sparsity']:.4f})", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(l) + " |" for l in table]
    with open(os.path.join(a.out, "prune_study.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(a.out, "prune_study.json"), "w") as f:
        json.dump({"model": a.model, "sparsity": sp, "rows": rows}, f, indent=1)
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
