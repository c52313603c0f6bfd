#!/usr/bin/env python3
"""Training anchor: Hugging Face transformers Qwen2 full fine-tuning, same GPU, same shapes.

  python3 tools/bench_train_hf.py --model qwen2.5-0.5b --seq 4096,8192,16384 [--json hf_train.json]

Random init from configs/models/<model>.json, bf16 weights, sdpa attention, batch 1, AdamW
(torch, fused) over the trained parameters, no gradient checkpointing unless --checkpointing.
--regime full (default) trains every parameter; --regime attention the attention projections and
every norm, as `runtime train --set train.regime=attention` does with full_causal
(runtime/train/adamw_optimizer.cpp: names with ".self_attn.", ending in "layernorm.weight", and
model.norm.weight); the rest is frozen (requires_grad False: no weight gradients there). Reports
the median step time (forward + backward + optimizer step; CUDA events after warm-up), tokens/s
and peak allocated memory per sequence length; an out-of-memory length is reported as "oom".
"""
import argparse
import json
import os
import statistics
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def trained_in_attention_regime(name: str) -> bool:
    return ".self_attn." in name or name.endswith("layernorm.weight") or name == "model.norm.weight"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-0.5b")
    ap.add_argument("--seq", default="4096,8192,16384")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--regime", choices=("full", "attention"), default="full")
    ap.add_argument("--json")
    a = ap.parse_args()
    from transformers import Qwen2Config, Qwen2ForCausalLM

    with open(os.path.join(ROOT, "configs", "models", a.model + ".json")) as f:
        cfg = Qwen2Config(**json.load(f))
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg).to(device="cuda", dtype=torch.bfloat16)
    if a.checkpointing:
        # Non-reentrant: the reentrant kind drops the gradients of a checkpointed block whose inputs
        # need none (the attention regime's frozen embeddings), which would time a step that skips
        # most of its backward.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    for name, prm in model.named_parameters():
        prm.requires_grad_(a.regime == "full" or trained_in_attention_regime(name))
    opt = torch.optim.AdamW([prm for prm in model.parameters() if prm.requires_grad], lr=1e-5, fused=True)
    rows = []
    for T in [int(s) for s in a.seq.split(",")]:
        ids = torch.randint(0, cfg.vocab_size, (1, T), device="cuda")
        torch.cuda.reset_peak_memory_stats()

        def step(check=False):
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
            if check:  # a step that left a trained parameter without its gradient would time too little
                missing = [n for n, prm in model.named_parameters() if prm.requires_grad and prm.grad is None]
                if missing:
                    sys.exit(f"bench_train_hf: {len(missing)} trained parameters got no gradient, e.g. {missing[0]}")
            opt.step()
            opt.zero_grad(set_to_none=True)

        try:
            for i in range(2):
                step(check=i == 0)
            torch.cuda.synchronize()
            times = []
            for _ in range(a.steps):
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                step()
                e.record()
                torch.cuda.synchronize()
                times.append(s.elapsed_time(e))
            ms = statistics.median(times)
            row = {"framework": "hf_transformers", "model": a.model, "regime": a.regime, "seq": T, "step_ms": ms,
                   "tokens_per_s": T / (ms / 1e3), "peak_mem_bytes": torch.cuda.max_memory_allocated()}
        except torch.cuda.OutOfMemoryError:
            opt.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            row = {"framework": "hf_transformers", "model": a.model, "regime": a.regime, "seq": T, "step_ms": "oom"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
