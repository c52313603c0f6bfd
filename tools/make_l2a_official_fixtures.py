#!/usr/bin/env python3
"""Build tiny checkpoints in the official L2A release format under tests/fixtures/l2a_official/.

    python3 tools/make_l2a_official_fixtures.py            # regenerates everything (deterministic, CPU)
    python3 tools/make_l2a_official_fixtures.py --check    # regenerate into a temp dir and compare

The official release (awslabs/hybrid-model-factory, model_type "l2a_qwen3") is Qwen3 with a second,
global attention sublayer per layer. Its files name the tensors differently from this runtime:

    official (relative to model.layers.N.)            runtime
    self_attn.{q,k,v,o}_proj.weight                   same (the local, sliding-window sublayer)
    self_attn.{q,k}_norm.weight                       same
    input_layernorm_global.weight                     global_layernorm.weight
    self_attn.{q,k,v,o}_proj_global.weight            global_attn.{q,k,v,o}_proj.weight
    self_attn.{q,k}_norm_global.weight                global_attn.{q,k}_norm.weight
    self_attn.sigmoid_linear.weight [1, hidden]       router.weight

and config.json carries sliding_window (W keys including the query), sigmoid_temp (tau),
sigmoid_threshold, sig_input_type "hidden_linearproj" and sigmoid_linear true.

The logits come from an independent float32 reference written here in plain torch (RMSNorm,
rotate-half RoPE, QK-norm, GQA attention with explicit boolean masks, SwiGLU), from the weights as
stored (bf16 ones rounded first):

    x1 = x  + SWA_W(RMSNorm_in(x))            local weights
    h2 = RMSNorm_g(x1);  z = h2 . w_r;  d = 1[z >= tau * logit(threshold)]
    x2 = x1 + d * Causal(h2)                  global weights (own q/k/v/o and q/k norms)
    x3 = x2 + MLP(RMSNorm_post(x2))

The script checks the reference against transformers before writing anything: with every router
forced to 0 it must equal Qwen3ForCausalLM with a sliding window of W keys in every layer (same local
weights). Router weights are redrawn (deterministically) until 30-70% of the tokens of every layer
are routed at T = 37 and no router logit lies within MIN_MARGIN of the cut, so float rounding
cannot flip a decision. reference.json records the ids, the per-layer decisions, the files, the
versions and the sensitivities (how far the logits move when the routing or the global weights are
wrong: all far above the 1e-4 parity tolerance).

Models: hidden 48, 4 heads / 2 kv heads, head_dim 16, 2 layers, rope_theta 1e6, rms_norm_eps 1e-6,
sigmoid_temp 0.1:
    l2a_untied_f32      vocab 176, intermediate 32, untied, float32, sliding_window 5, threshold 0.5
    l2a_tied_bf16       vocab 200, intermediate 64, tied, bfloat16, sliding_window 6, threshold 0.3
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
from safetensors.torch import load_file, save_file

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import transformers  # noqa: E402
from transformers import Qwen3Config, Qwen3ForCausalLM  # noqa: E402
from fixture_common import report_differences  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "fixtures" / "l2a_official"

PARITY_TOL = 1e-4
HF_TOL = 1e-5            # our reference vs transformers, routers forced to 0
MIN_SENSITIVITY = 1e-2
MIN_MARGIN = 2e-3        # |z - cut| for every token of every checked sequence
MAX_FIXTURE_BYTES = 300_000  # the whole directory

SPECS = [
    dict(name="l2a_untied_f32", seed=2101, vocab_size=176, intermediate_size=32, tie=False,
         dtype="float32", window=5, tau=0.1, threshold=0.5),
    dict(name="l2a_tied_bf16", seed=2102, vocab_size=200, intermediate_size=64, tie=True,
         dtype="bfloat16", window=6, tau=0.1, threshold=0.3),
]
COMMON = dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              num_hidden_layers=2, rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=128)
LENGTHS = [37, 1]


def rel_err(a, b) -> float:
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------------
# The independent reference


def rms_norm(x, w, eps):
    return w * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rope(x, theta):
    """x [T, H, D]; rotate-half convention, positions 0..T-1."""
    T, _, D = x.shape
    inv = 1.0 / (theta ** (torch.arange(0, D, 2, dtype=torch.float64) / D))
    ang = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    ang = torch.cat([ang, ang], -1)
    cos, sin = ang.cos().float()[:, None, :], ang.sin().float()[:, None, :]
    half = D // 2
    rot = torch.cat([-x[..., half:], x[..., :half]], -1)
    return x * cos + rot * sin


def attention(h, W, c, prefix, suffix, window):
    """One attention sublayer's output (before the residual): q/k/v/o projections, QK-norm, RoPE,
    GQA softmax attention under the causal mask or a window of `window` keys (0: none)."""
    T = h.shape[0]
    H, Hkv, D = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    p = lambda n: W[f"{prefix}{n}{suffix}.weight"]  # noqa: E731
    q = (h @ p("q_proj").T).view(T, H, D)
    k = (h @ p("k_proj").T).view(T, Hkv, D)
    v = (h @ p("v_proj").T).view(T, Hkv, D)
    q = rms_norm(q, p("q_norm"), c["rms_norm_eps"])
    k = rms_norm(k, p("k_norm"), c["rms_norm_eps"])
    q, k = rope(q, c["rope_theta"]), rope(k, c["rope_theta"])
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    visible = j <= i
    if window:
        visible &= j > i - window
    group = H // Hkv
    out = torch.empty(T, H, D)
    for hh in range(H):
        s = (q[:, hh] @ k[:, hh // group].T) / math.sqrt(D)
        s = s.masked_fill(~visible, float("-inf"))
        out[:, hh] = torch.softmax(s, -1) @ v[:, hh // group]
    return out.reshape(T, H * D) @ p("o_proj").T


def mlp(u, W, pre):
    g = u @ W[pre + "mlp.gate_proj.weight"].T
    up = u @ W[pre + "mlp.up_proj.weight"].T
    return (torch.nn.functional.silu(g) * up) @ W[pre + "mlp.down_proj.weight"].T


@torch.no_grad()
def forward(W, c, spec, ids, force=None):
    """Logits [T, vocab], decisions [L][T] and router logits z [L][T]. force: 0 or 1 overrides
    every decision (the sensitivity and transformers checks)."""
    eps = c["rms_norm_eps"]
    cut = spec["tau"] * math.log(spec["threshold"] / (1 - spec["threshold"]))
    x = W["model.embed_tokens.weight"][torch.tensor(ids)]
    decisions, logits_z = [], []
    for layer in range(c["num_hidden_layers"]):
        pre = f"model.layers.{layer}."
        x1 = x + attention(rms_norm(x, W[pre + "input_layernorm.weight"], eps), W, c, pre + "self_attn.", "",
                           spec["window"])
        h2 = rms_norm(x1, W[pre + "input_layernorm_global.weight"], eps)
        z = (h2 @ W[pre + "self_attn.sigmoid_linear.weight"].T)[:, 0]
        d = (z >= cut).float() if force is None else torch.full_like(z, float(force))
        x2 = x1 + d[:, None] * attention(h2, W, c, pre + "self_attn.", "_global", 0)
        x = x2 + mlp(rms_norm(x2, W[pre + "post_attention_layernorm.weight"], eps), W, pre)
        decisions.append(d.int().tolist())
        logits_z.append((z - cut).tolist())
    x = rms_norm(x, W["model.norm.weight"], eps)
    head = W["model.embed_tokens.weight"] if spec["tie"] else W["lm_head.weight"]
    return (x @ head.T).numpy().astype(np.float32), decisions, logits_z


# ---------------------------------------------------------------------------------------------
# Weights and config


def official_names(c, tie) -> list[tuple[str, list[int]]]:
    d, H, Hkv, D, ff = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], \
        c["intermediate_size"]
    out = [("model.embed_tokens.weight", [c["vocab_size"], d])]
    for layer in range(c["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        for suffix in ("", "_global"):
            out += [(f"{p}self_attn.q_proj{suffix}.weight", [H * D, d]),
                    (f"{p}self_attn.k_proj{suffix}.weight", [Hkv * D, d]),
                    (f"{p}self_attn.v_proj{suffix}.weight", [Hkv * D, d]),
                    (f"{p}self_attn.o_proj{suffix}.weight", [d, H * D]),
                    (f"{p}self_attn.q_norm{suffix}.weight", [D]),
                    (f"{p}self_attn.k_norm{suffix}.weight", [D])]
        out += [(p + "input_layernorm.weight", [d]), (p + "input_layernorm_global.weight", [d]),
                (p + "post_attention_layernorm.weight", [d]),
                (p + "self_attn.sigmoid_linear.weight", [1, d]),
                (p + "mlp.gate_proj.weight", [ff, d]), (p + "mlp.up_proj.weight", [ff, d]),
                (p + "mlp.down_proj.weight", [d, ff])]
    out.append(("model.norm.weight", [d]))
    if not tie:
        out.append(("lm_head.weight", [c["vocab_size"], d]))
    return out


def draw(name, shape, g, c, tie):
    if name.endswith("norm.weight") or name.endswith("norm_global.weight"):
        return torch.rand(shape, generator=g) + 0.5                      # around 1
    if name.endswith("sigmoid_linear.weight"):
        return torch.randn(shape, generator=g) * 2.0 / math.sqrt(shape[1])
    if name == "model.embed_tokens.weight":
        return torch.randn(shape, generator=g) * (2.0 if tie else 0.5) / math.sqrt(c["hidden_size"])
    if name == "lm_head.weight":
        return torch.randn(shape, generator=g) * 3.0 / math.sqrt(shape[1])
    if "q_proj" in name or "k_proj" in name:
        return torch.randn(shape, generator=g) * 1.5 / math.sqrt(shape[1])
    return torch.randn(shape, generator=g) / math.sqrt(shape[1])


def as_stored(t: torch.Tensor, dtype: str) -> torch.Tensor:
    return t.to(getattr(torch, dtype)).contiguous()


def make_config(spec, c) -> dict:
    hf = Qwen3Config(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"], head_dim=c["head_dim"],
        max_position_embeddings=c["max_position_embeddings"], rms_norm_eps=c["rms_norm_eps"],
        rope_parameters={"rope_theta": c["rope_theta"], "rope_type": "default"},
        tie_word_embeddings=spec["tie"], attention_bias=False, bos_token_id=0, eos_token_id=1)
    cfg = hf.to_dict()
    for k in ("transformers_version", "_name_or_path", "output_attentions", "output_hidden_states", "return_dict",
              "id2label", "label2id", "chunk_size_feed_forward", "is_encoder_decoder", "problem_type"):
        cfg.pop(k, None)
    cfg.update(model_type="l2a_qwen3", architectures=["L2AQwen3ForCausalLM"], dtype=spec["dtype"],
               use_sliding_window=False, max_window_layers=c["num_hidden_layers"], sliding_window=spec["window"], sigmoid_temp=spec["tau"],
               sigmoid_threshold=spec["threshold"], sig_input_type="hidden_linearproj", sigmoid_linear=True)
    return dict(sorted(cfg.items()))


def hf_sliding_logits(W, spec, c, ids) -> np.ndarray:
    """transformers' Qwen3 with a window of W keys in every layer, on the local weights only."""
    cfg = Qwen3Config(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        num_key_value_heads=c["num_key_value_heads"], head_dim=c["head_dim"],
        max_position_embeddings=c["max_position_embeddings"], rms_norm_eps=c["rms_norm_eps"],
        rope_parameters={"rope_theta": c["rope_theta"], "rope_type": "default"},
        tie_word_embeddings=spec["tie"], attention_bias=False, use_sliding_window=True,
        sliding_window=spec["window"], max_window_layers=0,
        layer_types=["sliding_attention"] * c["num_hidden_layers"], attn_implementation="eager")
    model = Qwen3ForCausalLM(cfg).eval()
    local = {k: v for k, v in W.items() if "_global" not in k and "sigmoid_linear" not in k}
    if spec["tie"]:
        local["lm_head.weight"] = local["model.embed_tokens.weight"]
    missing, unexpected = model.load_state_dict(local, strict=False)
    assert not unexpected and not [m for m in missing if m != "lm_head.weight"], (missing, unexpected)
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0].float().numpy()


