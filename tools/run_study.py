#!/usr/bin/env python3
"""One command per study: train L2A (router-only or the paper's regime), evaluate the baseline,
pure SWA and L2A on perplexity / HellaSwag / PIQA / ARC-Challenge / needle in a haystack, and write
the replication's Table 2 (markdown and CSV) with the plots.

    python3 tools/run_study.py --study replication --model models/qwen2.5-0.5b \\
        --train-data ../shared/data/wikitext-2/valid.txt --eval-data ppl=../shared/data/wikitext-2/test.txt \\
        --eval-data hellaswag=data/hellaswag.jsonl --eval-data piqa=data/piqa.jsonl \\
        --eval-data arc_challenge=data/arc_challenge.jsonl --eval-data niah=../shared/data/wikitext-2/test.txt \\
        --steps 500 --limit 500 --device cuda --out study_replication

Studies (configs/study_<name>.toml): `replication` (parallel layout, W 2048, seq 6144, router-only,
lr 5e-5, 5% warmup, mean regularizer, force_local) and `paper` (paper layout, W 4095, tau 0.1,
lambda 1e-8 ramped after a 5.26% warmup, rope theta 5e6, attention + norms + router trained).
`small` runs configs/l2a_router_only.toml, the small-scale variant (labelled as such).

Rows of Table 2: Baseline (the base model, full_causal), SWA (the base model, swa with the
study's window), L2A (the trained model on its own backend). Columns: PPL (token perplexity of the
ppl data, or wikitext's word perplexity), HellaSwag acc_norm, PIQA acc, ARC-C acc_norm, NIAH
(mean retrieval), sparsity (L2A: `runtime sparsity` on the ppl data). Extra `--set` options go to
`runtime train` (e.g. --set train.seq_len=2048 for a smaller GPU).
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDIES = {
    "replication": ("configs/study_replication.toml", 0.05),
    "paper": ("configs/study_paper.toml", 209 / 3973),
    "small": ("configs/l2a_router_only.toml", None),
}
COLUMNS = [("PPL", None), ("HellaSwag", "hellaswag"), ("PIQA", "piqa"), ("ARC-C", "arc_challenge"),
           ("NIAH", "niah")]


def run(cmd):
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    r = subprocess.run(cmd)
    if r.returncode != 0:
        sys.exit(f"error: run_study: `{cmd[0]} {cmd[1]}` failed with exit code {r.returncode} (its message is above)")


def window_of(config_path):
    for line in open(config_path, encoding="utf-8"):
        s = line.split("#")[0].strip()
        if s.startswith("window") and "=" in s:
            return int(s.split("=")[1])
    sys.exit(f"error: {config_path}: no [attention] window")


def headline(task, res):
    if task == "ppl":
        return res["token_perplexity,none"]
    if task == "wikitext":
        return res["word_perplexity,none"]
    if task == "niah":
        return res["niah,none"]
    return res["acc_norm,none" if task in ("hellaswag", "arc_challenge", "arc_easy") else "acc,none"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 2)[2])
    ap.add_argument("--study", choices=sorted(STUDIES), required=True)
    ap.add_argument("--model", required=True, help="base model directory or preset")
    ap.add_argument("--train-data", required=True)
    ap.add_argument("--val-data")
    ap.add_argument("--eval-data", action="append", default=[], metavar="TASK=FILE",
                    help="repeatable: ppl, wikitext, hellaswag, piqa, arc_challenge, niah")
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--limit", type=int, help="documents per multiple-choice task (the replication used 500)")
    ap.add_argument("--eval-seq", type=int, help="runtime eval --seq (default: the model's maximum)")
    ap.add_argument("--niah-lengths", default=None, help="runtime eval --niah-lengths")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokenizer")
    ap.add_argument("--set", action="append", default=[], help="extra runtime train --set (repeatable)")
    ap.add_argument("--runtime", default=os.path.join(ROOT, "build", "bin", "runtime"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--png", action="store_true", help="also the bar chart and heatmaps (needs matplotlib)")
    args = ap.parse_args()

    config, warmup = STUDIES[args.study]
    config = os.path.join(ROOT, config)
    window = window_of(config)
    for s in args.set:  # a --set attention.window=W for training is the SWA row's window too
        if s.split("=")[0].strip() in ("attention.window", "window"):
            window = int(s.split("=", 1)[1])
    tasks = {}
    for item in args.eval_data:
        task, sep, path = item.partition("=")
        if not sep or not path:
            sys.exit(f"error: --eval-data '{item}': expected TASK=FILE")
        tasks[task] = path
    if not tasks:
        sys.exit("error: --eval-data: give at least one task (e.g. --eval-data ppl=test.txt)")
    os.makedirs(args.out, exist_ok=True)
    rt = args.runtime
    common = ["--device", args.device] + (["--tokenizer", args.tokenizer] if args.tokenizer else [])
    l2a = "l2a_fused" if args.device == "cuda" else "l2a_dense"

    # 1. Train L2A.
    train_dir = os.path.join(args.out, "train")
    sets = list(args.set)
    if warmup is not None:
        sets.append(f"train.warmup_steps={max(1, round(warmup * args.steps))}")
    cmd = [rt, "train", "--model", args.model, "--attention", l2a, "--config", config, "--data", args.train_data,
           "--steps", str(args.steps), "--out", train_dir, "--quiet"] + ["--device", args.device]
    if args.tokenizer:
        cmd += ["--tokenizer", args.tokenizer]
    if args.val_data:
        cmd += ["--val-data", args.val_data]
    for s in sets:
        cmd += ["--set", s]
    if os.path.isdir(train_dir) and any(n.startswith("step_") for n in os.listdir(train_dir)):
        cmd.append("--resume")
    if not os.path.isdir(os.path.join(train_dir, "model")):
        run(cmd)
    trained = os.path.join(train_dir, "model")

    # 2. Evaluate: the base model as baseline and pure SWA, the trained model as L2A.
    eval_args = ["--tasks", ",".join(tasks)] + sum((["--data", f"{t}={p}"] for t, p in tasks.items()), [])
    if args.limit:
        eval_args += ["--limit", str(args.limit)]
    if args.eval_seq:
        eval_args += ["--seq", str(args.eval_seq)]
    if args.niah_lengths:
        eval_args += ["--niah-lengths", args.niah_lengths]
    base_out, l2a_out = os.path.join(args.out, "eval_base"), os.path.join(args.out, "eval_l2a")
    run([rt, "eval", "--model", args.model, "--attention", "full_causal,swa", "--window", str(window),
         "--output", base_out] + eval_args + common + (["--png", os.path.join(base_out, "summary.png")] if args.png else []))
    run([rt, "eval", "--model", trained, "--attention", l2a, "--output", l2a_out] + eval_args + common +
        (["--png", os.path.join(l2a_out, "summary.png")] if args.png else []))

    # 3. Sparsity of the trained routers.
    sparsity = None
    sp_data = tasks.get("ppl") or args.train_data
    sp_json = os.path.join(args.out, "sparsity.json")
    sp_cmd = [rt, "sparsity", "--model", trained, "--attention", l2a, "--data", sp_data, "--json", sp_json] + common
    if args.eval_seq:
        sp_cmd += ["--seq", str(args.eval_seq)]
    run(sp_cmd)
    sparsity = json.load(open(sp_json))["sparsity"]

    # 4. Table 2.
    def results(d, backend):
        return json.load(open(os.path.join(d, backend, "results.json")))["results"]
    rows = [("Baseline (full attention)", results(base_out, "full_causal"), None),
            (f"SWA (W = {window})", results(base_out, "swa"), None),
            (f"L2A ({args.study}{', small-scale variant' if args.study == 'small' else ''})",
             results(l2a_out, l2a), sparsity)]
    ppl_task = "ppl" if "ppl" in tasks else ("wikitext" if "wikitext" in tasks else None)
    header = ["model"] + [c for c, t in COLUMNS if (t or ppl_task) and (t is None or t in tasks)] + ["sparsity"]
    table = []
    for name, res, sp in rows:
        line = [name]
        for col, task in COLUMNS:
            task = task or ppl_task
            if task is None or task not in tasks:
                continue
            line.append(f"{headline(task, res[task]):.4f}")
        line.append("-" if sp is None else f"{sp:.3f}")
        table.append(line)
    with open(os.path.join(args.out, "table2.csv"), "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(table)
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in table]
    note = (f"\n{args.study} study, {args.steps} steps, backend {l2a} on {args.device}; PPL = "
            f"{'token perplexity' if ppl_task == 'ppl' else 'word perplexity'}; HellaSwag / ARC-C acc_norm, PIQA acc, "
            f"NIAH mean retrieval; sparsity = fraction of tokens not routed to global attention.\n")
    open(os.path.join(args.out, "table2.md"), "w").write("\n".join(md) + "\n" + note)
    print("\n".join(md) + "\n" + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
