#!/usr/bin/env python3
"""Side-by-side anchors for our benchmarks, measured on the same GPU in the same process.

  python3 tools/bench_anchors.py --json anchors.json            # full run (a few minutes on an H200)
  python3 tools/bench_anchors.py --quick --json smoke.json      # smoke test: T=16384, sparsity 0.8

All tensors are bf16, batch 1, at the attention shapes of Qwen2.5-0.5B (14 q heads, 2 kv heads,
head dim 64) and Qwen2.5-1.5B (12/2/128; T capped by --large-shape-max-seq).

What is measured
  Dense anchors, once per (shape, T):
    * sdpa_causal: torch scaled_dot_product_attention(is_causal=True, enable_gqa=True)
      (FlashAttention-2 / cuDNN inside), forward and forward+backward;
    * flex_swa: FlexAttention (torch.compile'd once) with a sliding-window block mask,
      i - W < j <= i (W = --window), forward and forward+backward.
  L2A anchors, per (shape, T, sparsity s); a seeded random router keeps n = T - round(s*T) tokens
  (s = fraction NOT routed), positions sorted ascending, the same set for every implementation:
    * official_routed: the L2A paper's Triton kernel (qsparse_prefill.attention_prefill, imported at
      run time from --anchors-dir, never copied), called as its model calls it: K/V go through
      repeat_kv to the query heads and the router mask comes as alphas [1, T, Hq]. Timed INCLUDING
      repeat_kv, its compaction (sort/gather) and its scatter back to [1, T, Hq, D]. Its backward is a
      torch.autograd.Function with Triton kernels, so forward+backward is timed through autograd.
      It autotunes once per head dim, on its first call (the first T and s of the sweep).
    * flex_routed: FlexAttention over the compacted routed queries, q_routed [1, Hq, n, D] = routed
      rows of q (the index_select gather is inside the timed region), K/V all T tokens, GQA via
      enable_gqa=True, mask_mod = pos[q_idx] >= kv_idx with pos the int32 routed positions. The block
      mask (create_block_mask, Q_LEN=n, KV_LEN=T) is built outside the timed region; its build time is
      reported separately (block_mask_build_ms), as is the sliding-window mask's. Eager
      create_block_mask materialises Q x KV; where that would not fit (the T = 131072 window) the
      torch.compile'd create_block_mask is used instead (block_mask_method).
    * official_layer = flex_swa + official_routed and flex_layer = flex_swa + flex_routed (sums of
      the medians), with speedup_vs_sdpa = sdpa_causal time / layer time, forward and fwd+bwd.
  Accuracy (--acc-seq, default 4096): relative Frobenius error |out - ref| / |ref| over the routed
  rows (all heads) against a float32 causal-attention reference computed in chunks of rows with
  full-precision matmuls, for SDPA bf16, the official kernel and Flex routed.
  Hugging Face transformers Qwen2 (random init from configs/models/*.json, sdpa attention): whole
  model prefill time and greedy decode tokens/s at a 4K context (skip with --skip-hf).

How it is timed
  Times are medians of CUDA-event intervals after warm-up (the warm-up absorbs torch.compile and
  Triton autotuning; the wall time of the first call is kept as *_first_call_s). Warm-up/reps:
  2/10 (forward) and 2/5 (fwd+bwd) below --big-seq, 1/3 from --big-seq (65536) up. Forward is timed
  with autograd recording (inputs require grad, as in training); fwd+bwd is forward plus
  torch.autograd.grad w.r.t. q, k, v. fwd+bwd is skipped above --max-bwd-seq (recorded in the JSON).
  An out-of-memory error (or any other failure) is recorded per measurement and the run goes on.

FLOPs are counted on visible (q, k) pairs, 4 * D * Hq per pair (QK^T and PV): causal = T(T+1)/2
pairs, window = sum_i min(i+1, W), routed = sum over routed rows of (pos+1); backward = 2.5x
forward, so fwd+bwd = 3.5x. TFLOP/s = FLOPs / median time.

Output: --json writes {"gpu", "torch", "triton", "shapes", "settings", "official_kernel",
"l2a": [rows], "accuracy", "attention" (the older per-shape dense table), "hf"}; a short table goes
to stdout. tools/plot_l2a_speedup.py plots the l2a rows.
"""
import argparse
import importlib.util
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {"qwen2.5-0.5b": (14, 2, 64), "qwen2.5-1.5b": (12, 2, 128)}
LARGE_SHAPE = "qwen2.5-1.5b"
DEFAULT_SEQS = (16384, 32768, 65536, 131072)
DEFAULT_SPARSITIES = (0.5, 0.8, 0.9, 0.95)
QUICK_SEQS, QUICK_SPARSITIES = (16384,), (0.8,)
BWD_FACTOR = 2.5  # backward FLOPs / forward FLOPs
IMPL_NOTES = {
    "sdpa_causal": "F.scaled_dot_product_attention(is_causal=True, enable_gqa=True), q/k/v [1, H, T, D]",
    "flex_swa": "compiled flex_attention, sliding-window block mask i - W < j <= i, enable_gqa=True",
    "official_routed": "qsparse_prefill.attention_prefill incl. repeat_kv of K/V, its sort/gather "
                       "compaction and scatter back to [1, T, Hq, D]",
    "flex_routed": "compiled flex_attention on q.index_select(routed rows) (gather timed), K/V all T, "
                   "mask pos[q_idx] >= kv_idx, enable_gqa=True; output stays compact [1, Hq, n, D]",
    "official_layer": "flex_swa + official_routed (sum of medians)",
    "flex_layer": "flex_swa + flex_routed (sum of medians)",
}


