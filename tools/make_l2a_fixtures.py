#!/usr/bin/env python3
"""Build the L2A (learned local/global attention) and training fixtures under tests/fixtures/l2a/.

    python3 tools/make_l2a_fixtures.py            # regenerates everything (deterministic, CPU only)
    python3 tools/make_l2a_fixtures.py --check    # regenerate into a temp dir and compare with the tree

An independent PyTorch float32 reference of the L2A layer (both layouts), of its regularizer, of
the straight-through router gradient, and of one AdamW step / short training curves. Attention is
written here with explicit boolean masks (no HF attention module); only the weights come from a
Hugging Face Qwen2ForCausalLM. The script checks itself against HF first (see "validation" in
reference.json): its plain causal forward matches HF eager logits and autograd gradients, the
route-everything-local L2A models match HF's own sliding-window Qwen2, and SWA with W >= T is
exactly causal attention.

Model: Qwen2, hidden 64, 4 heads / 2 kv heads (head_dim 16), intermediate 96, 2 layers, vocab
256, max_position_embeddings 128, rope_theta 1e4, rms_norm_eps 1e-6, untied, float32; every
parameter random and relevant (fan-in scaled weights, random q/k/v biases, norms around 1).

Files (all float32 little-endian unless said otherwise; .npy written with allow_pickle=False):

    base/config.json, base/model.safetensors
                       the base model (save_pretrained, transformers-5 config with rope_parameters)
    tokens.bin         4096 uint32 little-endian token ids in [0, 256). A batch of step s (1-based)
                       is sequences ((s-1)*B + i) mod N, i = 0..B-1, where sequence n is
                       tokens[n*T:(n+1)*T] and N = 4096 // T (no shuffle)
    paper/config.json, paper/model.safetensors
                       base config + "l2a" object; base weights + per layer global_layernorm.weight,
                       global_attn.{q,k,v}_proj.{weight,bias}, global_attn.o_proj.weight,
                       router.weight [1, 64]
    parallel/config.json, parallel/model.safetensors
                       base config + "l2a" object; base weights + per layer router.weight [1, 64]
    cases/<case>/      one forward/backward on the step-1 batch (sequences 0 and 1, T = 24, B = 2)
                       and one AdamW step, for 8 cases (paper|parallel x router_only|attention|full,
                       paper_attention_theta5e6, parallel_router_only_mean):
        logits.npy              [B, T, 256] logits of the initial model (training forward)
        d.npy                   [L, B, T] gate forward values (0/1, forced-local positions are 0)
        p.npy                   [L, B, T] router probabilities sigmoid(z / tau), every position
        d_infer.npy             [L, B, T] decisions of a no-grad inference forward (same rule;
                                equal to d.npy, asserted)
        router_grad.npy         [L, 1, 64] d(total loss)/d(router.weight), before clipping
        params_after_step.safetensors
                                the trainable tensors only (full names) after one AdamW step
        d_after_step.npy        [L, B, T] gate values of the updated model on the same batch
    curves.json        plain causal training curves on the base model (HF eager attention, no L2A):
                       regime full (50 steps, T 32, B 2, lr 3e-3, warmup 5, total 50, clip 1) and
                       regime attention (self_attn.* + every RMSNorm; 20 steps, total 20): loss and
                       grad norm (before clipping) of each step's batch before its update, the lr
                       that update used (0 at step 1: warmup), whether it clipped, the loss on the
                       step-1 batch after training, and a float-noise estimate (the same curve from
                       weights perturbed by a relative 1e-6) to size the C++ tolerance
    reference.json     every case's options, regime, trainable and weight-decayed names, files,
                       scalars (losses, sparsities, grad norm, clipping, the same scalars after the
                       step, and a float64 recomputation's distance from this float32 reference per
                       quantity and per updated tensor), the LR / lambda schedule and batch-index
                       examples, the router init draws, the self-validation errors, versions, and the
                       sensitivities (how far each checked quantity moves when the layout is
                       flipped, the STE dropped, tau / window / threshold / theta changed, reg_norm
                       "mean" used instead of "sum", ...: all far above the 1e-4 parity tolerance)

Semantics (the brief that the C++ side implements; summarised in reference.json "semantics"):
SWA_W: query i sees key j iff i - W < j <= i. paper: x1 = x + o(SWA_W(qkv(RMSNorm_in x))),
h2 = RMSNorm_g(x1), z = h2 . w_r, p = sigmoid(z / tau), d = 1[z / tau >= logit(threshold)],
g = d + (p - stopgrad p) (forward value exactly d, gradient dp/dz), g = 0 for t < W when
force_local; x2 = x1 + g * o_g(Causal(qkv_g(h2))); x3 = x2 + MLP(RMSNorm_post x2). parallel:
h = RMSNorm_in(x), z = h . w_r, o = o_proj(SWA_W(q,k,v) + g * Causal(q,k,v)), x1 = x + o, then MLP.
Regularizer over all (b, l, t): "sum": lambda / L * sum_l (1/B) sum_{b,t} p^2; "mean": lambda *
mean p^2. LM loss: mean over sequences of mean_t CE(logits[t], x[t+1]). AdamW(betas (0.9, 0.95),
eps 1e-8, weight decay 0.1 on tensors with >= 2 dims only), HF cosine schedule with warmup,
clip_grad_norm_ over the trainable grads.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import safetensors  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM, get_cosine_schedule_with_warmup  # noqa: E402
from fixture_common import report_differences  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "fixtures" / "l2a"

PARITY_TOL = 1e-4          # the C++ tests' tolerance on |out - ref| / |ref|
MIN_SENSITIVITY = 1e-2     # every expected perturbation must move its quantity at least this much
TIE_MARGIN = 5e-3          # min |z / tau - logit(threshold)| over the initial models' decisions
AFTER_STEP_TIE_MARGIN = 1e-3  # the same over the decisions of the models after one AdamW step
TOTAL_BYTES_LIMIT = 4_000_000

MODEL = dict(
    vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    rope_theta=1e4, rms_norm_eps=1e-6, tie_word_embeddings=False,
)
SEED_BASE = 3001
SEED_TOKENS = 3002
SEED_L2A = {"paper": 3003, "parallel": 3004}
N_TOKENS = 4096

WINDOW, SEQ_LEN, BATCH = 8, 24, 2
LAYOUT_OPTS = {
    "paper": dict(layout="paper", window=WINDOW, tau=0.1, threshold=0.5, force_local=False,
                  rope_theta=None),
    "parallel": dict(layout="parallel", window=WINDOW, tau=1.0, threshold=0.5, force_local=True,
                     rope_theta=None),
}
TRAIN = dict(lam=0.05, lambda_schedule="constant", reg_norm="sum", lambda_warmup_steps=0,
             lr_max=1e-2, warmup_steps=0, total_steps=10, clip=1.0,
             betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

# The clip value is per case so that some cases clip and some do not (asserted, with the grad
# norm at least 5 % away from the clip value).
CASES = [
    dict(name="paper_router_only", layout="paper", regime="router_only", clip=1.0),
    dict(name="paper_attention", layout="paper", regime="attention", clip=1.0),
    dict(name="paper_full", layout="paper", regime="full", clip=1.0),
    dict(name="parallel_router_only", layout="parallel", regime="router_only", clip=1.0),
    dict(name="parallel_attention", layout="parallel", regime="attention", clip=1.0),
    dict(name="parallel_full", layout="parallel", regime="full", clip=1.0),
    dict(name="paper_attention_theta5e6", layout="paper", regime="attention", clip=1.0,
         opts=dict(rope_theta=5e6)),
    dict(name="parallel_router_only_mean", layout="parallel", regime="router_only", clip=1.0,
         train=dict(reg_norm="mean")),
]

CURVES = [
    dict(name="plain_full", regime="full", steps=50, seq_len=32, batch_size=2, lr_max=3e-3,
         warmup_steps=5, total_steps=50, clip=1.0),
    dict(name="plain_attention", regime="attention", steps=20, seq_len=32, batch_size=2,
         lr_max=3e-3, warmup_steps=5, total_steps=20, clip=1.0),
]


def rel_err(a, b) -> float:
    a = torch.as_tensor(np.asarray(a, dtype=np.float64))
    b = torch.as_tensor(np.asarray(b, dtype=np.float64))
    nb = float(b.norm())
    return float((a - b).norm() / nb) if nb > 0 else float((a - b).norm())


def up(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (float64 stays float64: the script's float64 cross-check runs the same code)."""
    return x if x.dtype == torch.float64 else x.float()


