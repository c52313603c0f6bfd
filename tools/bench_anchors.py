#!/usr/bin/env python3
"""Side-by-side anchors for our benchmarks, measured on the same GPU in the same call.

  python3 tools/bench_anchors.py [--json anchors.json] [--seq 16384,32768,65536] [--quick]

Measures, in bf16 with batch 1:
  * PyTorch scaled_dot_product_attention, causal (FlashAttention-2 / cuDNN inside), forward and
    forward+backward, at the Qwen2.5-0.5B (14 q heads, 2 kv heads, d 64) and 1.5B (12/2/128)
    attention shapes;
  * FlexAttention with a sliding-window block mask (W = 2048, i - W < j <= i), forward;
  * Hugging Face transformers Qwen2 (random init from configs/models/*.json, sdpa attention):
    whole-model prefill time and greedy decode tokens/s at a 4K context.
Times are CUDA-event medians after warm-up. FLOPs: causal attention forward = 2 * 2 * T^2/2 * D
* Hq (QK^T and PV, half the square), backward = 2.5x forward; window = 4 * T * W * D * Hq.
"""
import argparse
import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {"qwen2.5-0.5b": (14, 2, 64), "qwen2.5-1.5b": (12, 2, 128)}


def cuda_time_ms(fn, warmup=3, reps=10):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def causal_flops(T, D, H):
    return 4.0 * T * T / 2 * D * H


def bench_sdpa(T, hq, hkv, d):
    q = torch.randn(1, hq, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, hkv, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, hkv, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ms_f = cuda_time_ms(fwd)
    do = torch.randn(1, hq, T, d, device="cuda", dtype=torch.bfloat16)

    def fwd_bwd():
        o = fwd()
        o.backward(do)

    ms_fb = cuda_time_ms(fwd_bwd, warmup=2, reps=5)
    fl = causal_flops(T, d, hq)
    return {"fwd_ms": ms_f, "fwd_tflops": fl / ms_f / 1e9, "fwd_bwd_ms": ms_fb,
            "fwd_bwd_tflops": 3.5 * fl / ms_fb / 1e9}


def bench_flex_window(T, hq, hkv, d, W):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def sliding(b, h, qi, kv):
        return (kv <= qi) & (qi - kv < W)

    mask = create_block_mask(sliding, None, None, T, T, device="cuda")
    flex = torch.compile(flex_attention)
    q = torch.randn(1, hq, T, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, hkv, T, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, hkv, T, d, device="cuda", dtype=torch.bfloat16)
    ms = cuda_time_ms(lambda: flex(q, k, v, block_mask=mask, enable_gqa=True))
    return {"fwd_ms": ms, "fwd_tflops": 4.0 * T * W * d * hq / ms / 1e9}


def hf_model(preset):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = json.load(open(os.path.join(ROOT, "configs", "models", preset + ".json")))
    cfg = Qwen2Config(**{k: v for k, v in cfg.items() if k not in ("architectures", "transformers_version")})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
    return model


@torch.no_grad()
def bench_hf(preset, seqs, decode_ctx=4096, decode_tokens=64):
    model = hf_model(preset)
    out = {"prefill": {}, "decode": {}}
    vocab = model.config.vocab_size
    for T in seqs:
        ids = torch.randint(0, vocab, (1, T), device="cuda")
        try:
            # logits_to_keep=1: time to first token needs only the last position's logits.
            ms = cuda_time_ms(lambda: model(ids, logits_to_keep=1, use_cache=False), warmup=1, reps=3)
            out["prefill"][str(T)] = {"ms": ms, "tok_s": T / ms * 1e3}
        except torch.OutOfMemoryError:
            out["prefill"][str(T)] = {"error": "out of memory"}
        torch.cuda.empty_cache()
    ids = torch.randint(0, vocab, (1, decode_ctx), device="cuda")
    gen = lambda: model.generate(ids, max_new_tokens=decode_tokens, min_new_tokens=decode_tokens, do_sample=False)
    ms = cuda_time_ms(gen, warmup=1, reps=3)
    prefill_ms = cuda_time_ms(lambda: model(ids, logits_to_keep=1), warmup=1, reps=3)
    out["decode"][str(decode_ctx)] = {"tok_s": decode_tokens / max(ms - prefill_ms, 1e-6) * 1e3}
    del model
    torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default="")
    ap.add_argument("--seq", default="16384,32768,65536")
    ap.add_argument("--window", type=int, default=2048)
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()
    seqs = [int(s) for s in args.seq.split(",")]
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "attention": {}, "hf": {}}
    try:
        import transformers
        res["transformers"] = transformers.__version__
    except ImportError:
        pass
    for name, (hq, hkv, d) in SHAPES.items():
        res["attention"][name] = {}
        for T in seqs:
            r = {"sdpa_causal": bench_sdpa(T, hq, hkv, d)}
            try:
                r["flex_window"] = bench_flex_window(T, hq, hkv, d, args.window)
            except Exception as e:  # FlexAttention needs triton; report, do not die
                r["flex_window"] = {"error": repr(e)[:200]}
            res["attention"][name][str(T)] = r
            print(f"{name} T={T}: sdpa fwd {r['sdpa_causal']['fwd_ms']:.3f} ms "
                  f"({r['sdpa_causal']['fwd_tflops']:.0f} TFLOP/s), fwd+bwd {r['sdpa_causal']['fwd_bwd_ms']:.3f} ms; "
                  f"flex W={args.window} {r['flex_window'].get('fwd_ms', float('nan')):.3f} ms", flush=True)
            torch.cuda.empty_cache()
    if not args.skip_hf:
        for preset in SHAPES:
            res["hf"][preset] = bench_hf(preset, [s for s in seqs if s <= 32768])
            print(preset, "HF", json.dumps(res["hf"][preset]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