# ----------------------------------------------------------------------------------------- timing

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_fn(fn, warmup, reps, device):
    """Median time of fn() in ms (CUDA events; perf_counter on CPU) and the first call's wall time."""
    t0 = time.perf_counter()
    fn()  # first call: torch.compile / Triton autotuning happen here
    synchronize(device)
    first_call_s = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        else:
            t = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t) * 1e3)
    return {"ms": statistics.median(times), "first_call_s": first_call_s}


def cuda_time_ms(fn, warmup=3, reps=10):
    return time_fn(fn, warmup, reps, torch.device("cuda"))["ms"]


def timing_plan(T, args):
    """Warm-up and repetitions for forward and fwd+bwd; fewer at large T to bound the run time."""
    big = T >= args.big_seq
    plan = {"warmup": 1 if big else 2, "reps_fwd": 3 if big else 10, "reps_fwdbwd": 3 if big else 5,
            "skip_fwdbwd": None}  # None: measured; else why not
    if T > args.max_bwd_seq:
        plan["skip_fwdbwd"] = "T above --max-bwd-seq"
    elif args.device == "cpu":
        plan["skip_fwdbwd"] = "cpu dry run (FlexAttention has no CPU backward)"
    return plan


def run_guarded(fn, device):
    """fn() -> dict; an OOM or any other failure becomes {"error": ...} instead of ending the run."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError:
        return {"error": "out of memory"}
    except Exception as e:  # compile errors, missing Triton, kernel asserts: report, keep going
        return {"error": f"{type(e).__name__}: {e}"[:400]}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- routing and FLOPs

def n_routed(T, sparsity):
    """Tokens sent to global attention when a fraction `sparsity` of T is NOT routed (at least 1)."""
    return max(1, T - int(round(sparsity * T)))


def make_routing(T, sparsity, seed):
    """Seeded random routed positions (int64, CPU, sorted ascending); same set for every impl."""
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(T, generator=g)[: n_routed(T, sparsity)].sort().values


def causal_pairs(T):
    return T * (T + 1) // 2


def window_pairs(T, W):
    """sum_{i<T} min(i+1, W): visible pairs of the causal sliding window i - W < j <= i."""
    if T <= W:
        return causal_pairs(T)
    return W * (W + 1) // 2 + (T - W) * W


def routed_pairs(pos):
    """sum over routed rows of (pos+1): visible pairs of causal attention from routed queries."""
    return int(pos.sum().item()) + pos.numel()


def attn_flops(pairs, d, hq):
    return 4.0 * d * hq * pairs


def tflops(flops, ms):
    return flops / ms / 1e9


# ------------------------------------------------------------------------------ implementations

def repeat_kv(x, n_rep):
    """[B, Hkv, T, D] -> [B, Hkv*n_rep, T, D], as the L2A reference model (and HF Qwen) does it."""
    b, hkv, t, d = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None].expand(b, hkv, n_rep, t, d).reshape(b, hkv * n_rep, t, d)


def grad_step(fwd, inputs, grad_out):
    """Forward then backward: torch.autograd.grad of fwd() w.r.t. inputs (no .grad accumulation)."""
    def step():
        torch.autograd.grad(fwd(), inputs, grad_out)
    return step


def sdpa_fns(q, k, v, do):
    fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    return fwd, grad_step(fwd, (q, k, v), do)


def flex_fns(flex, q, k, v, block_mask, do, rows=None):
    """Flex forward (and fwd+bwd); with rows, q is first gathered to its routed rows (timed)."""
    def fwd():
        qq = q if rows is None else q.index_select(2, rows)
        return flex(qq, k, v, block_mask=block_mask, enable_gqa=True)
    return fwd, grad_step(fwd, (q, k, v), do)


def official_fns(qs, q, k, v, alphas, do):
    """The official kernel as its model calls it: repeat_kv, [B, T, H, D] views, alphas [B, T, Hq]."""
    n_rep = q.shape[1] // k.shape[1]

    def fwd():
        kr, vr = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
        return qs.attention_prefill(q.transpose(1, 2), kr.transpose(1, 2), vr.transpose(1, 2), alphas)
    return fwd, grad_step(fwd, (q, k, v), do)


def sliding_window_mask_mod(W):
    def sliding_window(b, h, q_idx, kv_idx):
        # i - W < j <= i, written without a Q x KV integer difference (create_block_mask's memory)
        return (kv_idx <= q_idx) & (kv_idx > q_idx - W)
    return sliding_window


def routed_causal_mask_mod(pos):
    """Row r of the compacted queries is token pos[r]: it sees keys kv_idx <= pos[r]."""
    def routed_causal(b, h, q_idx, kv_idx):
        return pos[q_idx] >= kv_idx
    return routed_causal


_compiled_create_block_mask = []


def build_block_mask(mask_mod, q_len, kv_len, device):
    """create_block_mask outside any timed region -> (mask, build ms, method).

    Eager create_block_mask materialises the Q x KV boolean mask, and summing its blocks makes an
    int64 copy: about 11 bytes per (q, kv) pair. When that would pass 60% of the free GPU memory
    (e.g. the T = 131072 sliding window), torch.compile(create_block_mask) builds it without
    materialising; it is called once to compile, and the second build is the one timed.
    """
    from torch.nn.attention.flex_attention import create_block_mask
    build = create_block_mask
    method = "eager"
    if device.type == "cuda" and 11 * q_len * kv_len > 0.6 * torch.cuda.mem_get_info()[0]:
        if not _compiled_create_block_mask:
            _compiled_create_block_mask.append(torch.compile(create_block_mask))
        build, method = _compiled_create_block_mask[0], "compiled"
        build(mask_mod, None, None, q_len, kv_len, device=device)
    synchronize(device)
    t = time.perf_counter()
    mask = build(mask_mod, None, None, q_len, kv_len, device=device)
    synchronize(device)
    return mask, (time.perf_counter() - t) * 1e3, method


# ----------------------------------------------------------------------------------- set-up

def load_official(anchors_dir):
    """Import qsparse_prefill.py from anchors_dir; (module or None, JSON-able status)."""
    path = os.path.join(anchors_dir, "qsparse_prefill.py")
    status = {"path": os.path.abspath(path), "loaded": False}
    try:
        spec = importlib.util.spec_from_file_location("qsparse_prefill", path)
        if spec is None or not os.path.isfile(path):
            raise FileNotFoundError(path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    except BaseException as e:  # ImportError (no triton), RuntimeError (no GPU driver), ...
        if isinstance(e, KeyboardInterrupt):
            raise
        status["error"] = f"{type(e).__name__}: {e}"[:400]
        return None, status
    fn = getattr(mod, "_attention", None)
    status["loaded"] = True
    status["autograd_backward"] = isinstance(fn, type) and issubclass(fn, torch.autograd.Function)
    return mod, status


def make_flex(dynamic):
    """torch.compile(flex_attention) once for the whole run, with room for its recompiles."""
    from torch.nn.attention.flex_attention import flex_attention
    cfg = torch._dynamo.config
    # Every shape change can recompile flex_attention; past the limit dynamo would silently fall
    # back to the eager path, which materialises the scores and is slow or runs out of memory.
    for name, value in (("cache_size_limit", 256), ("recompile_limit", 256),
                        ("accumulated_cache_size_limit", 4096), ("accumulated_recompile_limit", 4096)):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), value))
    kw = {} if dynamic == "auto" else {"dynamic": dynamic == "true"}
    return torch.compile(flex_attention, **kw)


def make_qkv(T, hq, hkv, d, device, seed, requires_grad=True):
    g = torch.Generator(device=device).manual_seed(seed)
    mk = lambda h: torch.randn(1, h, T, d, device=device, dtype=torch.bfloat16, generator=g)
    q, k, v = mk(hq), mk(hkv), mk(hkv)
    do = mk(hq)
    for t in (q, k, v):
        t.requires_grad_(requires_grad)
    return q, k, v, do


def make_alphas(T, hq, pos, device):
    """Router mask in the official kernel's layout: [1, T, Hq], 1.0 on routed tokens."""
    alphas = torch.zeros(1, T, hq, device=device, dtype=torch.float32)
    alphas[0, pos.to(device)] = 1.0
    return alphas