# ---------------------------------------------------------------------------------------------


def build(spec: dict, out_root: Path) -> dict:
    name = spec["name"]
    c = dict(COMMON, vocab_size=spec["vocab_size"], intermediate_size=spec["intermediate_size"])
    d = out_root / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)

    g = torch.Generator().manual_seed(spec["seed"])
    stored = {n: as_stored(draw(n, s, g, c, spec["tie"]), spec["dtype"]) for n, s in official_names(c, spec["tie"])}
    ids = {T: torch.randint(2, c["vocab_size"], (T,), generator=g).tolist() for T in LENGTHS}

    # Redraw the routers until every layer routes 30-70% at T = 37 with a clear margin everywhere.
    for attempt in range(200):
        W = {k: v.float() for k, v in stored.items()}
        runs = {T: forward(W, c, spec, ids[T]) for T in LENGTHS}
        fractions = [sum(dl) / len(dl) for dl in runs[37][1]]
        margin = min(abs(z) for T in LENGTHS for zl in runs[T][2] for z in zl)
        if all(0.3 <= f <= 0.7 for f in fractions) and margin >= MIN_MARGIN:
            break
        for layer in range(c["num_hidden_layers"]):
            n = f"model.layers.{layer}.self_attn.sigmoid_linear.weight"
            stored[n] = as_stored(draw(n, [1, c["hidden_size"]], g, c, spec["tie"]), spec["dtype"])
    else:
        raise RuntimeError(f"{name}: no router draw routes 30-70% with margin {MIN_MARGIN}")

    # The reference against transformers: every router forced local is HF's sliding-window Qwen3.
    hf_errors = {}
    for T in LENGTHS:
        ours = forward(W, c, spec, ids[T], force=0)[0]
        hf_errors[f"T{T}"] = rel_err(ours, hf_sliding_logits(W, spec, c, ids[T]))
        assert hf_errors[f"T{T}"] < HF_TOL, f"{name}: routers off vs HF sliding Qwen3: {hf_errors}"

    ref37 = runs[37][0]
    sens = {"all_local": rel_err(forward(W, c, spec, ids[37], force=0)[0], ref37),
            "all_global": rel_err(forward(W, c, spec, ids[37], force=1)[0], ref37)}
    swapped = dict(W)
    for k in W:
        if "_global" in k:
            swapped[k] = W[k.replace("_global", "")]
    sens["global_weights_from_local"] = rel_err(forward(swapped, c, spec, ids[37])[0], ref37)
    for k, v in sens.items():
        assert v > MIN_SENSITIVITY, f"{name}: sensitivity {k} = {v}"

    save_file(stored, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(make_config(spec, c), indent=2) + "\n")
    # What the C++ test reads back must be what the reference ran on.
    back = load_file(str(d / "model.safetensors"))
    assert all(torch.equal(back[k].float(), W[k]) for k in W)

    logits = []
    for T in LENGTHS:
        f = f"logits_T{T}.npy"
        np.save(d / f, np.ascontiguousarray(runs[T][0], dtype=np.float32), allow_pickle=False)
        logits.append(dict(name=f"T{T}", ids=ids[T], file=f, decisions=runs[T][1],
                           routed_fraction=[sum(dl) / len(dl) for dl in runs[T][1]],
                           min_margin=min(abs(z) for zl in runs[T][2] for z in zl)))
    ref = dict(
        model=name, generator="tools/make_l2a_official_fixtures.py",
        command="python3 tools/make_l2a_official_fixtures.py",
        versions=dict(transformers=transformers.__version__, torch=torch.__version__, numpy=np.__version__,
                      python=platform.python_version()),
        storage_dtype=spec["dtype"], tie_word_embeddings=spec["tie"],
        l2a=dict(window=spec["window"], tau=spec["tau"], threshold=spec["threshold"]),
        parity_tolerance=PARITY_TOL, router_draws=attempt + 1,
        files=dict(config="config.json", weights="model.safetensors"),
        logits=logits, hf_sliding_check=hf_errors, sensitivity=sens)
    (d / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")
    for f in d.iterdir():
        f.chmod(0o644)
    ck = sum(f.stat().st_size for f in d.iterdir())
    assert ck < MAX_FIXTURE_BYTES, f"{name}: {ck} bytes"
    return dict(name=name, bytes=ck, fractions=logits[0]["routed_fraction"], margin=logits[0]["min_margin"],
                hf=hf_errors, sens=sens)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output root (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="regenerate into a temporary directory and compare with --out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()

    out_root = Path(tempfile.mkdtemp(prefix="rt_l2a_official_")) if args.check else args.out
    out_root.mkdir(parents=True, exist_ok=True)
    for spec in SPECS:
        i = build(spec, out_root)
        print(f"{i['name']:16s} {i['bytes']:7d} B  routed {i['fractions']}  margin {i['margin']:.2e}  "
              f"hf {i['hf']}  sensitivity {i['sens']}")
    if args.check:
        bad = []
        for spec in SPECS:
            for f in sorted((out_root / spec["name"]).iterdir()):
                g = args.out / spec["name"] / f.name
                if f.name == "reference.json":  # versions may differ; the numbers may not
                    strip = lambda p: {k: v for k, v in json.loads(p.read_text()).items() if k != "versions"}  # noqa: E731
                    same = g.exists() and strip(f) == strip(g)
                else:
                    same = g.exists() and g.read_bytes() == f.read_bytes()
                if not same:
                    bad.append(str(g))
        shutil.rmtree(out_root)
        return report_differences(bad)
    return 0


if __name__ == "__main__":
    sys.exit(main())
