"""The pure-Python parts of the benchmark tools: bench_train's memory-fit search and bench_eval's
HellaSwag requests (the strings lm-eval 0.4.13's hellaswag task scores)."""
import json
import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import bench_eval  # noqa: E402
import bench_train  # noqa: E402


class LongestFit(unittest.TestCase):
    def search(self, limit_ok, budget=10**12, fail_above=None, hi=131072, lo=2048):
        seen = []

        def probe(T):
            seen.append(T)
            if fail_above is not None and T > fail_above:
                return {"seq": T, "error": "out of memory"}
            return {"seq": T, "peak_mem_bytes": T * 1000 if limit_ok else budget + 1}

        best, rows = bench_train.longest_fit(probe, budget, lo, hi)
        self.assertEqual([r["seq"] for r in rows], seen)
        return best, seen

    def test_budget_bound(self):
        best, _ = self.search(True, budget=30_000_000)
        self.assertEqual(best, 29696)  # 29 * 1024 * 1000 <= 30e6 < 30 * 1024 * 1000

    def test_failure_bound(self):
        best, seen = self.search(True, fail_above=37000)
        self.assertEqual(best, 36864)
        self.assertEqual(seen[:6], [2048, 4096, 8192, 16384, 32768, 65536])

    def test_long_contexts_stop_within_a_sixteenth(self):
        # exact answer 99328 (97 * 1024); past 64K the search stops once the gap is <= 1/16
        best, seen = self.search(True, fail_above=100000)
        self.assertLessEqual(best, 99328)
        self.assertLessEqual(99328 - best, 99328 // 16)
        self.assertEqual(best % 1024, 0)
        self.assertLessEqual(len(seen), 7 + 4)  # doubling to 131072, then 4 bisections (exact: 6)

    def test_nothing_fits(self):
        best, _ = self.search(False)
        self.assertEqual(best, 0)

    def test_everything_fits(self):
        best, seen = self.search(True, hi=16384)
        self.assertEqual((best, seen), (16384, [2048, 4096, 8192, 16384]))

    def test_doubling_past_the_cap_probes_the_cap(self):
        # from a known fit: 8192 fits, 16384 would pass the cap, so 12288 is probed, then bisected
        best, seen = self.search(True, fail_above=10500, lo=8192, hi=12288)
        self.assertEqual(best, 10240)
        self.assertEqual(seen[:2], [8192, 12288])
        best, seen = self.search(True, lo=8192, hi=12288)
        self.assertEqual((best, seen), (12288, [8192, 12288]))


class RunCase(unittest.TestCase):
    """run_case through a stand-in runtime that records its environment and writes metrics."""

    def run_fake(self, memory_limit, fail_with=None, T=4096):
        with tempfile.TemporaryDirectory() as d:
            fake, seen = os.path.join(d, "runtime"), os.path.join(d, "env.txt")
            with open(fake, "w") as f:
                f.write(f"""#!{sys.executable}
import json, os, sys
open({seen!r}, "w").write(os.environ.get("RT_CUDA_MEMORY_LIMIT", "<unset>") + "\\n" + " ".join(sys.argv[1:]))
if {fail_with!r}:
    sys.stderr.write({fail_with!r} + "\\n")
    sys.exit(1)
out = sys.argv[sys.argv.index("--out") + 1]
with open(os.path.join(out, "metrics.jsonl"), "w") as m:
    for step in (1, 2, 4):
        m.write(json.dumps({{"tokens_per_s": 1000.0 * step, "peak_mem_bytes": 5 * step, "loss": 1.0}}) + "\\n")
""")
            os.chmod(fake, 0o755)
            row = bench_train.run_case(fake, "m", "l2a_fused", "attention", "", T, 2, "data.bin", 2048, True,
                                       memory_limit=memory_limit)
            with open(seen) as f:
                env, args = f.read().split("\n", 1)
                self.args = args.split()
                return row, env

    def test_fit_budget_reaches_the_runtime(self):
        row, env = self.run_fake(str(24 * 2**30))
        self.assertEqual(env, str(24 * 2**30))
        self.assertEqual((row["peak_mem_bytes"], row["tokens_per_s"]), (20, 3000.0))

    def test_steps_after_the_first_give_the_median_and_the_mean(self):
        row, _ = self.run_fake("", T=4096)  # steps at 1000 (warm-up, left out), 2000 and 4000 tokens/s
        self.assertAlmostEqual(row["step_ms"], 4096 / 3000 * 1e3)
        self.assertAlmostEqual(row["step_ms_mean"], (4096 / 2000 + 4096 / 4000) / 2 * 1e3)

    def test_past_32k_extends_the_positions(self):
        self.run_fake("", T=65536)
        self.assertEqual(self.args[self.args.index("--max-position") + 1], "65536")
        self.run_fake("", T=32768)
        self.assertNotIn("--max-position", self.args)

    def test_no_budget_no_variable(self):
        os.environ.pop("RT_CUDA_MEMORY_LIMIT", None)
        _, env = self.run_fake("")
        self.assertEqual(env, "<unset>")

    def test_budget_oom_is_recognized(self):
        msg = "error: out of GPU memory allocating a bf16 tensor: 1 bytes requested, 24.00 GiB in use"
        row, _ = self.run_fake("1000", fail_with=msg)
        self.assertTrue(row["oom"])
        self.assertEqual(row["error"], msg)


class HfAttentionRegime(unittest.TestCase):
    """bench_train_hf's attention regime trains what runtime train's does with full_causal
    (runtime/train/adamw_optimizer.cpp): the attention projections and every norm, on HF's own names."""

    def test_trained_names_of_a_qwen2_model(self):
        try:
            from transformers import Qwen2Config, Qwen2ForCausalLM
        except ImportError:
            self.skipTest("transformers is not installed")
        import bench_train_hf
        cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        names = [n for n, _ in Qwen2ForCausalLM(cfg).named_parameters()]
        trained = sorted(n for n in names if bench_train_hf.trained_in_attention_regime(n))
        want = sorted([f"model.layers.{i}.self_attn.{p}_proj.{w}" for i in range(2) for p in "qkv"
                       for w in ("weight", "bias")] +
                      [f"model.layers.{i}.self_attn.o_proj.weight" for i in range(2)] +
                      [f"model.layers.{i}.{n}_layernorm.weight" for i in range(2) for n in ("input", "post_attention")] +
                      ["model.norm.weight"])
        self.assertEqual(trained, want)
        self.assertTrue(any(".mlp." in n for n in names) and "model.embed_tokens.weight" in names)


class HellaswagRequests(unittest.TestCase):
    def test_preprocessing_and_order(self):
        rows = [{"activity_label": "Baking", "ctx_a": "A man [title] mixes flour.", "ctx_b": "then he ADDS",
                 "endings": ["eggs  and milk.", "[step] water.", "sugar.", "salt."], "label": "0"}]
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "h.jsonl")
            with open(path, "w") as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")
            pairs = bench_eval.hellaswag_requests(path)
        ctx = "Baking: A man. mixes flour. Then he adds"  # " [title]" -> ". ", capitalize() lowercases the rest
        self.assertEqual(pairs, [(ctx, " eggs and milk."), (ctx, "  water."), (ctx, " sugar."), (ctx, " salt.")])


if __name__ == "__main__":
    unittest.main()