# ------------------------------------------------------------------------------ measurement

def measure(fns, flops_fwd, plan, device):
    """Time (fwd, fwd+bwd) pair into {"fwd_ms", "tflops_fwd", "fwdbwd_ms", "tflops_fwdbwd", ...}."""
    fwd, fwdbwd = fns
    out = {"warmup": plan["warmup"], "reps_fwd": plan["reps_fwd"]}
    r = run_guarded(lambda: time_fn(fwd, plan["warmup"], plan["reps_fwd"], device), device)
    if "error" in r:
        out["fwd_error"] = r["error"]
    else:
        out.update(fwd_ms=r["ms"], tflops_fwd=tflops(flops_fwd, r["ms"]), fwd_first_call_s=r["first_call_s"])
    if plan["skip_fwdbwd"]:
        out["fwdbwd_skipped"] = plan["skip_fwdbwd"]
        return out
    out["reps_fwdbwd"] = plan["reps_fwdbwd"]
    r = run_guarded(lambda: time_fn(fwdbwd, plan["warmup"], plan["reps_fwdbwd"], device), device)
    if "error" in r:
        out["fwdbwd_error"] = r["error"]
    else:
        fl = (1 + BWD_FACTOR) * flops_fwd
        out.update(fwdbwd_ms=r["ms"], tflops_fwdbwd=tflops(fl, r["ms"]), fwdbwd_first_call_s=r["first_call_s"])
    return out


