// runtime prune: the written model (config, tensors, report), equality with the same layers pruned
// at load time, --threshold against `runtime sparsity`, loading in every command, and its errors.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>

#include "cli_test_util.h"

namespace rt::test {
namespace {

// tied_bf16_theta5e6 (3 layers, bf16) as a "trained" L2A model: paper layout, window 4, routers
// with seeded weights (layer 0 zero: routes every token), global weights from the init rule.
fs::path make_l2a_model(const TempDir& tmp) {
  const fs::path dir = copy_fixture("tied_bf16_theta5e6", tmp);
  nlohmann::json cfg = read_json(dir / "config.json");
  const int64_t hidden = cfg["hidden_size"].get<int64_t>();
  cfg["l2a"] = {{"layout", "paper"}, {"window", 4}};
  write_text(dir / "config.json", cfg.dump(2));
  Safetensors st = Safetensors::load(dir / "model.safetensors");
  std::mt19937 rng(7);
  std::normal_distribution<float> n(0.f, 1.f);
  for (int l = 0; l < 3; ++l) {
    std::string bytes;
    for (int64_t i = 0; i < hidden; ++i) {
      const float v = l == 0 ? 0.f : n(rng) * static_cast<float>(l);
      uint32_t bits;
      std::memcpy(&bits, &v, 4);
      const uint16_t bf = static_cast<uint16_t>(bits >> 16);
      bytes.append(reinterpret_cast<const char*>(&bf), 2);
    }
    const size_t begin = st.data.size();
    st.data += bytes;
    st.header["model.layers." + std::to_string(l) + ".router.weight"] = {
        {"dtype", "BF16"}, {"shape", {1, hidden}}, {"data_offsets", {begin, st.data.size()}}};
  }
  st.save(dir / "model.safetensors");
  return dir;
}

fs::path write_ids(const fs::path& path, int n, int vocab) {
  std::string bytes;
  for (int i = 0; i < n; ++i) {
    const uint32_t id = static_cast<uint32_t>((i * 7919 + 13) % vocab);
    bytes.append(reinterpret_cast<const char*>(&id), 4);
  }
  write_text(path, bytes);
  return path;
}

std::vector<int> ints(const nlohmann::json& j) { return j.get<std::vector<int>>(); }

class CliPrune : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(runtime_available());
    model_ = make_l2a_model(tmp_);
    data_ = write_ids(tmp_ / "ids.bin", 512, 300);
  }
  RunResult logits(const fs::path& model, const fs::path& out, std::vector<std::string> extra = {}) {
    std::vector<std::string> a = {"logits", "--model", model.string(), "--ids", "1,5,9,13,2,7,11,3,8,4", "--out",
                                  out.string()};
    a.insert(a.end(), extra.begin(), extra.end());
    return run_runtime(a);
  }
  TempDir tmp_{"rt_prune_test"};
  fs::path model_, data_;
};

