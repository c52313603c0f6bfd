#!/usr/bin/env python3
"""Build the tiny Qwen2 / Qwen3 parity fixtures under tests/fixtures/models/ with Hugging Face transformers.

    python3 tools/make_fixtures.py            # regenerates everything (deterministic, CPU only)
    python3 tools/make_fixtures.py --check    # regenerate into a temp dir and compare with the tree

Each model is a random Qwen2ForCausalLM (fixed seed) whose every parameter matters: linear weights
are drawn with a fan-in scaled std (attention logits of order 1, so softmax is peaked and RoPE
matters), q/k/v biases are random around 0, and all RMSNorm weights are random around 1. It is saved
with save_pretrained (safetensors) into tests/fixtures/models/<name>/ together with

    reference.json    input ids, the HF outputs' file names, greedy generations, the versions of
                      transformers / torch / numpy that produced them, and the measured
                      sensitivities (how much the logits move when theta, eps, biases, norms or
                      the mask change: all far above the 1e-4 parity tolerance)
    logits_*.npy      float32 [T, vocab] logits from HF (attn_implementation="eager"), computed in
                      float32 from the weights as saved (bf16/f16 checkpoints are loaded from disk
                      and cast to float32 first)

Models (odd sizes on purpose):

    gqa_untied_f32       hidden 40, 5 heads / 1 kv head, head_dim 8, inter 72, 2 layers, vocab 257,
                         rope_theta 1e6, untied, float32, max_position_embeddings 64; config.json
                         patched to the transformers-4 / real Qwen2.5 style (top-level rope_theta and
                         torch_dtype, no rope_parameters / layer_types)
    tied_bf16_theta5e6   hidden 64, 4 heads / 2 kv, head_dim 16, inter 96, 3 layers, vocab 300,
                         rope_theta 5e6, tied embeddings, bfloat16, transformers-5 config
                         (rope_parameters: {rope_theta, rope_type})
    sharded_f16          hidden 96, 6 heads / 2 kv (GQA 3), head_dim 16, inter 80, 2 layers,
                         vocab 211, untied, float16, rms_norm_eps 1e-5, >= 2 shards + index
    gqa7_hd64            hidden 448, 7 heads / 1 kv (GQA 7), head_dim 64, inter 64, 1 layer,
                         vocab 128, tied, bfloat16 (Qwen2.5-0.5B's head shape in miniature; 1.2 MB,
                         the one checkpoint over 300 KB: hidden = 7 x 64 makes q_proj and o_proj
                         448 x 448 each, and real Qwen2.5 configs have no separate head_dim)
    sliding_window       hidden 64, 4 heads / 2 kv, head_dim 16, inter 64, 2 layers, vocab 300,
                         rope_theta 5e6, tied, float32, use_sliding_window true, sliding_window 5,
                         max_window_layers 0 (every layer slides). Logits are stored both for HF's
                         sliding model (our `--attention swa --window 5`) and for the same weights
                         with full causal attention (our `--attention full_causal`).

    sliding_mixed        Qwen3: hidden 48, 4 heads / 2 kv, head_dim 16, inter 64, 3 layers, vocab 199,
                         tied, float32, use_sliding_window true, sliding_window 4,
                         max_window_layers 1 and no layer_types in config.json: layer 0 attends to
                         every past token, layers 1-2 slide (transformers derives that). HF's
                         logits are the runtime's default backend's, and swa's (which takes the
                         window and the full layers from the checkpoint).

    qwen3_hd16           Qwen3 (model_type qwen3: QK-norm, no qkv bias): hidden 48, 4 heads / 2 kv,
                         head_dim 16 (not hidden / heads = 12), inter 64, 2 layers, vocab 263,
                         rope_theta 1e6, rms_norm_eps 1e-5, untied, float32
    qwen3_hd64_bf16      Qwen3: hidden 96, 3 heads / 1 kv (GQA 3), head_dim 64 (the CUDA flash
                         kernels' head size), inter 64, 2 layers, vocab 160, tied, bfloat16

Inputs: T = 1 and T = 37 random ids for every model (T = 12 too for sliding_window). Greedy
generation (6 prompt ids, 32 new tokens, HF generate(do_sample=False) in float32, checked against
a cache-free argmax loop) for gqa_untied_f32, tied_bf16_theta5e6 and sliding_window (sliding).
Prompts are chosen (deterministically) so that every greedy step has a clear top-1 margin, the
32 new ids hold at least 8 distinct values and no end-of-sequence id (eos_token_id = 1), and (for
sliding_window) the sliding generation differs from the causal one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
import transformers  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM  # noqa: E402
from fixture_common import report_differences  # noqa: E402

ARCH = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "qwen3": (Qwen3Config, Qwen3ForCausalLM)}

ROOT = Path(__file__).resolve().parent.parent
OUT_DIR = ROOT / "tests" / "fixtures" / "models"

PARITY_TOL = 1e-4          # the C++ tests' tolerance on |out - ref| / |ref|
MIN_SENSITIVITY = 1e-2     # every checked perturbation must move the logits at least this much
MIN_GREEDY_MARGIN = 2e-3   # top-1 minus top-2 logit at every greedy step
MAX_CHECKPOINT_BYTES = {"gqa7_hd64": 1_300_000, "qwen3_hd64_bf16": 400_000}  # others: 300 KB
TOTAL_BYTES_LIMIT = 3_600_000


def rel_err(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    return float((a - b).norm() / b.norm())


# ---------------------------------------------------------------------------------------------
# Model specs


SPECS = [
    dict(
        name="gqa_untied_f32", seed=1001,
        hidden_size=40, num_attention_heads=5, num_key_value_heads=1, intermediate_size=72,
        num_hidden_layers=2, vocab_size=257, rope_theta=1e6, tie=False, dtype="float32",
        max_position_embeddings=64, rms_norm_eps=1e-6, style="v4",
        lengths=[1, 37], generate=True,
    ),
    dict(
        name="tied_bf16_theta5e6", seed=1002,
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        num_hidden_layers=3, vocab_size=300, rope_theta=5e6, tie=True, dtype="bfloat16",
        max_position_embeddings=128, rms_norm_eps=1e-6, style="v5",
        lengths=[1, 37], generate=True,
    ),
    dict(
        name="sharded_f16", seed=1003,
        hidden_size=96, num_attention_heads=6, num_key_value_heads=2, intermediate_size=80,
        num_hidden_layers=2, vocab_size=211, rope_theta=1e6, tie=False, dtype="float16",
        max_position_embeddings=128, rms_norm_eps=1e-5, style="v5", max_shard_size="100KB",
        lengths=[1, 37], generate=False,
    ),
    dict(
        name="gqa7_hd64", seed=1004,
        hidden_size=448, num_attention_heads=7, num_key_value_heads=1, intermediate_size=64,
        num_hidden_layers=1, vocab_size=128, rope_theta=1e6, tie=True, dtype="bfloat16",
        max_position_embeddings=128, rms_norm_eps=1e-6, style="v5",
        lengths=[1, 37], generate=False,
    ),
    dict(
        name="sliding_window", seed=1005,
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        num_hidden_layers=2, vocab_size=300, rope_theta=5e6, tie=True, dtype="float32",
        max_position_embeddings=128, rms_norm_eps=1e-6, style="v5", sliding_window=5,
        lengths=[1, 12, 37], generate=True,
    ),
    dict(
        name="sliding_mixed", seed=1008, arch="qwen3", head_dim=16,
        hidden_size=48, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        num_hidden_layers=3, vocab_size=199, rope_theta=1e6, tie=True, dtype="float32",
        max_position_embeddings=128, rms_norm_eps=1e-6, style="v5", sliding_window=4,
        max_window_layers=1, drop_layer_types=True,
        lengths=[1, 12, 37], generate=True,
    ),
    dict(
        name="qwen3_hd16", seed=1006, arch="qwen3", head_dim=16,
        hidden_size=48, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        num_hidden_layers=2, vocab_size=263, rope_theta=1e6, tie=False, dtype="float32",
        max_position_embeddings=128, rms_norm_eps=1e-5, style="v5",
        lengths=[1, 37], generate=True,
    ),
    dict(
        name="qwen3_hd64_bf16", seed=1007, arch="qwen3", head_dim=64,
        hidden_size=96, num_attention_heads=3, num_key_value_heads=1, intermediate_size=64,
        num_hidden_layers=2, vocab_size=160, rope_theta=1e6, tie=True, dtype="bfloat16",
        max_position_embeddings=128, rms_norm_eps=1e-6, style="v5",
        lengths=[1, 37], generate=False,
    ),
]


def arch(spec: dict) -> str:
    return spec.get("arch", "qwen2")


def config_class(spec: dict):
    return ARCH[arch(spec)][0]


def model_class(spec: dict):
    return ARCH[arch(spec)][1]


def make_config(spec: dict, **over):
    sliding = spec.get("sliding_window")
    kw = dict(
        vocab_size=spec["vocab_size"],
        hidden_size=spec["hidden_size"],
        intermediate_size=spec["intermediate_size"],
        num_hidden_layers=spec["num_hidden_layers"],
        num_attention_heads=spec["num_attention_heads"],
        num_key_value_heads=spec["num_key_value_heads"],
        max_position_embeddings=spec["max_position_embeddings"],
        rms_norm_eps=spec["rms_norm_eps"],
        rope_parameters={"rope_theta": float(spec["rope_theta"]), "rope_type": "default"},
        tie_word_embeddings=spec["tie"],
        use_sliding_window=sliding is not None,
        sliding_window=sliding if sliding is not None else spec["max_position_embeddings"],
        max_window_layers=spec.get("max_window_layers", 0) if sliding is not None else spec["num_hidden_layers"],
        hidden_act="silu",
        initializer_range=0.02,
        attention_dropout=0.0,
        bos_token_id=0,
        eos_token_id=1,
        use_cache=True,
        attn_implementation="eager",
    )
    if arch(spec) == "qwen3":
        kw.update(head_dim=spec["head_dim"], attention_bias=False)
    kw.update(over)
    return config_class(spec)(**kw)


@torch.no_grad()
def randomize(model, seed: int) -> None:
    """Every parameter non-trivial: fan-in scaled weights, random biases, norms around 1."""
    g = torch.Generator().manual_seed(seed)

    def normal(p: torch.Tensor, std: float, mean: float = 0.0) -> None:
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std + mean)

    hidden = model.config.hidden_size
    for name, p in sorted(model.named_parameters()):
        if name.endswith("norm.weight"):                  # all RMSNorms: around 1
            p.copy_(torch.rand(p.shape, generator=g) * 1.0 + 0.5)
        elif name.endswith("embed_tokens.weight"):
            # Tied: it is also the lm_head, so give the logits an O(2) spread. Untied: small, as in
            # Qwen2.5, which also makes the first RMSNorm sensitive to eps.
            normal(p, 2.0 / hidden**0.5 if model.config.tie_word_embeddings else 0.02)
        elif name == "lm_head.weight":
            normal(p, 3.0 / hidden**0.5)
        elif name.endswith(("q_proj.weight", "k_proj.weight")):
            normal(p, 1.5 / p.shape[1] ** 0.5)
        elif name.endswith(("q_proj.bias", "k_proj.bias")):
            normal(p, 0.5)
        elif name.endswith("v_proj.bias"):
            normal(p, 0.3)
        elif name.endswith(".weight"):                    # v, o, gate, up, down
            normal(p, 1.0 / p.shape[1] ** 0.5)
        else:
            raise RuntimeError(f"unexpected parameter {name}")


def load_f32(path: Path, config=None, spec: dict | None = None):
    kw = {"config": config} if config is not None else {}
    cls = model_class(spec) if spec is not None else Qwen2ForCausalLM
    m = cls.from_pretrained(path, dtype=torch.float32, attn_implementation="eager", **kw)
    m.eval()
    return m


@torch.no_grad()
def logits_of(model, ids: list[int]) -> np.ndarray:
    out = model(torch.tensor([ids], dtype=torch.long), use_cache=False).logits[0]
    return out.float().numpy().astype(np.float32)


@torch.no_grad()
def greedy_manual(model, prompt: list[int], n: int) -> tuple[list[int], float]:
    """Cache-free greedy loop; returns the new ids and the smallest top-1 - top-2 margin."""
    ids = list(prompt)
    margin = float("inf")
    for _ in range(n):
        last = model(torch.tensor([ids]), use_cache=False).logits[0, -1].double()
        top2 = torch.topk(last, 2).values
        margin = min(margin, float(top2[0] - top2[1]))
        ids.append(int(last.argmax()))
    return ids[len(prompt):], margin


@torch.no_grad()
def greedy_hf(model, prompt: list[int], n: int) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=n, do_sample=False, num_beams=1, pad_token_id=model.config.eos_token_id)
    return out[0, len(prompt):].tolist()


def save_npy(path: Path, a: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(a, dtype=np.float32), allow_pickle=False)


def patch_config_v4(path: Path, spec: dict) -> None:
    """Rewrite config.json the way the real Qwen2.5 configs look (transformers 4.x)."""
    cfg = json.loads(path.read_text())
    cfg.pop("rope_parameters", None)
    cfg.pop("layer_types", None)
    cfg.pop("dtype", None)
    cfg.pop("pad_token_id", None)
    # Qwen2.5 ships sliding_window = max_position_embeddings with use_sliding_window false.
    cfg["sliding_window"] = spec["max_position_embeddings"]
    cfg["rope_theta"] = float(spec["rope_theta"])
    cfg["torch_dtype"] = spec["dtype"]
    cfg["transformers_version"] = "4.43.1"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def checkpoint_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.glob("*.safetensors"))


# ---------------------------------------------------------------------------------------------


def sensitivities(spec: dict, model_dir: Path, ids: list[int], ref: np.ndarray, attention: str) -> dict:
    """How far the logits move under the mistakes a runtime could make. All must be >> PARITY_TOL."""
    out = {}

    def variant(label: str, cfg_over: dict | None = None, mutate=None) -> None:
        cfg = config_class(spec).from_pretrained(model_dir)
        cfg._attn_implementation = "eager"
        for k, v in (cfg_over or {}).items():
            setattr(cfg, k, v)
        if attention == "full_causal":
            cfg.use_sliding_window = False
            cfg.sliding_window = None
            cfg.layer_types = ["full_attention"] * cfg.num_hidden_layers
        m = load_f32(model_dir, cfg, spec)
        if mutate is not None:
            with torch.no_grad():
                for name, p in m.named_parameters():
                    mutate(name, p)
        out[label] = rel_err(logits_of(m, ids), ref)

    theta = float(spec["rope_theta"])
    variant("rope_theta_1e4", {"rope_parameters": {"rope_theta": 1e4, "rope_type": "default"}})
    variant("rope_theta_x2", {"rope_parameters": {"rope_theta": 2 * theta, "rope_type": "default"}})
    variant("rms_norm_eps_x10", {"rms_norm_eps": spec["rms_norm_eps"] * 10})
    variant("rms_norm_eps_div10", {"rms_norm_eps": spec["rms_norm_eps"] / 10})
    if arch(spec) == "qwen2":
        variant("no_qkv_bias", mutate=lambda n, p: p.zero_() if n.endswith("bias") else None)
        variant("no_k_bias", mutate=lambda n, p: p.zero_() if n.endswith("k_proj.bias") else None)
    else:
        variant("unit_qk_norms", mutate=lambda n, p: p.fill_(1.0) if n.endswith(("q_norm.weight", "k_norm.weight")) else None)
        variant("unit_k_norm", mutate=lambda n, p: p.fill_(1.0) if n.endswith("k_norm.weight") else None)
    variant("unit_norms", mutate=lambda n, p: p.fill_(1.0) if n.endswith("norm.weight") else None)
    variant("unit_final_norm", mutate=lambda n, p: p.fill_(1.0) if n == "model.norm.weight" else None)
    return out


def build(spec: dict, out_root: Path) -> dict:
    name = spec["name"]
    d = out_root / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)

    torch.manual_seed(spec["seed"])
    model = model_class(spec)(make_config(spec)).eval()
    randomize(model, spec["seed"])
    if spec["tie"]:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    dtype = getattr(torch, spec["dtype"])
    model_store = model.to(dtype)
    save_kw = {"max_shard_size": spec["max_shard_size"]} if "max_shard_size" in spec else {}
    model_store.save_pretrained(d, safe_serialization=True, **save_kw)
    for extra in ("generation_config.json",):
        (d / extra).unlink(missing_ok=True)
    for f in d.iterdir():
        f.chmod(0o644)
    if spec["style"] == "v4":
        patch_config_v4(d / "config.json", spec)
    if spec.get("drop_layer_types"):  # transformers then derives them from max_window_layers
        cj = json.loads((d / "config.json").read_text())
        cj.pop("layer_types")
        (d / "config.json").write_text(json.dumps(cj, indent=2, sort_keys=True) + "\n")
    cfg_json = json.loads((d / "config.json").read_text())
    if spec["style"] == "v5":
        assert "rope_theta" not in cfg_json and cfg_json["rope_parameters"]["rope_theta"] == spec["rope_theta"]
    else:
        assert "rope_parameters" not in cfg_json and cfg_json["rope_theta"] == spec["rope_theta"]

    # What we saved is what we test: reload from disk, in float32.
    ref_model = load_f32(d, spec=spec)
    assert ref_model.config.rope_parameters["rope_theta"] == spec["rope_theta"], ref_model.config
    in_memory = model.to(dtype).float().eval()
    sliding = spec.get("sliding_window")
    causal_model = None
    if sliding is not None:
        full = spec.get("max_window_layers", 0)
        assert ref_model.config.layer_types == ["full_attention"] * full + \
            ["sliding_attention"] * (spec["num_hidden_layers"] - full), ref_model.config.layer_types
        assert ref_model.config.sliding_window == sliding
        ccfg = config_class(spec).from_pretrained(d)
        ccfg._attn_implementation = "eager"
        ccfg.use_sliding_window = False
        ccfg.sliding_window = None
        ccfg.layer_types = ["full_attention"] * ccfg.num_hidden_layers
        causal_model = load_f32(d, ccfg, spec)
    else:
        assert ref_model.config.layer_types == ["full_attention"] * spec["num_hidden_layers"]

    rng = np.random.default_rng(spec["seed"])
    ref = {
        "model": name,
        "generator": "tools/make_fixtures.py",
        "command": "python3 tools/make_fixtures.py",
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "storage_dtype": spec["dtype"],
        "config": {k: spec[k] for k in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "num_key_value_heads", "rope_theta", "rms_norm_eps",
            "max_position_embeddings")},
        "tie_word_embeddings": spec["tie"],
        "sliding_window": sliding,
        "parity_tolerance": PARITY_TOL,
        "logits": [],
        "generate": [],
        "sensitivity": {},
    }
    ref["config"]["head_dim"] = spec.get("head_dim", spec["hidden_size"] // spec["num_attention_heads"])
    ref["model_type"] = arch(spec)

    for T in spec["lengths"]:
        ids = rng.integers(0, spec["vocab_size"], size=T).tolist()
        hf = logits_of(ref_model, ids)
        assert hf.shape == (T, spec["vocab_size"]) and np.isfinite(hf).all()
        assert float(hf.std()) > 0.1, f"{name}: logits too flat ({hf.std()})"
        # The in-memory model agrees with the one reloaded from disk (float32 only: casting a
        # model to bf16/f16 in memory also rounds its RoPE inv_freq buffer, loading does not).
        if spec["dtype"] == "float32":
            assert rel_err(logits_of(in_memory, ids), hf) < 1e-6
        if sliding is None:
            f = f"logits_T{T}.npy"
            save_npy(d / f, hf)
            ref["logits"].append(dict(name=f"T{T}", ids=ids, attention=None, window=None, file=f,
                                      hf="causal"))
        else:
            hc = logits_of(causal_model, ids)
            # HF really applied the window, with the convention "W keys including itself": rows
            # before W see every key either way; from row W on, the results differ.
            w = sliding
            np.testing.assert_allclose(hf[:w], hc[:w], rtol=0, atol=1e-5)
            if T > w:
                diff_row_w = rel_err(hf[w], hc[w])
                assert diff_row_w > MIN_SENSITIVITY, f"row {w} unaffected by the window: {diff_row_w}"
                total = rel_err(hf, hc)
                assert total > MIN_SENSITIVITY, f"sliding == causal ({total})"
                ref["sensitivity"][f"T{T}_sliding_vs_causal"] = total
            fs, fc = f"logits_sliding_T{T}.npy", f"logits_causal_T{T}.npy"
            save_npy(d / fs, hf)
            save_npy(d / fc, hc)
            ref["logits"].append(dict(name=f"T{T}_swa_w{w}", ids=ids, attention="swa", window=w,
                                      file=fs, hf="sliding"))
            if spec.get("max_window_layers", 0) > 0:
                # Only some layers slide: the runtime's default backend runs them as HF does.
                ref["logits"].append(dict(name=f"T{T}_default", ids=ids, attention=None, window=None,
                                          file=fs, hf="sliding"))
            ref["logits"].append(dict(name=f"T{T}_full_causal", ids=ids, attention="full_causal",
                                      window=None, file=fc, hf="causal"))
            if T > w:
                # swa with a window covering the whole sequence is causal attention.
                for big in (T, 64):
                    ref["logits"].append(dict(name=f"T{T}_swa_w{big}", ids=ids, attention="swa",
                                              window=big, file=fc, hf="causal"))

    # Sensitivities, on the longest input.
    longest = max(ref["logits"], key=lambda c: len(c["ids"]))
    base_case = next(c for c in ref["logits"] if len(c["ids"]) == len(longest["ids"]) and
                     c["hf"] == ("sliding" if sliding else "causal"))
    base = np.load(d / base_case["file"])
    sens = sensitivities(spec, d, base_case["ids"], base,
                         "swa" if sliding else "full_causal")
    if sliding is not None:
        # same weights, but HF's sliding model vs the config sliding_window = W + 1
        cfg = config_class(spec).from_pretrained(d)
        cfg._attn_implementation = "eager"
        cfg.sliding_window = sliding + 1
        sens["window_plus_1"] = rel_err(logits_of(load_f32(d, cfg, spec), base_case["ids"]), base)
        if spec.get("max_window_layers", 0) > 0:  # the full layer really attends to every token
            cfg = config_class(spec).from_pretrained(d)
            cfg._attn_implementation = "eager"
            cfg.layer_types = ["sliding_attention"] * cfg.num_hidden_layers
            sens["every_layer_slides"] = rel_err(logits_of(load_f32(d, cfg, spec), base_case["ids"]), base)
    ref["sensitivity"].update(sens)
    must = ["rope_theta_1e4", "rope_theta_x2", "unit_norms", "unit_final_norm"] + \
        (["no_qkv_bias", "no_k_bias"] if arch(spec) == "qwen2" else ["unit_qk_norms", "unit_k_norm"]) + \
        (["window_plus_1"] if sliding else []) + \
        (["every_layer_slides"] if spec.get("max_window_layers", 0) > 0 else [])
    if spec["rms_norm_eps"] != 1e-6 or not spec["tie"]:
        must += ["rms_norm_eps_x10"]
    for k in must:
        assert sens[k] > MIN_SENSITIVITY, f"{name}: logits insensitive to {k}: {sens[k]:.2e}"

    # Greedy generation: prompts picked deterministically for clear margins and varied output.
    if spec["generate"]:
        gen_models = [("sliding" if sliding else "causal", ref_model,
                       "swa" if sliding else None, sliding)]
        for hf_kind, m, attention, window in gen_models:
            grng = np.random.default_rng(spec["seed"] + 7)
            for attempt in range(200):
                prompt = grng.integers(0, spec["vocab_size"], size=6).tolist()
                new_ids, margin = greedy_manual(m, prompt, 32)
                # No end-of-sequence token among the new ids: the runtime stops at EOS by default.
                if (margin >= MIN_GREEDY_MARGIN and len(set(new_ids)) >= 8
                        and m.config.eos_token_id not in new_ids):
                    break
            else:
                raise RuntimeError(f"{name}: no prompt with a clear greedy margin")
            hf_ids = greedy_hf(m, prompt, 32)
            assert hf_ids == new_ids, f"{name}: HF generate {hf_ids} != cache-free loop {new_ids}"
            if sliding is not None:
                c_ids, _ = greedy_manual(causal_model, prompt, 32)
                assert c_ids != new_ids, f"{name}: sliding generation equals causal generation"
            ref["generate"].append(dict(
                name=f"greedy_{hf_kind}", prompt_ids=prompt, max_new_tokens=32, new_ids=new_ids,
                attention=attention, window=window, hf=hf_kind, min_top2_margin=margin,
                prompt_attempts=attempt + 1, distinct_new_ids=len(set(new_ids))))

    (d / "reference.json").write_text(json.dumps(ref, indent=1) + "\n")

    ck = checkpoint_bytes(d)
    limit = MAX_CHECKPOINT_BYTES.get(name, 300_000)
    assert ck < limit, f"{name}: checkpoint {ck} bytes >= {limit}"
    shards = sorted(p.name for p in d.glob("*.safetensors"))
    if "max_shard_size" in spec:
        assert (d / "model.safetensors.index.json").exists() and len(shards) >= 2, shards
    else:
        assert shards == ["model.safetensors"], shards
    return dict(name=name, checkpoint_bytes=ck, dir_bytes=dir_bytes(d), shards=len(shards),
                sensitivity=ref["sensitivity"],
                margins=[g["min_top2_margin"] for g in ref["generate"]])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output root (default: %(default)s)")
    ap.add_argument("--only", nargs="*", help="build only these models")
    ap.add_argument("--check", action="store_true",
                    help="regenerate into a temporary directory and compare with --out")
    args = ap.parse_args()

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()

    out_root = Path(tempfile.mkdtemp(prefix="rt_fixtures_")) if args.check else args.out
    out_root.mkdir(parents=True, exist_ok=True)
    specs = [s for s in SPECS if not args.only or s["name"] in args.only]
    for spec in specs:
        info = build(spec, out_root)
        sens = " ".join(f"{k}={v:.1e}" for k, v in info["sensitivity"].items())
        print(f"{info['name']:20s} checkpoint {info['checkpoint_bytes']:8d} B  dir {info['dir_bytes']:8d} B"
              f"  shards {info['shards']}  greedy margins {info['margins']}\n    sensitivity: {sens}")
    if not args.only:
        names = {s["name"] for s in SPECS}
        for stale in out_root.iterdir():
            if stale.is_dir() and stale.name not in names:
                print(f"note: {stale} is not made by this script")
    total = dir_bytes(out_root)
    print(f"total {total} bytes in {out_root}")
    assert total < TOTAL_BYTES_LIMIT, f"fixtures too large: {total}"

    if args.check:
        bad = []
        for spec in specs:
            for f in sorted((out_root / spec["name"]).iterdir()):
                g = args.out / spec["name"] / f.name
                if not g.exists() or g.read_bytes() != f.read_bytes():
                    bad.append(str(g))
        shutil.rmtree(out_root)
        return report_differences(bad)
    return 0


if __name__ == "__main__":
    sys.exit(main())