def failed(reason):
    return {"fwd_error": reason, "fwdbwd_error": reason}


def composite(parts, flops_fwd, sdpa):
    """Layer time = sum of its parts' medians, with TFLOP/s and the speedup over SDPA causal."""
    out = {"parts": [name for name, _ in parts]}
    for key, mult in (("fwd", 1.0), ("fwdbwd", 1.0 + BWD_FACTOR)):
        ms = [p.get(key + "_ms") for _, p in parts]
        skipped = [p[key + "_skipped"] for _, p in parts if key + "_skipped" in p]
        if skipped:
            out[key + "_skipped"] = skipped[0]
            continue
        if any(m is None for m in ms):
            out[key + "_error"] = "a part has no " + key + " time"
            continue
        total = sum(ms)
        out[key + "_ms"] = total
        out["tflops_" + key] = tflops(mult * flops_fwd, total)
        if sdpa.get(key + "_ms") is not None:
            out["speedup_vs_sdpa_" + key] = sdpa[key + "_ms"] / total
    return out


def bench_dense(ctx, T, q, k, v, do, plan):
    """SDPA causal and Flex sliding window at one (shape, T); independent of the routing."""
    hq, d = q.shape[1], q.shape[3]
    sdpa = measure(sdpa_fns(q, k, v, do), attn_flops(causal_pairs(T), d, hq), plan, ctx["device"])
    built = run_guarded(lambda: dict(zip(("mask", "ms", "method"), build_block_mask(
        ctx["swa_mask_mod"], T, T, ctx["device"]))), ctx["device"])
    if "error" in built:
        swa = failed("block mask: " + built["error"])
    else:
        fl = attn_flops(window_pairs(T, ctx["window"]), d, hq)
        swa = measure(flex_fns(ctx["flex"], q, k, v, built["mask"], do), fl, plan, ctx["device"])
        swa.update(block_mask_build_ms=built["ms"], block_mask_method=built["method"])
    return sdpa, swa


