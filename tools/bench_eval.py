#!/usr/bin/env python3
"""Speed of `runtime eval` on a HellaSwag-sized run, against lm-evaluation-harness with HF transformers.

  python3 tools/bench_eval.py --items 10042 --device cuda [--model qwen2.5-0.5b] [--batch-tokens 1,4096,16384]
      [--share-prefix auto,on,off] [--attention full_causal] [--lm-eval] [--json eval_bench.json]

1. Writes --items synthetic HellaSwag rows (Rowan/hellaswag's format, 4 endings each, so 4x as many
   requests) whose lengths follow HellaSwag's validation set roughly: context 20-80 words, endings
   10-40 words, the words drawn from the eval fixtures' text. Scores are meaningless (random
   weights); the work per request is what a real run does.
2. Times `runtime eval --tasks hellaswag` (0-shot, acc and acc_norm) per --batch-tokens value
   (1: one request per forward; larger: requests packed into one forward) and --share-prefix value
   (on: a document's choices run their common context once).
3. --lm-eval: saves the same random model as a Hugging Face checkpoint (transformers, bf16 on the GPU)
   and times `lm_eval run --model hf --batch_size auto` on the same file through a local task YAML,
   when lm_eval is importable. Where the `datasets` package (lm-eval's task loader, which needs
   pyarrow) is missing, as on the GPU machine, it times lm-eval's HFLM.loglikelihood directly on the
   same requests instead: the part of an lm-eval run that does the work (model load included), with
   the request strings built as lm-eval's hellaswag task builds them. Reports the wall times and the ratio.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "eval")


def default_tokenizer():
    # The Qwen2.5 tokenizer: the shared data folder, or (GPU machine) a copy carried in .carry/tokenizer.
    for d in (os.environ.get("RT_SHARED_DATA_DIR", ""), os.path.join(ROOT, "..", "shared", "data")):
        if d and os.path.exists(os.path.join(d, "qwen2.5-tokenizer", "tokenizer.json")):
            return os.path.join(d, "qwen2.5-tokenizer")
    return os.path.join(ROOT, ".carry", "tokenizer")


def word_pool():
    words = []
    for name in ("hellaswag.jsonl", "piqa.jsonl", "arc_easy.jsonl"):
        with open(os.path.join(FIXTURES, "data", name), encoding="utf-8") as f:
            for line in f:
                words += [w for w in json.dumps(json.loads(line), ensure_ascii=False).split() if w.isalpha()]
    return sorted(set(words)) or ["word"]


def write_items(path, n, seed):
    rng = random.Random(seed)
    pool = word_pool()

    def text(lo, hi):
        return " ".join(rng.choice(pool) for _ in range(rng.randint(lo, hi))) + "."

    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            ctx_a, ctx_b = text(15, 60), text(3, 20).rstrip(".").lower()
            row = {"ind": i, "activity_label": text(1, 3).rstrip("."), "ctx_a": ctx_a, "ctx_b": ctx_b,
                   "ctx": ctx_a + " " + ctx_b, "endings": [text(10, 40) for _ in range(4)],
                   "source_id": f"synthetic~{i}", "split": "val", "split_type": "indomain",
                   "label": str(rng.randrange(4))}
            f.write(json.dumps(row) + "\n")


def die_with_parent():
    """preexec_fn: the child gets SIGTERM when this script dies (a `timeout` around the benchmark must
    not leave a runtime or lm-eval process holding the GPU for the next measurement)."""
    import ctypes
    import signal
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# The checkpoints are local and the GPU machine has no network: no hub look-ups (each would wait for
# a connection timeout).
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def stage(msg):
    print(f"[bench_eval {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_runtime(args, data, batch_tokens, share_prefix="auto"):
    out = tempfile.mkdtemp(prefix="bench_eval_")
    cmd = [args.runtime, "eval", "--model", args.model, "--device", args.device, "--tokenizer", args.tokenizer,
           "--tasks", "hellaswag", "--data", f"hellaswag={data}", "--output", out,
           "--batch-tokens", str(batch_tokens), "--share-prefix", share_prefix]
    if args.init:
        cmd += ["--init", args.init]
    if args.attention:
        cmd += ["--attention", args.attention]
    stage(f"runtime eval --batch-tokens {batch_tokens} --share-prefix {share_prefix}")
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=die_with_parent)
    wall = time.time() - t0
    row = {"framework": "runtime", "batch_tokens": batch_tokens, "share_prefix": share_prefix, "wall_s": wall,
           "cmd": " ".join(cmd)}
    if p.returncode != 0:
        row["error"] = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
    else:
        name = os.listdir(out)
        res = [json.load(open(os.path.join(out, d, "results.json"))) for d in name
               if os.path.exists(os.path.join(out, d, "results.json"))][0]
        row["task_s"] = res.get("timings_s", {}).get("hellaswag")
        row["acc"] = res["results"]["hellaswag"]["acc,none"]
    shutil.rmtree(out, ignore_errors=True)
    return row


def hf_checkpoint(args, d):
    """The runtime's random-init preset saved as an HF checkpoint (same architecture, own random init)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    if os.path.isdir(args.model):
        return args.model
    cfg_path = os.path.join(ROOT, "configs", "models", args.model + ".json")
    cfg = AutoConfig.from_pretrained(cfg_path) if os.path.exists(cfg_path) else None
    if cfg is None:
        sys.exit(f"bench_eval: no preset {cfg_path} to build an HF checkpoint from")
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype)
    model.save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(args.tokenizer, f), os.path.join(d, f))
    return d


