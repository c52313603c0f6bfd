#!/usr/bin/env python3
"""Writes the evaluation data `runtime eval --data TASK=FILE` reads, from a Hugging Face `datasets`
cache (the datasets and splits lm-evaluation-harness 0.4.13 evaluates on).

    python3 tools/export_eval_data.py --out eval_data [--tasks hellaswag,piqa,arc_challenge,arc_easy,wikitext]
    runtime eval ... --data hellaswag=eval_data/hellaswag.jsonl --data wikitext=eval_data/wikitext.jsonl

Each file is JSON lines, one dataset row per line, unchanged (the runtime applies the task's own
preprocessing). Offline machines: set HF_DATASETS_OFFLINE=1 and have the datasets in the cache
(`datasets` looks in ~/.cache/huggingface/datasets, or $HF_HOME).
"""
import argparse
import json
import os
import sys

# task -> (dataset path, config name, split): lm-eval 0.4.13's task files (test split where it has one).
SOURCES = {
    "hellaswag": ("Rowan/hellaswag", None, "validation"),
    "piqa": ("baber/piqa", None, "validation"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "wikitext": ("EleutherAI/wikitext_document_level", "wikitext-2-raw-v1", "test"),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output directory (one TASK.jsonl per task)")
    ap.add_argument("--tasks", default=",".join(SOURCES), help="comma-separated tasks (default: %(default)s)")
    args = ap.parse_args()
    tasks = [t for t in args.tasks.split(",") if t]
    unknown = [t for t in tasks if t not in SOURCES]
    if unknown:
        sys.exit(f"error: --tasks: unknown task(s) {', '.join(unknown)} (known: {', '.join(SOURCES)})")
    try:
        import datasets
    except ImportError:
        sys.exit("error: export_eval_data.py needs the `datasets` package: pip install datasets")
    os.makedirs(args.out, exist_ok=True)
    for task in tasks:
        path, name, split = SOURCES[task]
        try:
            ds = datasets.load_dataset(path, name, split=split)
        except Exception as e:  # not cached / no network: one line saying which dataset
            sys.exit(f"error: {task}: cannot load {path}{'/' + name if name else ''} split {split}: "
                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
        out = os.path.join(args.out, f"{task}.jsonl")
        tmp = out + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            for row in ds:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, out)
        print(f"{task}: {len(ds)} rows -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