def bench_routed(ctx, T, q, k, v, do, pos, plan):
    """Official kernel and Flex routed at one (shape, T, routing)."""
    device, hq, d = ctx["device"], q.shape[1], q.shape[3]
    fl = attn_flops(routed_pairs(pos), d, hq)
    if ctx["official"] is None:
        official = failed("official kernel not loaded: " + ctx["official_status"].get("error", "?"))
    elif T % 128:
        official = failed("T must be a multiple of 128")
    else:
        alphas = make_alphas(T, hq, pos, device)
        do_official = do.transpose(1, 2)  # its output is [1, T, Hq, D]
        official = measure(official_fns(ctx["official"], q, k, v, alphas, do_official), fl, plan, device)
        del alphas
    rows = pos.to(device)
    built = run_guarded(lambda: dict(zip(("mask", "ms", "method"), build_block_mask(
        routed_causal_mask_mod(rows.to(torch.int32)), pos.numel(), T, device))), device)
    if "error" in built:
        flex = failed("block mask: " + built["error"])
    else:
        do_routed = do.index_select(2, rows)
        flex = measure(flex_fns(ctx["flex"], q, k, v, built["mask"], do_routed, rows=rows), fl, plan, device)
        flex.update(block_mask_build_ms=built["ms"], block_mask_method=built["method"])
    return official, flex


def legacy_entry(sdpa, swa):
    """The older per-shape `attention` table (same keys as before), from the shared measurement."""
    keymap = (("fwd_ms", "fwd_ms"), ("tflops_fwd", "fwd_tflops"),
              ("fwdbwd_ms", "fwd_bwd_ms"), ("tflops_fwdbwd", "fwd_bwd_tflops"))
    pick = lambda m: {new: m[old] for old, new in keymap if old in m} or {"error": repr(m)[:200]}
    return {"sdpa_causal": pick(sdpa), "flex_window": pick(swa)}


def shape_seqs(name, seqs, args):
    return [T for T in seqs if name != LARGE_SHAPE or T <= args.large_shape_max_seq]


def bench_l2a(ctx, args, seqs, sparsities, res):
    """The (shape, T, sparsity) sweep; fills res["l2a"] and the older res["attention"] table."""
    device = ctx["device"]
    for name, (hq, hkv, d) in SHAPES.items():
        res["attention"][name] = {}
        for T in shape_seqs(name, seqs, args):
            plan = timing_plan(T, args)
            q, k, v, do = make_qkv(T, hq, hkv, d, device, args.seed, requires_grad=device.type == "cuda")
            sdpa, swa = bench_dense(ctx, T, q, k, v, do, plan)
            res["attention"][name][str(T)] = legacy_entry(sdpa, swa)
            for s in sparsities:
                pos = make_routing(T, s, args.seed)
                official, flex = bench_routed(ctx, T, q, k, v, do, pos, plan)
                fl_swa = attn_flops(window_pairs(T, args.window), d, hq)
                fl_routed = attn_flops(routed_pairs(pos), d, hq)
                row = {"shape": name, "T": T, "sparsity": s, "n_routed": pos.numel(),
                       "flops_fwd": {"sdpa_causal": attn_flops(causal_pairs(T), d, hq),
                                     "flex_swa": fl_swa, "routed": fl_routed},
                       "sdpa_causal": sdpa, "flex_swa": swa,
                       "official_routed": official, "flex_routed": flex,
                       "official_layer": composite([("flex_swa", swa), ("official_routed", official)],
                                                   fl_swa + fl_routed, sdpa),
                       "flex_layer": composite([("flex_swa", swa), ("flex_routed", flex)],
                                               fl_swa + fl_routed, sdpa)}
                res["l2a"].append(row)
                print(format_row(row), flush=True)
            ctx["save"]()
            del q, k, v, do
            if device.type == "cuda":
                torch.cuda.empty_cache()