def hellaswag_requests(data):
    """(context, continuation) pairs as lm-eval 0.4.13's hellaswag task makes them (process_docs, then
    doc_to_text = query, target_delimiter " " before each choice), in document and choice order."""
    sys.path.insert(0, os.path.join(FIXTURES, "tasks"))
    import importlib
    try:
        preprocess = importlib.import_module("hellaswag_utils").preprocess
    except ImportError:  # hellaswag_utils imports datasets for process_docs' type only
        import re

        def preprocess(text):  # the same four steps as hellaswag_utils.preprocess
            text = text.strip().replace(" [title]", ". ")
            return re.sub("\\[.*?\\]", "", text).replace("  ", " ")
    pairs = []
    with open(data, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            query = preprocess(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())
            pairs += [(query, " " + preprocess(e)) for e in doc["endings"]]
    return pairs


def run_hflm_direct(args, data, model_dir):
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM
    pairs = hellaswag_requests(data)
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    stage(f"lm-eval: HFLM.loglikelihood on {len(pairs)} requests")
    t0 = time.time()
    lm = HFLM(pretrained=model_dir, dtype=dtype, device=args.device, batch_size=args.hf_batch_size)
    reqs = [Instance(request_type="loglikelihood", doc={}, arguments=p, idx=i % 4, metadata=("hellaswag", i // 4, 1))
            for i, p in enumerate(pairs)]
    lm.loglikelihood(reqs)
    return {"framework": "lm-eval", "mode": "HFLM.loglikelihood (no datasets package)", "batch_size": args.hf_batch_size,
            "wall_s": time.time() - t0, "requests": len(pairs)}


def run_lm_eval(args, data):
    os.environ.update(OFFLINE_ENV)
    stage("lm-eval: building the HF checkpoint")
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        return {"framework": "lm-eval", "error": "lm_eval is not importable here"}
    work = tempfile.mkdtemp(prefix="bench_eval_hf_")
    model_dir = hf_checkpoint(args, os.path.join(work, "model"))
    try:
        import datasets  # noqa: F401
    except ImportError:
        try:
            return run_hflm_direct(args, data, model_dir)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    tasks = os.path.join(work, "tasks")
    os.makedirs(tasks)
    shutil.copyfile(os.path.join(FIXTURES, "tasks", "hellaswag_utils.py"), os.path.join(tasks, "hellaswag_utils.py"))
    with open(os.path.join(FIXTURES, "tasks", "hellaswag.yaml"), encoding="utf-8") as f:
        yaml = f.read()
    yaml = yaml.replace("task: hellaswag", "task: hellaswag_bench")
    yaml = "\n".join(("    test: " + data) if l.strip().startswith("test:") else l for l in yaml.splitlines())
    with open(os.path.join(tasks, "hellaswag_bench.yaml"), "w", encoding="utf-8") as f:
        f.write(yaml + "\n")
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf", "--model_args",
           f"pretrained={model_dir},dtype={dtype}", "--tasks", "hellaswag_bench", "--include_path", tasks,
           "--device", args.device, "--batch_size", args.hf_batch_size, "--output_path", os.path.join(work, "out")]
    stage("lm-eval run")
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=die_with_parent, env={**os.environ, **OFFLINE_ENV})
    row = {"framework": "lm-eval", "batch_size": args.hf_batch_size, "wall_s": time.time() - t0, "cmd": " ".join(cmd)}
    if p.returncode != 0:
        row["error"] = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
    shutil.rmtree(work, ignore_errors=True)
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10042, help="HellaSwag rows (4 requests each)")
    ap.add_argument("--model", default="qwen2.5-0.5b", help="preset (with --init random) or model directory")
    ap.add_argument("--init", default="random", help="runtime --init ('' for a model directory's weights)")
    ap.add_argument("--attention", default="", help="runtime backend(s), comma-separated (default: the model's)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokenizer", default=default_tokenizer(), help="directory with the Qwen2.5 tokenizer.json")
    ap.add_argument("--batch-tokens", default="1,4096,16384", help="runtime eval --batch-tokens values to time")
    ap.add_argument("--share-prefix", default="auto",
                    help="runtime eval --share-prefix values to time, comma-separated: auto (the runtime's default: on "
                         "on the CPU, off on CUDA), on, off")
    ap.add_argument("--lm-eval", action="store_true", help="also time lm-eval (HF backend) on the same file")
    ap.add_argument("--hf-batch-size", default="auto", help="lm-eval --batch_size")
    ap.add_argument("--runtime", default=os.path.join(ROOT, "build", "bin", "runtime"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the rows as JSON")
    args = ap.parse_args()

    work = tempfile.mkdtemp(prefix="bench_eval_data_")
    data = os.path.join(work, "hellaswag.jsonl")
    write_items(data, args.items, args.seed)
    rows = []
    for b in [int(x) for x in args.batch_tokens.split(",") if x]:
        for sp in [x for x in args.share_prefix.split(",") if x]:
            rows.append(run_runtime(args, data, b, sp))
            print(json.dumps(rows[-1]), flush=True)
    if args.lm_eval:
        rows.append(run_lm_eval(args, data))
        print(json.dumps(rows[-1]), flush=True)
    ok = [r for r in rows if "error" not in r]
    hf = [r for r in ok if r["framework"] == "lm-eval"]
    best = min((r for r in ok if r["framework"] == "runtime"), key=lambda r: r["wall_s"], default=None)
    print(f"\n{args.items} items ({4 * args.items} requests), {args.model} on {args.device}")
    for r in rows:
        what = f"runtime --batch-tokens {r['batch_tokens']} --share-prefix {r['share_prefix']}" \
            if r["framework"] == "runtime" else \
            f"lm-eval hf --batch_size {r.get('batch_size')}"
        print(f"  {what:34s} " + (f"{r['wall_s']:8.1f} s" if "error" not in r else "error: " + r["error"]))
    if best and hf:
        print(f"  runtime (best) vs lm-eval: {hf[0]['wall_s'] / best['wall_s']:.2f}x faster")
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"items": args.items, "requests": 4 * args.items, "rows": rows}, f, indent=1)
        os.replace(args.json + ".tmp", args.json)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