def logit(x: float) -> float:
    return math.log(x / (1.0 - x))


# ---------------------------------------------------------------------------------------------
# Base model


def make_config(**over) -> Qwen2Config:
    m = MODEL
    kw = dict(
        vocab_size=m["vocab_size"], hidden_size=m["hidden_size"],
        intermediate_size=m["intermediate_size"], num_hidden_layers=m["num_hidden_layers"],
        num_attention_heads=m["num_attention_heads"], num_key_value_heads=m["num_key_value_heads"],
        max_position_embeddings=m["max_position_embeddings"], rms_norm_eps=m["rms_norm_eps"],
        rope_parameters={"rope_theta": float(m["rope_theta"]), "rope_type": "default"},
        tie_word_embeddings=m["tie_word_embeddings"], use_sliding_window=False,
        sliding_window=m["max_position_embeddings"], max_window_layers=m["num_hidden_layers"],
        hidden_act="silu", initializer_range=0.02, attention_dropout=0.0,
        bos_token_id=0, eos_token_id=1, use_cache=False, attn_implementation="eager",
    )
    kw.update(over)
    return Qwen2Config(**kw)


@torch.no_grad()
def randomize(model: Qwen2ForCausalLM, seed: int) -> None:
    """Same recipe as tools/make_fixtures.py: fan-in scaled weights, random biases, norms ~ 1."""
    g = torch.Generator().manual_seed(seed)

    def normal(p: torch.Tensor, std: float) -> None:
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std)

    hidden = model.config.hidden_size
    for name, p in sorted(model.named_parameters()):
        if name.endswith("norm.weight"):
            p.copy_(torch.rand(p.shape, generator=g) * 1.0 + 0.5)
        elif name.endswith("embed_tokens.weight"):
            normal(p, 0.02)
        elif name == "lm_head.weight":
            normal(p, 3.0 / hidden**0.5)
        elif name.endswith(("q_proj.weight", "k_proj.weight")):
            normal(p, 1.5 / p.shape[1] ** 0.5)
        elif name.endswith(("q_proj.bias", "k_proj.bias")):
            normal(p, 0.5)
        elif name.endswith("v_proj.bias"):
            normal(p, 0.3)
        elif name.endswith(".weight"):
            normal(p, 1.0 / p.shape[1] ** 0.5)
        else:
            raise RuntimeError(f"unexpected parameter {name}")


def load_hf(path: Path, config: Qwen2Config | None = None) -> Qwen2ForCausalLM:
    kw = {"config": config} if config is not None else {}
    m = Qwen2ForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager", **kw)
    return m.eval()


def hf_sliding_config(path: Path, window: int) -> Qwen2Config:
    cfg = Qwen2Config.from_pretrained(path)
    cfg._attn_implementation = "eager"
    cfg.use_sliding_window = True
    cfg.sliding_window = window
    cfg.max_window_layers = 0
    cfg.layer_types = ["sliding_attention"] * cfg.num_hidden_layers
    return cfg


# ---------------------------------------------------------------------------------------------
# Data


def batch_indices(step: int, batch_size: int, seq_len: int, n_tokens: int = N_TOKENS) -> list[int]:
    n_seq = n_tokens // seq_len
    return [((step - 1) * batch_size + i) % n_seq for i in range(batch_size)]


def get_batch(tokens: np.ndarray, step: int, batch_size: int, seq_len: int) -> torch.Tensor:
    rows = [tokens[n * seq_len:(n + 1) * seq_len] for n in batch_indices(step, batch_size, seq_len,
                                                                          len(tokens))]
    return torch.tensor(np.stack(rows).astype(np.int64))


def lm_loss(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of the mean over t = 0..T-2 of CE(logits[t], ids[t+1])."""
    B, T, V = logits.shape
    ce = F.cross_entropy(up(logits[:, :-1].reshape(-1, V)), ids[:, 1:].reshape(-1),
                         reduction="none").view(B, T - 1)
    return ce.mean(dim=1).mean()


def reg_loss(p: torch.Tensor, lam: float, reg_norm: str) -> torch.Tensor:
    """p: [L, B, T] router probabilities (every position, forced-local ones included)."""
    L, B, _ = p.shape
    p2 = p * p
    if reg_norm == "sum":
        return lam * (p2.sum(dim=(1, 2)) / B).sum() / L
    if reg_norm == "mean":
        return lam * p2.mean()
    raise ValueError(reg_norm)


def lambda_at(step: int, lam: float, schedule: str, warmup: int, total: int) -> float:
    if schedule == "constant":
        return lam
    if schedule == "ramp":
        return 0.0 if step <= warmup else lam * (step - warmup) / (total - warmup)
    raise ValueError(schedule)


def lr_at(k: int, lr_max: float, warmup: int, total: int) -> float:
    if k < warmup:
        return lr_max * k / max(1, warmup)
    return lr_max * 0.5 * (1.0 + math.cos(math.pi * (k - warmup) / max(1, total - warmup)))


# ---------------------------------------------------------------------------------------------
# Our own forward (explicit masks)


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    xf = up(x)
    return w * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps))


def rope_cos_sin(T: int, head_dim: int, theta: float, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """As HF: inv_freq and the angles in float32 (or all in float64 for the cross-check)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=dtype) / head_dim))
    freqs = torch.arange(T, dtype=dtype)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def causal_mask(T: int) -> torch.Tensor:
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return j <= i