# -------------------------------------------------------------------------------- accuracy

def reference_routed(q, k, v, pos, dtype=torch.float32, budget_bytes=1 << 30):
    """Causal attention of the routed rows in `dtype`, scores materialised a chunk of rows at a time.

    q [1, Hq, T, D], k/v [1, Hkv, T, D], pos [n] -> [1, Hq, n, D] in `dtype`.
    """
    hq, T, d = q.shape[1], k.shape[2], q.shape[3]
    kr = repeat_kv(k, hq // k.shape[1])[0].to(dtype)
    vr = repeat_kv(v, hq // v.shape[1])[0].to(dtype)
    qr = q[0].index_select(1, pos).to(dtype)  # [Hq, n, D]
    kv_idx = torch.arange(T, device=q.device)
    chunk = max(1, budget_bytes // (3 * hq * T * torch.finfo(dtype).bits // 8))
    out = torch.empty_like(qr)
    for a in range(0, pos.numel(), chunk):
        s = torch.matmul(qr[:, a:a + chunk], kr.transpose(1, 2)) * d ** -0.5  # [Hq, c, T]
        s.masked_fill_(kv_idx[None, None, :] > pos[a:a + chunk, None][None], float("-inf"))
        out[:, a:a + chunk] = torch.matmul(torch.softmax(s, dim=-1), vr)
    return out[None]


def rel_frobenius(out, ref):
    out, ref = out.double(), ref.double()
    return {"rel_frobenius": ((out - ref).norm() / ref.norm()).item(),
            "max_abs": (out - ref).abs().max().item()}


def routed_outputs(ctx, q, k, v, do, pos):
    """Each implementation's output restricted to the routed rows, as [1, Hq, n, D]."""
    device, T = ctx["device"], q.shape[2]
    rows = pos.to(device)
    outs = {"sdpa_bf16": lambda: sdpa_fns(q, k, v, do)[0]().index_select(2, rows)}
    if ctx["official"] is not None:
        alphas = make_alphas(T, q.shape[1], pos, device)
        fwd = official_fns(ctx["official"], q, k, v, alphas, do)[0]
        outs["official"] = lambda: fwd()[0].index_select(0, rows).transpose(0, 1)[None]
    mask, _, _ = build_block_mask(routed_causal_mask_mod(rows.to(torch.int32)), pos.numel(), T, device)
    outs["flex_routed"] = flex_fns(ctx["flex"], q, k, v, mask, do, rows=rows)[0]
    return outs


def accuracy(ctx, args, sparsities):
    """Relative Frobenius errors over the routed rows against a float32 reference, at --acc-seq."""
    device, T = ctx["device"], args.acc_seq
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # a true fp32 reference: no TF32
    res = {"T": T, "reference": "float32 causal attention of the routed rows, chunked, no TF32",
           "metric": "|out - ref|_F / |ref|_F over routed rows and all heads", "runs": []}
    if ctx["official"] is None:
        res["official_error"] = "official kernel not loaded: " + ctx["official_status"].get("error", "?")
    try:
        for name, (hq, hkv, d) in SHAPES.items():
            q, k, v, do = make_qkv(T, hq, hkv, d, device, args.seed + 1, requires_grad=device.type == "cuda")
            for s in sparsities:
                pos = make_routing(T, s, args.seed + 1)
                rows = pos.to(device)
                ref = reference_routed(q.detach(), k.detach(), v.detach(), rows)
                run = {"shape": name, "sparsity": s, "n_routed": pos.numel()}
                built = run_guarded(lambda: {"outs": routed_outputs(ctx, q, k, v, do, pos)}, device)
                for impl, fn in built.get("outs", {}).items():
                    run[impl] = run_guarded(lambda: rel_frobenius(fn().detach(), ref), device)
                if "error" in built:
                    run["error"] = built["error"]
                res["runs"].append(run)
                print(format_accuracy(run), flush=True)
    finally:
        torch.set_float32_matmul_precision(prev)
    return res


# ------------------------------------------------------------------------------------- HF

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


# ---------------------------------------------------------------------------------- output

def _pair(m, key="ms"):
    f, b = m.get("fwd_" + key), m.get("fwdbwd_" + key)
    fmt = lambda x: "    -   " if x is None else f"{x:8.2f}"
    return f"{fmt(f)}/{fmt(b)}"


def table_header():
    cols = ["sdpa causal ms", "flex swa ms", "official rt ms", "flex routed ms", "x official layer",
            "x flex layer"]
    head = f"{'shape':13s} {'T':>6s} {'s':>4s} {'n':>6s} | " + " | ".join(f"{c:^17s}" for c in cols)
    return head + "\n" + f"{'':32s} | " + " | ".join(f"{'fwd / fwd+bwd':^17s}" for _ in cols) + "\n" + "-" * len(head)


def format_row(row):
    parts = [_pair(row[k]) for k in ("sdpa_causal", "flex_swa", "official_routed", "flex_routed")]
    parts += [_pair({"fwd_x": row[k].get("speedup_vs_sdpa_fwd"), "fwdbwd_x": row[k].get("speedup_vs_sdpa_fwdbwd")}, "x")
              for k in ("official_layer", "flex_layer")]
    return f"{row['shape']:13s} {row['T']:6d} {row['sparsity']:4.2f} {row['n_routed']:6d} | " + " | ".join(parts)


def format_accuracy(run):
    errs = "  ".join(f"{k} {run[k]['rel_frobenius']:.2e}" if "rel_frobenius" in run.get(k, {}) else f"{k} -"
                     for k in ("sdpa_bf16", "official", "flex_routed"))
    return f"accuracy {run['shape']:13s} s={run['sparsity']:.2f} n={run['n_routed']}: {errs}"


def env_info(device):
    info = {"gpu": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "triton": None}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        pass
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def dynamo_stats():
    try:
        from torch._dynamo.utils import counters
        return {k: dict(counters[k]) for k in ("stats", "recompiles") if k in counters}
    except Exception as e:
        return {"error": repr(e)[:200]}


def save_json(path, res):
    """Write (and rewrite as the run goes on) the results, so a crash keeps what was measured."""
    if path:
        with open(path, "w") as f:
            json.dump(res, f, indent=1, default=str)


def parse_floats(s):
    return [float(x) for x in s.split(",") if x.strip()]


def parse_ints(s):
    return [int(x) for x in s.split(",") if x.strip()]


def build_parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default="", help="write all results to this JSON file")
    ap.add_argument("--seq", default=None,
                    help="comma-separated T list (default 16384,32768,65536,131072; --quick: 16384); "
                         "T must be a multiple of 128 for the official kernel")
    ap.add_argument("--sparsity", default=None,
                    help="comma-separated sparsities, the fraction of tokens NOT routed to global "
                         "attention (default 0.5,0.8,0.9,0.95; --quick: 0.8)")
    ap.add_argument("--quick", action="store_true", help="smoke test: T=16384 and sparsity 0.8 only")
    ap.add_argument("--window", type=int, default=2048, help="sliding window W (i - W < j <= i)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs and routing")
    ap.add_argument("--anchors-dir", default=os.path.join(ROOT, "..", "shared", "anchors", "l2a_official"),
                    help="folder holding the official qsparse_prefill.py (imported at run time)")
    ap.add_argument("--large-shape-max-seq", type=int, default=65536,
                    help=f"largest T for the {LARGE_SHAPE} shape")
    ap.add_argument("--big-seq", type=int, default=65536,
                    help="from this T up: warm-up 1, 3 reps (below: 2 warm-up, 10 fwd / 5 fwd+bwd reps)")
    ap.add_argument("--max-bwd-seq", type=int, default=131072,
                    help="skip fwd+bwd above this T (recorded in the JSON as fwdbwd_skipped)")
    ap.add_argument("--acc-seq", type=int, default=4096, help="T of the routed-row accuracy check")
    ap.add_argument("--flex-dynamic", choices=("auto", "true", "false"), default="auto",
                    help="torch.compile(flex_attention, dynamic=...): auto = PyTorch's default "
                         "(recompile once when a size changes, then treat it as dynamic)")
    ap.add_argument("--skip-l2a", action="store_true", help="skip the dense/L2A sweep")
    ap.add_argument("--skip-accuracy", action="store_true", help="skip the routed-row accuracy check")
    ap.add_argument("--skip-hf", action="store_true", help="skip the Hugging Face whole-model timings")
    ap.add_argument("--device", default="cuda",
                    help="cuda (the benchmark); cpu only dry-runs the logic (tiny --seq/--acc-seq, e.g. "
                         "512; timings meaningless, no official kernel, no HF)")
    return ap


def main():
    t_start = time.perf_counter()
    args = build_parser().parse_args()
    device = torch.device(args.device)
    seqs = parse_ints(args.seq) if args.seq else list(QUICK_SEQS if args.quick else DEFAULT_SEQS)
    sparsities = parse_floats(args.sparsity) if args.sparsity else list(
        QUICK_SPARSITIES if args.quick else DEFAULT_SPARSITIES)
    official, official_status = load_official(args.anchors_dir)
    ctx = {"device": device, "window": args.window, "official": official, "official_status": official_status,
           "flex": make_flex(args.flex_dynamic), "swa_mask_mod": sliding_window_mask_mod(args.window)}
    res = env_info(device)
    res.update(shapes={n: {"hq": hq, "hkv": hkv, "d": d, "seqs": shape_seqs(n, seqs, args)}
                       for n, (hq, hkv, d) in SHAPES.items()},
               settings={"window": args.window, "sparsities": sparsities, "seed": args.seed,
                         "big_seq": args.big_seq, "max_bwd_seq": args.max_bwd_seq,
                         "flex_dynamic": args.flex_dynamic, "argv": sys.argv[1:],
                         "timing": "median of CUDA-event times after warm-up; fwd with autograd recording; "
                                   "fwd+bwd = fwd + autograd.grad w.r.t. q, k, v",
                         "flops": "4*D*Hq per visible pair; fwd+bwd = 3.5x fwd",
                         "dense_rows": "sdpa_causal and flex_swa are measured once per (shape, T) and "
                                       "repeated in every sparsity row",
                         "impls": IMPL_NOTES},
               official_kernel=official_status, l2a=[], accuracy={}, attention={}, hf={})
    ctx["save"] = lambda: save_json(args.json, res)
    print("official kernel:", "loaded" if official else official_status.get("error"), flush=True)
    if not args.skip_l2a:
        print(table_header(), flush=True)
        bench_l2a(ctx, args, seqs, sparsities, res)
    if not args.skip_accuracy:
        res["accuracy"] = accuracy(ctx, args, sparsities)
    res["dynamo"] = dynamo_stats()
    ctx["save"]()
    if not args.skip_hf and device.type == "cuda":
        for preset in SHAPES:
            res["hf"][preset] = run_guarded(lambda: bench_hf(preset, [s for s in seqs if s <= 32768]), device)
            print(preset, "HF", json.dumps(res["hf"][preset]), flush=True)
    res["wall_s"] = time.perf_counter() - t_start
    print(f"total wall time {res['wall_s']:.0f} s", flush=True)
    ctx["save"]()
    if args.json:
        print("wrote", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