TEST_F(CliPrune, LayersWritesThePrunedModel) {
  const fs::path out = tmp_ / "pruned";
  RunResult r = run_runtime({"prune", "--model", model_.string(), "--layers", "2,0", "--out", out.string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  const nlohmann::json cfg = read_json(out / "config.json");
  EXPECT_EQ(ints(cfg["l2a"]["pruned_layers"]), (std::vector<int>{0, 2}));
  EXPECT_EQ(cfg["l2a"]["layout"], "paper");
  const auto names = Safetensors::load(out / "model.safetensors").tensor_names();
  for (int l = 0; l < 3; ++l) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    const bool global = std::any_of(names.begin(), names.end(), [&](const std::string& n) {
      return n.rfind(pre, 0) == 0 && (n.find("global_") != std::string::npos || n.find("router") != std::string::npos);
    });
    EXPECT_EQ(global, l == 1) << pre;
    EXPECT_NE(std::find(names.begin(), names.end(), pre + "self_attn.q_proj.weight"), names.end()) << pre;
  }
  // The report: per layer global T*Hkv*D*2 and local ring min(T, W)*Hkv*D*2, bf16 (Hkv 2, D 16).
  const nlohmann::json rep = read_json(out / "prune_report.json");
  const double row = 2.0 * 2 * 16 * 2;
  ASSERT_EQ(rep["kv_cache"].size(), 3u);
  for (const auto& k : rep["kv_cache"]) {
    const double T = k["seq"].get<double>();
    EXPECT_EQ(k["before_bytes"].get<double>(), 3 * (T + 4) * row) << T;
    EXPECT_EQ(k["after_bytes"].get<double>(), (3 * 4 + T) * row) << T;
  }
  EXPECT_NE(r.out.find("131072"), std::string::npos) << r.out;

  // Same logits as pruning at load time (the checkpoint's global weights ignored, with a note);
  // different from the unpruned model, whose layers 0 and 2 route tokens.
  ASSERT_TRUE(logits(out, tmp_ / "a.npy").ok());
  RunResult ref = logits(model_, tmp_ / "b.npy", {"--set", "pruned_layers=0,2"});
  ASSERT_TRUE(ref.ok()) << ref.describe();
  EXPECT_EQ(read_text(tmp_ / "a.npy"), read_text(tmp_ / "b.npy"));
  ASSERT_TRUE(logits(model_, tmp_ / "c.npy").ok());
  EXPECT_NE(read_text(tmp_ / "a.npy"), read_text(tmp_ / "c.npy"));
  RunResult note = logits(out, tmp_ / "d.npy");
  EXPECT_EQ(note.err.find("ignored"), std::string::npos) << note.err;  // nothing to ignore in a pruned export

  // Pruning again adds layers.
  const fs::path out2 = tmp_ / "pruned2";
  r = run_runtime({"prune", "--model", out.string(), "--layers", "1", "--out", out2.string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  EXPECT_EQ(ints(read_json(out2 / "config.json")["l2a"]["pruned_layers"]), (std::vector<int>{0, 1, 2}));
  const nlohmann::json rep2 = read_json(out2 / "prune_report.json");
  EXPECT_EQ(ints(rep2["pruned_before"]), (std::vector<int>{0, 2}));
  EXPECT_EQ(rep2["kv_cache"][0]["after_bytes"].get<double>(), 3 * 4 * row);
  ASSERT_TRUE(logits(out2, tmp_ / "e.npy").ok());
}

TEST_F(CliPrune, ThresholdPicksTheLayersAtOrAboveIt) {
  const fs::path sp = tmp_ / "sparsity.json";
  RunResult s = run_runtime({"sparsity", "--model", model_.string(), "--data", data_.string(), "--seq", "32",
                             "--max-sequences", "8", "--json", sp.string()});
  ASSERT_TRUE(s.ok()) << s.describe();
  std::vector<double> layer;
  const nlohmann::json before = read_json(sp);
  for (const auto& l : before["layers"]) layer.push_back(l["sparsity"].get<double>());
  ASSERT_EQ(layer.size(), 3u);
  EXPECT_EQ(layer[0], 0.0);  // zero router: every token global
  // A threshold equal to a layer's own sparsity: that layer is pruned (>=).
  const double p = std::max(layer[1], layer[2]);
  ASSERT_GT(p, 0.0);
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", p);
  const fs::path out = tmp_ / "pruned";
  RunResult r = run_runtime({"prune", "--model", model_.string(), "--threshold", buf, "--data", data_.string(),
                             "--seq", "32", "--max-sequences", "8", "--out", out.string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  std::vector<int> want;
  for (int l = 0; l < 3; ++l)
    if (layer[static_cast<size_t>(l)] >= p) want.push_back(l);
  const nlohmann::json rep = read_json(out / "prune_report.json");
  EXPECT_EQ(ints(rep["pruned_layers"]), want);
  EXPECT_EQ(ints(read_json(out / "config.json")["l2a"]["pruned_layers"]), want);
  for (int l = 0; l < 3; ++l) EXPECT_EQ(rep["layers"][l]["sparsity"].get<double>(), layer[static_cast<size_t>(l)]);

  // The pruned model in `runtime sparsity`: its pruned layers count as 100% local, marked.
  s = run_runtime({"sparsity", "--model", out.string(), "--data", data_.string(), "--seq", "32", "--max-sequences",
                   "8", "--json", sp.string()});
  ASSERT_TRUE(s.ok()) << s.describe();
  const nlohmann::json after = read_json(sp);
  for (int l : want) {
    EXPECT_EQ(after["layers"][l]["sparsity"].get<double>(), 1.0);
    EXPECT_EQ(after["layers"][l]["pruned"], true);
  }
}

TEST_F(CliPrune, PrunedModelRunsInEveryCommand) {
  const fs::path out = tmp_ / "pruned";
  ASSERT_TRUE(run_runtime({"prune", "--model", model_.string(), "--layers", "0,2", "--out", out.string()}).ok());
  RunResult g = run_runtime({"generate", "--model", out.string(), "--ids", "1,2,3", "-n", "12", "--print-ids"});
  ASSERT_TRUE(g.ok()) << g.describe();
  // Profile: the KV-cache column shows the pruned cache (2 layers fewer global caches).
  auto profile_kv = [&](const fs::path& m) {
    const fs::path j = tmp_ / "profile.json";
    RunResult p = run_runtime({"profile", "--model", m.string(), "--attention", "l2a_dense", "--seq", "16", "--repeats", "1", "--decode-tokens",
                               "2", "--json", j.string()});
    EXPECT_TRUE(p.ok()) << p.describe();
    EXPECT_NE(p.out.find("KV MiB"), std::string::npos) << p.out;
    return p.ok() ? read_json(j)["backends"][0]["kv_cache_bytes"].get<double>() : 0.0;
  };
  const double T = 16 + 4 + 2;  // seq, warmup and timed decode steps
  EXPECT_EQ(profile_kv(model_) - profile_kv(out), 2 * T * 2 * 2 * 16 * 4);  // f32 on the CPU

  // eval on a real-vocabulary model pruned the same way.
  const fs::path eval_model = fs::path(RT_SOURCE_DIR) / "tests" / "fixtures" / "eval" / "model";
  const fs::path eval_pruned = tmp_ / "eval_pruned";
  RunResult r = run_runtime({"prune", "--model", eval_model.string(), "--attention", "l2a_dense", "--window", "4",
                             "--layers", "1", "--out", eval_pruned.string()});
  ASSERT_TRUE(r.ok()) << r.describe();
  const fs::path ppl = fs::path(RT_SOURCE_DIR) / "tests" / "fixtures" / "eval" / "data" / "ppl.txt";
  // The fixture's tokenizer.json is not in the repository (tests take the shared one, as eval's own do).
  const fs::path tokenizer = fs::path(RT_SHARED_DATA_DIR) / "qwen2.5-tokenizer";
  r = run_runtime({"eval", "--model", eval_pruned.string(), "--tasks", "ppl", "--data", "ppl=" + ppl.string(),
                   "--tokenizer", tokenizer.string(), "--limit", "2", "--seq", "32", "--output", (tmp_ / "ev").string()},
                  300);
  ASSERT_TRUE(r.ok()) << r.describe();
}

TEST_F(CliPrune, Errors) {
  const std::string out = (tmp_ / "o").string();
  EXPECT_TRUE(is_clean_error(run_runtime({"prune", "--model", model_.string(), "--layers", "3", "--out", out}),
                             {"--layers", "3", "3 layers"}));
  EXPECT_TRUE(is_clean_error(run_runtime({"prune", "--model", model_.string(), "--layers", "-1", "--out", out}),
                             {"--layers"}));
  EXPECT_TRUE(is_clean_error(run_runtime({"prune", "--model", model_.string(), "--layers", "1,1", "--out", out}),
                             {"--layers", "twice"}));
  EXPECT_TRUE(is_clean_error(run_runtime({"prune", "--model", model_.string(), "--layers", "1", "--threshold", "0.5",
                                          "--data", data_.string(), "--out", out}),
                             {"--layers", "--threshold"}));
  EXPECT_TRUE(is_clean_error(run_runtime({"prune", "--model", model_.string(), "--out", out}),
                             {"--layers", "--threshold"}));
  EXPECT_TRUE(is_clean_error(run_runtime({"prune", "--model", model_.string(), "--threshold", "1.5", "--data",
                                          data_.string(), "--out", out}),
                             {"--threshold", "1.5"}));
  EXPECT_TRUE(is_clean_error(run_runtime({"prune", "--model", model_.string(), "--threshold", "0.5", "--out", out}),
                             {"--threshold", "--data"}));
  EXPECT_TRUE(is_clean_error(run_runtime({"prune", "--model", fixture_model("tied_bf16_theta5e6").string(), "--layers",
                                          "0", "--out", out}),
                             {"full_causal", "l2a"}));
  EXPECT_FALSE(fs::exists(out));
  // A pruned_layers option out of range at load names the option and the layer count.
  EXPECT_TRUE(is_clean_error(logits(model_, tmp_ / "x.npy", {"--set", "pruned_layers=5"}),
                             {"pruned_layers", "5", "3 layers"}));
}

}  // namespace
}  // namespace rt::test