def swa_mask(T: int, W: int) -> torch.Tensor:
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    return (j <= i) & (j > i - W)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """q [B, Hq, T, D], k/v [B, Hkv, T, D], mask [T, T] (True = visible). Returns [B, Hq, T, D]."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1)      # query head h uses kv head h // rep
    v = v.repeat_interleave(rep, dim=1)
    s = torch.matmul(q, k.transpose(2, 3)) * (q.shape[-1] ** -0.5)
    s = s.masked_fill(~mask, float("-inf"))
    a = torch.softmax(s, dim=-1, dtype=up(s).dtype)
    return torch.matmul(a, v)


def qkv(P: dict, prefix: str, h: torch.Tensor, cos, sin):
    B, T, _ = h.shape
    Hq, Hkv = MODEL["num_attention_heads"], MODEL["num_key_value_heads"]
    D = MODEL["hidden_size"] // Hq
    q = F.linear(h, P[prefix + "q_proj.weight"], P[prefix + "q_proj.bias"]).view(B, T, Hq, D)
    k = F.linear(h, P[prefix + "k_proj.weight"], P[prefix + "k_proj.bias"]).view(B, T, Hkv, D)
    v = F.linear(h, P[prefix + "v_proj.weight"], P[prefix + "v_proj.bias"]).view(B, T, Hkv, D)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    q = q * cos + rotate_half(q) * sin
    k = k * cos + rotate_half(k) * sin
    return q, k, v


def merge(a: torch.Tensor) -> torch.Tensor:
    B, H, T, D = a.shape
    return a.transpose(1, 2).reshape(B, T, H * D)


def mlp(P: dict, pre: str, u: torch.Tensor) -> torch.Tensor:
    g = F.linear(u, P[pre + "mlp.gate_proj.weight"])
    up = F.linear(u, P[pre + "mlp.up_proj.weight"])
    return F.linear(F.silu(g) * up, P[pre + "mlp.down_proj.weight"])


def gate(z: torch.Tensor, o: dict, *, ste: bool | str = True, route: str | None = None, soft: bool = False):
    """z [B, T] router logits. Returns (g, p, d_raw, zt)."""
    zt = z / o["tau"]
    p = torch.sigmoid(zt)
    d = (zt >= logit(o["threshold"])).to(zt.dtype).detach()
    if route == "global":
        d = torch.ones_like(d)
    elif route == "local":
        d = torch.zeros_like(d)
    if soft:
        g = p
    elif ste == "function":
        g = _STEFunction.apply(p, d)
    elif ste:
        g = d + (p - p.detach())             # forward value exactly d, gradient dp/dz
    else:
        g = d
    if o["force_local"]:
        T = z.shape[1]
        forced = (torch.arange(T) < o["window"])[None, :].expand_as(g)
        g = torch.where(forced, torch.zeros_like(g), g)
    return g, p, d, zt


def forward(P: dict, ids: torch.Tensor, o: dict | None = None, *, ste: bool | str = True,
            route: str | None = None, soft: bool = False, local_mask: str = "swa",
            plain_window: int | None = None, capture: dict | None = None,
            gate_override: dict | None = None) -> dict:
    """o None: plain Qwen2 (causal, or SWA plain_window). o: L2A options dict.

    Returns logits [B, T, V], p / g / zt [L, B, T] (L2A only)."""
    B, T = ids.shape
    eps = MODEL["rms_norm_eps"]
    D = MODEL["hidden_size"] // MODEL["num_attention_heads"]
    theta = MODEL["rope_theta"] if o is None or o["rope_theta"] is None else o["rope_theta"]
    cos, sin = rope_cos_sin(T, D, float(theta), up(P["model.embed_tokens.weight"]).dtype)
    cmask = causal_mask(T)
    x = F.embedding(ids, P["model.embed_tokens.weight"])
    ps, gs, zts = [], [], []
    for layer in range(MODEL["num_hidden_layers"]):
        pre = f"model.layers.{layer}."
        h = rms_norm(x, P[pre + "input_layernorm.weight"], eps)
        q, k, v = qkv(P, pre + "self_attn.", h, cos, sin)
        if o is None:
            mask = cmask if plain_window is None else swa_mask(T, plain_window)
            a = attend(q, k, v, mask)
            if capture is not None:
                capture.setdefault("attn_in", []).append(h)
                capture.setdefault("attn_out", []).append(F.linear(merge(a), P[pre + "self_attn.o_proj.weight"]))
            x2 = x + F.linear(merge(a), P[pre + "self_attn.o_proj.weight"])
        else:
            lmask = swa_mask(T, o["window"]) if local_mask == "swa" else cmask
            if o["layout"] == "paper":
                a_loc = attend(q, k, v, lmask)
                local_out = F.linear(merge(a_loc), P[pre + "self_attn.o_proj.weight"])
                if capture is not None:
                    capture.setdefault("local_in", []).append(h)
                    capture.setdefault("local_out", []).append(local_out)
                x1 = x + local_out
                h2 = rms_norm(x1, P[pre + "global_layernorm.weight"], eps)
                z = F.linear(h2, P[pre + "router.weight"])[..., 0]
                g, p, _, zt = gate(z, o, ste=ste, route=route, soft=soft)
                if gate_override is not None and layer in gate_override:
                    g = gate_override[layer]
                if capture is not None:
                    capture.setdefault("router_in", []).append(h2)
                qg, kg, vg = qkv(P, pre + "global_attn.", h2, cos, sin)
                a_g = attend(qg, kg, vg, cmask)
                x2 = x1 + g[:, :, None] * F.linear(merge(a_g), P[pre + "global_attn.o_proj.weight"])
            elif o["layout"] == "parallel":
                z = F.linear(h, P[pre + "router.weight"])[..., 0]
                g, p, _, zt = gate(z, o, ste=ste, route=route, soft=soft)
                if gate_override is not None and layer in gate_override:
                    g = gate_override[layer]
                if capture is not None:
                    capture.setdefault("router_in", []).append(h)
                a = attend(q, k, v, lmask) + g[:, None, :, None] * attend(q, k, v, cmask)
                x2 = x + F.linear(merge(a), P[pre + "self_attn.o_proj.weight"])
            else:
                raise ValueError(o["layout"])
            ps.append(p)
            gs.append(g)
            zts.append(zt)
        x = x2 + mlp(P, pre, rms_norm(x2, P[pre + "post_attention_layernorm.weight"], eps))
    logits = F.linear(rms_norm(x, P["model.norm.weight"], eps), P["lm_head.weight"])
    out = {"logits": logits}
    if o is not None:
        out.update(p=torch.stack(ps), g=torch.stack(gs), zt=torch.stack(zts))
    return out


# ---------------------------------------------------------------------------------------------
# L2A models


def l2a_extra_names(layout: str) -> list[str]:
    names = []
    for layer in range(MODEL["num_hidden_layers"]):
        pre = f"model.layers.{layer}."
        if layout == "paper":
            names.append(pre + "global_layernorm.weight")
            for pr in ("q", "k", "v"):
                names += [pre + f"global_attn.{pr}_proj.weight", pre + f"global_attn.{pr}_proj.bias"]
            names.append(pre + "global_attn.o_proj.weight")
        names.append(pre + "router.weight")
    return names


def trainable_names(P: dict, regime: str) -> list[str]:
    names = sorted(P)
    if regime == "full":
        return names
    if regime == "router_only":
        return [n for n in names if n.endswith(".router.weight")]
    if regime == "attention":
        return [n for n in names if n.endswith(".router.weight") or ".self_attn." in n
                or ".global_attn." in n or n.endswith("norm.weight")]
    raise ValueError(regime)


def case_opts(case: dict) -> dict:
    o = dict(LAYOUT_OPTS[case["layout"]])
    o.update(case.get("opts", {}))
    return o


def case_train(case: dict) -> dict:
    t = dict(TRAIN)
    t.update(case.get("train", {}))
    t["clip"] = case["clip"]
    return t


def decisions_ok(P: dict, ids: torch.Tensor, o: dict) -> tuple[bool, dict]:
    with torch.no_grad():
        out = forward(P, ids, o)
    zt = out["zt"]
    margin = float((zt - logit(o["threshold"])).abs().min())
    d = (zt >= logit(o["threshold"])).float()
    t0 = o["window"] if o["force_local"] else 0
    frac = [float(d[layer, :, t0:].mean()) for layer in range(d.shape[0])]
    ok = margin >= TIE_MARGIN and all(0.3 <= f <= 0.7 for f in frac)
    return ok, dict(min_margin=margin, global_fraction_per_layer=frac,
                    zt_range=[float(zt.min()), float(zt.max())])


def make_l2a_params(base: dict, layout: str, ids: torch.Tensor, check_opts: list[dict]) -> tuple[dict, dict]:
    """Base weights + the layout's extra tensors, drawn deterministically (see the brief)."""
    g = torch.Generator().manual_seed(SEED_L2A[layout])
    o = LAYOUT_OPTS[layout]
    P = {n: t.clone() for n, t in base.items()}
    for layer in range(MODEL["num_hidden_layers"]):
        pre = f"model.layers.{layer}."
        if layout == "paper":
            ln = base[pre + "input_layernorm.weight"]
            P[pre + "global_layernorm.weight"] = ln + 0.05 * torch.randn(ln.shape, generator=g)
            for pr in ("q", "k", "v", "o"):
                for kind in ("weight", "bias"):
                    src = pre + f"self_attn.{pr}_proj.{kind}"
                    if src not in base:
                        continue
                    t = base[src]
                    P[pre + f"global_attn.{pr}_proj.{kind}"] = (
                        t + 0.02 * float(t.std()) * torch.randn(t.shape, generator=g))
    for attempt in range(100):
        for layer in range(MODEL["num_hidden_layers"]):
            P[f"model.layers.{layer}.router.weight"] = torch.randn(1, MODEL["hidden_size"], generator=g)
        # Scale layer by layer (layer l's z depends only on routers < l) so max |z / tau| = 3.
        for layer in range(MODEL["num_hidden_layers"]):
            with torch.no_grad():
                zt = forward(P, ids, o)["zt"][layer]
            name = f"model.layers.{layer}.router.weight"
            P[name] = P[name] * (3.0 / float(zt.abs().max()))
        infos = [decisions_ok(P, ids, oo) for oo in check_opts]
        if all(ok for ok, _ in infos):
            return P, dict(router_draws=attempt + 1, checks=[i for _, i in infos])
    raise RuntimeError(f"{layout}: no router draw with a balanced, tie-free routing")


def save_l2a_model(P: dict, layout: str, base_dir: Path, d: Path) -> None:
    d.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((base_dir / "config.json").read_text())
    o = LAYOUT_OPTS[layout]
    cfg["l2a"] = {"layout": layout, "window": o["window"], "tau": o["tau"],
                  "threshold": o["threshold"], "force_local": o["force_local"],
                  "rope_theta": o["rope_theta"], "router": "linear_sigmoid"}
    (d / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    save_file({n: P[n].contiguous().float() for n in sorted(P)}, str(d / "model.safetensors"),
              metadata={"format": "pt"})


def save_npy(path: Path, a) -> None:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else a
    np.save(path, np.ascontiguousarray(a, dtype=np.float32), allow_pickle=False)


# ---------------------------------------------------------------------------------------------
# Training step


def make_optimizer(params: dict[str, torch.Tensor], tr: dict, lr_max: float):
    names = sorted(params)
    decay = [n for n in names if params[n].dim() >= 2]
    no_decay = [n for n in names if params[n].dim() < 2]
    groups = []
    if decay:
        groups.append({"params": [params[n] for n in decay], "weight_decay": tr["weight_decay"]})
    if no_decay:
        groups.append({"params": [params[n] for n in no_decay], "weight_decay": 0.0})
    opt = torch.optim.AdamW(groups, lr=lr_max, betas=tr["betas"], eps=tr["eps"],
                            weight_decay=tr["weight_decay"], foreach=False)
    return opt, decay


def one_step_float64(P0: dict, ids: torch.Tensor, o: dict, tr: dict, names: list[str]) -> dict:
    """The same forward / backward / clip / AdamW step, in float64."""
    P64 = {n: t.double() for n, t in P0.items()}
    r = fwd_bwd(P64, ids, o, tr, names)
    params = [r["P"][n] for n in names]
    torch.nn.utils.clip_grad_norm_(params, tr["clip"], foreach=False)
    opt, _ = make_optimizer({n: r["P"][n] for n in names}, tr, tr["lr_max"])
    get_cosine_schedule_with_warmup(opt, tr["warmup_steps"], tr["total_steps"])
    opt.step()
    return dict(r, after={n: r["P"][n].detach().clone() for n in names})


def grad_norm_manual(grads: list[torch.Tensor]) -> float:
    return float(torch.cat([g.double().reshape(-1) for g in grads]).norm())


def loss_terms(out: dict, ids: torch.Tensor, tr: dict, step: int):
    lm = lm_loss(out["logits"], ids)
    lam = lambda_at(step, tr["lam"], tr["lambda_schedule"], tr["lambda_warmup_steps"], tr["total_steps"])
    reg = reg_loss(out["p"], lam, tr["reg_norm"])
    return lm, reg, lm + reg, lam


def sparsity(g: torch.Tensor, o: dict) -> dict:
    d = (g.detach() != 0).double()                      # the forward value of g is the gate (0 / 1)
    L = d.shape[0]
    t0 = o["window"] if o["force_local"] else 0
    return dict(
        sparsity=float(1 - d.mean()),
        sparsity_per_layer=[float(1 - d[layer].mean()) for layer in range(L)],
        sparsity_excl_forced=float(1 - d[:, :, t0:].mean()),
        sparsity_excl_forced_per_layer=[float(1 - d[layer, :, t0:].mean()) for layer in range(L)],
    )


def fwd_bwd(P0: dict, ids: torch.Tensor, o: dict, tr: dict, grad_names: list[str], **kw) -> dict:
    P = {n: t.detach().clone().requires_grad_(n in grad_names) for n, t in P0.items()}
    out = forward(P, ids, o, **kw)
    lm, reg, loss, lam = loss_terms(out, ids, tr, 1)
    loss.backward()
    L = MODEL["num_hidden_layers"]
    rg = torch.stack([P[f"model.layers.{layer}.router.weight"].grad.clone() for layer in range(L)])
    lm, reg, loss = lm.detach(), reg.detach(), loss.detach()
    return dict(P=P, out=out, lm=lm, reg=reg, loss=loss, lam=lam, router_grad=rg,
                grad_norm=grad_norm_manual([P[n].grad for n in grad_names]))


def run_case(case: dict, P0: dict, ids: torch.Tensor, d: Path) -> dict:
    o, tr = case_opts(case), case_train(case)
    names = trainable_names(P0, case["regime"])
    r = fwd_bwd(P0, ids, o, tr, names)
    P, out = r["P"], r["out"]
    g = out["g"].detach()
    assert set(torch.unique(g).tolist()) <= {0.0, 1.0}
    margin = float((out["zt"].detach() - logit(o["threshold"])).abs().min())
    assert margin >= TIE_MARGIN, f"{case['name']}: decision tie {margin}"
    if o["force_local"]:
        assert float(g[:, :, :o["window"]].abs().max()) == 0.0

    # STE check, independent of autograd through the gate: dL/dw_r = sum_t dL/dg_t * [not forced]
    # * p (1 - p) / tau * h_t + dreg/dp * p (1 - p) / tau * h_t, with dL/dg from a leaf gate.
    check_ste(P0, ids, o, tr, r["router_grad"])

    # Inference decisions: a no-grad forward with the same rule.
    with torch.no_grad():
        g_inf = forward(P0, ids, o)["g"]
    assert torch.equal(g_inf, g)

    params = [P[n] for n in names]
    grads_before = [p.grad.clone() for p in params]
    total = float(torch.nn.utils.clip_grad_norm_(params, tr["clip"], foreach=False))
    assert abs(total - r["grad_norm"]) <= 1e-5 * r["grad_norm"], (total, r["grad_norm"])
    clipped = total > tr["clip"]
    assert abs(total - tr["clip"]) > 0.05 * tr["clip"], f"{case['name']}: grad norm {total} ~ clip"
    coef = tr["clip"] / (total + 1e-6) if clipped else 1.0
    for p, g0 in zip(params, grads_before):
        assert torch.allclose(p.grad, g0 * coef, rtol=1e-6, atol=0)
    opt, decay = make_optimizer({n: P[n] for n in names}, tr, tr["lr_max"])
    sched = get_cosine_schedule_with_warmup(opt, tr["warmup_steps"], tr["total_steps"])
    lr_used = opt.param_groups[0]["lr"]
    assert abs(lr_used - lr_at(0, tr["lr_max"], tr["warmup_steps"], tr["total_steps"])) < 1e-12
    opt.step()
    sched.step()
    after = {n: P[n].detach().clone() for n in names}

    # How far float32 rounding alone is from the exact answer (the C++ side's tolerances).
    r64 = one_step_float64(P0, ids, o, tr, names)
    assert torch.equal(r64["out"]["g"].float(), g), f"{case['name']}: float64 decisions differ"
    tens_err = {n: rel_err(after[n] - P0[n], r64["after"][n] - P0[n].double()) for n in names}
    worst = max(tens_err, key=tens_err.get)
    jumps = sum(int(((after[n].double() - r64["after"][n]).abs() > 0.1 * tr["lr_max"]).sum()) for n in names)
    f64 = dict(
        logits_rel=rel_err(out["logits"].detach(), r64["out"]["logits"].detach()),
        p_rel=rel_err(out["p"].detach(), r64["out"]["p"].detach()),
        lm_loss_rel=abs(float(r["lm"]) - float(r64["lm"])) / float(r64["lm"]),
        router_grad_rel=rel_err(r["router_grad"], r64["router_grad"]),
        grad_norm_rel=abs(r["grad_norm"] - r64["grad_norm"]) / r64["grad_norm"],
        params_after_step_rel={n: rel_err(after[n], r64["after"][n]) for n in names},
        update_max_rel=tens_err[worst], update_worst_tensor=worst,
        elements_off_by_more_than_0p1_lr=jumps,
    )
    assert jumps == 0 and max(f64[k] for k in ("logits_rel", "p_rel", "router_grad_rel", "grad_norm_rel")) < 1e-5, f64
    moved = min(float((after[n] - P0[n]).abs().max()) for n in names)
    assert moved > 1e-4, f"{case['name']}: a trainable tensor did not move"

    P1 = {n: (after[n] if n in after else t) for n, t in P0.items()}
    with torch.no_grad():
        out1 = forward(P1, ids, o)
        lm1, reg1, loss1, _ = loss_terms(out1, ids, tr, 1)
    margin1 = float((out1["zt"] - logit(o["threshold"])).abs().min())
    assert margin1 >= AFTER_STEP_TIE_MARGIN, f"{case['name']}: decision tie after the step {margin1}"

    d.mkdir(parents=True, exist_ok=True)
    files = dict(logits="logits.npy", d="d.npy", p="p.npy", d_infer="d_infer.npy",
                 router_grad="router_grad.npy", params_after_step="params_after_step.safetensors",
                 d_after_step="d_after_step.npy")
    save_npy(d / files["logits"], out["logits"])
    save_npy(d / files["d"], g)
    save_npy(d / files["p"], out["p"])
    save_npy(d / files["d_infer"], g_inf)
    save_npy(d / files["router_grad"], r["router_grad"])
    save_file({n: after[n].contiguous() for n in names}, str(d / files["params_after_step"]),
              metadata={"format": "pt"})
    save_npy(d / files["d_after_step"], out1["g"])

    seq = batch_indices(1, BATCH, SEQ_LEN)
    return dict(
        name=case["name"], layout=case["layout"], regime=case["regime"],
        model_dir=case["layout"],
        options=dict(o, **{"seq_len": SEQ_LEN, "batch_size": BATCH}),
        options_differ_from_model_config={k: v for k, v in case.get("opts", {}).items()},
        training=dict(step=1, **{"lambda": tr["lam"]}, lambda_schedule=tr["lambda_schedule"],
                      reg_norm=tr["reg_norm"], lr_max=tr["lr_max"], warmup_steps=tr["warmup_steps"],
                      total_steps=tr["total_steps"], clip=tr["clip"], betas=list(tr["betas"]),
                      eps=tr["eps"], weight_decay=tr["weight_decay"], lr_used=lr_used),
        batch=dict(step=1, sequence_indices=seq, token_ranges=[[n * SEQ_LEN, (n + 1) * SEQ_LEN] for n in seq]),
        trainable=names, weight_decayed=decay,
        files={k: f"cases/{case['name']}/{v}" for k, v in files.items()},
        values=dict(
            lm_loss=float(r["lm"].detach()), reg_loss=float(r["reg"].detach()), loss=float(r["loss"].detach()),
            lambda_t=r["lam"], **sparsity(g, o),
            grad_norm=r["grad_norm"], clipped=clipped, clip_coef=coef,
            min_decision_margin=margin, float64_check=f64,
            n_trainable_params=int(sum(P0[n].numel() for n in names)),
            after_step=dict(lm_loss=float(lm1), reg_loss=float(reg1), loss=float(loss1),
                            **sparsity(out1["g"], o), min_decision_margin=margin1),
        ),
    )


class _STEFunction(torch.autograd.Function):
    """Straight-through gate written as an explicit autograd function (forward d, backward id)."""

    @staticmethod
    def forward(ctx, p, d):
        return d.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def check_ste(P0: dict, ids: torch.Tensor, o: dict, tr: dict, router_grad: torch.Tensor) -> None:
    """The router gradient two other ways. (a) The gate as an explicit autograd Function instead of
    d + (p - stopgrad p). (b) For the last layer (no router downstream of it), the chain rule by
    hand: dL/dw_r = sum_{b,t} (dL/dg_bt [t not forced] + dreg/dp_bt) dp/dz_bt h_bt, with dL/dg from a
    run where the last layer's gate is a leaf tensor."""
    L = MODEL["num_hidden_layers"]
    names = [f"model.layers.{layer}.router.weight" for layer in range(L)]
    r = fwd_bwd(P0, ids, o, tr, names, ste="function")
    err_a = rel_err(r["router_grad"], router_grad)
    assert err_a < 1e-6, f"STE (autograd Function) router gradient mismatch {err_a}"

    with torch.no_grad():
        ref = forward(P0, ids, o)
    g_last = ref["g"][L - 1].clone().requires_grad_(True)
    cap: dict = {}
    out = forward(P0, ids, o, gate_override={L - 1: g_last}, capture=cap)
    assert torch.equal(out["logits"], ref["logits"])
    lm_loss(out["logits"], ids).backward()
    B = ids.shape[0]
    dL_dg = g_last.grad.double()
    p = ref["p"][L - 1].double()
    dp_dz = p * (1 - p) / o["tau"]
    if o["force_local"]:
        dL_dg[:, :o["window"]] = 0.0
    lam = lambda_at(1, tr["lam"], tr["lambda_schedule"], tr["lambda_warmup_steps"], tr["total_steps"])
    dreg_dp = 2 * p * lam * ((1.0 / (L * B)) if tr["reg_norm"] == "sum" else 1.0 / ref["p"].numel())
    h = cap["router_in"][L - 1].detach().double()
    manual = torch.einsum("bt,bth->h", (dL_dg + dreg_dp) * dp_dz, h)[None]
    err_b = rel_err(router_grad[L - 1], manual)
    assert err_b < 1e-4, f"STE router gradient (chain rule, last layer) mismatch {err_b}"


# ---------------------------------------------------------------------------------------------
# Validation against Hugging Face


def validate(base_dir: Path, base: dict, tokens: np.ndarray, P_paper: dict, P_parallel: dict) -> dict:
    res = {}
    ids = get_batch(tokens, 1, BATCH, SEQ_LEN)
    hf = load_hf(base_dir)

    # (2) our plain forward == HF eager logits; (3) our autograd grads == HF's.
    P = {n: t.detach().clone().requires_grad_(True) for n, t in base.items()}
    cap: dict = {}
    ours = forward(P, ids, capture=cap)["logits"]
    lm_loss(ours, ids).backward()
    for p in hf.parameters():
        p.requires_grad_(True)
    theirs = hf(ids, use_cache=False).logits
    lm_loss(theirs, ids).backward()
    res["plain_logits_vs_hf_rel"] = rel_err(ours.detach(), theirs.detach())
    assert res["plain_logits_vs_hf_rel"] < 1e-5, res
    hf_params = dict(hf.named_parameters())
    assert sorted(hf_params) == sorted(P)
    gerr = {n: rel_err(P[n].grad, hf_params[n].grad) for n in sorted(P)}
    res["plain_grads_vs_hf_max_rel"] = max(gerr.values())
    res["plain_grads_vs_hf_worst"] = max(gerr, key=gerr.get)
    assert res["plain_grads_vs_hf_max_rel"] < 1e-5, res

    # Our attention sublayer == HF's Qwen2Attention module on the same (captured) input.
    with torch.no_grad():
        pos = torch.arange(SEQ_LEN)[None].expand(BATCH, -1)
        worst = 0.0
        for layer in range(MODEL["num_hidden_layers"]):
            h_in = cap["attn_in"][layer].detach()
            pe = hf.model.rotary_emb(h_in, pos)
            mask = torch.full((SEQ_LEN, SEQ_LEN), torch.finfo(torch.float32).min).triu(1)[None, None]
            out = hf.model.layers[layer].self_attn(h_in, position_embeddings=pe,
                                                   attention_mask=mask.expand(BATCH, 1, -1, -1))[0]
            worst = max(worst, rel_err(cap["attn_out"][layer].detach(), out))
        res["attention_sublayer_vs_hf_rel"] = worst
        assert worst < 1e-5, res

        # SWA vs HF's own sliding-window Qwen2 (same convention: W keys including itself).
        hfs = load_hf(base_dir, hf_sliding_config(base_dir, WINDOW))
        ref_swa = hfs(ids, use_cache=False).logits
        res["plain_swa_vs_hf_sliding_rel"] = rel_err(forward(base, ids, plain_window=WINDOW)["logits"], ref_swa)
        # L2A with every decision forced local == HF sliding window (paper: the global sublayer
        # is gated off; parallel: only the SWA term remains).
        for layout, PL in (("paper", P_paper), ("parallel", P_parallel)):
            o = LAYOUT_OPTS[layout]
            res[f"{layout}_all_local_vs_hf_sliding_rel"] = rel_err(
                forward(PL, ids, o, route="local")["logits"], ref_swa)
        for k in ("plain_swa_vs_hf_sliding_rel", "paper_all_local_vs_hf_sliding_rel",
                  "parallel_all_local_vs_hf_sliding_rel"):
            assert res[k] < 1e-5, (k, res[k])
        assert rel_err(forward(base, ids)["logits"], ref_swa) > MIN_SENSITIVITY

        # (1) paper, every token routed global, window >= T: the local sublayer is causal attention
        # (bitwise), and it equals HF's attention module on the same input.
        for W in (SEQ_LEN, 64):
            o = dict(LAYOUT_OPTS["paper"], window=W)
            cap_s, cap_c = {}, {}
            a = forward(P_paper, ids, o, route="global", capture=cap_s)
            b = forward(P_paper, ids, o, route="global", local_mask="causal", capture=cap_c)
            assert torch.equal(a["logits"], b["logits"]) and bool((a["g"] == 1).all())
            worst = 0.0
            for layer in range(MODEL["num_hidden_layers"]):
                h_in = cap_s["local_in"][layer]
                pe = hf.model.rotary_emb(h_in, pos)
                mask = torch.full((SEQ_LEN, SEQ_LEN), torch.finfo(torch.float32).min).triu(1)[None, None]
                out = hf.model.layers[layer].self_attn(h_in, position_embeddings=pe,
                                                       attention_mask=mask.expand(BATCH, 1, -1, -1))[0]
                worst = max(worst, rel_err(cap_s["local_out"][layer], out))
            res[f"paper_all_global_W{W}_local_sublayer_vs_hf_causal_rel"] = worst
            assert worst < 1e-5, res
        # The window matters at W = 8 (it is not secretly causal).
        o = LAYOUT_OPTS["paper"]
        res["paper_all_global_W8_swa_vs_causal_local_rel"] = rel_err(
            forward(P_paper, ids, o, route="global")["logits"],
            forward(P_paper, ids, o, route="global", local_mask="causal")["logits"])
        assert res["paper_all_global_W8_swa_vs_causal_local_rel"] > MIN_SENSITIVITY
    return res


# ---------------------------------------------------------------------------------------------
# Sensitivities


def quantities(P0: dict, ids: torch.Tensor, o: dict, tr: dict, **kw) -> dict:
    r = fwd_bwd(P0, ids, o, tr, sorted(P0), **kw)
    return dict(logits=r["out"]["logits"].detach(), p=r["out"]["p"].detach(),
                d=r["out"]["g"].detach(), lm_loss=float(r["lm"]), reg_loss=float(r["reg"]),
                loss=float(r["loss"]), router_grad=r["router_grad"], grad_norm_full=r["grad_norm"])


def sensitivity(layout: str, P: dict, P_other_layout: dict, ids: torch.Tensor) -> dict:
    o, tr = LAYOUT_OPTS[layout], dict(TRAIN)
    base_q = quantities(P, ids, o, tr)
    other = "parallel" if layout == "paper" else "paper"
    variants = {
        # (description, params, opts, train, forward kwargs, quantities that must move)
        "layout_flip": (P_other_layout, dict(LAYOUT_OPTS[other]), tr, {}, ["logits", "p", "router_grad"]),
        "no_ste": (P, o, tr, dict(ste=False), ["router_grad"]),
        "soft_gate_p_in_forward": (P, o, tr, dict(soft=True), ["logits"]),
        "tau_x1.25": (P, dict(o, tau=o["tau"] * 1.25), tr, {}, ["p", "reg_loss", "router_grad"]),
        "window_minus_1": (P, dict(o, window=o["window"] - 1), tr, {}, ["logits"]),
        "window_plus_1": (P, dict(o, window=o["window"] + 1), tr, {}, ["logits"]),
        "threshold_0.6": (P, dict(o, threshold=0.6), tr, {}, ["logits", "d"]),
        "force_local_flipped": (P, dict(o, force_local=not o["force_local"]), tr, {}, ["logits", "d"]),
        "rope_theta_5e6": (P, dict(o, rope_theta=5e6), tr, {}, ["logits"]),
        "reg_norm_mean": (P, o, dict(tr, reg_norm="mean"), {}, ["reg_loss", "loss", "router_grad"]),
        "lambda_ramp_step1": (P, o, dict(tr, lambda_schedule="ramp", lambda_warmup_steps=2),
                              {}, ["reg_loss", "loss", "router_grad"]),
    }
    if layout == "paper":
        swapped = dict(P)
        for n in P:
            if ".self_attn." in n:
                swapped[n] = P[n.replace(".self_attn.", ".global_attn.")]
                swapped[n.replace(".self_attn.", ".global_attn.")] = P[n]
        variants["swap_local_global_weights"] = (swapped, o, tr, {}, ["logits"])
        gn = dict(P)
        for layer in range(MODEL["num_hidden_layers"]):
            pre = f"model.layers.{layer}."
            gn[pre + "global_layernorm.weight"] = P[pre + "input_layernorm.weight"]
        variants["global_norm_is_input_norm"] = (gn, o, tr, {}, ["logits"])
    res = {}
    for label, (PP, oo, tt, kw, must) in variants.items():
        q = quantities(PP, ids, oo, tt, **kw)
        moved = {}
        for k, v in base_q.items():
            if isinstance(v, float):
                moved[k] = abs(q[k] - v) / abs(v) if v != 0 else abs(q[k])
            else:
                moved[k] = rel_err(q[k], v)
        for k in must:
            assert moved[k] > MIN_SENSITIVITY, f"{layout}: {k} insensitive to {label}: {moved[k]:.2e}"
        res[label] = dict(must_move=must, rel_change=moved)
    return res


# ---------------------------------------------------------------------------------------------
# Plain training curves (HF model, eager attention)


def run_curve(base_dir: Path, tokens: np.ndarray, spec: dict, perturb: float = 0.0) -> dict:
    model = load_hf(base_dir)
    named = dict(model.named_parameters())
    if perturb:
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for n in sorted(named):
                named[n].mul_(1 + perturb * torch.randn(named[n].shape, generator=g))
    if spec["regime"] == "full":
        names = sorted(named)
    elif spec["regime"] == "attention":
        names = sorted(n for n in named if ".self_attn." in n or n.endswith("norm.weight"))
    else:
        raise ValueError(spec["regime"])
    for n, p in named.items():
        p.requires_grad_(n in names)
    tr = dict(TRAIN)
    opt, decay = make_optimizer({n: named[n] for n in names}, tr, spec["lr_max"])
    sched = get_cosine_schedule_with_warmup(opt, spec["warmup_steps"], spec["total_steps"])
    params = [named[n] for n in names]
    rows = dict(loss=[], grad_norm=[], lr=[], clipped=[])
    for s in range(1, spec["steps"] + 1):
        ids = get_batch(tokens, s, spec["batch_size"], spec["seq_len"])
        opt.zero_grad(set_to_none=True)
        loss = lm_loss(model(ids, use_cache=False).logits, ids)
        loss.backward()
        lr = opt.param_groups[0]["lr"]
        assert abs(lr - lr_at(s - 1, spec["lr_max"], spec["warmup_steps"], spec["total_steps"])) < 1e-12
        gn = float(torch.nn.utils.clip_grad_norm_(params, spec["clip"], foreach=False))
        opt.step()
        sched.step()
        rows["loss"].append(float(loss.detach()))
        rows["grad_norm"].append(gn)
        rows["lr"].append(lr)
        rows["clipped"].append(gn > spec["clip"])
    with torch.no_grad():
        ids1 = get_batch(tokens, 1, spec["batch_size"], spec["seq_len"])
        eval_after = float(lm_loss(model(ids1, use_cache=False).logits, ids1))
    ls = rows["loss"]
    assert sum(ls[-5:]) < sum(ls[:5]), f"{spec['name']}: training did not reduce the loss"
    if perturb:
        return rows
    noisy = run_curve(base_dir, tokens, spec, perturb=1e-6)
    drift = {k: max(abs(a - b) / abs(a) for a, b in zip(rows[k], noisy[k])) for k in ("loss", "grad_norm")}
    return dict(spec, model_dir="base", attention="full_causal", betas=list(tr["betas"]),
                float_noise_estimate=dict(
                    what="max over steps of |x - x'| / |x| where x' is the same curve from weights "
                         "multiplied by (1 + 1e-6 N(0, 1)): how far float32 rounding alone can move "
                         "the curve; pick the C++ tolerance accordingly", **drift),
                eps=tr["eps"], weight_decay=tr["weight_decay"], trainable=names,
                weight_decayed=decay, per_step=rows,
                loss_step1_batch_after_training=eval_after,
                note="per_step[i] is optimizer step i+1 (0-based k = i): loss and grad norm (before "
                     "clipping) of that step's batch before its update, lr used by that update")


# ---------------------------------------------------------------------------------------------


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def build(out: Path) -> dict:
    if out.exists():
        for sub in ("base", "paper", "parallel", "cases"):
            shutil.rmtree(out / sub, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    # Base model.
    torch.manual_seed(SEED_BASE)
    model = Qwen2ForCausalLM(make_config()).eval()
    randomize(model, SEED_BASE)
    base_dir = out / "base"
    model.save_pretrained(base_dir, safe_serialization=True)
    (base_dir / "generation_config.json").unlink(missing_ok=True)
    for f in base_dir.iterdir():
        f.chmod(0o644)
    base = {n: t.float().contiguous() for n, t in load_file(str(base_dir / "model.safetensors")).items()}
    assert sorted(base) == sorted(n for n, _ in model.named_parameters())

    # Tokens.
    rng = np.random.default_rng(SEED_TOKENS)
    tokens = rng.integers(0, MODEL["vocab_size"], size=N_TOKENS).astype("<u4")
    tokens.tofile(out / "tokens.bin")
    tokens = np.fromfile(out / "tokens.bin", dtype="<u4").astype(np.int64)
    ids = get_batch(tokens, 1, BATCH, SEQ_LEN)

    # L2A models.
    models, init_info = {}, {}
    for layout in ("paper", "parallel"):
        checks = [case_opts(c) for c in CASES if c["layout"] == layout]
        P, info = make_l2a_params(base, layout, ids, checks)
        save_l2a_model(P, layout, base_dir, out / layout)
        models[layout] = {n: t.float() for n, t in load_file(str(out / layout / "model.safetensors")).items()}
        assert all(torch.equal(models[layout][n], P[n]) for n in P)
        assert sorted(set(P) - set(base)) == sorted(l2a_extra_names(layout))
        init_info[layout] = info

    validation = validate(base_dir, base, tokens, models["paper"], models["parallel"])

    cases = []
    for case in CASES:
        cases.append(run_case(case, models[case["layout"]], ids, out / "cases" / case["name"]))
    clipped = [c["values"]["clipped"] for c in cases]
    assert any(clipped) and not all(clipped), clipped
    # The router gradient does not depend on which other tensors are trainable.
    for a in cases:
        for b in cases:
            if (a["layout"], a["options"], a["training"]["reg_norm"]) == \
               (b["layout"], b["options"], b["training"]["reg_norm"]):
                ga, gb = np.load(out / a["files"]["router_grad"]), np.load(out / b["files"]["router_grad"])
                assert rel_err(ga, gb) < 1e-6, (a["name"], b["name"])

    sens = {layout: sensitivity(layout, models[layout],
                                models["parallel"] if layout == "paper" else
                                {**models["parallel"], **{
                                    n: models["parallel"][n.replace(".global_attn.", ".self_attn.")
                                                          .replace(".global_layernorm.", ".input_layernorm.")]
                                    for n in l2a_extra_names("paper") if ".router." not in n}}, ids)
            for layout in ("paper", "parallel")}

    curves = [run_curve(base_dir, tokens, spec) for spec in CURVES]
    (out / "curves.json").write_text(json.dumps({"curves": curves}, indent=1) + "\n")

    ref = {
        "generator": "tools/make_l2a_fixtures.py",
        "command": "python3 tools/make_l2a_fixtures.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "numpy": np.__version__, "safetensors": safetensors.__version__,
                     "python": platform.python_version()},
        "parity_tolerance": PARITY_TOL,
        "model": dict(MODEL, head_dim=MODEL["hidden_size"] // MODEL["num_attention_heads"],
                      dir="base", dtype="float32"),
        "tokens": {"file": "tokens.bin", "dtype": "uint32 little-endian", "count": N_TOKENS,
                   "range": [0, MODEL["vocab_size"]], "seed": SEED_TOKENS},
        "batching": {
            "rule": "step s (1-based) uses sequences ((s-1)*B + i) mod (4096 // T), i = 0..B-1; "
                    "sequence n = tokens[n*T:(n+1)*T]",
            "examples": [dict(seq_len=T, batch_size=B, step=s, sequences=batch_indices(s, B, T))
                         for T, B, s in ((24, 2, 1), (24, 2, 85), (24, 2, 86), (24, 3, 57),
                                         (32, 2, 1), (32, 2, 50), (32, 2, 65))],
        },
        "schedules": {
            "lr": {"rule": "k = 0-based optimizer step: lr_max*k/max(1,warmup) if k < warmup else "
                           "lr_max*0.5*(1+cos(pi*(k-warmup)/max(1,total-warmup)))",
                   "examples": [dict(lr_max=3e-3, warmup=5, total=50,
                                     lr=[lr_at(k, 3e-3, 5, 50) for k in range(50)]),
                                dict(lr_max=1e-2, warmup=0, total=10,
                                     lr=[lr_at(k, 1e-2, 0, 10) for k in range(10)])]},
            "lambda": {"rule": "constant: lambda; ramp: 0 for s <= warmup, then "
                               "lambda*(s-warmup)/(total-warmup), s 1-based",
                       "examples": [dict(schedule="ramp", lam=0.05, warmup=3, total=10,
                                         values=[lambda_at(s, 0.05, "ramp", 3, 10) for s in range(1, 11)])]},
        },
        "semantics": {
            "d_file": "gate forward value g (0/1) per (layer, b, t); forced-local positions are 0",
            "p_file": "sigmoid(z/tau) at every position, forced-local included",
            "sparsity": "fraction of (b, l, t) with d = 0 (forced-local zeros included); "
                        "_excl_forced: over t >= window only (equals sparsity when force_local is off)",
            "router_grad": "gradient of lm_loss + reg_loss w.r.t. router.weight before clipping, "
                           "through the straight-through gate (and the regularizer)",
            "grad_norm": "L2 norm over every trainable tensor's gradient, before clipping",
            "clip": "if grad_norm > clip: grads *= clip / (grad_norm + 1e-6)",
            "weight_decay": "0.1 on trainable tensors with >= 2 dims (router.weight [1, hidden] "
                            "included), 0 on norms and biases",
            "after_step": "scalars of a no-grad forward of the updated model on the same batch",
            "float64_check": "the same case recomputed in float64: relative errors of this float32 "
                             "reference against it (logits, p, router grad, grad norm, each "
                             "trainable tensor after the step: params_after_step_rel; update_*: "
                             "the error of (after - before)). A float32 C++ implementation will "
                             "differ by about as much: tensors whose true gradient is ~0 (k_proj "
                             "biases, most of all with rope_theta 5e6, where RoPE barely rotates) "
                             "get Adam steps of rounding-noise direction, so use a per-tensor "
                             "tolerance of max(parity_tolerance, 10 x params_after_step_rel)",
        },
        "l2a_init": init_info,
        "validation": validation,
        "cases": cases,
        "curves": {"file": "curves.json", "names": [c["name"] for c in curves]},
        "sensitivity": sens,
    }
    (out / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    return dict(validation=validation, cases=cases, curves=curves, sens=sens)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output dir (default: %(default)s)")
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary directory and compare with --out")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    transformers.logging.set_verbosity_error()

    out = Path(tempfile.mkdtemp(prefix="rt_l2a_fixtures_")) / "l2a" if args.check else args.out
    info = build(out)
    for k, v in info["validation"].items():
        print(f"validation {k}: {v}")
    for c in info["cases"]:
        v = c["values"]
        print(f"{c['name']:28s} lm {v['lm_loss']:.4f} reg {v['reg_loss']:.4f} sparsity "
              f"{v['sparsity']:.3f} ({v['sparsity_excl_forced']:.3f} excl) grad_norm "
              f"{v['grad_norm']:.3f} clip {c['training']['clip']} clipped {v['clipped']} "
              f"after-step lm {v['after_step']['lm_loss']:.4f}")
    for c in info["curves"]:
        ls = c["per_step"]["loss"]
        print(f"curve {c['name']}: loss {ls[0]:.4f} -> {ls[-1]:.4f}, clipped "
              f"{sum(c['per_step']['clipped'])}/{len(ls)}")
    for layout, s in info["sens"].items():
        print(f"sensitivity {layout}: " + " ".join(
            f"{k}={max(v['rel_change'][q] for q in v['must_move']):.1e}" for k, v in s.items()))
    total = dir_bytes(out)
    print(f"total {total} bytes in {out}")
    assert total < TOTAL_BYTES_LIMIT, f"fixtures too large: {total}"

    if args.check:
        bad = []
        for f in sorted(p for p in out.rglob("*") if p.is_file()):
            g = args.out / f.relative_to(out)
            if not g.exists() or g.read_bytes() != f.read_bytes():
                bad.append(str(g))
        for g in sorted(p for p in args.out.rglob("*") if p.is_file()):
            if not (out / g.relative_to(args.out)).exists():
                bad.append(f"{g} (not made by this script)")
        shutil.rmtree(out.parent)
        return report_differences(bad)
    return 0


if __name__ == "__main__":
    sys.exit(main())
